package bench

import "time"

// The membership section of the result schema (cibench membership): per
// cluster size, how long a cluster of real node processes takes to form,
// how long a committed transition takes to reach every node, and what the
// CLMS master costs in steady state.

// MembershipResult is every cluster size of one run.
type MembershipResult struct {
	Profile string          `json:"profile"` // CLMS timing profile
	Runs    []MembershipRun `json:"runs"`
}

// MembershipRun is one cluster size.
type MembershipRun struct {
	Nodes int `json:"nodes"`
	// Formation: from starting every node process at once to every node
	// ready (joined, UP, lease valid) and seeing all of them UP (polled).
	Formation time.Duration `json:"formation_ns"`
	// PropagationFirst and PropagationAll: from a transition's commit (its
	// time, on the master) to the first and the last other node streaming
	// it from its admin watch. The transition is a member's planned
	// SHUTDOWN.
	PropagationFirst time.Duration `json:"propagation_first_ns"`
	PropagationAll   time.Duration `json:"propagation_all_ns"`
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
