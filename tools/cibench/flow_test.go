package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFlow runs "cibench flow" briefly with its server in a child process
// (cibench serve --peer=flow) and checks the report, not the numbers.
func TestFlow(t *testing.T) {
	exe := buildCibench(t)

	t.Run("run", func(t *testing.T) {
		// CI_SENDERS stands in for --senders, to check the environment is read.
		prof := t.TempDir()
		stdout, stderr, code := runCibench(t, exe, []string{"CI_SENDERS=2"},
			"flow", "--rounds=1", "--duration=100ms", "--warmup=0s", "--size=4096", "--window=16384", "--json", "--metrics",
			"--control", "--profile="+prof)
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		rep := readReport(t, stdout, "flow")
		if rep.Priority == nil || rep.Priority.Deadlock != nil {
			t.Fatalf("priority section %+v: want the flow part only", rep.Priority)
		}
		out := rep.Priority
		res := out.Flow
		if res == nil || len(res.PerRound) != 1 || res.Senders != 2 || res.Window != 16384 || res.Env.Servers != "a child process" {
			t.Fatalf("result %+v", res)
		}
		r := res.PerRound[0]
		if r.Raw.Bytes <= 0 || r.ICS.Bytes <= 0 || r.LoadedBulk.Bytes <= 0 || r.Idle.Count == 0 || r.Loaded.Count == 0 ||
			r.RawLoaded == nil || r.RawLoaded.Count == 0 {
			t.Errorf("round %+v", r)
		}
		if !strings.Contains(strings.Join(out.ServerMetrics, "\n"), `ci_ics_credit_window_bytes{node="2",peer="1",channel="svc0"} 16384`) {
			t.Errorf("server metrics lack the window:\n%s", strings.Join(out.ServerMetrics, "\n"))
		}
		if len(out.ClientMetrics) == 0 {
			t.Error("no client metrics")
		}
		for _, name := range []string{"flow-client.pprof", "flow-server.pprof"} {
			if st, err := os.Stat(filepath.Join(prof, name)); err != nil || st.Size() == 0 {
				t.Errorf("profile %s: %v", name, err)
			}
		}
	})

	t.Run("help", func(t *testing.T) {
		stdout, _, code := runCibench(t, exe, nil, "flow", "--help")
		if code != 0 || !strings.Contains(stdout, "Examples:") || !strings.Contains(stdout, "--window") {
			t.Errorf("exit %d\n%s", code, stdout)
		}
	})

	t.Run("bad usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"flow", "--senders=0"},
			{"flow", "--window=3"},
			{"flow", "--pin", "--in-process"},
			{"serve", "--peer=flow"}, // no --client-addr
		} {
			if _, stderr, code := runCibench(t, exe, nil, args...); code != exitBadUsage {
				t.Errorf("%v: exit %d, want %d\n%s", args, code, exitBadUsage, stderr)
			}
		}
	})
}
