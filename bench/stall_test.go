package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTraceSlowCalls runs one caller against each peer in-process with
// Go's flight recorder on and writes the trace around every call slower
// than CI_TRACE_SLOW (1ms) to CI_TRACE_DIR, for the analysis of issue 10's
// stalls (docs/PERFORMANCE.md, "Stalls at p99.9"; read them with tools/stalltrace).
// Each slow call is marked in the trace by a log event, category
// "slowcall", whose message is the call's duration in nanoseconds, logged
// by the caller right after the call returned. It is a measurement, not a
// test: it runs only when CI_TRACE_DIR is set.
//
//	CI_TRACE_DIR=/tmp/stalls CI_TRACE_PEERS=ics-handle,raw CI_TRACE_CALLS=100000 \
//	    go test -run TestTraceSlowCalls -v ./bench/
func TestTraceSlowCalls(t *testing.T) {
	dir := os.Getenv("CI_TRACE_DIR")
	if dir == "" {
		t.Skip("CI_TRACE_DIR not set: a measurement run, not a test")
	}
	slow := envDuration(t, "CI_TRACE_SLOW", time.Millisecond)
	calls := envInt(t, "CI_TRACE_CALLS", 100000)
	maxSnaps := envInt(t, "CI_TRACE_SNAPSHOTS", 20)
	peers := strings.Split(os.Getenv("CI_TRACE_PEERS"), ",")
	if peers[0] == "" {
		peers = []string{"ics-handle", "ics", "raw"}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The window must hold the slowest call and what led to it; 50 ms of
	// ping-pong traces to a few MiB.
	fr := trace.NewFlightRecorder(trace.FlightRecorderConfig{MinAge: 50 * time.Millisecond, MaxBytes: 32 << 20})
	if err := fr.Start(); err != nil {
		t.Fatal(err)
	}
	defer fr.Stop()
	ctx := context.Background()
	child := os.Getenv("CI_TRACE_CHILD") != ""
	for pi, name := range peers {
		var c Client
		var srv *stallServer
		if child {
			// As a user runs it: the server in a process of its own, which
			// snapshots its own flight recorder when told (SIGUSR1).
			var err error
			if c, srv, err = startStallServer(name, dir, pi); err != nil {
				t.Fatal(err)
			}
		} else {
			c = startPeer(t, name)
		}
		req, err := NewRequest(64, 64)
		if err != nil {
			t.Fatal(err)
		}
		resp := make([]byte, 0, 64)
		for range 1000 {
			if resp, err = c.Call(req, resp[:0]); err != nil {
				t.Fatal(err)
			}
		}
		h := NewHist()
		snaps, nslow, preempted := 0, 0, 0
		var ru0, ru1 syscall.Rusage
		for range calls {
			// Involuntary context switches of this process during the
			// call: the kernel gave a CPU to someone else (the machine is
			// shared), which no Go scheduler change can fix.
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			t0 := time.Now()
			resp, err = c.Call(req, resp[:0])
			d := time.Since(t0)
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			if err != nil {
				t.Fatal(err)
			}
			h.Record(d)
			if ru1.Nivcsw != ru0.Nivcsw {
				preempted++
			}
			if d < slow {
				continue
			}
			nslow++
			trace.Log(ctx, "slowcall", fmt.Sprintf("%d-%s %d %d", pi, name, d, ru1.Nivcsw-ru0.Nivcsw))
			if snaps >= maxSnaps {
				continue
			}
			// Let the trace cover a little after the call too, then
			// snapshot; the snapshot itself is slow, so calls right after
			// it are not representative: skip a few.
			time.Sleep(2 * time.Millisecond)
			path := filepath.Join(dir, fmt.Sprintf("%d-%s-client-%02d.trace", pi, name, snaps))
			if err := writeSnapshot(fr, path); err != nil {
				t.Fatal(err)
			}
			if srv != nil {
				srv.snapshot()
			}
			snaps++
			for range 100 {
				if resp, err = c.Call(req, resp[:0]); err != nil {
					t.Fatal(err)
				}
			}
		}
		if srv != nil {
			if err := errors.Join(c.Close(), srv.stop()); err != nil {
				t.Fatal(err)
			}
		}
		s := h.Summary()
		t.Logf("%s: %d calls, p50 %v p99 %v p99.9 %v max %v; over %v: %d, over 5ms: %d; %d snapshots; %d calls with an involuntary context switch",
			name, h.Count(), s.P50, s.P99, s.P999, s.Max, slow, nslow, h.CountAbove(5*time.Millisecond), snaps, preempted)
	}
}

// TestTraceSlowServe is the server side of TestTraceSlowCalls with
// CI_TRACE_CHILD set: it serves CI_TRACE_SERVE, prints its address, writes
// a flight-recorder snapshot on every SIGUSR1, and stops when stdin closes.
func TestTraceSlowServe(t *testing.T) {
	name := os.Getenv("CI_TRACE_SERVE")
	if name == "" {
		t.Skip("run by TestTraceSlowCalls")
	}
	fr := trace.NewFlightRecorder(trace.FlightRecorderConfig{MinAge: 50 * time.Millisecond, MaxBytes: 32 << 20})
	if err := fr.Start(); err != nil {
		t.Fatal(err)
	}
	defer fr.Stop()
	p, err := ParsePeer(name)
	if err != nil {
		t.Fatal(err)
	}
	if ics, ok := p.(*ICS); ok {
		ics.ClientAddr = os.Getenv("CI_TRACE_CLIENT_ADDR")
	}
	addr, stop, err := p.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	defer signal.Stop(sig)
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	fmt.Printf("ADDR %s\n", addr)
	for n := 0; ; n++ {
		select {
		case <-sig:
			path := filepath.Join(os.Getenv("CI_TRACE_DIR"), fmt.Sprintf("%s-server-%02d.trace", os.Getenv("CI_TRACE_PREFIX"), n))
			if err := writeSnapshot(fr, path); err != nil {
				t.Fatal(err)
			}
		case <-eof:
			return
		}
	}
}

// stallServer is the child process of TestTraceSlowServe.
type stallServer struct {
	cmd   *exec.Cmd
	stdin io.Closer
}

func startStallServer(name, dir string, pi int) (Client, *stallServer, error) {
	p, err := ParsePeer(name)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTraceSlowServe$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CI_TRACE_SERVE="+name, "CI_TRACE_DIR="+dir, fmt.Sprintf("CI_TRACE_PREFIX=%d-%s", pi, name))
	var ic *ICSClient
	if ics, ok := p.(*ICS); ok {
		if ic, err = ics.NewClient(); err != nil {
			return nil, nil, err
		}
		cmd.Env = append(cmd.Env, "CI_TRACE_CLIENT_ADDR="+ic.Addr())
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	s := &stallServer{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		return nil, nil, errors.Join(fmt.Errorf("server said %q", line), err, s.stop())
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	if ic != nil {
		return ic, s, ic.Connect(addr)
	}
	c, err := p.Dial(addr)
	return c, s, err
}

func (s *stallServer) snapshot() { _ = s.cmd.Process.Signal(syscall.SIGUSR1) }

func (s *stallServer) stop() error {
	_ = s.stdin.Close()
	return s.cmd.Wait()
}

func writeSnapshot(fr *trace.FlightRecorder, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := fr.WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}
