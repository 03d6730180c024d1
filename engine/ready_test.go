package engine

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a loopback address nothing listens on (for now).
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestWaitForReady: a call that waits for ready reaches a peer that starts
// after it was made; without it the same call fails at once with
// ErrNodeDown; and one whose peer never comes fails at its deadline with
// ErrTimedOut, saying what it waited for.
func TestWaitForReady(t *testing.T) {
	addr2 := freeAddr(t, "127.0.0.2")
	cfg := DefaultConfig()
	cfg.Node, cfg.Cluster, cfg.Insecure, cfg.EventLoops = 1, "test", true, 2
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.Peers = map[NodeNum]string{2: addr2, 3: freeAddr(t, "127.0.0.3")}
	n1 := startNode(t, cfg)

	if _, err := n1.Call(ctxFor(t, 10*time.Second), 2, Method{Service: echoSvc}, nil, nil); !errors.Is(err, ErrNodeDown) {
		t.Fatalf("call to a peer not up yet: %v, want ErrNodeDown", err)
	}

	short, cancel := context.WithTimeout(WaitForReady(context.Background()), 300*time.Millisecond)
	defer cancel()
	_, err := n1.Call(short, 3, Method{Service: echoSvc}, nil, nil)
	oneSentinel(t, err, ErrTimedOut, StatusTimedOut)
	if !strings.Contains(err.Error(), "waiting for node 3") {
		t.Fatalf("deadline error does not say what it waited for: %v", err)
	}

	result := make(chan error, 1)
	go func() {
		got, err := n1.Call(WaitForReady(ctxFor(t, 30*time.Second)), 2, Method{Service: echoSvc}, []byte("late riser"), nil)
		if err == nil && string(got) != "late riser" {
			err = errors.New("wrong reply " + string(got))
		}
		result <- err
	}()
	// The waiting call has found node 2 unreachable at least once more.
	p2 := n1.peer(2)
	eventually(t, "a failed dial while waiting", func() bool { return p2.dialErrors.Get() >= 2 })
	select {
	case err := <-result:
		t.Fatalf("wait-for-ready call returned before its peer started: %v", err)
	default:
	}

	cfg2 := DefaultConfig()
	cfg2.Node, cfg2.Cluster, cfg2.Insecure, cfg2.EventLoops = 2, "test", true, 2
	cfg2.ListenAddr = addr2
	cfg2.Peers = map[NodeNum]string{1: n1.Addr()}
	n2, err := New(testMode(cfg2))
	if err != nil {
		t.Fatal(err)
	}
	mustRegister(t, n2, Service{ID: echoSvc, Procs: []Handler{echo}})
	if err := n2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n2.Close() })
	if err := <-result; err != nil {
		t.Fatalf("wait-for-ready call: %v", err)
	}
}
