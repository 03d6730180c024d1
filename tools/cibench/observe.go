package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/clusterinfra/ci/services/admin"
)

// How a fault's aftermath is observed (faultOutcome.observed,
// bench.FailoverResult.Observed).
const (
	// observedPush: the survivors' /v1/watch streams and the long polls
	// of /v1/status and /v1/keysvc: each change arrives as it is made.
	observedPush = "push"
	// observedPoll: every survivor polled every pollEvery, for nodes
	// without the long poll (an older cinode, target mode).
	observedPoll = "poll"
)

// longPollWait is how long one long poll waits for a change before it asks
// again: short beside faultTimeout, long beside any phase.
const longPollWait = 5 * time.Second

// viewEvent is a survivor's status or keyseq as a long poll returned it,
// and when; or the error that ended that survivor's long polls.
type viewEvent struct {
	node int
	at   time.Time
	st   *admin.Status
	ks   *admin.KeyService
	err  error
}

// followViews long-polls /v1/status (and /v1/keysvc with keyseq) of every
// node of ns, each with the seq of its last reply, and sends each reply with
// the time it arrived. It returns once every node answered the first time
// (their views before the fault), or the reason it cannot push: a node
// without the long poll (errNoLongPoll). stop cancels the polls and waits
// for their goroutines.
func (v *adminView) followViews(ctx context.Context, ns []int) (_ <-chan viewEvent, stop func(), _ error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	polls := len(ns)
	if v.keyseq {
		polls *= 2
	}
	out := make(chan viewEvent, 4*polls)
	first := make(chan error, polls)
	send := func(e viewEvent) bool { return sendUnlessDone(ctx, out, e) }
	follow := func(n int, get func(after uint64) (viewEvent, uint64, error)) {
		defer wg.Done()
		var after uint64
		for i := 0; ; i++ {
			e, seq, err := get(after)
			var re *admin.RemoteError
			// An older cinode ignores after and wait and answers without
			// seq; a newer endpoint over a source without a sequence
			// refuses wait: 501.
			if (err == nil && seq == 0) || (errors.As(err, &re) && re.Status == http.StatusNotImplemented) {
				err = fmt.Errorf("%w: node %d (%s)", errNoLongPoll, n, v.cl[n].Addr)
			}
			if i == 0 {
				first <- err
			}
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				send(viewEvent{node: n, err: err})
				return
			case seq != after && !send(e):
				return
			}
			after = seq
		}
	}
	for _, n := range ns {
		wg.Add(1)
		go follow(n, func(after uint64) (viewEvent, uint64, error) {
			st, err := v.cl[n].WaitStatus(ctx, after, longPollWait)
			return viewEvent{node: n, at: time.Now(), st: &st}, st.Seq, err
		})
		if v.keyseq {
			wg.Add(1)
			go follow(n, func(after uint64) (viewEvent, uint64, error) {
				kss, err := v.cl[n].WaitKeyServices(ctx, after, longPollWait)
				at := time.Now()
				if err != nil {
					return viewEvent{}, 0, err
				}
				ks, err := keyseqOf(kss)
				return viewEvent{node: n, at: at, ks: &ks}, kss.Seq, err
			})
		}
	}
	for range polls {
		select {
		case err := <-first:
			if err != nil {
				stop()
				return nil, nil, err
			}
		case <-ctx.Done():
			stop()
			return nil, nil, fmt.Errorf("waiting for the survivors' views: %w", context.Cause(ctx))
		}
	}
	return out, stop, nil
}

// errNoLongPoll: a node's /v1/status has no seq: an older cinode.
var errNoLongPoll = errors.New("no long poll on the admin endpoint (an older cinode)")

// sendUnlessDone sends v on ch unless ctx ends first; false: it ended.
func sendUnlessDone[T any](ctx context.Context, ch chan<- T, v T) bool {
	select {
	case ch <- v:
		return true
	case <-ctx.Done():
		return false
	}
}
