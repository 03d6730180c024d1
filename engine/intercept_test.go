package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestInterceptors: client and server chains run in order, first
// outermost, for Call, Go and Send; each sees service, procedure, name,
// peer, priority, a duration and the outcome; a server interceptor can
// refuse with ErrAuth before the handler runs.
func TestInterceptors(t *testing.T) {
	var mu sync.Mutex
	var events []string
	logf := func(f string, a ...any) {
		mu.Lock()
		events = append(events, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	client := func(name string) ClientInterceptor {
		return func(ctx context.Context, info *CallInfo, args, reply []byte, next Invoker) ([]byte, error) {
			logf("%s> peer=%d svc=%s proc=%d name=%s prio=%d oneway=%v", name, info.Peer, info.Method.Service, info.Method.Proc, info.Method.Name, info.Priority, info.OneWay)
			res, err := next(ctx, info, args, reply)
			if time.Since(info.Start) <= 0 {
				t.Errorf("no duration")
			}
			logf("%s< code=%v", name, Code(err))
			return res, err
		}
	}
	server := func(name string) ServerInterceptor {
		return func(ctx context.Context, info *CallInfo, req *Request, resp *Response, next Handler) error {
			logf("%s> peer=%d svc=%s proc=%d name=%s prio=%d oneway=%v", name, info.Peer, info.Method.Service, info.Method.Proc, info.Method.Name, info.Priority, info.OneWay)
			if name == "s2" && string(req.Args) == "intruder" {
				logf("%s refuses", name)
				return fmt.Errorf("%w: not on the list", ErrAuth)
			}
			err := next(ctx, req, resp)
			logf("%s< err=%v", name, err)
			return err
		}
	}
	nodes := startCluster(t, 2, func(c *Config) {
		if c.Node == 1 {
			c.ClientInterceptors = []ClientInterceptor{client("c1"), client("c2")}
		} else {
			c.ServerInterceptors = []ServerInterceptor{server("s1"), server("s2")}
		}
	})
	oneway := make(chan struct{}, 1)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", MaxHandles: 2, Procs: []Handler{
		func(_ context.Context, req *Request, resp *Response) error {
			logf("handler")
			resp.Body = append(resp.Body, req.Args...)
			return nil
		},
		func(context.Context, *Request, *Response) error {
			logf("oneway handler")
			oneway <- struct{}{}
			return nil
		},
	}})
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		e := events
		events = nil
		return e
	}
	ctx := ctxFor(t, 10*time.Second)
	m := Method{Service: echoSvc, Name: "echo"}

	got, err := nodes[0].Call(WithPriority(ctx, 2), 2, m, []byte("hi"), nil)
	if err != nil || string(got) != "hi" {
		t.Fatalf("call: %q, %v", got, err)
	}
	// The server's events may interleave with the client's "<" only after
	// the handler: compare each side's order.
	want := []string{
		"c1> peer=2 svc=8/1 proc=0 name=echo prio=2 oneway=false",
		"c2> peer=2 svc=8/1 proc=0 name=echo prio=2 oneway=false",
		"s1> peer=1 svc=8/1 proc=0 name=echo prio=2 oneway=false",
		"s2> peer=1 svc=8/1 proc=0 name=echo prio=2 oneway=false",
		"handler",
		"s2< err=<nil>",
		"s1< err=<nil>",
		"c2< code=ok",
		"c1< code=ok",
	}
	if e := take(); !slices.Equal(e, want) {
		t.Fatalf("call events:\n%q\nwant\n%q", e, want)
	}

	_, err = nodes[0].Call(ctx, 2, m, []byte("intruder"), nil)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("refused call: %v", err)
	}
	want = []string{
		"c1> peer=2 svc=8/1 proc=0 name=echo prio=0 oneway=false",
		"c2> peer=2 svc=8/1 proc=0 name=echo prio=0 oneway=false",
		"s1> peer=1 svc=8/1 proc=0 name=echo prio=0 oneway=false",
		"s2> peer=1 svc=8/1 proc=0 name=echo prio=0 oneway=false",
		"s2 refuses",
		"s1< err=ics: authentication error: not on the list",
		"c2< code=auth_error",
		"c1< code=auth_error",
	}
	if e := take(); !slices.Equal(e, want) {
		t.Fatalf("refused events:\n%q\nwant\n%q", e, want)
	}

	if got, err := nodes[0].Go(ctx, 2, m, []byte("go")).Wait(); err != nil || string(got) != "go" {
		t.Fatalf("go: %q, %v", got, err)
	}
	if e := take(); len(e) != 9 || e[0] != want[0] || e[8] != "c1< code=ok" {
		t.Fatalf("go events: %q", e)
	}

	if err := nodes[0].Send(ctx, 2, Method{Service: echoSvc, Proc: 1, Name: "echo"}, nil); err != nil {
		t.Fatal(err)
	}
	<-oneway
	eventually(t, "one-way's server chain done", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) == 9
	})
	want = []string{
		"c1> peer=2 svc=8/1 proc=1 name=echo prio=0 oneway=true",
		"c2> peer=2 svc=8/1 proc=1 name=echo prio=0 oneway=true",
		"c2< code=ok",
		"c1< code=ok",
		"s1> peer=1 svc=8/1 proc=1 name=echo prio=0 oneway=true",
		"s2> peer=1 svc=8/1 proc=1 name=echo prio=0 oneway=true",
		"oneway handler",
		"s2< err=<nil>",
		"s1< err=<nil>",
	}
	e := take()
	// The client's chain ends when the message is handed over, the
	// server's runs later: each side in its order.
	cside, sside := slices.DeleteFunc(slices.Clone(e), func(s string) bool { return s[0] != 'c' }), slices.DeleteFunc(slices.Clone(e), func(s string) bool { return s[0] == 'c' })
	if !slices.Equal(cside, want[:4]) || !slices.Equal(sside, want[4:]) {
		t.Fatalf("one-way events:\n%q\nwant\n%q", e, want)
	}
}
