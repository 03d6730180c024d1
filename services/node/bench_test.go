package node_test

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterinfra/ci/bench"
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
		sig    syscall.Signal // 0: a partition through the proxies
		master bool
		cause  clms.Cause
	}{
		{"crash", syscall.SIGKILL, false, clms.CauseCrash},
		{"hang", syscall.SIGSTOP, false, clms.CauseSilence},
		{"master-crash", syscall.SIGKILL, true, clms.CauseCrash},
		// The proxies' partition, to compare with the kernel's
		// (tools/cinode TestNetnsDetectionTimes, docs/CLMS.md).
		{"partition", 0, false, clms.CauseSilence},
		{"master-partition", 0, true, clms.CauseSilence},
	} {
		if o := os.Getenv("CI_CLMS_BENCH_ONLY"); o != "" && o != sc.name {
			continue
		}
		pc := newProcCluster(t, nodetest.Options{Nodes: 3, Profile: profile})
		pc.k = 1
		var proxies map[clms.NodeNum]map[clms.NodeNum]*nodetest.Proxy
		if sc.sig == 0 {
			proxies = pc.partitionable()
		}
		pc.startAll()
		all := pc.all()
		var samples []time.Duration
		for range trials {
			pc.waitFor("3 nodes UP", all, repUp(all...))
			var victim clms.NodeNum
			if sc.master {
				victim = pc.master(all)
			} else {
				victim = pc.nonMaster(all)
			}
			if sc.sig == 0 {
				samples = append(samples, pc.faultTrial(victim, others(all, victim), sc.cause, func() { pc.cut(proxies, victim, true) }))
				pc.cut(proxies, victim, false)
			} else {
				samples = append(samples, pc.crashTrial(victim, others(all, victim), sc.cause, sc.sig))
			}
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

// TestKeyFailoverTimes measures key-service failover with real processes,
// for BENCHMARKS.md (issue 12), next to TestDetectionTimes and asked the
// same way:
//
//	CI_CLMS_BENCH_TRIALS=20 CI_CLMS_BENCH_PROFILE=lan-fast \
//	  go test -run TestKeyFailoverTimes -v -timeout 30m ./services/node/
//
// CI_KEYSVC_BENCH_OUT names a JSON file: a bench.Report whose failover
// section (docs/BENCH_SCHEMA.md) holds every trial. Each trial kills keyseq's
// owner (kill -9) in a 3-node cluster and times, on the host clock, from the
// signal to keyseq's ready record applied on the third node (the survivor
// that did not take over), split into:
//
//   - detection: -> the owner's GOINGDOWN applied on the third node
//   - decision: -> the new owner applied its assignment (epoch + 1)
//   - pull: -> the new owner's FailoverData finished (Failover, the pull
//     from both survivors, FailoverData)
//   - ready: -> the ready record applied on the third node
//
// In the JSON the schema's phases: detected (the first survivor applied
// the GOINGDOWN), nodedown-all (the last did) and key-service-ready. The
// killed node restarts as a new incarnation between trials. Build without
// -race.
func TestKeyFailoverTimes(t *testing.T) {
	trials, _ := strconv.Atoi(os.Getenv("CI_CLMS_BENCH_TRIALS"))
	if trials == 0 {
		t.Skip("set CI_CLMS_BENCH_TRIALS to measure key-service failover times")
	}
	profile := os.Getenv("CI_CLMS_BENCH_PROFILE")
	if profile == "" {
		profile = "lan-fast"
	}
	report := bench.NewReport("failover", os.Args)
	res := &bench.FailoverResult{Nodes: 3, Profile: profile}
	if profile == "lan-fast" {
		res.TargetP99 = 150 * time.Millisecond // issue 12's goal
	}
	pc := newProcCluster(t, keyseqOpts(profile))
	pc.k = 1
	pc.startAll()
	all := pc.all()
	var epoch uint64
	split := map[string][]time.Duration{}
	names := []string{"total", "detection", "decision", "pull", "ready"}
	for trial := 1; trial <= trials; trial++ {
		reps := pc.waitFor("keyseq ready everywhere", all, func(r childReport) bool {
			return readyAfter(epoch)(r) && repUp(all...)(r)
		})
		k := keyOf(reps[all[0]].Status)
		owner := k.Owner
		inc := member(reps[owner].Status, owner).Incarnation
		epoch = k.Epoch
		survivors := others(all, owner)
		start := time.Now()
		if err := pc.procs[owner].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		reps = pc.waitFor("keyseq ready on the third node", survivors, func(r childReport) bool {
			k := keyOf(r.Status)
			return k.Epoch == epoch+1 && k.Phase == "ready" && keyAt(r, func(x clms.KeyRecord) bool { return x.Epoch == epoch+1 && x.Phase == clms.KeyReady }) != 0
		})
		newOwner := keyOf(reps[survivors[0]].Status).Owner
		third := others(survivors, newOwner)[0]
		a := reps[newOwner].Keyseq.Assembled
		if a == nil || a.Epoch != epoch+1 {
			t.Fatalf("trial %d: the new owner assembled %+v", trial, a)
		}
		since := func(ns int64) time.Duration { return time.Duration(ns - start.UnixNano()) }
		gone := map[clms.NodeNum]int64{}
		for _, n := range survivors {
			gone[n], _ = goneAt(reps[n], owner, inc)
		}
		assigned := keyAt(reps[newOwner], func(x clms.KeyRecord) bool { return x.Epoch == epoch+1 && x.Phase == clms.KeyFailover })
		ready := keyAt(reps[third], func(x clms.KeyRecord) bool { return x.Epoch == epoch+1 && x.Phase == clms.KeyReady })
		if gone[third] == 0 || assigned == 0 {
			t.Fatalf("trial %d: missing timestamps: gone %v assigned %d", trial, gone, assigned)
		}
		row := map[string]time.Duration{
			"total": since(ready), "detection": since(gone[third]), "decision": time.Duration(assigned - gone[third]),
			"pull": time.Duration(a.At.UnixNano() - assigned), "ready": time.Duration(ready - a.At.UnixNano()),
		}
		for _, n := range names {
			split[n] = append(split[n], row[n])
		}
		res.Trials = append(res.Trials, bench.FailoverTrial{Trial: trial, Fault: "sigkill", Victim: "key-service-owner",
			Phases: []bench.FailoverPhase{
				{Name: bench.FailoverDetected, At: since(min(gone[survivors[0]], gone[survivors[1]]))},
				{Name: bench.FailoverNodeDown, At: since(max(gone[survivors[0]], gone[survivors[1]]))},
				{Name: bench.FailoverKeyReady, At: since(ready)},
			}})
		// The new owner continues after what it pulled (outside the timing).
		if rg, errl := pc.procs[third].next("next 1"); errl != "" || rg.First != a.Base+1 {
			t.Fatalf("trial %d: next id %+v %s, want %d", trial, rg, errl, a.Base+1)
		}
		<-pc.procs[owner].exit
		pc.start(owner)
	}
	for _, n := range names {
		ds := slices.Clone(split[n])
		slices.Sort(ds)
		q := func(f float64) time.Duration { return ds[min(len(ds)-1, int(f*float64(len(ds))))] }
		t.Logf("%-9s %-8s n=%d p50=%v p99=%v max=%v", n, profile, len(ds), q(0.5), q(0.99), ds[len(ds)-1])
	}
	res.Phases = bench.SummarizeFailover(res.Trials)
	report.Failover = res
	report.Finish()
	if out := os.Getenv("CI_KEYSVC_BENCH_OUT"); out != "" {
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := report.WriteJSON(f); err != nil {
			t.Fatal(err)
		}
	}
}

// TestProcBlips is tools/cinode's TestNetnsBlips through the proxies: a
// member cut off for each of CI_CLMS_BENCH_BLIPS (comma-separated
// durations), CI_CLMS_BENCH_TRIALS times each, and whether it was declared
// down. It asserts nothing; docs/CLMS.md, "Real partitions", compares the
// two.
//
//	CI_CLMS_BENCH_BLIPS=50ms,150ms,250ms CI_CLMS_BENCH_TRIALS=3 go test -run TestProcBlips -v ./services/node/
func TestProcBlips(t *testing.T) {
	spec := os.Getenv("CI_CLMS_BENCH_BLIPS")
	if spec == "" {
		t.Skip("set CI_CLMS_BENCH_BLIPS (and CI_CLMS_BENCH_TRIALS) to measure short partitions through the proxies")
	}
	trials, _ := strconv.Atoi(os.Getenv("CI_CLMS_BENCH_TRIALS"))
	trials = max(trials, 1)
	pc := newProcCluster(t, nodetest.Options{Nodes: 3})
	pc.k = 1
	proxies := pc.partitionable()
	pc.startAll()
	all := pc.all()
	tm := clms.LANFastTiming()
	for _, f := range strings.Split(spec, ",") {
		blip, err := time.ParseDuration(f)
		if err != nil {
			t.Fatalf("CI_CLMS_BENCH_BLIPS: %v", err)
		}
		downs := 0
		for range trials {
			pc.waitFor("3 nodes UP", all, repUp(all...))
			victim := pc.nonMaster(all)
			rep, _ := pc.procs[victim].report()
			inc := rep.Status.Incarnation
			pc.cut(proxies, victim, true)
			time.Sleep(blip) // the fault's length, not a wait for anything
			pc.cut(proxies, victim, false)
			time.Sleep(tm.LeaseTimeout + tm.LeaseMargin + 1500*time.Millisecond) // an observation window of a measurement
			gone := false
			for _, n := range others(all, victim) {
				r, _ := pc.procs[n].report()
				if at, _ := goneAt(r, victim, inc); at != 0 {
					gone = true
				}
			}
			if gone {
				downs++
				p := pc.procs[victim]
				_ = p.cmd.Process.Kill()
				<-p.exit
				pc.start(victim)
			}
		}
		t.Logf("blip %v through the proxies: declared down in %d of %d trials", blip, downs, trials)
	}
}
