package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs "cibench demo --short" as make demo would, the ICS-only
// demo, and the demo interrupted with Ctrl-C while a cinode node is
// stopped, and checks that no process it started is left, nor its
// temporary directory.
func TestDemo(t *testing.T) {
	exe := buildWithCinode(t)

	run := func(t *testing.T, args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, exe, args...)
		tmp := t.TempDir()
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		out := stdout.String()
		checkEmpty(t, tmp)
		if err != nil {
			t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("stdout:\n%s\nstderr:\n%s", out, stderr.String())
			}
		})
		return out
	}
	contains := func(t *testing.T, out string, wants ...string) {
		t.Helper()
		for _, want := range wants {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
	}

	t.Run("short", func(t *testing.T) {
		out := run(t, "demo", "--short")
		contains(t, out,
			"$ cluster -c cluster.toml -v", // the admin command's table
			"via node 1: ids 1-100 (epoch 1)",
			"via node 3: ids 201-300 (epoch 1)",
			"UP -> GOINGDOWN committed",                         // the failover's detection
			"pulled every survivor's highest id",                // its pull
			"above 300, the highest handed out before the kill", // ids continue
			"rejoined as a new incarnation",
			"(cause silence)",        // the hang's detection
			"exited with status 4 (", // fenced after SIGCONT
			"/metrics",
			"planned shutdowns, SHUTDOWN committed, exit 0",
			"12/12 ok", // the ICS part
			"raw TCP ping-pong",
			"demo ok",
		)
		if n := len(regexp.MustCompile(`(?m)^  [123] +UP `).FindAllString(out, -1)); n != 3 {
			t.Errorf("cluster -v shows %d nodes UP, want 3", n)
		}
		// Three cinode processes and two restarts; node 1, nodes 2-4 and
		// the raw peer of the ICS part.
		checkGone(t, out, 10)
		checkRemoved(t, out)
	})

	t.Run("ics-only", func(t *testing.T) {
		out := run(t, "demo", "--short", "--ics-only")
		contains(t, out,
			"12/12 ok",                // the cluster formed
			"node 1 saw node 3 down",  // the node-down callback ran
			"failed with ErrNodeDown", // outstanding calls failed at once
			"new calls to node 3 after the kill failed fast",
			"a new incarnation",              // the restart
			"node 1 met the new incarnation", // and node 1 noticed it
			"each node called every other's echo again: 12/12 ok",
			"raw TCP ping-pong",
			"demo ok",
		)
		if strings.Contains(out, "cinode") {
			t.Errorf("--ics-only started cinode")
		}
		// Node 1, the first and second node 3, nodes 2 and 4, the raw peer.
		checkGone(t, out, 6)
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
		tmp := t.TempDir()
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
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
			if strings.HasPrefix(sc.Text(), "kill -STOP") {
				// A cinode node is stopped: Ctrl-C now. The demo must
				// continue it to stop it.
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
		checkRemoved(t, out.String())
		checkEmpty(t, tmp)
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

var dirRE = regexp.MustCompile(`cluster.toml in (\S+):`)

// checkRemoved checks that the cinode cluster's temporary directory, as
// the demo printed it, is gone.
func checkRemoved(t *testing.T, out string) {
	t.Helper()
	m := dirRE.FindStringSubmatch(out)
	if m == nil {
		t.Errorf("no temporary directory in the output")
		return
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still there (%v)", m[1], err)
	}
}

// checkEmpty checks that the demo left nothing in its TMPDIR: not its
// own directories, nor those of the engines of the nodes it killed.
func checkEmpty(t *testing.T, tmp string) {
	t.Helper()
	if left, err := os.ReadDir(tmp); err != nil || len(left) != 0 {
		t.Errorf("left in TMPDIR: %v (%v)", left, err)
	}
}
