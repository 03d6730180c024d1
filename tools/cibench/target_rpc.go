package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
)

// The RPC scenarios (compare, rpc, flow, priority) against a running
// cluster. cibench is not a member, so it cannot make ICS calls itself:
// node --from's admin endpoint makes them (POST /v1/ping, docs/ADMIN.md)
// to node --to's ICS echo, and returns every latency bucket, which
// cibench merges over rounds as it merges its own.

// rpcTargetFlags select a running cluster: --target and --token-file, the
// names every scenario uses (targetFlags), and --from and --to, the node
// pair of the RPC scenarios.
type rpcTargetFlags struct {
	targetFlags
	From uint32 `placeholder:"N" help:"With --target: the node that makes the calls (default: the first endpoint's node). Its admin endpoint calls node --to's ICS echo (POST /v1/ping); raw TCP, net/rpc and gRPC-go are reported as not measured." env:"CI_FROM"`
	To   uint32 `placeholder:"N" help:"With --target: the node whose echo answers (default: the second endpoint's node; with one endpoint, the first other member that is UP)." env:"CI_TO"`
}

func (f *rpcTargetFlags) active() bool { return f.enabled() }

// check reports flags that make no sense with or without --target.
func (f *rpcTargetFlags) check() error {
	if !f.active() {
		if f.TokenFile != "" || f.From != 0 || f.To != 0 {
			return usagef("--token-file, --from and --to go with --target")
		}
		return nil
	}
	if _, err := f.validate(); err != nil {
		return err
	}
	for i, a := range f.Target {
		if slices.Contains(f.Target[:i], a) {
			return usagef("--target %q listed twice", a)
		}
	}
	if f.From != 0 && f.From == f.To {
		return usagef("--from and --to are both node %d: a ping needs two nodes", f.From)
	}
	return nil
}

// notOnTarget refuses a flag that only means something with spawned
// processes.
func notOnTarget(f *rpcTargetFlags, set bool, flag, why string) error {
	if f.active() && set {
		return usagef("%s does not apply with --target: %s", flag, why)
	}
	return nil
}

// targetPair is the node pair a run measures, and the client of the
// calling node's endpoint.
type targetPair struct {
	info    *bench.TargetRun
	from    *admin.Client
	to      uint32
	clients []*admin.Client
}

func (tp *targetPair) close() {
	for _, c := range tp.clients {
		c.Close()
	}
}

// connect asks every endpoint which node it is and picks the pair.
func (f *rpcTargetFlags) connect(ctx context.Context) (_ *targetPair, err error) {
	token, err := f.validate()
	if err != nil {
		return nil, err
	}
	tp := &targetPair{info: &bench.TargetRun{Endpoints: f.Target}}
	defer func() {
		if err != nil {
			tp.close()
		}
	}()
	byNode := map[uint32]*admin.Client{}
	var order []uint32
	for _, addr := range f.Target {
		c := admin.NewClient(addr, token)
		tp.clients = append(tp.clients, c)
		var st admin.Status
		if err := c.Get(ctx, "/v1/status", &st); err != nil {
			return nil, fmt.Errorf("--target %s: %w", addr, err)
		}
		switch {
		case tp.info.Cluster == "":
			tp.info.Cluster = st.Cluster
		case st.Cluster != tp.info.Cluster:
			return nil, usagef("--target %s is node %d of cluster %q, the others are of %q", addr, st.Node, st.Cluster, tp.info.Cluster)
		}
		if byNode[st.Node] != nil {
			return nil, usagef("--target %s is node %d again", addr, st.Node)
		}
		byNode[st.Node] = c
		order = append(order, st.Node)
	}
	from, to := f.From, f.To
	if from == 0 {
		from = order[0]
	}
	var ms admin.Members
	if to == 0 || byNode[from] == nil {
		if err := tp.clients[0].Get(ctx, "/v1/members", &ms); err != nil {
			return nil, fmt.Errorf("--target %s: %w", f.Target[0], err)
		}
	}
	if to == 0 {
		for _, n := range order {
			if n != from {
				to = n
				break
			}
		}
		for _, m := range ms.Members {
			if to == 0 && m.Node != from && m.State == clms.StateUp.String() {
				to = m.Node
			}
		}
		if to == 0 {
			return nil, fmt.Errorf("--target: no member other than node %d is UP to ping", from)
		}
	}
	if from == to {
		return nil, usagef("--from and --to are both node %d: a ping needs two nodes", from)
	}
	tp.from = byNode[from]
	if tp.from == nil {
		i := slices.IndexFunc(ms.Members, func(m admin.Member) bool { return m.Node == from })
		if i < 0 || ms.Members[i].Admin == "" {
			return nil, usagef("--from %d: none of --target is node %d's endpoint, and the node table gives none: add it to --target", from, from)
		}
		tp.from = admin.NewClient(ms.Members[i].Admin, token)
		tp.clients = append(tp.clients, tp.from)
	}
	tp.info.From, tp.info.To, tp.to = from, to, to
	return tp, nil
}

// ping runs one /v1/ping on the calling node; a run with a failed call
// measured something else and is an error.
func (tp *targetPair) ping(ctx context.Context, req admin.PingRequest) (admin.PingResult, *bench.Hist, error) {
	req.Node, req.Histogram = tp.to, true
	var res admin.PingResult
	if err := tp.from.Post(ctx, "/v1/ping", req, &res); err != nil {
		return res, nil, err
	}
	if res.Errors > 0 {
		return res, nil, fmt.Errorf("node %d to node %d: %d calls failed (%v); the last: %s", tp.info.From, tp.to, res.Errors, res.ErrorCodes, res.LastError)
	}
	h, err := bench.HistFromBuckets(res.Latency.Histogram)
	if err != nil {
		return res, nil, fmt.Errorf("node %d's /v1/ping: %w", tp.info.From, err)
	}
	if h.Count() != res.Calls {
		return res, nil, fmt.Errorf("node %d's /v1/ping: histogram of %d calls, reply says %d", tp.info.From, h.Count(), res.Calls)
	}
	return res, h, nil
}

// pingRequest is a RunConfig as a /v1/ping body.
func pingRequest(cfg bench.RunConfig, prio int) admin.PingRequest {
	req := admin.PingRequest{Calls: cfg.Calls, Size: cfg.ReqSize, Concurrency: cfg.Concurrency, Warmup: cfg.Warmup, Priority: prio}
	if cfg.Duration > 0 {
		req.Calls, req.Duration = 0, cfg.Duration.String()
	}
	return req
}

// servers is Env.Servers for a run against the target.
func (tp *targetPair) servers() string {
	return fmt.Sprintf("node %d of cluster %q, called by node %d (POST /v1/ping)", tp.to, tp.info.Cluster, tp.info.From)
}

// withTarget sets the plan's target and checks it.
func (p *plan) withTarget(t rpcTargetFlags) error {
	p.target, p.tinfo = t, &bench.TargetRun{}
	return p.checkTarget()
}

// checkTarget refuses what a compare or rpc plan cannot do against a
// running cluster.
func (p *plan) checkTarget() error {
	t := &p.target
	if err := t.check(); err != nil {
		return err
	}
	if !t.active() {
		return nil
	}
	for _, err := range []error{
		notOnTarget(t, p.out.Pin, "--pin", "the servers are the cluster's processes"),
		notOnTarget(t, p.out.InProcess, "--in-process", "the servers are the cluster's processes"),
		notOnTarget(t, p.respSize >= 0 && slices.ContainsFunc(p.sizes, func(s int) bool { return s != p.respSize }),
			"--response-size", "the nodes' echo answers with the request's size"),
		notOnTarget(t, p.out.Baseline != "" && p.out.Baseline != "ics", "--baseline", "only ICS is measured"),
	} {
		if err != nil {
			return err
		}
	}
	if !slices.Contains(p.peers, "ics") {
		return usagef("--peers %s: against --target only ics is measured: include it", strings.Join(p.peers, ","))
	}
	if p.cfg.Run.Duration > admin.MaxPingDuration {
		return usagef("--duration %v: a node's /v1/ping runs at most %v", p.cfg.Run.Duration, admin.MaxPingDuration)
	}
	conc := slices.Max(p.conc)
	if conc > admin.MaxPingConcurrency {
		return usagef("--concurrency %d: a node's /v1/ping runs at most %d callers", conc, admin.MaxPingConcurrency)
	}
	if big := slices.Max(p.sizes); int64(big)*int64(conc) > admin.MaxPingInFlight {
		return usagef("--concurrency %d x --sizes %d: over the %d bytes a node's /v1/ping holds in flight", conc, big, admin.MaxPingInFlight)
	}
	return nil
}

// notMeasuredPeers is every peer of --peers but ICS's default build,
// which is the only one a running cluster serves.
func notMeasuredPeers(peers []string) []bench.NotMeasured {
	var out []bench.NotMeasured
	for _, name := range peers {
		switch base, _, _ := strings.Cut(name, "@"); {
		case name == "ics":
		case strings.HasPrefix(base, "ics"):
			out = append(out, bench.NotMeasured{What: name, Reason: "an ICS variant needs processes cibench spawns; a running cluster's nodes serve ICS as they were built and configured"})
		default:
			out = append(out, bench.NotMeasured{What: name, Reason: "needs a server process cibench spawns; a running cluster serves only ICS"})
		}
	}
	return out
}

// executeTarget is execute against a running cluster: ICS only, one
// comparison per size and concurrency, the other peers listed as not measured.
func (p plan) executeTarget(g *globals) ([]*bench.Comparison, error) {
	tp, err := p.target.connect(g.ctx)
	if err != nil {
		return nil, err
	}
	defer tp.close()
	*p.tinfo = *tp.info
	target := bench.Target{Name: "ics", Run: func(ctx context.Context, cfg bench.RunConfig) (bench.Result, error) {
		res, h, err := tp.ping(ctx, pingRequest(cfg, 0))
		if err != nil {
			return bench.Result{}, err
		}
		if cfg.Progress != nil {
			cfg.Progress(int(res.Calls))
		}
		return bench.Result{Calls: res.Calls, Elapsed: res.Elapsed, CallsPerSec: res.CallsPerSec, Latency: h.Summary(), Hist: h}, nil
	}}
	var out []*bench.Comparison
	for cfg := range p.runs() {
		cfg.Baseline = "ics"
		cfg.Run.RespSize = cfg.Run.ReqSize // the nodes' echo answers with the request's size
		total := int64(-1)
		if cfg.Run.Duration == 0 {
			total = int64(cfg.Rounds) * int64(cfg.Run.Calls)
		}
		label := runLabel(cfg.Run.ReqSize, cfg.Run.Concurrency)
		bar := newProgress(g, total, fmt.Sprintf("%s %s against node %d", p.title, label, tp.to))
		cfg.Run.Progress = bar.add
		c, err := bench.Compare(g.ctx, []bench.Target{target}, cfg)
		bar.done()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		c.Env.Servers = tp.servers()
		c.NotMeasured = notMeasuredPeers(p.peers)
		out = append(out, c)
	}
	return out, nil
}

// checkTarget refuses what the flow phases cannot do against a running
// cluster.
func (c *flowFlags) checkTarget() error {
	t := &c.rpcTargetFlags
	if err := t.check(); err != nil {
		return err
	}
	for _, err := range []error{
		notOnTarget(t, c.Pin, "--pin", "the nodes are the cluster's processes"),
		notOnTarget(t, c.InProcess, "--in-process", "the nodes are the cluster's processes"),
		notOnTarget(t, c.Window != 0, "--window", "the credit window is the cluster's configuration"),
		notOnTarget(t, c.Metrics, "--metrics", "read the nodes' /metrics instead"),
		notOnTarget(t, c.Profile != "", "--profile", "use the nodes' /debug/pprof instead"),
		notOnTarget(t, c.Duration+flowLoadLead > admin.MaxPingDuration, "a --duration over "+(admin.MaxPingDuration-flowLoadLead).String(),
			"a node's /v1/ping runs at most "+admin.MaxPingDuration.String()),
		// The warm-up runs each phase too, the loaded one as long plus the lead.
		notOnTarget(t, c.Warmup+flowLoadLead > admin.MaxPingDuration, "a --warmup over "+(admin.MaxPingDuration-flowLoadLead).String(),
			"a node's /v1/ping runs at most "+admin.MaxPingDuration.String()),
		notOnTarget(t, c.Senders > admin.MaxPingConcurrency, fmt.Sprintf("--senders over %d", admin.MaxPingConcurrency),
			"a node's /v1/ping runs at most that many callers"),
		notOnTarget(t, int64(c.Size)*int64(c.Senders) > admin.MaxPingInFlight, "--size x --senders over 64 MiB",
			"a node's /v1/ping holds at most that in flight"),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// flowLoadLead is how much longer the loaded phase's bulk runs than its
// probe, and how long before it the bulk starts: the probe is measured
// only while the bulk is under way, never during its ramp or its end.
const flowLoadLead = 200 * time.Millisecond

// runTargetFlow runs the flow phases against the cluster: bulk, idle and
// loaded, rotated per round.
func (c *flowFlags) runTargetFlow(g *globals, deadlock bool) (*bench.PriorityResult, *bench.TargetRun, error) {
	ctx := g.ctx
	tp, err := c.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer tp.close()
	prio := int(bench.DefaultFlowRunConfig().ProbePriority)
	r := &bench.TargetFlowResult{Rounds: c.Rounds, Duration: c.Duration, Warmup: c.Warmup, Size: c.Size, Senders: c.Senders,
		ProbeSize: c.ProbeSize, ProbePriority: prio, StartedAt: time.Now(), NotMeasured: []bench.NotMeasured{
			{What: "raw bulk", Reason: "one raw TCP stream needs processes cibench spawns: no bulk ratio"},
			{What: "raw-loaded control", Reason: "the probe under a raw TCP stream needs processes cibench spawns"},
		}}
	if deadlock {
		r.NotMeasured = append(r.NotMeasured, bench.NotMeasured{What: "deadlock", Reason: "the nested-RPC deadlock runs node pairs in cibench's own process, not the cluster's"})
	}
	bulk := func(d time.Duration, warm int) admin.PingRequest {
		return admin.PingRequest{Size: c.Size, Concurrency: c.Senders, Duration: d.String(), Warmup: warm}
	}
	probe := func(d time.Duration) admin.PingRequest {
		return admin.PingRequest{Size: c.ProbeSize, Concurrency: 1, Priority: prio, Duration: d.String()}
	}
	toBulk := func(res admin.PingResult, h *bench.Hist) bench.TargetBulk {
		s := h.Summary()
		return bench.TargetBulk{Calls: res.Calls, Elapsed: res.Elapsed, MBPerSec: res.BytesPerSec / 1e6, P50: s.P50, P99: s.P99}
	}
	// loaded runs the probe while a bulk run saturates the same pair.
	loaded := func(d time.Duration) (probeH *bench.Hist, b bench.TargetBulk, err error) {
		var (
			wg      sync.WaitGroup
			bres    admin.PingResult
			bh      *bench.Hist
			bulkErr error
		)
		wg.Go(func() { bres, bh, bulkErr = tp.ping(ctx, bulk(d+flowLoadLead, c.Senders)) })
		select {
		case <-time.After(flowLoadLead / 2):
		case <-ctx.Done():
		}
		_, probeH, err = tp.ping(ctx, probe(d))
		wg.Wait()
		if err = errors.Join(err, bulkErr); err != nil {
			return nil, b, err
		}
		return probeH, toBulk(bres, bh), nil
	}
	phases := []string{"bulk", "idle", "loaded"}
	run := func(ph string, d time.Duration, round *bench.TargetFlowRound) (*bench.Hist, error) {
		switch ph {
		case "bulk":
			res, h, err := tp.ping(ctx, bulk(d, 0))
			if err == nil {
				round.Bulk = toBulk(res, h)
			}
			return nil, err
		case "idle":
			_, h, err := tp.ping(ctx, probe(d))
			if err == nil {
				round.Idle = h.Summary()
			}
			return h, err
		default:
			h, b, err := loaded(d)
			if err == nil {
				round.Loaded, round.LoadedBulk = h.Summary(), b
			}
			return h, err
		}
	}
	status := newFlowStatus(g, c.Rounds)
	defer status.done()
	if c.Warmup > 0 {
		for _, ph := range phases {
			status.phase(0, "warm-up "+ph)
			if _, err := run(ph, c.Warmup, &bench.TargetFlowRound{}); err != nil {
				return nil, nil, fmt.Errorf("warm-up, %s: %w", ph, err)
			}
		}
	}
	idleAll, loadedAll := bench.NewHist(), bench.NewHist()
	for i := range c.Rounds {
		round := bench.TargetFlowRound{Round: i + 1}
		for k := range phases {
			ph := phases[(k+i)%len(phases)]
			round.Order = append(round.Order, ph)
			status.phase(i+1, ph)
			h, err := run(ph, c.Duration, &round)
			if err != nil {
				return nil, nil, fmt.Errorf("round %d, %s: %w", i+1, ph, err)
			}
			switch ph {
			case "idle":
				idleAll.Merge(h)
			case "loaded":
				loadedAll.Merge(h)
			}
		}
		r.PerRound = append(r.PerRound, round)
	}
	r.Summarize(idleAll, loadedAll)
	return &bench.PriorityResult{TargetFlow: r}, tp.info, nil
}
