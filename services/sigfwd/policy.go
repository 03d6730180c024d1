package sigfwd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
)

// Policy says which OS processes of this node other nodes may signal.
// The zero Policy allows none: named handlers are always reachable, OS
// processes only when a node opts in.
type Policy struct {
	// AllowProcesses turns on delivery of OS signals to this node's
	// processes, limited to PIDs and, if AllowUID, to UID's processes.
	AllowProcesses bool
	// PIDs may be signalled.
	PIDs []int
	// AllowUID lets processes owned by UID be signalled: those whose real
	// and effective user IDs (/proc/PID/status, Uid:) are both UID.
	AllowUID bool
	UID      uint32
	// AllowSelf lets other nodes send SIGKILL to this node's own process,
	// the one that runs the forwarder, whatever AllowProcesses says: fault
	// injection, as cibench failover --target does to a node on another
	// machine. Off by default: with it, any member can kill this one. No
	// other signal: SIGSTOP would hang the node for good (its process never
	// exits, so no supervisor restarts it), SIGQUIT make it exit 2, which
	// deploy/cinode.service does not restart, SIGTERM make it leave.
	AllowSelf bool
}

// ErrBadPolicy is returned for a policy that makes no sense.
var ErrBadPolicy = errors.New("sigfwd: bad policy")

func (p Policy) validate() error {
	for _, pid := range p.PIDs {
		if pid <= 0 {
			return fmt.Errorf("%w: PID %d", ErrBadPolicy, pid)
		}
	}
	if p.AllowProcesses && len(p.PIDs) == 0 && !p.AllowUID {
		return fmt.Errorf("%w: AllowProcesses names no PIDs and no UID: nothing could be signalled", ErrBadPolicy)
	}
	return nil
}

func (p Policy) clone() Policy {
	p.PIDs = slices.Clone(p.PIDs)
	return p
}

// maxSignal is Linux's SIGRTMAX.
const maxSignal = 64

// processOwner reads the real and effective user IDs of pid from
// /proc/PID/status. A missing process gives an error wrapping
// os.ErrNotExist.
func processOwner(procRoot string, pid int) (real, effective uint32, err error) {
	b, err := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("Uid:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest) // real, effective, saved, filesystem
		if len(f) < 2 {
			break
		}
		r, err1 := strconv.ParseUint(string(f[0]), 10, 32)
		e, err2 := strconv.ParseUint(string(f[1]), 10, 32)
		if err1 != nil || err2 != nil {
			break
		}
		return uint32(r), uint32(e), nil
	}
	return 0, 0, fmt.Errorf("sigfwd: no Uid line in %s/%d/status", procRoot, pid)
}
