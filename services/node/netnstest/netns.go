// Package netnstest runs test processes as if on separate machines: each
// Host is a Linux network namespace with its own address on a bridge in the
// test's namespace, so that a partition is the kernel's, not a proxy's.
// Cut takes a host's link down: its packets and everyone's packets to it
// vanish, with no RST and no close; TCP senders fill their send buffers and
// block, unacknowledged data is retransmitted, SYNs go unanswered, and Heal
// brings the stale connections' packets back. Cut also drops the host's
// carrier, as a pulled cable does, and with it the host's ARP entries;
// Block partitions it further into the network (its bridge port disabled,
// its link up).
//
//	nw := netnstest.New(t, 3) // skips unless root with a working `ip netns`
//	cmd := nw.Hosts[0].Command("/path/cinode", "-c", cfg, "-n", "1")
//	nw.Hosts[0].Cut()  // partition host 1 from everyone
//	nw.Hosts[0].Heal()
//
// The test process itself sits on the bridge (Net.HostIP): it reaches every
// host until that host is cut. Everything New creates is removed in
// t.Cleanup, and namespaces or links left by a test process that died
// without cleaning up (a -timeout panic) are removed by the next New.
package netnstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Name prefixes; every name carries the pid of the test process that made
// it, so that concurrent test processes never collide and a dead one's
// leftovers can be told apart (sweep).
const (
	nsPrefix     = "cins"  // namespace: cins<pid>-<seq>-<host>
	bridgePrefix = "cib"   // bridge: cib<pid>x<seq>
	vethPrefix   = "civ"   // host-side veth: civ<pid>x<seq>x<host>
	maxHosts     = 9       // one digit in the veth name (15 bytes at most)
	ipBin        = "ip"    // iproute2
	subnets      = 2 * 256 // 198.18.0.0/15 (RFC 2544, benchmarking): one /24 per Net
)

var seq atomic.Int32

// Net is a bridge in the test's namespace and hosts attached to it.
type Net struct {
	Hosts  []*Host
	HostIP string // the test process's address on the bridge
	bridge string
}

// Host is one network namespace with one address.
type Host struct {
	Index int    // 1-based
	NS    string // namespace name, for `ip netns exec`
	IP    string // its address on the bridge
	veth  string // the bridge side of its link: down is a partition
	t     testing.TB
}

// New makes n hosts on a fresh bridge, or skips t with the reason when the
// machine cannot: not root, no `ip`, or namespaces not permitted here.
func New(t testing.TB, n int) *Net {
	t.Helper()
	if n < 1 || n > maxHosts {
		t.Fatalf("netnstest: %d hosts; want 1..%d", n, maxHosts)
	}
	if os.Geteuid() != 0 {
		t.Skip("netnstest: needs root to create network namespaces (run the test as root)")
	}
	if _, err := exec.LookPath(ipBin); err != nil {
		t.Skip("netnstest: no `ip` command (iproute2) on PATH")
	}
	sweep(t)
	pid, s := os.Getpid(), seq.Add(1)
	sub := (pid*7 + int(s)) % subnets
	prefix := fmt.Sprintf("198.%d.%d.", 18+sub/256, sub%256)
	nw := &Net{HostIP: prefix + "254", bridge: fmt.Sprintf("%s%dx%d", bridgePrefix, pid, s)}
	if len(nw.bridge) > 15 {
		t.Fatalf("netnstest: interface name %q too long", nw.bridge)
	}
	// Registered first, so it runs last: after the processes that tests
	// start in the namespaces (their cleanups) have been killed.
	t.Cleanup(func() { nw.remove(t) })
	if err := run("link", "add", nw.bridge, "type", "bridge"); err != nil {
		t.Skipf("netnstest: cannot create a bridge here: %v", err)
	}
	must := func(args ...string) {
		t.Helper()
		if err := run(args...); err != nil {
			t.Fatalf("netnstest: %v", err)
		}
	}
	must("addr", "add", nw.HostIP+"/24", "dev", nw.bridge)
	must("link", "set", nw.bridge, "up")
	for i := 1; i <= n; i++ {
		h := &Host{Index: i, NS: fmt.Sprintf("%s%d-%d-%d", nsPrefix, pid, s, i), IP: prefix + strconv.Itoa(i),
			veth: fmt.Sprintf("%s%dx%dx%d", vethPrefix, pid, s, i), t: t}
		if err := run("netns", "add", h.NS); err != nil {
			if i == 1 {
				t.Skipf("netnstest: cannot create a network namespace here: %v", err)
			}
			t.Fatalf("netnstest: %v", err)
		}
		nw.Hosts = append(nw.Hosts, h)
		must("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
		must("link", "set", h.veth, "master", nw.bridge, "up")
		must("-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
		must("-n", h.NS, "link", "set", "eth0", "up")
		must("-n", h.NS, "link", "set", "lo", "up")
	}
	return nw
}

// Command is exec.Command(name, args...) run inside h's namespace. The
// process is name itself (`ip netns exec` execs it), so signals sent to
// cmd.Process reach it.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command(ipBin, append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Do runs fn on an OS thread inside h's namespace: the sockets fn
// creates (a listener, an engine node's Start) belong to h's network for
// their whole life, whichever goroutine uses them later. Dials made later
// from other goroutines are made from the test's namespace.
func (h *Host) Do(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked if the thread cannot go back: it then ends with the goroutine
		self, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/var/run/netns", h.NS))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netnstest: enter %s: %w", h.NS, err)
			return
		}
		fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netnstest: leave %s: %w", h.NS, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// Block stops the bridge forwarding anything to or from h, while h's own
// link stays up: a partition further into the network (a switch's
// uplink), where Cut is h's own link lost (a cable, a port): a lost
// carrier also makes h's kernel forget its neighbours (ARP), and h then
// re-resolves them only at its next ARP retry (1 s by default) after the
// link is back.
func (h *Host) Block() {
	h.t.Helper()
	// Disabled, not blocking (4): with STP off the kernel takes state 4
	// and leaves the port forwarding (TestBlockBlocks).
	if err := bridgePortState(h.veth, "0"); err != nil { // disabled
		h.t.Fatalf("netnstest: block host %d: %v", h.Index, err)
	}
}

// Unblock lets the bridge forward h's frames again.
func (h *Host) Unblock() {
	h.t.Helper()
	if err := bridgePortState(h.veth, "3"); err != nil { // forwarding
		h.t.Fatalf("netnstest: unblock host %d: %v", h.Index, err)
	}
}

func bridgePortState(port, state string) error {
	out, err := exec.Command("bridge", "link", "set", "dev", port, "state", state).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bridge link set dev %s state %s: %v: %s", port, state, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Sysctl sets a sysctl of h's namespace, as "net.ipv4.tcp_rto_min_us"
// (the net.* ones are per namespace): a machine's tuning, before the
// processes whose sockets should see it start.
func (h *Host) Sysctl(key, value string) error {
	out, err := exec.Command(ipBin, "netns", "exec", h.NS, "sysctl", "-qw", key+"="+value).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netnstest: sysctl %s=%s in %s: %v: %s", key, value, h.NS, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Cut takes h's link down: nothing reaches h and nothing leaves it, and
// no one is told (no RST, no ICMP, no close).
func (h *Host) Cut() {
	h.t.Helper()
	if err := run("link", "set", h.veth, "down"); err != nil {
		h.t.Fatalf("netnstest: cut host %d: %v", h.Index, err)
	}
}

// Heal brings h's link back up: packets flow again, those of connections
// made before the cut included.
func (h *Host) Heal() {
	h.t.Helper()
	if err := run("link", "set", h.veth, "up"); err != nil {
		h.t.Fatalf("netnstest: heal host %d: %v", h.Index, err)
	}
}

// remove deletes the namespaces, links and bridge; a namespace still used
// by a live process disappears when that process exits.
func (nw *Net) remove(t testing.TB) {
	for _, h := range nw.Hosts {
		if err := run("link", "del", h.veth); err != nil && !isGone(err) {
			t.Errorf("netnstest: %v", err)
		}
		if err := run("netns", "del", h.NS); err != nil && !isGone(err) {
			t.Errorf("netnstest: %v", err)
		}
	}
	if err := run("link", "del", nw.bridge); err != nil && !isGone(err) {
		t.Errorf("netnstest: %v", err)
	}
}

// sweep removes namespaces and links whose test process is gone.
func sweep(t testing.TB) {
	out, err := exec.Command(ipBin, "netns", "list").Output()
	if err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(strings.TrimSpace(l), " ")
			if pid, ok := ownerPID(name, nsPrefix, "-"); ok && !alive(pid) {
				if err := run("netns", "del", name); err != nil && !isGone(err) {
					t.Logf("netnstest: sweeping %s: %v", name, err)
				}
			}
		}
	}
	out, err = exec.Command(ipBin, "-o", "link", "show").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		// "12: civ123x1x2@if3: <...>"
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		for _, p := range []string{bridgePrefix, vethPrefix} {
			if pid, ok := ownerPID(name, p, "x"); ok && !alive(pid) {
				if err := run("link", "del", name); err != nil && !isGone(err) {
					t.Logf("netnstest: sweeping %s: %v", name, err)
				}
			}
		}
	}
}

// ownerPID reads the pid from a name made here: prefix, pid, sep, ...
func ownerPID(name, prefix, sep string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	p, _, found := strings.Cut(rest, sep)
	if !found {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func run(args ...string) error {
	out, err := exec.Command(ipBin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// isGone is an error of deleting something already gone.
func isGone(err error) bool {
	s := err.Error()
	return strings.Contains(s, "Cannot find device") || strings.Contains(s, "No such file") || strings.Contains(s, "does not exist")
}

// Eventually polls cond until it holds, or fails t after d with what and
// cond's last word: for conditions of other processes and of the kernel,
// which a test cannot be told about.
func Eventually(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for time.Now().Before(deadline) {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v; last: %s", what, d, last)
}
