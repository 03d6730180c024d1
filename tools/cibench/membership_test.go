package main

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMembership runs cibench membership on the smallest cluster with a
// short window and checks every figure of the section is there and
// consistent. Correctness, not speed.
func TestMembership(t *testing.T) {
	exe := buildWithCinode(t)
	rep := runScenarioJSON(t, exe, "membership", "--nodes=3", "--steady=200ms", "--json")
	m := rep.Membership
	if rep.Scenario != "membership" || m == nil || m.Profile != "lan-fast" || len(m.Runs) != 1 || m.Runs[0].Profile != "lan-fast" {
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

// TestMemberSizes: --nodes's sizes, each with --profile or its own after
// a colon, in the order given; and the mistakes an operator makes, each a
// usage error naming --nodes and what is wrong.
func TestMemberSizes(t *testing.T) {
	for _, tc := range []struct {
		nodes   []string
		profile string
		want    []memberSize
	}{
		{[]string{"3", "16"}, "lan-fast", []memberSize{{3, "lan-fast"}, {16, "lan-fast"}}},
		{[]string{"3", "16", "64:default"}, "lan-fast", []memberSize{{3, "lan-fast"}, {16, "lan-fast"}, {64, "default"}}},
		{[]string{"64"}, "default", []memberSize{{64, "default"}}},
		{[]string{"16", "16:default"}, "lan-fast", []memberSize{{16, "lan-fast"}, {16, "default"}}},
		{[]string{"3:lan-fast", " 254:default"}, "default", []memberSize{{3, "lan-fast"}, {254, "default"}}},
	} {
		got, err := parseMemberSizes(tc.nodes, tc.profile)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("--nodes=%s --profile=%s: %v, %v; want %v", strings.Join(tc.nodes, ","), tc.profile, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		nodes []string
		says  string
	}{
		{nil, "empty"},
		{[]string{"2"}, "2 is not 3 to 254"},
		{[]string{"255"}, "255 is not 3 to 254"},
		{[]string{"sixty"}, `"sixty" is not a cluster size`},
		{[]string{"64:"}, `profile "" is not one of lan-fast, default`},
		{[]string{"64:fast"}, `profile "fast" is not one of lan-fast, default`},
		{[]string{":default"}, "is not a cluster size"},
		{[]string{"3", "16", "3:lan-fast"}, "3 nodes with the lan-fast profile listed twice"},
	} {
		_, err := parseMemberSizes(tc.nodes, "lan-fast")
		var ue usageError
		if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), "--nodes") || !strings.Contains(err.Error(), tc.says) ||
			strings.Contains(err.Error(), "\n") {
			t.Errorf("--nodes=%s: %v, want a one-line usage error saying %q", strings.Join(tc.nodes, ","), err, tc.says)
		}
	}
}

// TestDescriptorCheck: a soft limit that is enough is left alone, one that
// is not is raised to the hard limit, and a hard limit that is not enough
// is an error naming RLIMIT_NOFILE, the limit and the node count; all on a
// fake limit, so the test process's own is untouched.
func TestDescriptorCheck(t *testing.T) {
	need64 := uint64(fdBaseline + fdsPerNode*64)
	for _, tc := range []struct {
		name      string
		cur, max  uint64
		setErr    error
		nodes     int
		wantSet   bool   // setrlimit called, with the hard limit as the soft one
		wantError string // "" for success
	}{
		{"enough", 65536, 65536, nil, 64, false, ""},
		{"exactly enough", need64, need64, nil, 64, false, ""},
		{"soft raised", 1024, 65536, nil, 64, true, ""},
		{"soft raised to exactly enough", 1024, need64, nil, 64, true, ""},
		{"hard too low", 1024, 1024, nil, 64, false, "64 nodes want about 2624 open descriptors (40 each), over RLIMIT_NOFILE's hard limit of 1024"},
		{"one short", need64 - 1, need64 - 1, nil, 64, false, "RLIMIT_NOFILE's hard limit of 2623"},
		{"small cluster", 256, 256, nil, 3, false, ""},
		{"raising refused", 1024, 4096, syscall.EPERM, 64, true, "raising it to the hard limit 4096 failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var set *unix.Rlimit
			l := fdLimit{
				get: func(r *unix.Rlimit) error { r.Cur, r.Max = tc.cur, tc.max; return nil },
				set: func(r *unix.Rlimit) error { c := *r; set = &c; return tc.setErr },
			}
			err := l.ensure(tc.nodes)
			switch {
			case tc.wantError == "" && err != nil:
				t.Errorf("ensure(%d): %v", tc.nodes, err)
			case tc.wantError != "" && (err == nil || !strings.Contains(err.Error(), tc.wantError) || strings.Contains(err.Error(), "\n")):
				t.Errorf("ensure(%d): %v, want one line with %q", tc.nodes, err, tc.wantError)
			}
			if (set != nil) != tc.wantSet || (set != nil && (set.Cur != tc.max || set.Max != tc.max)) {
				t.Errorf("setrlimit %+v, want a call: %v (soft = hard = %d)", set, tc.wantSet, tc.max)
			}
		})
	}
	// The real limit, read and left as it is for a 3-node cluster on any
	// machine these tests run on.
	if err := ensureDescriptors(3); err != nil {
		t.Errorf("ensureDescriptors(3): %v", err)
	}
}
