package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterinfra/ci/bench"
)

// runScenarioJSON runs cibench with args (which end in --json) with a
// private TMPDIR, reads the report, and checks that the spawned cluster's
// directory is gone.
func runScenarioJSON(t *testing.T, exe string, args ...string) *bench.Report {
	t.Helper()
	tmp := t.TempDir()
	stdout, stderr, code := runCibench(t, exe, []string{"TMPDIR=" + tmp}, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d\nstderr:\n%s", args, code, stderr)
	}
	rep, err := bench.ReadReport(strings.NewReader(stdout))
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, stdout)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("%v left %v in TMPDIR", args, left)
	}
	return rep
}

// phaseMap is one trial's phases by name.
func phaseMap(tr bench.FailoverTrial) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, p := range tr.Phases {
		m[p.Name] = p.At
	}
	return m
}

// TestFailover runs cibench failover with two trials of a kill of
// keyseq's owner, and one hang of a plain member, and checks the report's
// failover section: every trial, the phases that apply and only those, in
// their causal order. Correctness, not speed.
func TestFailover(t *testing.T) {
	exe := buildWithCinode(t)

	t.Run("kill-owner", func(t *testing.T) {
		logs := filepath.Join(t.TempDir(), "logs")
		rep := runScenarioJSON(t, exe, "failover", "--trials=2", "--json", "--keep-logs="+logs)
		// --keep-logs: every node's log, a killed one's with each of its
		// incarnations (three starts, and the first victim's restart
		// before the second trial).
		starts := 0
		for n := 1; n <= 3; n++ {
			b, err := os.ReadFile(filepath.Join(logs, fmt.Sprintf("node%d.log", n)))
			if err != nil {
				t.Fatalf("--keep-logs: %v", err)
			}
			starts += strings.Count(string(b), "cinode running")
		}
		if starts < 3+1 {
			t.Errorf("--keep-logs: %d starts in the nodes' logs, want at least 4", starts)
		}
		f := rep.Failover
		if rep.Scenario != "failover" || f == nil || f.Nodes != 3 || f.Profile != "lan-fast" || f.TargetP99 != 150*time.Millisecond || f.Observed != "push" {
			t.Fatalf("report: %+v", rep)
		}
		if len(f.Trials) != 2 {
			t.Fatalf("%d trials, want 2", len(f.Trials))
		}
		for _, tr := range f.Trials {
			if tr.Fault != "sigkill" || tr.Victim != "key-service-owner" {
				t.Errorf("trial %d: %s of %s", tr.Trial, tr.Fault, tr.Victim)
			}
			m := phaseMap(tr)
			det, all, ready := m[bench.FailoverDetected], m[bench.FailoverNodeDown], m[bench.FailoverKeyReady]
			// Every survivor applies the GOINGDOWN after it was committed,
			// and keyseq's new owner is chosen after the old one is down.
			if det <= 0 || all < det || ready < det {
				t.Errorf("trial %d: phases out of order: %v", tr.Trial, tr.Phases)
			}
			if tr.SurvivorCPU == nil || *tr.SurvivorCPU < 0 { // a spawned cluster's /proc
				t.Errorf("trial %d: survivors' CPU %v", tr.Trial, tr.SurvivorCPU)
			}
		}
		var names []string
		for _, p := range f.Phases {
			names = append(names, p.Name)
			if p.Trials > 2 || p.P50 > p.P99 || p.P99 > p.Max {
				t.Errorf("summary %+v", p)
			}
		}
		if !slices.Contains(names, bench.FailoverKeyReady) || names[0] != bench.FailoverDetected {
			t.Errorf("summary phases %v", names)
		}
	})

	t.Run("stop-member", func(t *testing.T) {
		rep := runScenarioJSON(t, exe, "failover", "--trials=1", "--fault=stop", "--victim=member", "--json")
		tr := rep.Failover.Trials
		if len(tr) != 1 || tr[0].Fault != "sigstop" || tr[0].Victim != "member" {
			t.Fatalf("trials %+v", tr)
		}
		m := phaseMap(tr[0])
		// A member that is neither master nor owner: no new master, no
		// key-service failover; detected by silence.
		if len(m) != 2 || m[bench.FailoverDetected] <= 0 || m[bench.FailoverNodeDown] < m[bench.FailoverDetected] {
			t.Errorf("phases %v", tr[0].Phases)
		}
	})

	t.Run("observe-poll", func(t *testing.T) {
		// The old way, kept to compare: the same phases, polled.
		rep := runScenarioJSON(t, exe, "failover", "--trials=1", "--observe=poll", "--json")
		f := rep.Failover
		if f.Observed != "poll" || len(f.Trials) != 1 {
			t.Fatalf("failover %+v", f)
		}
		m := phaseMap(f.Trials[0])
		if m[bench.FailoverDetected] <= 0 || m[bench.FailoverNodeDown] < m[bench.FailoverDetected] || m[bench.FailoverKeyReady] < m[bench.FailoverDetected] {
			t.Errorf("phases %v", f.Trials[0].Phases)
		}
	})

	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"failover", "--observe=sometimes"},
			{"failover", "--nodes=2"},
			{"failover", "--trials=0"},
			{"failover", "--fault=hup"},
			{"failover", "--victim=nobody"},
			{"failover", "--target=nohostport"},
			{"failover", "--target=unix:relative"},
			{"failover", "--target=127.0.0.1:7180", "--keep-logs=/tmp/x"},
		} {
			if _, stderr, code := runCibench(t, exe, nil, args...); code != exitBadUsage {
				t.Errorf("%v: exit %d, want %d\n%s", args, code, exitBadUsage, stderr)
			}
		}
	})
}
