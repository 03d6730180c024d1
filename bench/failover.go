package bench

import (
	"slices"
	"time"
)

// The failover section of the result schema. cibench failover (which
// needs CLMS and the key services) fills it; the report generator and the
// plots read it already, so the scenario only has to produce this.

// Failover phases, in the order they complete after the fault. Each is a
// time since the fault was injected.
const (
	FailoverDetected = "detected"          // the first survivor declares the victim down
	FailoverNodeDown = "nodedown-all"      // every survivor has delivered NODEDOWN
	FailoverMaster   = "new-master"        // a new master is in charge (when the master was the victim)
	FailoverKeyReady = "key-service-ready" // the key service answers again from its new owner
)

// FailoverPhases lists the phases in order.
var FailoverPhases = []string{FailoverDetected, FailoverNodeDown, FailoverMaster, FailoverKeyReady}

// FailoverResult is every trial of a failover run and the per-phase
// percentiles over them.
type FailoverResult struct {
	Nodes   int    `json:"nodes"`   // cluster size at the start of each trial
	Profile string `json:"profile"` // CLMS timing profile: "lan-fast" or "default"
	// Fault and Victim are how cibench failover was asked to fault:
	// "kill" or "stop", "keysvc-owner", "master" or "member" (--victim;
	// the JSON name predates target mode and stays for version 1).
	Fault  string `json:"fault,omitempty"`
	Victim string `json:"target,omitempty"`
	// Mode is ModeSpawned (cibench's own cinode processes) or ModeTarget
	// (a running cluster: Endpoints are the --target admin endpoints,
	// Profile is empty because cibench cannot read the cluster's).
	Mode      string   `json:"mode,omitempty"`
	Endpoints []string `json:"endpoints,omitempty"`
	// TargetP99 is the goal for key-service-ready p99 (issue 14: 150 ms
	// with the fast LAN profile); 0 if none.
	TargetP99 time.Duration `json:"target_p99_ns,omitempty"`
	// Observed is how the phases after detected were seen: "push" (each
	// survivor's /v1/watch stream and long polls of /v1/status and
	// /v1/keysvc: a phase ends when the last change arrives) or "poll"
	// (every survivor polled every millisecond, for a cluster whose
	// cinode has no long poll: up to a poll round late). Empty in reports
	// from before the push.
	Observed string            `json:"observed,omitempty"`
	Trials   []FailoverTrial   `json:"trials"`
	Phases   []FailoverSummary `json:"phases"` // SummarizeFailover(Trials)
}

// Modes of the failover and membership scenarios.
const (
	ModeSpawned = "spawned" // a cluster of cinode processes cibench started
	ModeTarget  = "target"  // a running cluster, through --target admin endpoints
)

// FailoverTrial is one fault and what followed it.
type FailoverTrial struct {
	Trial  int    `json:"trial"`  // from 1
	Fault  string `json:"fault"`  // "sigkill" or "sigstop"
	Victim string `json:"victim"` // "key-service-owner" (it may also have been the master), "master" or "member"
	// Phases are the phases this trial reached, each at its time since the
	// fault; a phase that does not apply (no new master when a non-master
	// died) is absent.
	Phases []FailoverPhase `json:"phases"`
	// SurvivorCPU is the CPU seconds (user+system) the survivors'
	// processes used from just before the fault to the end of its last
	// phase, summed: /proc (10 ms ticks) for a node of this machine, else
	// its /metrics; nil when not measured (0: under one tick).
	SurvivorCPU *float64 `json:"survivor_cpu_s,omitempty"`
}

// FailoverPhase is one phase of one trial.
type FailoverPhase struct {
	Name string        `json:"name"`
	At   time.Duration `json:"at_ns"` // since the fault
}

// FailoverSummary is one phase over all trials that reached it.
type FailoverSummary struct {
	Name   string        `json:"name"`
	Trials int           `json:"trials"`
	P50    time.Duration `json:"p50_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
}

// PhaseTimes returns, for each phase in FailoverPhases order, the times of
// the trials that reached it, sorted.
func PhaseTimes(trials []FailoverTrial) map[string][]time.Duration {
	out := make(map[string][]time.Duration)
	for _, t := range trials {
		for _, p := range t.Phases {
			out[p.Name] = append(out[p.Name], p.At)
		}
	}
	for _, ds := range out {
		slices.Sort(ds)
	}
	return out
}

// SummarizeFailover computes each phase's percentiles over trials, in
// FailoverPhases order, skipping phases no trial reached.
func SummarizeFailover(trials []FailoverTrial) []FailoverSummary {
	times := PhaseTimes(trials)
	var out []FailoverSummary
	for _, name := range FailoverPhases {
		ds := times[name]
		if len(ds) == 0 {
			continue
		}
		out = append(out, FailoverSummary{Name: name, Trials: len(ds),
			P50: nearestRank(ds, 0.50), P99: nearestRank(ds, 0.99), Max: ds[len(ds)-1]})
	}
	return out
}

// nearestRank is the q quantile of sorted ds by the nearest-rank method:
// with few trials it is always a time some trial took.
func nearestRank(ds []time.Duration, q float64) time.Duration {
	i := int(float64(len(ds))*q+0.999999) - 1
	return ds[max(0, min(i, len(ds)-1))]
}
