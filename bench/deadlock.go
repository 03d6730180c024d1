package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/clusterinfra/ci/engine"
)

// The nested-RPC deadlock CI's priority escalation exists to prevent, as
// a measurement (engine's TestEscalationPreventsDeadlock proves the same
// thing as a test). Node 2 has filled its credit window towards node 1's
// service with one-way messages that node 1's only handle cannot serve
// yet. Node 1 then calls node 2, whose handler calls back into node 1's
// same service. Escalated, the nested call goes out at priority 1, skips
// the full channel and completes; without escalation it waits for credit
// that only the outer call's completion would free, and the outer call is
// stuck until its deadline.

// DeadlockConfig says how the deadlock scenario runs.
type DeadlockConfig struct {
	Trials int // per case (escalation on, off); each starts a fresh node pair
	// Deadline bounds the outer call: without escalation it is the time
	// the call is stuck for.
	Deadline time.Duration
	// Window is the throttled channel's credit window on node 1, bytes.
	Window int
}

// DefaultDeadlockConfig is the scenario as cibench priority runs it.
func DefaultDeadlockConfig() DeadlockConfig {
	return DeadlockConfig{
		Trials:   5,           // escalation's time is a few ms; 5 show its spread
		Deadline: time.Second, // far above any completion on loopback, so "stuck" is unambiguous
		Window:   4096,        // a few 1000-byte messages fill it
	}
}

// Deadlock outcomes.
const (
	OutcomeCompleted = "completed"
	OutcomeStuck     = "stuck-until-deadline"
)

// DeadlockResult is both cases of the scenario.
type DeadlockResult struct {
	Trials      int           `json:"trials"`
	Deadline    time.Duration `json:"deadline_ns"`
	Window      int           `json:"window_bytes"`
	Escalated   DeadlockCase  `json:"escalated"`
	Unescalated DeadlockCase  `json:"unescalated"`
}

// DeadlockCase is one case over its trials.
type DeadlockCase struct {
	Escalation bool `json:"escalation"`
	Completed  int  `json:"completed"` // trials whose outer call returned its reply
	Stuck      int  `json:"stuck"`     // trials that ended at the deadline
	// P50 and Max are the outer call's time to return, whatever the outcome.
	P50   time.Duration   `json:"p50_ns"`
	Max   time.Duration   `json:"max_ns"`
	Times []time.Duration `json:"times_ns"`
	// NestedPriority is the priority node 1 served the nested call at, in
	// the last trial that served it.
	NestedPriority uint8 `json:"nested_priority"`
}

// Outcome is the case's verdict: every trial completed, every trial was
// stuck, or "mixed".
func (c DeadlockCase) Outcome() string {
	switch {
	case c.Completed == len(c.Times):
		return OutcomeCompleted
	case c.Stuck == len(c.Times):
		return OutcomeStuck
	}
	return "mixed"
}

// ErrDeadlockSetup means the scenario could not build its deadlock (the
// window never filled, or an unexpected error): a bug, not a measurement.
var ErrDeadlockSetup = errors.New("bench: deadlock scenario")

// RunDeadlock runs cfg.Trials trials with escalation and as many without.
func RunDeadlock(ctx context.Context, cfg DeadlockConfig) (*DeadlockResult, error) {
	if cfg.Trials < 1 || cfg.Deadline <= 0 || cfg.Window < 1 {
		return nil, fmt.Errorf("%w: trials %d, deadline %v, window %d: all must be positive",
			ErrDeadlockSetup, cfg.Trials, cfg.Deadline, cfg.Window)
	}
	res := &DeadlockResult{Trials: cfg.Trials, Deadline: cfg.Deadline, Window: cfg.Window}
	for _, c := range []*DeadlockCase{&res.Escalated, &res.Unescalated} {
		c.Escalation = c == &res.Escalated
		for i := range cfg.Trials {
			t, err := deadlockTrial(ctx, cfg, c.Escalation)
			if err != nil {
				return nil, fmt.Errorf("escalation %v, trial %d: %w", c.Escalation, i+1, err)
			}
			c.Times = append(c.Times, t.elapsed)
			if t.completed {
				c.Completed++
			} else {
				c.Stuck++
			}
			if t.served {
				c.NestedPriority = t.prio
			}
		}
		sorted := slices.Sorted(slices.Values(c.Times))
		c.P50, c.Max = nearestRank(sorted, 0.5), sorted[len(sorted)-1]
	}
	return res, nil
}

type deadlockOutcome struct {
	elapsed   time.Duration
	completed bool
	served    bool  // node 1 served the nested call during the outer call
	prio      uint8 // at this priority
}

var deadlockSvc = engine.ServiceOn(engine.ChanFirstService, 1)

// deadlockSetupTimeout bounds each set-up step (dials included) on a
// loaded machine; only a bug makes one take this long.
const deadlockSetupTimeout = 10 * time.Second

func deadlockTrial(ctx context.Context, cfg DeadlockConfig, escalate bool) (out deadlockOutcome, err error) {
	gate := make(chan struct{})
	var openGate sync.Once
	nested := make(chan error, 1)
	seen := make(chan uint8, 1)
	var a, b *engine.Node
	pair := Pair{Cluster: "bench-deadlock"}
	procs := func(self **engine.Node) []engine.Handler {
		return []engine.Handler{
			0: func(ctx context.Context, _ *engine.Request, _ *engine.Response) error { // hold until the gate opens
				select {
				case <-gate:
				case <-ctx.Done():
				}
				return nil
			},
			1: func(ctx context.Context, req *engine.Request, _ *engine.Response) error { // call back
				_, err := (*self).Call(ctx, req.From, engine.Method{Service: deadlockSvc, Proc: 2}, []byte("nested"), nil)
				select {
				case nested <- err:
				default:
				}
				return err
			},
			2: func(ctx context.Context, req *engine.Request, resp *engine.Response) error { // echo, noting the priority
				select {
				case seen <- engine.PriorityFrom(ctx):
				default:
				}
				resp.Body = append(resp.Body, req.Args...)
				return nil
			},
		}
	}
	start := func(num engine.NodeNum, self **engine.Node, handles int) error {
		c := pair.config(num, "127.0.0.1:0", "")
		c.ChannelWindows = map[engine.Channel]int{engine.ChanFirstService: cfg.Window}
		c.DisableEscalation = !escalate
		n, err := engine.New(c)
		if err != nil {
			return err
		}
		*self = n
		if err := n.Register(engine.Service{ID: deadlockSvc, Name: "deadlock", Procs: procs(self), MaxHandles: handles}); err != nil {
			return err
		}
		return n.Start()
	}
	defer func() {
		openGate.Do(func() { close(gate) })
		for _, n := range []*engine.Node{a, b} {
			if n != nil {
				err = errors.Join(err, n.Close())
			}
		}
	}()
	if err := start(1, &a, 1); err != nil { // one handle: the first hold takes it
		return out, err
	}
	if err := start(2, &b, 4); err != nil {
		return out, err
	}
	if err := errors.Join(a.SetPeer(2, b.Addr()), b.SetPeer(1, a.Addr())); err != nil {
		return out, err
	}
	// Connect both ways, on the throttled channel and on priority 1 (the
	// escalated call's), before anything is timed or has a short deadline:
	// the scenario measures escalation, not dialling.
	sctx, cancel := context.WithTimeout(ctx, deadlockSetupTimeout)
	defer cancel()
	echo := engine.Method{Service: deadlockSvc, Proc: 2}
	for _, wctx := range []context.Context{sctx, engine.WithPriority(sctx, 1)} {
		if _, err := a.Call(wctx, 2, echo, []byte("warm"), nil); err != nil {
			return out, fmt.Errorf("%w: warm-up 1->2: %w", ErrDeadlockSetup, err)
		}
		if _, err := b.Call(wctx, 1, echo, []byte("warm"), nil); err != nil {
			return out, fmt.Errorf("%w: warm-up 2->1: %w", ErrDeadlockSetup, err)
		}
	}
	<-seen // the warm-ups' priorities, not the nested call's

	// Fill node 2's window towards node 1: the first hold takes node 1's
	// only handle, the rest wait with their credit unreturned. A send that
	// waits 100 ms for credit means the window is full.
	hold := engine.Method{Service: deadlockSvc, Proc: 0}
	msg := make([]byte, 1000)
	for sent := 0; ; sent++ {
		if sent > 4*cfg.Window/len(msg)+16 {
			return out, fmt.Errorf("%w: the window never filled after %d messages", ErrDeadlockSetup, sent)
		}
		fctx, fcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := b.Send(fctx, 1, hold, msg)
		fcancel()
		if errors.Is(err, engine.ErrThrottled) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("%w: filling the window: %w", ErrDeadlockSetup, err)
		}
	}

	cctx, ccancel := context.WithTimeout(ctx, cfg.Deadline)
	t0 := time.Now()
	_, err = a.Call(cctx, 2, engine.Method{Service: deadlockSvc, Proc: 1}, nil, nil)
	out.elapsed = time.Since(t0)
	ccancel()
	select {
	case out.prio = <-seen:
		out.served = true
	default:
	}
	switch {
	case err == nil:
		out.completed = true
	case errors.Is(err, engine.ErrTimedOut):
	default:
		return out, fmt.Errorf("%w: the outer call: %w", ErrDeadlockSetup, err)
	}
	// Freeing node 1's handle returns the credit and unsticks a waiting
	// nested call; wait for it so that nothing outlives the nodes.
	openGate.Do(func() { close(gate) })
	if !out.completed {
		select {
		case <-nested:
		case <-time.After(deadlockSetupTimeout):
			return out, fmt.Errorf("%w: the nested call stayed stuck after the credit came back", ErrDeadlockSetup)
		}
	}
	return out, nil
}

// WriteText renders both cases as a table.
func (d *DeadlockResult) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "nested-RPC deadlock: %d trials per case, outer deadline %s, window %s\n",
		d.Trials, us(d.Deadline), SizeString(d.Window))
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "escalation\toutcome\tcompleted\tstuck\tp50\tmax\tnested priority\t\n")
	for _, c := range []DeadlockCase{d.Escalated, d.Unescalated} {
		prio := "-" // never served while the outer call waited
		if c.Completed > 0 {
			prio = strconv.Itoa(int(c.NestedPriority))
		}
		fmt.Fprintf(tw, "%v\t%s\t%d\t%d\t%s\t%s\t%s\t\n", c.Escalation, c.Outcome(), c.Completed, c.Stuck, us(c.P50), us(c.Max), prio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}
