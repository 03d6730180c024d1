package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// cpuPlan is where --pin puts the client and the servers.
type cpuPlan struct {
	client, servers int
	taskset         string // path of taskset(1)
}

// planPinning picks the first two CPUs this process may run on: the client
// gets one, every server the other, so client and server never steal each
// other's CPU and the scheduler cannot move them around between rounds.
func planPinning() (cpuPlan, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return cpuPlan{}, fmt.Errorf("--pin: %w", err)
	}
	var cpus []int
	for cpu := 0; cpu < len(set)*64 && len(cpus) < 2; cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	if len(cpus) < 2 {
		return cpuPlan{}, usagef("--pin needs two CPUs, this process may use %d", set.Count())
	}
	ts, err := exec.LookPath("taskset")
	if err != nil {
		return cpuPlan{}, usagef("--pin runs servers under taskset(1) (util-linux): %v", err)
	}
	return cpuPlan{client: cpus[0], servers: cpus[1], taskset: ts}, nil
}

func (p cpuPlan) String() string {
	return fmt.Sprintf("client on CPU %d with GOMAXPROCS 1, servers under taskset -c %d", p.client, p.servers)
}

// wrap prefixes a server's command line with taskset.
func (p cpuPlan) wrap(argv []string) []string {
	return append([]string{p.taskset, "-c", strconv.Itoa(p.servers)}, argv...)
}

// pinSelf binds every thread of this process to the client CPU. Affinity
// is per thread on Linux and the Go runtime already runs several, so each
// is set through /proc/self/task; threads started later inherit it from
// the thread that starts them. A second pass catches a thread started
// during the first. GOMAXPROCS follows, so that the runtime does not run
// two Ps on one CPU.
func (p cpuPlan) pinSelf() error {
	var set unix.CPUSet
	set.Set(p.client)
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("--pin: %w", err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("--pin: thread %d: %w", tid, err)
			}
		}
	}
	runtime.GOMAXPROCS(1)
	return nil
}
