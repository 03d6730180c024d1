package bench

import "time"

// The membership section of the result schema (cibench membership): per
// cluster size, how long a cluster of real node processes takes to form,
// how long a committed transition takes to reach every node, and what the
// CLMS master costs in steady state.

// MembershipResult is every cluster size of one run.
type MembershipResult struct {
	// Profile is the CLMS timing profile of the runs that were not given
	// their own (cibench membership --profile); empty in target mode.
	Profile string `json:"profile"`
	// Mode and Endpoints are as in FailoverResult.
	Mode      string          `json:"mode,omitempty"`
	Endpoints []string        `json:"endpoints,omitempty"`
	Runs      []MembershipRun `json:"runs"`
}

// MembershipRun is one cluster size.
type MembershipRun struct {
	Nodes int `json:"nodes"`
	// Profile is this run's CLMS timing profile (a spawned cluster's
	// --nodes=64:default, or --profile); empty in target mode and in
	// version 1 files, where every run had MembershipResult.Profile.
	Profile string `json:"profile,omitempty"`
	// Formation: from starting every node process at once to every node
	// ready (joined, UP, lease valid) and seeing all of them UP (polled).
	// Absent in target mode, where FormationNotMeasured says why.
	Formation            time.Duration `json:"formation_ns,omitempty"`
	FormationNotMeasured string        `json:"formation_not_measured,omitempty"`
	// PropagationFirst and PropagationAll: from a transition's commit (its
	// time, on the master) to the first and the last other node streaming
	// it from its admin watch. The transition is a member's planned
	// SHUTDOWN (PropagationBy "shutdown", spawned), or a killed member's
	// NODEDOWN (UP... -> DOWN; PropagationBy "kill-rejoin", target mode
	// with --allow-faults), whose rejoin's NODEUP (-> UP) gives
	// PropagationUpFirst and PropagationUpAll. Without a transition to
	// measure, PropagationNotMeasured says why and the times are absent.
	PropagationFirst       time.Duration `json:"propagation_first_ns,omitempty"`
	PropagationAll         time.Duration `json:"propagation_all_ns,omitempty"`
	PropagationBy          string        `json:"propagation_by,omitempty"`
	PropagationUpFirst     time.Duration `json:"propagation_up_first_ns,omitempty"`
	PropagationUpAll       time.Duration `json:"propagation_up_all_ns,omitempty"`
	PropagationNotMeasured string        `json:"propagation_not_measured,omitempty"`
	// Steady is the window over which the loads below were measured, with
	// every node UP and nothing happening.
	Steady time.Duration `json:"steady_ns"`
	// MasterCPU and MemberCPU are the CPU time (user+system) the master's
	// and one other member's process used per second of Steady.
	MasterCPU float64 `json:"master_cpu"`
	MemberCPU float64 `json:"member_cpu"`
	// MasterBytesPerSec is the master's ICS bytes in plus out per second
	// (ci_ics_bytes_in_total + ci_ics_bytes_out_total) over Steady.
	MasterBytesPerSec float64 `json:"master_bytes_per_sec"`
	// FDsMaster and FDsMember are open descriptors of those processes.
	FDsMaster int `json:"fds_master"`
	FDsMember int `json:"fds_member"`
}

// RunProfile is run i's timing profile: its own, or in a version 1 file
// the result's.
func (m *MembershipResult) RunProfile(i int) string {
	if p := m.Runs[i].Profile; p != "" {
		return p
	}
	return m.Profile
}
