package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
)

func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer, header string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// health lists what makes the cluster unhealthy, precisely: a node of the
// table that is not UP, no master, a critical key service without an owner
// or not ready.
func health(ms admin.Members, ks admin.KeyServices) []string {
	var out []string
	for _, m := range ms.Members {
		if m.State != clms.StateUp.String() {
			out = append(out, fmt.Sprintf("node %d is %s", m.Node, m.State))
		}
	}
	if ms.Master == 0 {
		out = append(out, fmt.Sprintf("no master (as node %d sees it)", ms.From))
	}
	return append(out, keysvcHealth(ks)...)
}

// keysvcHealth is health's part about key services.
func keysvcHealth(ks admin.KeyServices) []string {
	var out []string
	for _, k := range ks.Services {
		switch {
		case !k.Critical:
		case k.Owner == 0:
			out = append(out, fmt.Sprintf("critical key service %s has no owner", k.Name))
		case !k.Ready:
			out = append(out, fmt.Sprintf("critical key service %s is not ready on node %d", k.Name, k.Owner))
		}
	}
	return out
}

func (g *globals) unhealthy(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	for _, p := range problems {
		fmt.Fprintf(g.stderr, "cluster: unhealthy: %s\n", p)
	}
	return errUnhealthy
}

type membersCmd struct{}

// membersOutput is members --json: the endpoint's view and its health.
type membersOutput struct {
	admin.Members
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
}

func (membersCmd) Run(g *globals) error {
	var ms admin.Members
	var ks admin.KeyServices
	err := g.first(func(ctx context.Context, c *admin.Client) error {
		if err := c.Get(ctx, "/v1/members", &ms); err != nil {
			return err
		}
		return c.Get(ctx, "/v1/keysvc", &ks)
	})
	if err != nil {
		return err
	}
	problems := health(ms, ks)
	switch {
	case g.JSON:
		if err := g.printJSON(membersOutput{Members: ms, Healthy: len(problems) == 0, Problems: append([]string{}, problems...)}); err != nil {
			return err
		}
	case g.Verbose:
		var rows [][]string
		for _, m := range ms.Members {
			rows = append(rows, []string{strconv.Itoa(int(m.Node)), m.State, m.Address, yesNo(m.Master), dash(m.Incarnation), dash(strings.Join(m.KeyServices, ","))})
		}
		if err := table(g.stdout, "NODE\tSTATE\tADDRESS\tMASTER\tINCARNATION\tKEYSVC", rows); err != nil {
			return err
		}
	default:
		for _, m := range ms.Members {
			if m.State == clms.StateUp.String() {
				fmt.Fprintln(g.stdout, m.Node)
			}
		}
	}
	return g.unhealthy(problems)
}

type nodeCmd struct {
	N uint32 `arg:"" help:"Node number."`
}

func (c *nodeCmd) Run(g *globals) error {
	if c.N == 0 {
		return usagef("node numbers start at 1")
	}
	var m admin.Member
	if err := g.first(func(ctx context.Context, cl *admin.Client) error {
		return cl.Get(ctx, fmt.Sprintf("/v1/node/%d", c.N), &m)
	}); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(m)
	}
	rows := [][]string{
		{"node:", strconv.Itoa(int(m.Node))},
		{"state:", m.State},
		{"address:", m.Address},
		{"admin:", dash(m.Admin)},
		{"master:", yesNo(m.Master)},
		{"master eligible:", yesNo(m.MasterEligible)},
		{"incarnation:", dash(m.Incarnation)},
		{"last change:", fmt.Sprintf("transition %d", m.LastChange)},
		{"key services owned:", dash(strings.Join(m.KeyServices, ","))},
		{"may serve:", dash(strings.Join(m.Info.KeyServices, ","))},
		{"cpus:", fmt.Sprintf("%d online of %d", m.Info.CPUsOnline, m.Info.CPUsTotal)},
		{"memory:", fmt.Sprintf("%d MiB", m.Info.MemoryBytes>>20)},
		{"capabilities:", dash(strings.Join(m.Info.Capabilities, ","))},
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 1, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

type transitionsCmd struct {
	Since uint64 `help:"Only the transitions after this id." default:"0" placeholder:"ID"`
	Limit int    `help:"At most this many, the newest (0: all)." default:"0"`
}

func transitionRow(t admin.Transition) []string {
	return []string{strconv.FormatUint(t.ID, 10), t.Time.Local().Format("2006-01-02 15:04:05.000"), strconv.Itoa(int(t.Node)),
		dash(t.Incarnation), t.From, t.To, t.Cause}
}

const transitionHeader = "ID\tTIME\tNODE\tINCARNATION\tFROM\tTO\tCAUSE"

func (c *transitionsCmd) Run(g *globals) error {
	if c.Limit < 0 {
		return usagef("--limit %d: want 0 (all) or more", c.Limit)
	}
	var all admin.Transitions
	err := g.first(func(ctx context.Context, cl *admin.Client) error {
		all = admin.Transitions{Since: c.Since}
		since := c.Since
		for {
			var page admin.Transitions
			if err := cl.Get(ctx, fmt.Sprintf("/v1/transitions?since=%d", since), &page); err != nil {
				return err
			}
			all.Schema, all.Last = page.Schema, page.Last
			all.Compacted = all.Compacted || (since == c.Since && page.Compacted)
			all.Transitions = append(all.Transitions, page.Transitions...)
			if c.Limit > 0 && len(all.Transitions) > c.Limit {
				all.Transitions = all.Transitions[len(all.Transitions)-c.Limit:]
			}
			if !page.More || len(page.Transitions) == 0 {
				return nil
			}
			since = page.Transitions[len(page.Transitions)-1].ID
		}
	})
	if err != nil {
		return err
	}
	if all.Transitions == nil {
		all.Transitions = []admin.Transition{}
	}
	if g.JSON {
		return g.printJSON(all)
	}
	if all.Compacted {
		fmt.Fprintf(g.stderr, "cluster: transitions after %d are no longer kept; showing from the oldest kept\n", c.Since)
	}
	rows := make([][]string, len(all.Transitions))
	for i, t := range all.Transitions {
		rows[i] = transitionRow(t)
	}
	return table(g.stdout, transitionHeader, rows)
}

type watchCmd struct {
	Since int64         `help:"Start after this transition id (default: from now on)." default:"-1" placeholder:"ID"`
	Count int           `help:"Stop after this many transitions (0: never)." default:"0"`
	Stall time.Duration `help:"Switch to the next endpoint when one says nothing, not even a heartbeat, this long." default:"20s"`
}

func (c *watchCmd) Run(g *globals) error {
	if c.Count < 0 || c.Stall <= 0 {
		return usagef("--count and --stall must be positive")
	}
	if err := g.resolve(); err != nil {
		return err
	}
	last := uint64(max(c.Since, 0))
	if c.Since < 0 {
		var st admin.Status
		if err := g.first(func(ctx context.Context, cl *admin.Client) error { return cl.Get(ctx, "/v1/status", &st) }); err != nil {
			return err
		}
		last = st.LastTransition
	}
	seen := 0
	pause := 100 * time.Millisecond
	for i := 0; ; i = (i + 1) % len(g.clients) {
		cl := g.clients[i]
		for ev, err := range cl.Watch(g.ctx, last, c.Stall) {
			if err != nil {
				if g.ctx.Err() != nil {
					return g.ctx.Err()
				}
				var re *admin.RemoteError
				if errors.As(err, &re) && re.Code != "busy" {
					return err // compacted, unauthorized: another endpoint says the same
				}
				fmt.Fprintf(g.stderr, "cluster: watch: %v; trying the next endpoint\n", err)
				break
			}
			if ev.Event != "transition" {
				continue
			}
			pause = 100 * time.Millisecond
			t := *ev.Transition
			if t.ID <= last {
				continue // a new endpoint repeating what we have
			}
			if g.JSON {
				if err := json.NewEncoder(g.stdout).Encode(t); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "%s  #%d node %d (inc %s) %s -> %s (%s)\n", t.Time.Local().Format("2006-01-02 15:04:05.000"),
					t.ID, t.Node, dash(t.Incarnation), t.From, t.To, t.Cause)
			}
			last = t.ID
			if seen++; c.Count > 0 && seen >= c.Count {
				return nil
			}
		}
		select {
		case <-g.ctx.Done():
			return g.ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 2*time.Second)
	}
}

type keysvcCmd struct {
	Watch bool `help:"Print the key services again each time one changes (a long poll of /v1/keysvc, docs/ADMIN.md); Ctrl-C to stop. With --json, one object per line."`
	Count int  `help:"With --watch: stop after this many views, the first included (0: never)." default:"0"`
}

func (c *keysvcCmd) Run(g *globals) error {
	if c.Count < 0 || (c.Count > 0 && !c.Watch) {
		return usagef("--count wants --watch and 1 or more")
	}
	if c.Watch {
		return c.watch(g)
	}
	var ks admin.KeyServices
	if err := g.first(func(ctx context.Context, c *admin.Client) error { return c.Get(ctx, "/v1/keysvc", &ks) }); err != nil {
		return err
	}
	if g.JSON {
		if err := g.printJSON(ks); err != nil {
			return err
		}
	} else if err := printKeysvc(g.stdout, ks); err != nil {
		return err
	}
	return g.unhealthy(keysvcHealth(ks))
}

// watch prints the key services, then again each time they change: a
// long poll of the first endpoint that answers, from the seq of its last
// reply (another endpoint's sequence differs: switching costs at most a
// view printed twice, which the comparison drops).
func (c *keysvcCmd) watch(g *globals) error {
	wait := max(g.Timeout/2, time.Millisecond) // under --timeout, the bound of each request
	var after uint64
	var last []admin.KeyService
	for shown := 0; c.Count == 0 || shown < c.Count; {
		var ks admin.KeyServices
		err := g.first(func(ctx context.Context, cl *admin.Client) error {
			var err error
			ks, err = cl.WaitKeyServices(ctx, after, wait)
			return err
		})
		switch {
		case g.ctx.Err() != nil:
			return g.ctx.Err()
		case err != nil:
			return err
		case ks.Seq == 0:
			return errors.New("--watch: the admin endpoint has no long poll of /v1/keysvc (an older cinode): run cluster keysvc without --watch")
		}
		after = ks.Seq
		if shown > 0 && slices.Equal(ks.Services, last) {
			continue // another part of the node's view changed
		}
		shown, last = shown+1, ks.Services
		if g.JSON {
			b, err := json.Marshal(ks)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s\n", b)
			continue
		}
		if shown > 1 {
			fmt.Fprintln(g.stdout)
		}
		if err := printKeysvc(g.stdout, ks); err != nil {
			return err
		}
	}
	return nil
}

// printKeysvc writes the key services as a table.
func printKeysvc(w io.Writer, ks admin.KeyServices) error {
	if !ks.Available {
		_, err := fmt.Fprintf(w, "no key services: %s\n", ks.Reason)
		return err
	}
	rows := make([][]string, len(ks.Services))
	for i, k := range ks.Services {
		owner := "-"
		if k.Owner != 0 {
			owner = strconv.Itoa(int(k.Owner))
		}
		rows[i] = []string{k.Name, yesNo(k.Critical), owner, strconv.FormatUint(k.Epoch, 10), yesNo(k.Ready)}
	}
	return table(w, "KEYSVC\tCRITICAL\tOWNER\tEPOCH\tREADY", rows)
}

type moveCmd struct {
	Keysvc string `arg:"" help:"Key service name."`
	Node   uint32 `arg:"" help:"The node to move it to."`
}

func (c *moveCmd) Run(g *globals) error {
	var a admin.Accepted
	if err := g.first(func(ctx context.Context, cl *admin.Client) error {
		return cl.Post(ctx, "/v1/move", admin.MoveRequest{KeyService: c.Keysvc, Node: c.Node}, &a)
	}); err != nil {
		return err
	}
	return g.accepted(a)
}

func (g *globals) accepted(a admin.Accepted) error {
	if g.JSON {
		return g.printJSON(a)
	}
	fmt.Fprintf(g.stdout, "node %d: %s\n", a.Node, a.Detail)
	return nil
}

type shutdownCmd struct {
	N      uint32 `arg:"" help:"The node to shut down."`
	Reason string `help:"Logged by the node." default:"cluster shutdown"`
}

func (c *shutdownCmd) Run(g *globals) error {
	if c.N == 0 {
		return usagef("node numbers start at 1")
	}
	cls, err := g.forNode(clms.NodeNum(c.N))
	if err != nil {
		return err
	}
	var errs []string
	for _, cl := range cls {
		ctx, cancel := context.WithTimeout(g.ctx, g.Timeout)
		var a admin.Accepted
		err := cl.Post(ctx, "/v1/shutdown", admin.ShutdownRequest{Node: c.N, Reason: c.Reason}, &a)
		cancel()
		var re *admin.RemoteError
		switch {
		case err == nil:
			return g.accepted(a)
		case errors.As(err, &re) && re.Code == "wrong_node":
			continue
		case errors.As(err, &re):
			return err
		}
		errs = append(errs, err.Error())
	}
	if len(errs) == 0 {
		return fmt.Errorf("none of the endpoints is node %d's: give it with --endpoint or --config", c.N)
	}
	return fmt.Errorf("node %d's admin endpoint did not answer:\n  %s", c.N, strings.Join(errs, "\n  "))
}

type signalCmd struct {
	Node    uint32 `arg:"" help:"The node to deliver the signal on."`
	Signal  string `arg:"" help:"For a process: TERM, SIGHUP, 9...; for a handler: any word it understands."`
	Handler string `help:"A named handler registered on that node." xor:"target" required:""`
	PID     int    `name:"pid" help:"A process on that node (its signal forwarding policy must allow it)." xor:"target" required:""`
	Arg     string `help:"An argument for the handler."`
}

func (c *signalCmd) Run(g *globals) error {
	if c.Node == 0 {
		return usagef("node numbers start at 1")
	}
	if c.PID != 0 {
		if _, err := admin.ParseSignal(c.Signal); err != nil {
			return usageError{err}
		}
	}
	req := admin.SignalRequest{Node: c.Node, Handler: c.Handler, PID: c.PID, Signal: c.Signal}
	if c.Arg != "" {
		req.Arg = []byte(c.Arg)
	}
	var a admin.Accepted
	if err := g.first(func(ctx context.Context, cl *admin.Client) error { return cl.Post(ctx, "/v1/signal", req, &a) }); err != nil {
		return err
	}
	return g.accepted(a)
}
