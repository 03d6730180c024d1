package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// callSentinels are the sentinels a call's error may answer errors.Is with.
var callSentinels = func() []error {
	var s []error
	for st := StatusProgUnavail; st < StatusUnknown; st++ {
		s = append(s, st.Err())
	}
	return s
}()

// oneSentinel fails unless err answers errors.Is with want and no other
// sentinel, and Code(err) is code.
func oneSentinel(t *testing.T, err error, want error, code Status) {
	t.Helper()
	for _, s := range callSentinels {
		if errors.Is(err, s) != (s == want) {
			t.Errorf("%v: errors.Is(%v) = %v", err, s, errors.Is(err, s))
		}
	}
	if got := Code(err); got != code {
		t.Errorf("Code(%v) = %v, want %v", err, got, code)
	}
}

// TestStatusTable: every status maps to its own sentinel and back, whether
// the error is the sentinel wrapped locally or a RemoteError carrying it.
func TestStatusTable(t *testing.T) {
	names := map[string]bool{}
	for st := StatusProgUnavail; st < StatusUnknown; st++ {
		t.Run(st.String(), func(t *testing.T) {
			if names[st.String()] {
				t.Fatalf("name %q used twice", st)
			}
			names[st.String()] = true
			oneSentinel(t, fmt.Errorf("context: %w", st.Err()), st.Err(), st)
			if st < statusWireLimit {
				oneSentinel(t, &RemoteError{Code: st, Message: "m"}, st.Err(), st)
			}
		})
	}
	if Code(nil) != StatusOK || Code(errors.New("x")) != StatusUnknown || Code(context.Canceled) != StatusUnknown {
		t.Fatal("nil or foreign errors")
	}
	// A reply may not carry a local status: a peer sending one is a fault.
	oneSentinel(t, remoteStatus(StatusTimedOut, nil), ErrSystem, StatusSystemError)
	oneSentinel(t, remoteStatus(999, nil), ErrSystem, StatusSystemError)
}

// TestCallErrorsOneSentinel makes each failure for real and checks the
// error answers exactly one sentinel, the right Code, and the right
// metrics label.
func TestCallErrorsOneSentinel(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	nested := ServiceOn(ChanFirstService, 2)
	release := make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, Version: 3, MaxHandles: 4, Procs: []Handler{
		echo,
		nil,
		func(context.Context, *Request, *Response) error { return errors.New("disk on fire") },
		func(ctx context.Context, _ *Request, _ *Response) error {
			// Returns what a nested call to node 3 returned (ErrProgUnavail).
			_, err := nodes[1].Call(ctx, 3, Method{Service: nested}, nil, nil)
			return err
		},
		func(context.Context, *Request, *Response) error { <-release; return nil },
	}})
	ctx := ctxFor(t, 10*time.Second)
	call := func(m Method) error {
		_, err := nodes[0].Call(ctx, 2, m, nil, nil)
		return err
	}
	oneSentinel(t, call(Method{Service: echoSvc, Version: 2}), ErrProgVersMismatch, StatusProgVersMismatch)
	oneSentinel(t, call(Method{Service: ServiceOn(ChanFirstService, 9)}), ErrProgUnavail, StatusProgUnavail)
	oneSentinel(t, call(Method{Service: echoSvc, Proc: 1}), ErrProcUnavail, StatusProcUnavail)
	oneSentinel(t, call(Method{Service: echoSvc, Proc: 2}), ErrFailed, StatusFailed)

	// The nested call's ErrProgUnavail is this handler's failure, not a
	// missing service on node 2; the nested text is kept.
	err := call(Method{Service: echoSvc, Proc: 3})
	oneSentinel(t, err, ErrFailed, StatusFailed)
	if !strings.Contains(err.Error(), ErrProgUnavail.Error()) {
		t.Errorf("nested error's text lost: %v", err)
	}

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = nodes[0].Call(short, 2, Method{Service: echoSvc, Proc: 4}, nil, nil)
	cancel()
	oneSentinel(t, err, ErrTimedOut, StatusTimedOut)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ctx's own error hidden: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = nodes[0].Call(cctx, 2, Method{Service: echoSvc}, nil, nil)
	oneSentinel(t, err, ErrIntr, StatusIntr)

	close(release)

	_, err = nodes[0].Call(ctx, 9, Method{Service: echoSvc}, nil, nil)
	oneSentinel(t, err, ErrUnknownHost, StatusUnknownHost)
	_, err = nodes[0].Call(ctx, 2, Method{Service: echoSvc}, make([]byte, nodes[0].cfg.MaxPayload+1), nil)
	oneSentinel(t, err, ErrCantEncodeArgs, StatusCantEncodeArgs)
}

// TestRemoteBusyIsNotTooManyCalls: a peer that takes one request in flight
// from us refuses the second busy, which is not this node's full handle
// table, and counts under its own code.
func TestRemoteBusyIsNotTooManyCalls(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.MaxInflightPerPeer = 1 })
	started, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 2, Procs: []Handler{func(context.Context, *Request, *Response) error {
		started <- struct{}{}
		<-release
		return nil
	}}})
	f := nodes[0].Go(context.Background(), 2, Method{Service: echoSvc}, nil)
	<-started
	_, err := nodes[0].Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil, nil)
	oneSentinel(t, err, ErrBusy, StatusBusy)
	close(release)
	if _, err := f.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := nodes[0].m.client.get(&Method{Service: echoSvc}).errs.c[StatusBusy].Load(); got == nil || got.Get() != 1 {
		t.Errorf("busy not counted under its own code")
	}
}

// TestThrottledIsNotTimedOut: a send that ran out of credit is throttled,
// and only that.
func TestThrottledIsNotTimedOut(t *testing.T) {
	nodes := startCluster(t, 2, func(c *Config) { c.CreditWindow = 4096; c.MaxCreditWindow = 4096 })
	release := make(chan struct{})
	defer close(release)
	mustRegister(t, nodes[1], Service{ID: echoSvc, MaxHandles: 1, Procs: []Handler{func(context.Context, *Request, *Response) error {
		<-release
		return nil
	}}})
	ctx := ctxFor(t, 10*time.Second)
	// The first send dials and handshakes: under a short deadline on a
	// loaded machine that alone can time out, which is a timeout, not
	// what this test is about. It spends half the window.
	if err := nodes[0].Send(ctx, 2, Method{Service: echoSvc}, make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err = nodes[0].Send(short, 2, Method{Service: echoSvc}, make([]byte, 2048))
		cancel()
	}
	oneSentinel(t, err, ErrThrottled, StatusThrottled)
}

// TestRemoteErrorSaysStatusOnce: a handler that wraps the sentinel it
// means (as Handler asks for ErrCantDecodeArgs, and icsgen's stubs do)
// sends the sentinel's text along; the caller's error says it once.
func TestRemoteErrorSaysStatusOnce(t *testing.T) {
	for _, tc := range []struct {
		code     Status
		msg, err string
	}{
		{StatusCantDecodeArgs, "arg 0 is nonsense: " + ErrCantDecodeArgs.Error(), "ics: server cannot decode arguments: arg 0 is nonsense"},
		{StatusCantDecodeArgs, ErrCantDecodeArgs.Error() + ": store.Get: stub: input truncated", "ics: server cannot decode arguments: store.Get: stub: input truncated"},
		{StatusCantDecodeArgs, ErrCantDecodeArgs.Error(), "ics: server cannot decode arguments"},
		{StatusCantDecodeArgs, "", "ics: server cannot decode arguments"},
		{StatusFailed, "disk on fire", "ics: remote procedure failed: disk on fire"},
		{StatusAuthError, "not you: " + ErrAuth.Error() + ": really", "ics: authentication error: not you: ics: authentication error: really"},
	} {
		if got := (&RemoteError{Code: tc.code, Message: tc.msg}).Error(); got != tc.err {
			t.Errorf("%v %q: %q, want %q", tc.code, tc.msg, got, tc.err)
		}
	}
}
