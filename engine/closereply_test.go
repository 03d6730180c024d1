package engine

import (
	"context"
	"errors"
	"testing"
)

// TestCloseSendsNoReplies: a handler still running when its node closes
// sees its ctx end, and whatever it answers then is not sent. Its caller
// gets ErrNodeDown from the connection's end, never the "context canceled"
// of a handler that honoured its ctx as ErrFailed, nor a reply from a run
// that is stopping (which, after a restart on the same address, would look
// like an answer from the node's next run).
func TestCloseSendsNoReplies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler func(ctx context.Context) error // after ctx ended
	}{
		{"returns ctx.Err", func(ctx context.Context) error { return ctx.Err() }},
		{"replies anyway", func(context.Context) error { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes := startCluster(t, 2, nil)
			entered := make(chan struct{}, 2)
			err := nodes[1].Register(Service{ID: echoSvc, Name: "echo", MaxHandles: 4, Procs: []Handler{
				func(ctx context.Context, req *Request, resp *Response) error {
					entered <- struct{}{}
					<-ctx.Done()
					resp.Body = append(resp.Body, "from a closing node"...)
					return tc.handler(ctx)
				},
			}})
			if err != nil {
				t.Fatal(err)
			}
			calls := []context.Context{context.Background(), ctxFor(t, 30e9)} // cannot end, and can
			errs := make(chan error, len(calls))
			for _, ctx := range calls {
				go func() {
					reply, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, nil, nil)
					if err == nil {
						err = errors.New("reply " + string(reply))
					}
					errs <- err
				}()
			}
			for range calls {
				<-entered
			}
			if err := nodes[1].Close(); err != nil {
				t.Fatal(err)
			}
			for range calls {
				if err := <-errs; !errors.Is(err, ErrNodeDown) {
					t.Errorf("call to a node closed under its handler: %v, want ErrNodeDown", err)
				}
			}
		})
	}
}
