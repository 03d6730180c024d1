package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The result schema every cibench scenario writes with --json, and that
// tools/benchreport turns into BENCHMARKS.md. See docs/BENCH_SCHEMA.md for
// the fields; the rules for changing it are:
//
//   - adding a section or a field (omitted when empty) keeps the version:
//     readers ignore what they do not know, and an absent section means the
//     scenario did not run;
//   - renaming, removing or changing the meaning or unit of a field bumps
//     SchemaVersion, and ReadReport refuses a version it does not know.
//
// Version 2: throughput holds one comparison per (payload size,
// concurrency) rather than per size, and membership runs carry their own
// profile. A version 1 file is a version 2 file with one concurrency and
// one profile, so ReadReport reads both (MinSchemaVersion); code that
// reads only version 1 refuses version 2 files rather than take a
// throughput entry with 1 caller for the 256-caller one.
const (
	SchemaName       = "cibench-result"
	SchemaVersion    = 2
	MinSchemaVersion = 1 // the oldest version ReadReport still reads
)

// ErrSchema means a file is not a cibench result this code can read.
var ErrSchema = errors.New("bench: not a readable cibench result")

// Report is one cibench invocation's result: which scenarios ran, every
// figure they measured and where. A scenario's section is nil (absent from
// the JSON) when it did not run.
type Report struct {
	Schema   string    `json:"schema"`          // SchemaName
	Version  int       `json:"version"`         // SchemaVersion
	Scenario string    `json:"scenario"`        // the command: compare, rpc, flow, priority, all
	Quick    bool      `json:"quick,omitempty"` // cibench all --quick: small sizes, not for quoting
	Command  []string  `json:"command"`         // os.Args as run
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  Machine   `json:"machine"`
	// Target is set when the run measured a running cluster (--target)
	// instead of processes cibench spawned; absent otherwise.
	Target *TargetRun `json:"target,omitempty"`

	// Latency is one comparison per payload size, one caller at a time
	// (cibench compare).
	Latency []*Comparison `json:"latency,omitempty"`
	// Throughput is one comparison per payload size and number of
	// concurrent callers (cibench rpc; cibench all: every size at 256
	// callers, then the concurrency sweep at 64 B). ThroughputAt picks one.
	Throughput []*Comparison `json:"throughput,omitempty"`
	// Allocs is heap allocations per RPC for each peer, client and server
	// in one process (cibench all).
	Allocs []AllocResult `json:"allocs,omitempty"`
	// Priority is flow control and priority under load (cibench flow,
	// cibench priority).
	Priority *PriorityResult `json:"priority,omitempty"`
	// Failover is key-service and master failover (cibench failover, once
	// CLMS and key services exist).
	Failover *FailoverResult `json:"failover,omitempty"`
	// FailoverHang is the same scenario with SIGSTOP of a member that is
	// neither master nor key-service owner: hang detection (cibench all).
	FailoverHang *FailoverResult `json:"failover_hang,omitempty"`
	// Membership is formation, transition propagation and the master's
	// steady load by cluster size (cibench membership).
	Membership *MembershipResult `json:"membership,omitempty"`
}

// NewReport starts a report for scenario: the command line, the clock and
// the machine as they are now. Finish it when the scenario is done.
func NewReport(scenario string, args []string) *Report {
	return &Report{
		Schema:   SchemaName,
		Version:  SchemaVersion,
		Scenario: scenario,
		Command:  args,
		Started:  time.Now().UTC(),
		Machine:  CurrentMachine(),
	}
}

// Finish records the end time and the load average at the end: a load that
// rose during the run says the numbers were shared with someone.
func (r *Report) Finish() {
	r.Finished = time.Now().UTC()
	r.Machine.LoadAvgEnd = loadAvg()
}

// WriteJSON writes r, indented, to w.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadReport reads a report and checks its schema and version: versions
// MinSchemaVersion to SchemaVersion are read as the current one.
func ReadReport(rd io.Reader) (*Report, error) {
	var r Report
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSchema, err)
	}
	if r.Schema != SchemaName || r.Version < MinSchemaVersion || r.Version > SchemaVersion {
		return nil, fmt.Errorf("%w: schema %q version %d, this code reads %q versions %d to %d",
			ErrSchema, r.Schema, r.Version, SchemaName, MinSchemaVersion, SchemaVersion)
	}
	return &r, nil
}

// ThroughputAt is the throughput comparison of size-byte requests with
// concurrency callers, or nil when the run did not measure it.
func (r *Report) ThroughputAt(size, concurrency int) *Comparison {
	for _, c := range r.Throughput {
		if c.ReqSize == size && c.Concurrency == concurrency {
			return c
		}
	}
	return nil
}

// Machine is where the numbers were taken. Ratios between peers in one run
// mean something on any machine; absolute times only with this beside them.
type Machine struct {
	CPUModel   string `json:"cpu_model"`   // /proc/cpuinfo "model name"
	Cores      int    `json:"cores"`       // CPUs the kernel has online (runtime.NumCPU sees the affinity mask instead)
	CPUsUsable int    `json:"cpus_usable"` // CPUs this process may run on (its affinity mask)
	Kernel     string `json:"kernel"`      // uname -r
	GoVersion  string `json:"go_version"`
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	// Pinned is set when the process was started under taskset (its
	// affinity mask leaves out online CPUs) or pinned itself (--pin);
	// Pinning says how.
	Pinned  bool   `json:"pinned"`
	Pinning string `json:"pinning,omitempty"`
	// Load averages over 1, 5 and 15 minutes (/proc/loadavg) when the run
	// started and when it ended.
	LoadAvgStart [3]float64 `json:"loadavg_start"`
	LoadAvgEnd   [3]float64 `json:"loadavg_end"`
}

// CurrentMachine describes this machine and process now. Fields the
// system does not expose (another OS) stay empty rather than failing a run.
func CurrentMachine() Machine {
	m := Machine{
		CPUModel:     cpuModel(),
		Cores:        onlineCPUs(),
		CPUsUsable:   runtime.NumCPU(),
		Kernel:       kernelRelease(),
		GoVersion:    runtime.Version(),
		GOOS:         runtime.GOOS,
		GOARCH:       runtime.GOARCH,
		GOMAXPROCS:   runtime.GOMAXPROCS(0),
		LoadAvgStart: loadAvg(),
	}
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) == nil {
		m.CPUsUsable = set.Count()
	}
	if m.Cores > 0 && m.CPUsUsable < m.Cores {
		m.Pinned = true
		m.Pinning = fmt.Sprintf("started with an affinity mask of %d of %d CPUs (taskset)", m.CPUsUsable, m.Cores)
	}
	return m
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// onlineCPUs counts /sys/devices/system/cpu/online ("0-1,4" is 3 CPUs).
func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for part := range strings.SplitSeq(strings.TrimSpace(string(b)), ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		z := a
		var err2 error
		if isRange {
			z, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || z < a {
			return runtime.NumCPU()
		}
		n += z - a + 1
	}
	return n
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// AllocResult is heap allocations per echo call for one peer, measured
// with client and server in this process (as BenchmarkPingPong does), so
// both sides' allocations count.
type AllocResult struct {
	Peer          string  `json:"peer"`
	Calls         int     `json:"calls"`
	AllocsPerCall float64 `json:"allocs_per_call"`
	BytesPerCall  float64 `json:"bytes_per_call"`
	Size          int     `json:"request_bytes"`
}

// PriorityResult is cibench priority (and flow): flow control's bulk and
// priority-under-load figures, and the nested-RPC deadlock with and
// without escalation.
type PriorityResult struct {
	Flow     *FlowResult     `json:"flow,omitempty"`
	Deadlock *DeadlockResult `json:"deadlock,omitempty"`
	// TargetFlow replaces Flow, and Deadlock is absent, in a run against a
	// running cluster (--target).
	TargetFlow *TargetFlowResult `json:"target_flow,omitempty"`
	// The nodes' ci_ics_* metrics at the end (cibench flow --metrics).
	ClientMetrics []string `json:"client_metrics,omitempty"`
	ServerMetrics []string `json:"server_metrics,omitempty"`
}
