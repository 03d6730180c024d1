package node_test

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/node/nodetest"
)

// TestDetectionTimes measures CLMS's detection times with real processes,
// for BENCHMARKS.md (issue 11). It runs only when asked, as it takes a
// while and wants a quiet machine:
//
//	CI_CLMS_BENCH_TRIALS=20 CI_CLMS_BENCH_PROFILE=lan-fast \
//	  go test -run TestDetectionTimes -v -timeout 30m ./services/node/
//
// CI_CLMS_BENCH_PROFILE is lan-fast (default) or default;
// CI_CLMS_BENCH_OUT names a JSON file for the results. Scenarios, each
// timed from the signal to the moment the last survivor applied the
// transition (timestamps taken in the survivors, same host clock):
//
//   - crash: kill -9 of a non-master -> its GOINGDOWN on every survivor
//   - hang: SIGSTOP of a non-master -> its GOINGDOWN on every survivor
//   - master-crash: kill -9 of the master -> its GOINGDOWN, committed by
//     the new master (the first thing a new master does), on every survivor
//
// Between trials the victim restarts as a new incarnation and rejoins.
// Build without -race: the race detector slows the nodes themselves.
func TestDetectionTimes(t *testing.T) {
	trials, _ := strconv.Atoi(os.Getenv("CI_CLMS_BENCH_TRIALS"))
	if trials == 0 {
		t.Skip("set CI_CLMS_BENCH_TRIALS to measure detection times")
	}
	profile := os.Getenv("CI_CLMS_BENCH_PROFILE")
	if profile == "" {
		profile = "lan-fast"
	}
	type result struct {
		Scenario string          `json:"scenario"`
		Profile  string          `json:"profile"`
		Trials   int             `json:"trials"`
		P50      time.Duration   `json:"p50_ns"`
		P99      time.Duration   `json:"p99_ns"`
		Max      time.Duration   `json:"max_ns"`
		Samples  []time.Duration `json:"samples_ns"`
	}
	var results []result
	for _, sc := range []struct {
		name   string
		sig    syscall.Signal
		master bool
		cause  clms.Cause
	}{
		{"crash", syscall.SIGKILL, false, clms.CauseCrash},
		{"hang", syscall.SIGSTOP, false, clms.CauseSilence},
		{"master-crash", syscall.SIGKILL, true, clms.CauseCrash},
	} {
		pc := newProcCluster(t, nodetest.Options{Nodes: 3, Profile: profile})
		pc.k = 1
		pc.startAll()
		all := pc.all()
		var samples []time.Duration
		for range trials {
			pc.waitFor("3 nodes UP", all, repUp(all...))
			master := pc.master(all)
			victim := master
			if !sc.master {
				victim = all[0]
				if victim == master {
					victim = all[1]
				}
			}
			samples = append(samples, pc.crashTrial(victim, others(all, victim), sc.cause, sc.sig))
			p := pc.procs[victim]
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			<-p.exit
			pc.start(victim)
		}
		slices.Sort(samples)
		q := func(f float64) time.Duration { return samples[min(len(samples)-1, int(f*float64(len(samples))))] }
		r := result{Scenario: sc.name, Profile: profile, Trials: trials, P50: q(0.5), P99: q(0.99), Max: samples[len(samples)-1], Samples: samples}
		results = append(results, r)
		t.Logf("%-12s %-8s n=%d p50=%v p99=%v max=%v samples=%v", r.Scenario, profile, trials, r.P50, r.P99, r.Max, samples)
	}
	if out := os.Getenv("CI_CLMS_BENCH_OUT"); out != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
