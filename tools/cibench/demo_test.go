package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs "cibench demo --short" as make demo would, and once more
// interrupted with Ctrl-C, and checks that no process it started is left.
func TestDemo(t *testing.T) {
	exe := buildCibench(t)

	t.Run("short", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, "demo", "--short")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		out := stdout.String()
		if err != nil {
			t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
		}
		for _, want := range []string{
			"12/12 ok",                // the cluster formed
			"node 1 saw node 3 down",  // the node-down callback ran
			"failed with ErrNodeDown", // outstanding calls failed at once
			"new calls to node 3 after the kill failed fast",
			"a new incarnation",              // the restart
			"node 1 met the new incarnation", // and node 1 noticed it
			"each node called every other's echo again: 12/12 ok",
			"raw TCP ping-pong",
			"demo ok",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		// Node 1, the first and second node 3, nodes 2 and 4, the raw peer.
		checkGone(t, out, 6)
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr.String())
		}
	})

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{{"demo", "--help"}, {"node", "--help"}} {
			stdout, _, code := runCibench(t, exe, nil, args...)
			if code != 0 || !strings.Contains(stdout, "Examples:") {
				t.Errorf("%v: exit %d\n%s", args, code, stdout)
			}
		}
		for _, args := range [][]string{
			{"demo", "--callers=2"},
			{"node", "--num=1"},                  // node 1 is the demo's own
			{"node", "--num=2", "--peers=3"},     // not NUM=HOST:PORT
			{"node", "--num=2", "--listen=nope"}, // not host:port
		} {
			if _, stderr, code := runCibench(t, exe, nil, args...); code != exitBadUsage {
				t.Errorf("%v: exit %d, want %d\n%s", args, code, exitBadUsage, stderr)
			}
		}
	})

	t.Run("interrupt", func(t *testing.T) {
		cmd := exec.Command(exe, "demo", "--short")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), "== 2.") {
				// The load is running on every node: Ctrl-C now.
				if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			}
		}
		_, _ = io.Copy(&out, stdout)
		err = cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitFailed {
			t.Errorf("interrupted demo: %v, want exit status %d", err, exitFailed)
		}
		if !strings.Contains(out.String(), "demo interrupted") || !strings.Contains(stderr.String(), "interrupted") {
			t.Errorf("no word of the interruption")
		}
		checkGone(t, out.String(), 4)
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), stderr.String())
		}
	})
}

var pidRE = regexp.MustCompile(`pid (\d+)`)

// checkGone checks that every pid the demo printed, at least want of them,
// is no longer a process: the demo stopped and waited for each.
func checkGone(t *testing.T, out string, want int) {
	t.Helper()
	pids := make(map[int]bool)
	for _, m := range pidRE.FindAllStringSubmatch(out, -1) {
		pid, _ := strconv.Atoi(m[1])
		pids[pid] = true
	}
	if len(pids) < want {
		t.Errorf("%d pids in the output, want at least %d", len(pids), want)
	}
	for pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d is still there (kill 0: %v)", pid, err)
		}
	}
}
