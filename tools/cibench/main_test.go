package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/clusterinfra/ci/bench"
)

// buildCibench builds the command into a temporary directory: compare
// re-executes its own binary as the servers, which a test binary cannot be.
func buildCibench(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	exe := filepath.Join(t.TempDir(), "cibench")
	// go test puts $GOROOT/bin first on PATH, so this is the same toolchain.
	out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// runCibench runs the binary with args and extra environment and returns
// stdout, stderr and the exit code.
func runCibench(t *testing.T, exe string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
		return "", "", -1
	}
}

func TestCibench(t *testing.T) {
	exe := buildCibench(t)

	t.Run("compare", func(t *testing.T) {
		peers := []string{"raw", "netrpc", "ics"}
		// CI_CALLS stands in for --calls, to check the environment is read.
		stdout, stderr, code := runCibench(t, exe, []string{"CI_CALLS=200"},
			"compare", "--peers="+strings.Join(peers, ","), "--rounds=1", "--warmup=20", "--json")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		var res bench.Comparison
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, stdout)
		}
		var got []string
		for _, p := range res.Peers {
			got = append(got, p.Peer)
			if p.All.Count != 200 {
				t.Errorf("%s: %d calls recorded, want 200", p.Peer, p.All.Count)
			}
		}
		if !slices.Equal(got, peers) || res.Calls != 200 || res.Env.Servers != "child processes" {
			t.Errorf("peers %v calls %d env %+v", got, res.Calls, res.Env)
		}
	})

	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"--help"}, {"compare", "--help"}, {"rpc", "--help"}, {"serve", "--help"}} {
			stdout, _, code := runCibench(t, exe, nil, args...)
			if code != 0 || !strings.Contains(stdout, "Usage: cibench") {
				t.Errorf("%v: exit %d\n%s", args, code, stdout)
			}
			if len(args) == 2 && !strings.Contains(stdout, "Examples:") {
				t.Errorf("%v: no examples\n%s", args, stdout)
			}
		}
	})

	t.Run("bad usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"nonsense"},
			{"compare", "--peers=raw,carrier-pigeon"},
			{"compare", "--peers=raw,raw"},
			{"compare", "--size=2"},
			{"compare", "--rounds=0"},
			{"serve", "--peer=ics"}, // no --client-addr
		} {
			if _, stderr, code := runCibench(t, exe, nil, args...); code != exitBadUsage {
				t.Errorf("%v: exit %d, want %d\n%s", args, code, exitBadUsage, stderr)
			}
		}
	})
}
