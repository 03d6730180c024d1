package main

import (
	"testing"
	"time"
)

// TestMembership runs cibench membership on the smallest cluster with a
// short window and checks every figure of the section is there and
// consistent. Correctness, not speed.
func TestMembership(t *testing.T) {
	exe := buildWithCinode(t)
	rep := runScenarioJSON(t, exe, "membership", "--nodes=3", "--steady=200ms", "--json")
	m := rep.Membership
	if rep.Scenario != "membership" || m == nil || m.Profile != "lan-fast" || len(m.Runs) != 1 {
		t.Fatalf("report %+v", rep)
	}
	r := m.Runs[0]
	if r.Nodes != 3 || r.Steady != 200*time.Millisecond {
		t.Errorf("run shape %+v", r)
	}
	// Every node has ICS connections to the others and the master sends
	// lease renewals: some bytes, some descriptors, and a positive time
	// for each phase, the last node after the first.
	if r.Formation <= 0 || r.PropagationFirst <= 0 || r.PropagationAll < r.PropagationFirst ||
		r.MasterBytesPerSec <= 0 || r.FDsMaster < 3 || r.FDsMember < 3 || r.MasterCPU < 0 || r.MemberCPU < 0 {
		t.Errorf("figures %+v", r)
	}
	if _, stderr, code := runCibench(t, exe, nil, "membership", "--nodes=2"); code != exitBadUsage {
		t.Errorf("--nodes=2: exit %d, want %d\n%s", code, exitBadUsage, stderr)
	}
}
