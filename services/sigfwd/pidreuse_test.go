package sigfwd

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/clusterinfra/ci/engine/enginetest"
)

const pidReuseChildEnv = "CI_SIGFWD_PIDREUSE_CHILD"

// TestPidfdAgainstPIDReuse proves what deliver's pidfd is for: the process
// it checked exits and its PID is given to another process before the
// signal is sent; the new process must not be signalled. Forcing a PID to
// be reused needs a PID namespace of our own (the test re-runs itself as
// its init, where writing ns_last_pid touches nobody else), so it skips
// where that is not allowed.
func TestPidfdAgainstPIDReuse(t *testing.T) {
	if os.Getenv(pidReuseChildEnv) != "" {
		pidReuseChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPidfdAgainstPIDReuse$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), pidReuseChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	out, err := cmd.CombinedOutput()
	var perr *os.PathError
	switch {
	case errors.As(err, &perr) || errors.Is(err, syscall.EPERM):
		t.Skipf("no PID namespace for the test: %v", err)
	case strings.Contains(string(out), "SKIP-REUSE"):
		t.Skipf("the kernel would not reuse the PID: %s", out)
	case err != nil:
		t.Fatalf("child: %v\n%s", err, out)
	case !strings.Contains(string(out), "--- PASS: TestPidfdAgainstPIDReuse"):
		t.Fatalf("child did not run the test:\n%s", out)
	}
}

// pidReuseChild runs as init of a new PID namespace.
func pidReuseChild(t *testing.T) {
	node := enginetest.StartCluster(t, 1, nil)[0]
	for attempt := 0; attempt < 5; attempt++ {
		a := startSleeper(t)
		pidA := a.pid()
		// deliver alone, as the service's Process procedure calls it.
		f := &Forwarder{node: node, log: node.Logger(), procRoot: "/proc", self: os.Getpid()}
		f.policy.Store(&Policy{AllowProcesses: true, PIDs: []int{pidA}})
		var b *sleeper
		testHookPidfdOpened = func(pid int) {
			// A exits and is reaped; the next PID handed out is A's.
			_ = a.cmd.Process.Kill()
			<-a.done
			if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
				t.Fatalf("ns_last_pid: %v", err)
			}
			b = startSleeper(t)
		}
		err := f.deliver(pidA, syscall.SIGTERM)
		testHookPidfdOpened = nil
		if b.pid() != pidA {
			continue // a thread of this process took the PID first; again
		}
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("signal to exited pid %d (now another process): %v, want ErrNotFound", pidA, err)
		}
		if !b.alive() {
			t.Fatalf("the new process that got pid %d was signalled", pidA)
		}
		return
	}
	fmt.Println("SKIP-REUSE")
}
