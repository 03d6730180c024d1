package clusterapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
)

// Client calls the cluster API of other nodes and speaks clms's types. It
// is safe for concurrent use.
type Client struct {
	api *APIClient
}

// NewClient returns a client that calls from node n.
func NewClient(n *engine.Node) *Client { return &Client{api: NewAPIClient(n)} }

// API is the generated client underneath, for callers that want the wire
// types.
func (c *Client) API() *APIClient { return c.api }

// ClusterName is CI's cluster_name, as node to knows it.
func (c *Client) ClusterName(ctx context.Context, to clms.NodeNum) (string, error) {
	return c.api.ClusterName(ctx, to)
}

// NodeNum is CI's clusternode_num: node to's own number.
func (c *Client) NodeNum(ctx context.Context, to clms.NodeNum) (clms.NodeNum, error) {
	n, err := c.api.NodeNum(ctx, to)
	return clms.NodeNum(n), err
}

// MaxNodes is CI's cluster_maxnodes.
func (c *Client) MaxNodes(ctx context.Context, to clms.NodeNum) (clms.NodeNum, error) {
	n, err := c.api.MaxNodes(ctx, to)
	return clms.NodeNum(n), err
}

// Membership is CI's cluster_membership: every node of the table with its
// state, and the id of the last transition that view includes.
func (c *Client) Membership(ctx context.Context, to clms.NodeNum) ([]clms.Member, clms.TransitionID, error) {
	ws, last, err := c.api.Membership(ctx, to)
	if err != nil {
		return nil, 0, err
	}
	out := make([]clms.Member, len(ws))
	for i, w := range ws {
		out[i] = w.CLMS()
	}
	return out, clms.TransitionID(last), nil
}

// NextTransition is CI's cluster_transition: the first transition after
// after in which a node became UP or stopped being UP, and whether there is
// one yet.
func (c *Client) NextTransition(ctx context.Context, to clms.NodeNum, after clms.TransitionID) (clms.Transition, bool, error) {
	w, ok, err := c.api.NextTransition(ctx, to, uint64(after))
	return w.CLMS(), ok, err
}

// DetailedTransition is CI's cluster_detailedtransition: the transition
// which selects relative to id (ignored for WhichFirst and WhichLast).
func (c *Client) DetailedTransition(ctx context.Context, to clms.NodeNum, which Which, id clms.TransitionID) (clms.Transition, error) {
	w, err := c.api.DetailedTransition(ctx, to, which, uint64(id))
	return w.CLMS(), err
}

// NodeInfo is CI's clusternode_info: node n's row of the membership.
func (c *Client) NodeInfo(ctx context.Context, to, n clms.NodeNum) (clms.Member, error) {
	w, err := c.api.NodeInfo(ctx, to, uint32(n))
	return w.CLMS(), err
}

// SetNodeInfo is CI's clusternode_setinfo: replace node n's info.
func (c *Client) SetNodeInfo(ctx context.Context, to, n clms.NodeNum, info clms.NodeInfo) error {
	return c.api.SetNodeInfo(ctx, to, uint32(n), WireNodeInfoOf(info))
}

// NodeAvail is CI's clusternode_avail: whether node n is UP.
func (c *Client) NodeAvail(ctx context.Context, to, n clms.NodeNum) (bool, error) {
	return c.api.NodeAvail(ctx, to, uint32(n))
}

// WaitTransitions returns the transitions after after, at most limit, waiting
// up to wait on node to for the first if there is none yet. ctx must allow
// more than wait. It is sent at priority 0 whatever ctx says (inside a
// handler too): a server refuses to wait on a priority request, whose
// handles the whole node shares.
func (c *Client) WaitTransitions(ctx context.Context, to clms.NodeNum, after clms.TransitionID, limit int, wait time.Duration) ([]clms.Transition, error) {
	if limit <= 0 || limit > 1<<31 {
		return nil, fmt.Errorf("%w: a batch of %d", ErrInvalid, limit)
	}
	ms := max(0, min(wait.Milliseconds(), 1<<31))
	ws, err := c.api.WaitTransitions(engine.WithPriority(ctx, 0), to, uint64(after), uint32(limit), uint32(ms))
	if err != nil {
		return nil, err
	}
	out := make([]clms.Transition, len(ws))
	for i, w := range ws {
		out[i] = w.CLMS()
	}
	return out, nil
}

// ErrGap is what Watch yields when a server skipped transitions: a broken
// server, never a normal outcome.
var ErrGap = errors.New("clusterapi: transitions skipped by the server")

// WatchOptions tunes Watch. Zero fields take the defaults.
type WatchOptions struct {
	Wait     time.Duration // server-side wait per poll; the server caps it (Config.MaxWait)
	Slack    time.Duration // added to Wait for the poll's own deadline: a first dial and a loaded server
	Batch    int           // transitions per poll
	RetryMin time.Duration // first pause after a failed poll; doubles up to RetryMax
	RetryMax time.Duration
	// OnRetry, if set, hears every failure Watch retries (for a log line).
	OnRetry func(err error, pause time.Duration)
}

// DefaultWatchOptions returns the defaults, each with its reason.
func DefaultWatchOptions() WatchOptions {
	return WatchOptions{
		Wait:     20 * time.Second,      // an idle watch costs three RPCs a minute
		Slack:    10 * time.Second,      // covers a dial (2 s) and a handshake (5 s) to a restarted server
		Batch:    256,                   // a burst of transitions in a few replies
		RetryMin: 50 * time.Millisecond, // a restarting server is back in a moment
		RetryMax: 2 * time.Second,       // a server down for long is polled gently
	}
}

func (o *WatchOptions) fill() {
	d := DefaultWatchOptions()
	if o.Wait <= 0 {
		o.Wait = d.Wait
	}
	if o.Slack <= 0 {
		o.Slack = d.Slack
	}
	if o.Batch <= 0 {
		o.Batch = d.Batch
	}
	if o.RetryMin <= 0 {
		o.RetryMin = d.RetryMin
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(d.RetryMax, o.RetryMin)
	}
}

// Watch follows the transitions of the cluster as node to commits them,
// starting after from (0: from the first), CI's SIGCLUSTER as a Go
// iterator:
//
//	for t, err := range client.Watch(ctx, 2, last, nil) {
//		if err != nil {
//			return err // ctx ended, or transitions were lost: see below
//		}
//		fmt.Println(t)
//	}
//
// It yields every transition exactly once, in id order, with no gap: it
// long-polls WaitTransitions from the last id it yielded, drops any
// transition it already yielded, and stops with ErrGap if a server skips
// one. A failed poll (the server is down, restarting, busy, slow) is
// retried with a backoff from the last id yielded, so a server that goes
// away and comes back costs nothing but time. Watch ends with an error
// when ctx ends (ctx.Err()), when the transitions wanted are no longer kept
// (ErrCompacted: start again from Membership), or on an error a retry
// cannot cure (the local node closed, incompatible stubs). Breaking out of
// the loop ends it too.
func (c *Client) Watch(ctx context.Context, to clms.NodeNum, from clms.TransitionID, opts *WatchOptions) iter.Seq2[clms.Transition, error] {
	var o WatchOptions
	if opts != nil {
		o = *opts
	}
	o.fill()
	return func(yield func(clms.Transition, error) bool) {
		last := from
		pause := o.RetryMin
		for {
			if err := ctx.Err(); err != nil {
				yield(clms.Transition{}, err)
				return
			}
			wait, pctx, cancel := o.pollWindow(ctx)
			ts, err := c.WaitTransitions(pctx, to, last, o.Batch, wait)
			cancel()
			if err != nil {
				if !o.backoff(ctx, err, &pause) {
					yield(clms.Transition{}, cmp.Or(ctx.Err(), err))
					return
				}
				continue
			}
			pause = o.RetryMin
			for _, t := range ts {
				if t.ID <= last {
					continue // already yielded (a server that answered twice)
				}
				if t.ID != last+1 {
					yield(clms.Transition{}, fmt.Errorf("%w: %d after %d", ErrGap, t.ID, last))
					return
				}
				if !yield(t, nil) {
					return
				}
				last = t.ID
			}
		}
	}
}

// KeyService is one key service as the cluster API reports it: its
// committed owner (0: none), the owner's incarnation, the epoch (the
// fencing token) and phase, and whether the cluster may use it.
type KeyService struct {
	Name     string
	Owner    clms.NodeNum
	OwnerInc uint64
	Epoch    uint64
	Phase    clms.KeyPhase
	Ready    bool
}

// KeyServices is a node's view of every key service, by name, and the
// sequence number of the last change in it (that node's own count).
type KeyServices struct {
	Seq      uint64
	Services []KeyService
}

// Lookup returns the service called name, or false.
func (v KeyServices) Lookup(name string) (KeyService, bool) {
	for _, k := range v.Services {
		if k.Name == name {
			return k, true
		}
	}
	return KeyService{}, false
}

func keyServicesOf(ws []WireKeyService, seq uint64) KeyServices {
	v := KeyServices{Seq: seq, Services: make([]KeyService, len(ws))}
	for i, w := range ws {
		v.Services[i] = KeyService{Name: w.Name, Owner: clms.NodeNum(w.Owner), OwnerInc: w.OwnerInc,
			Epoch: w.Epoch, Phase: clms.KeyPhase(w.Phase), Ready: w.Ready}
	}
	return v
}

// KeyServices returns node to's view of the key services: who owns each
// and in which epoch.
func (c *Client) KeyServices(ctx context.Context, to clms.NodeNum) (KeyServices, error) {
	ws, seq, err := c.api.KeyServices(ctx, to)
	if err != nil {
		return KeyServices{}, err
	}
	return keyServicesOf(ws, seq), nil
}

// WaitKeyServices returns node to's view of the key services once its
// sequence is above after, waiting up to wait for that; out of time it
// returns the view as it is. Sent at priority 0, as WaitTransitions.
func (c *Client) WaitKeyServices(ctx context.Context, to clms.NodeNum, after uint64, wait time.Duration) (KeyServices, error) {
	ms := max(0, min(wait.Milliseconds(), 1<<31))
	ws, seq, err := c.api.WaitKeyServices(engine.WithPriority(ctx, 0), to, after, uint32(ms))
	if err != nil {
		return KeyServices{}, err
	}
	return keyServicesOf(ws, seq), nil
}

// WatchKeyServices follows node to's view of the key services: it yields
// each new view once, the first with a sequence above fromSeq (0: the
// first change), then every later one, by long-polling WaitKeyServices.
// Views between two polls are folded into the newer: a watcher sees the
// latest state, not every record. Failures, retries and the end are as
// for Watch (only WatchOptions.Batch does not apply). A view whose sequence
// is below the last yielded (the server restarted and counts again) is
// yielded too, and the watch follows it from there.
func (c *Client) WatchKeyServices(ctx context.Context, to clms.NodeNum, fromSeq uint64, opts *WatchOptions) iter.Seq2[KeyServices, error] {
	var o WatchOptions
	if opts != nil {
		o = *opts
	}
	o.fill()
	return func(yield func(KeyServices, error) bool) {
		last := fromSeq
		pause := o.RetryMin
		for {
			if err := ctx.Err(); err != nil {
				yield(KeyServices{}, err)
				return
			}
			wait, pctx, cancel := o.pollWindow(ctx)
			v, err := c.WaitKeyServices(pctx, to, last, wait)
			cancel()
			if err != nil {
				if !o.backoff(ctx, err, &pause) {
					yield(KeyServices{}, cmp.Or(ctx.Err(), err))
					return
				}
				continue
			}
			pause = o.RetryMin
			if v.Seq == last {
				continue // out of time with no change
			}
			if !yield(v, nil) {
				return
			}
			last = v.Seq
		}
	}
}

// pollWindow returns the server-side wait of one poll and the poll's
// context: when ctx ends before a whole poll, the server waits until then
// rather than the watch polling again and again in the last moments.
func (o *WatchOptions) pollWindow(ctx context.Context) (time.Duration, context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < o.Wait+o.Slack {
		return max(0, time.Until(dl)), ctx, func() {}
	}
	pctx, cancel := context.WithTimeout(ctx, o.Wait+o.Slack)
	return o.Wait, pctx, cancel
}

// backoff handles a failed poll: false if the watch must end (ctx ended,
// or err is not retryable), else it pauses (doubling *pause up to
// RetryMax) and returns true once the poll may be tried again.
func (o *WatchOptions) backoff(ctx context.Context, err error, pause *time.Duration) bool {
	if ctx.Err() != nil || !retryable(err) {
		return false
	}
	if o.OnRetry != nil {
		o.OnRetry(err, *pause)
	}
	if !sleep(ctx, *pause) {
		return false
	}
	*pause = min(2**pause, o.RetryMax)
	return true
}

// retryable reports whether a failed poll may succeed if tried again.
func retryable(err error) bool {
	for _, fatal := range []error{ErrCompacted, ErrInvalid, ErrGap, engine.ErrClosed, engine.ErrProgVersMismatch,
		engine.ErrProcUnavail, engine.ErrCantDecodeArgs, engine.ErrCantDecodeRes, engine.ErrUnknownHost, engine.ErrAuth} {
		if errors.Is(err, fatal) {
			return false
		}
	}
	return true
}

// sleep waits d, or less if ctx ends: false then.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
