package engine

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"sync/atomic"
	"testing"
	"time"
)

// TestListServicesAndHealth: a peer lists what it registered, with
// versions and procedures, so a caller can tell a missing service
// (ErrProgUnavail) from a missing procedure (ErrProcUnavail); Health says
// serving, then draining during Shutdown.
func TestListServicesAndHealth(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	other := ServiceOn(ChanFirstService+1, 3)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Name: "echo", Version: 7, Procs: []Handler{echo, nil, echo}})
	mustRegister(t, nodes[1], Service{ID: other, Name: "other", Procs: []Handler{4: echo}})
	ctx := ctxFor(t, 20*time.Second)

	got, err := nodes[0].ListServices(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []ServiceInfo{
		{ID: InfoService, Name: "ics", Procs: []uint32{0, 1, 2}},
		{ID: echoSvc, Name: "echo", Version: 7, Procs: []uint32{0, 2}},
		{ID: other, Name: "other", Procs: []uint32{4}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("services:\n%+v\nwant\n%+v", got, want)
	}

	// The two refusals differ, and the listing explains each.
	_, err = nodes[0].Call(ctx, 2, Method{Service: ServiceOn(ChanFirstService, 4)}, nil, nil)
	oneSentinel(t, err, ErrProgUnavail, StatusProgUnavail)
	_, err = nodes[0].Call(ctx, 2, Method{Service: echoSvc, Proc: 1}, nil, nil)
	oneSentinel(t, err, ErrProcUnavail, StatusProcUnavail)
	if !got[1].HasProc(2) || got[1].HasProc(1) {
		t.Fatal("HasProc")
	}

	if h, err := nodes[0].Health(ctx, 2); h != HealthServing || err != nil {
		t.Fatalf("health: %v, %v", h, err)
	}
	// Draining: requests are refused, Health reads that as draining.
	started, release := make(chan struct{}), make(chan struct{})
	mustRegister(t, nodes[1], Service{ID: ServiceOn(ChanFirstService, 2), Procs: []Handler{func(context.Context, *Request, *Response) error {
		close(started)
		<-release
		return nil
	}}})
	running := nodes[0].Go(ctx, 2, Method{Service: ServiceOn(ChanFirstService, 2)}, nil)
	<-started
	shut := make(chan error, 1)
	go func() { shut <- nodes[1].Shutdown(ctx) }()
	eventually(t, "health says draining", func() bool {
		h, err := nodes[0].Health(ctx, 2)
		return h == HealthDraining && err == nil
	})
	close(release)
	if _, err := running.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	// Node 1 learns of the close when its readers see the sockets end:
	// until then the peer is still draining.
	eventually(t, "health of a closed node: unknown, node down", func() bool {
		h, err := nodes[0].Health(ctx, 2)
		return h == HealthUnknown && errors.Is(err, ErrNodeDown)
	})
}

// TestPing: the echo returns the payload unchanged, appended to the reply
// buffer, at priority 0 and at every priority channel, from either side,
// empty and at MaxPayload; one byte over MaxPayload is refused by the
// caller, and a node that is not a peer is an error that names it.
func TestPing(t *testing.T) {
	const maxPayload = 64 << 10 // small, so that the largest ping is quick under -race
	nodes := startCluster(t, 2, func(c *Config) { c.MaxPayload = maxPayload })
	ctx := ctxFor(t, 20*time.Second)
	big := make([]byte, maxPayload)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for prio := uint8(0); prio <= 4; prio++ {
		pctx := WithPriority(ctx, prio)
		for _, payload := range [][]byte{nil, []byte("ping"), big} {
			for _, from := range []int{0, 1} {
				to := NodeNum(2 - from)
				got, err := nodes[from].Ping(pctx, to, payload, []byte("prefix:"))
				if err != nil {
					t.Fatalf("priority %d, %d bytes, node %d to %d: %v", prio, len(payload), from+1, to, err)
				}
				if want := append([]byte("prefix:"), payload...); !bytes.Equal(got, want) {
					t.Fatalf("priority %d, %d bytes: echo differs (%d bytes back)", prio, len(payload), len(got))
				}
			}
		}
	}
	if _, err := nodes[0].Ping(ctx, 2, make([]byte, maxPayload+1), nil); !errors.Is(err, ErrCantEncodeArgs) {
		t.Fatalf("ping over MaxPayload: %v, want ErrCantEncodeArgs", err)
	}
	if _, err := nodes[0].Ping(ctx, 9, nil, nil); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("ping of node 9: %v, want ErrUnknownHost", err)
	}
}

func TestServiceListEncoding(t *testing.T) {
	var svcs [4][]atomic.Pointer[service]
	for i := range svcs {
		svcs[i] = make([]atomic.Pointer[service], 3)
	}
	svcs[1][2].Store(&service{Service: Service{ID: ServiceOn(1, 2), Name: "a", Version: 9, Procs: []Handler{nil, echo, echo, nil, nil, echo}}})
	svcs[3][0].Store(&service{Service: Service{ID: ServiceOn(3, 0), Name: "", Procs: []Handler{echo}}})
	b := appendServiceList(nil, svcs[:])
	got, err := decodeServiceList(b)
	want := []ServiceInfo{{ID: ServiceOn(1, 2), Name: "a", Version: 9, Procs: []uint32{1, 2, 5}}, {ID: ServiceOn(3, 0), Procs: []uint32{0}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("%+v, %v", got, err)
	}
	for i := range b {
		if _, err := decodeServiceList(b[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", i)
		}
	}
	if _, err := decodeServiceList(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

// FuzzDecodeServiceList: a service list from a peer never panics or
// over-allocates, and what decodes re-encodes to the same bytes.
func FuzzDecodeServiceList(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{1, 1, 0, 8, 0, 7, 0, 4, 'e', 'c', 'h', 'o', 2, 0, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeServiceList(b)
		if err != nil {
			return
		}
		if got := appendInfos(nil, l); !bytes.Equal(got, b) {
			t.Fatalf("%x decoded to %+v, re-encodes to %x", b, l, got)
		}
	})
}
