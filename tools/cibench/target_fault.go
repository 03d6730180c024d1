package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clusterinfra/ci/services/admin"
)

// Target mode: the scenarios run against a cluster that is already
// running, found through its nodes' admin endpoints (--target), instead of
// one cibench spawns. The other RPC scenarios share these flags.

// targetFlags are --target and --token-file, embedded in every scenario
// that can run against a running cluster.
type targetFlags struct {
	Target    []string `sep:"," placeholder:"ADDR" help:"Run against a running cluster instead of spawning one: its nodes' admin endpoints (host:port or unix:/path, as cluster --endpoint), repeatable or comma-separated. Nodes not named are found from /v1/members." env:"CI_TARGET"`
	TokenFile string   `type:"path" placeholder:"FILE" help:"Bearer token file (mode 0600) for --target endpoints that are not on loopback, as cluster --token-file." env:"CI_TOKEN_FILE"`
}

// enabled reports whether --target was given.
func (f targetFlags) enabled() bool { return len(f.Target) > 0 }

// validate checks the flags' syntax and reads the token: a usage error
// naming the flag, before anything runs.
func (f targetFlags) validate() (token string, err error) {
	if f.TokenFile != "" && !f.enabled() {
		return "", usagef("--token-file is for --target endpoints: give --target too")
	}
	for _, a := range f.Target {
		if err := admin.CheckAddr(a); err != nil {
			return "", usagef("--target %s", strings.TrimPrefix(err.Error(), admin.ErrConfig.Error()+": "))
		}
	}
	if f.TokenFile != "" {
		if token, err = admin.ReadToken(f.TokenFile); err != nil {
			return "", usagef("--token-file: %s", strings.TrimPrefix(err.Error(), admin.ErrConfig.Error()+": "))
		}
	}
	return token, nil
}

// Bounds of target mode.
const (
	targetCallTimeout = 5 * time.Second // one admin call to a node that answers at all
	// defaultRejoinTimeout: a supervisor's restart delay (deploy/cinode.service:
	// RestartSec=2) plus a join, with room for a loaded machine.
	defaultRejoinTimeout = 60 * time.Second
)

// targetCluster is a running cluster as cibench drives it through the
// admin endpoints. It never starts a node: a victim comes back only if its
// supervisor restarts it.
type targetCluster struct {
	adminView
	addrs   map[int]string // each node's admin endpoint
	rejoin  time.Duration  // --rejoin-timeout
	killVia string         // --kill-via: auto, local or cluster

	// Forwarded kills run beside the measurement: wg counts them, and
	// stop (close) ends them.
	wg       sync.WaitGroup
	stopCtx  context.Context
	stopCall context.CancelFunc

	mu sync.Mutex
	// Guarded by mu:
	stopped  map[int]int    // node -> pid this run SIGSTOPped and has not continued
	before   map[int]string // node -> its incarnation when it was faulted
	faultErr error          // a forwarded kill that was refused
}

var _ faultCluster = (*targetCluster)(nil)

// dialTarget finds the cluster behind the endpoints: every endpoint must
// answer /v1/status and belong to one cluster; the node table comes from
// /v1/members, and a node no endpoint names is reached at the node table's
// admin address, or the default one when that is derivable.
func dialTarget(ctx context.Context, f targetFlags, rejoin time.Duration, killVia string) (_ *targetCluster, err error) {
	token, err := f.validate()
	if err != nil {
		return nil, err
	}
	c := &targetCluster{addrs: map[int]string{}, rejoin: rejoin, killVia: killVia,
		stopped: map[int]int{}, before: map[int]string{}, adminView: adminView{cl: map[int]*admin.Client{}}}
	c.stopCtx, c.stopCall = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			c.stopCall()
			c.closeClients()
		}
	}()
	cluster := ""
	var first *admin.Client
	for _, a := range f.Target {
		cl := admin.NewClient(a, token)
		st, err := statusOf(ctx, cl)
		if err != nil {
			cl.Close()
			return nil, usagef("--target %s does not answer as an admin endpoint: %v", a, err)
		}
		n := int(st.Node)
		switch {
		case cluster != "" && st.Cluster != cluster:
			cl.Close()
			return nil, usagef("--target %s is node %d of cluster %q, not of %q like %s", a, n, st.Cluster, cluster, f.Target[0])
		case c.cl[n] != nil:
			cl.Close()
			return nil, usagef("--target %s and %s are both node %d", c.addrs[n], a, n)
		}
		cluster, c.cl[n], c.addrs[n] = st.Cluster, cl, a
		if first == nil {
			first = cl
		}
	}
	var ms admin.Members
	if err := get(ctx, first, "/v1/members", &ms); err != nil {
		return nil, err
	}
	for _, m := range ms.Members {
		n := int(m.Node)
		c.table = append(c.table, n)
		if c.cl[n] != nil {
			continue
		}
		a, err := memberAdmin(m)
		if err != nil {
			return nil, usageError{err}
		}
		cl := admin.NewClient(a, token)
		c.cl[n], c.addrs[n] = cl, a
		st, err := statusOf(ctx, cl)
		switch {
		case err != nil:
			return nil, fmt.Errorf("node %d's admin endpoint %s (from the node table) does not answer: %w; give the right one with --target", n, a, err)
		case int(st.Node) != n || st.Cluster != cluster:
			return nil, usagef("node %d's admin endpoint %s (from the node table) is node %d of cluster %q; give node %d's with --target", n, a, st.Node, st.Cluster, n)
		}
	}
	var ks admin.KeyServices
	if err := get(ctx, first, "/v1/keysvc", &ks); err != nil {
		return nil, err
	}
	for _, s := range ks.Services {
		c.keyseq = c.keyseq || s.Name == "keyseq"
	}
	return c, nil
}

// memberAdmin is where node m's admin endpoint is: the node table's, else
// the default, which is only reachable from here when the node's ICS
// address is a loopback one (cinode then listens on that address).
func memberAdmin(m admin.Member) (string, error) {
	if m.Admin != "" {
		return m.Admin, nil
	}
	host, _, err := net.SplitHostPort(m.Address)
	if ip := net.ParseIP(host); err == nil && ip != nil && ip.IsLoopback() {
		return net.JoinHostPort(host, admin.DefaultPort), nil
	}
	return "", fmt.Errorf("node %d's admin endpoint is unknown: the node table gives none and its ICS address %s is not loopback (the default endpoint listens on 127.0.0.1 of its own machine); give it with --target=HOST:PORT", m.Node, m.Address)
}

func get(ctx context.Context, cl *admin.Client, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, targetCallTimeout)
	defer cancel()
	return cl.Get(ctx, path, v)
}

func statusOf(ctx context.Context, cl *admin.Client) (admin.Status, error) {
	var st admin.Status
	err := get(ctx, cl, "/v1/status", &st)
	return st, err
}

func (c *targetCluster) view() *adminView { return &c.adminView }

// check is the refusal of a forwarded kill, if there was one.
func (c *targetCluster) check(int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.faultErr
}

// errNotLocal: a fault that needs the victim on this machine (SIGSTOP,
// --kill-via=local) was asked for one elsewhere. Wrapped by notLocal.
var errNotLocal = errors.New("the victim is not on this machine")

// notLocal is an error that says it all and wraps errNotLocal.
type notLocal string

func (e notLocal) Error() string { return string(e) }
func (notLocal) Unwrap() error   { return errNotLocal }

// faultRoute decides how a fault reaches a node's process: "local" (a
// signal from this process) or "cluster" (SIGKILL forwarded by a
// survivor's POST /v1/signal), or why it cannot. local is whether the
// process is a cinode of this machine, why why not.
func faultRoute(sig syscall.Signal, via string, n int, local bool, why string) (string, error) {
	switch {
	case via == "local" && !local:
		return "", notLocal(fmt.Sprintf("--kill-via=local, but node %d is not a process of this machine (%s)", n, why))
	case sig == syscall.SIGKILL && (via == "cluster" || via == "auto" && !local):
		return "cluster", nil
	case local:
		return "local", nil
	case sig == syscall.SIGSTOP:
		return "", notLocal(fmt.Sprintf("--fault=stop needs the victim on this machine, to continue it afterwards, but node %d is not (%s): run cibench on its machine, or use --fault=kill", n, why))
	}
	return "", notLocal(fmt.Sprintf("node %d is not a process of this machine (%s): only SIGKILL can be forwarded", n, why))
}

// localCinode reports whether pid, which node admin's status names, is a
// cinode process of this machine: its admin endpoint is on loopback or a
// unix socket, procRoot/pid is a process named cinode, and that process
// holds the socket listening at the endpoint in this network namespace.
// The last check is what ties the pid to the endpoint: a status's pid is
// the node's own view, and an endpoint on loopback may be forwarded from
// another machine or container (ssh -L, a published port), whose pid here
// may be another cinode (in containers often pid 1, as the one beside
// cibench). If not, it says why.
func localCinode(procRoot, adminAddr string, pid int) (bool, string) {
	if !admin.IsLocal(adminAddr) {
		return false, fmt.Sprintf("its admin endpoint %s is not on loopback", adminAddr)
	}
	if pid <= 0 {
		return false, "its admin endpoint reports no pid"
	}
	comm, err := os.ReadFile(filepath.Join(procRoot, fmt.Sprint(pid), "comm"))
	if err != nil {
		return false, fmt.Sprintf("no process %d here", pid)
	}
	if name := strings.TrimSpace(string(comm)); name != "cinode" {
		return false, fmt.Sprintf("process %d here is %s, not cinode", pid, name)
	}
	inodes, err := listeners(procRoot, adminAddr)
	if err != nil {
		return false, fmt.Sprintf("cannot tell which process listens on %s: %v", adminAddr, err)
	}
	if len(inodes) == 0 {
		return false, fmt.Sprintf("no socket of this machine listens on %s (forwarded from elsewhere?)", adminAddr)
	}
	fds, err := os.ReadDir(filepath.Join(procRoot, fmt.Sprint(pid), "fd"))
	if err != nil {
		return false, fmt.Sprintf("cannot read process %d's descriptors: %v", pid, err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(procRoot, fmt.Sprint(pid), "fd", fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); err == nil && ok && inodes[strings.TrimSuffix(ino, "]")] {
			return true, ""
		}
	}
	return false, fmt.Sprintf("process %d here does not hold the socket listening on %s (the endpoint is another process's, or forwarded from elsewhere)", pid, adminAddr)
}

// listeners returns the inodes of the sockets listening at admin address
// addr (host:port on loopback, or unix:/path), from procRoot/net: a
// listener on the address itself or on the wildcard of its family.
func listeners(procRoot, addr string) (map[string]bool, error) {
	out := map[string]bool{}
	if path, ok := strings.CutPrefix(addr, admin.UnixPrefix); ok {
		b, err := os.ReadFile(filepath.Join(procRoot, "net", "unix"))
		if err != nil {
			return nil, err
		}
		// The path as the listener bound it: the endpoint may name it
		// through a symlink (/var/run is /run).
		resolved, rerr := filepath.EvalSymlinks(path)
		same := func(p string) bool {
			if p == path {
				return true
			}
			if rerr != nil || filepath.Base(p) != filepath.Base(resolved) {
				return false
			}
			r, err := filepath.EvalSymlinks(p)
			return err == nil && r == resolved
		}
		// Num RefCount Protocol Flags Type St Inode Path; accepted
		// connections show the path too: only __SO_ACCEPTCON (listening).
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) >= 8 && f[3] == "00010000" && same(f[7]) {
				out[f[6]] = true
			}
		}
		return out, nil
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, err
	}
	var ips []net.IP // the addresses a client of addr reaches
	if host == "localhost" {
		ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	} else if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	}
	for _, file := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(procRoot, "net", file))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // no IPv6
			}
			return nil, err
		}
		// sl local_address rem_address st ... inode; st 0A is LISTEN.
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" {
				continue
			}
			ip, p, ok := procNetAddr(f[1])
			if !ok || p != uint16(port) {
				continue
			}
			for _, want := range ips {
				if ip.Equal(want) || (ip.IsUnspecified() && (ip.To4() != nil) == (want.To4() != nil)) {
					out[f[9]] = true
				}
			}
		}
	}
	return out, nil
}

// procNetAddr parses a local_address of /proc/net/tcp or tcp6: the IP in
// hex as 32-bit words in host (little-endian) order, a colon, the port in
// hex.
func procNetAddr(s string) (net.IP, uint16, bool) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(ipHex)
	port, perr := strconv.ParseUint(portHex, 16, 16)
	if !ok || err != nil || perr != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, 0, false
	}
	ip := make(net.IP, len(raw))
	for w := 0; w < len(raw); w += 4 {
		ip[w], ip[w+1], ip[w+2], ip[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	return ip, uint16(port), true
}

// inject prepares the signal of node n's process, directly or through a
// survivor, and refuses what cannot be done (SIGSTOP of a remote node)
// before anything is sent.
func (c *targetCluster) inject(ctx context.Context, n int, sig syscall.Signal) (func() error, error) {
	st, err := statusOf(ctx, c.cl[n])
	if err != nil {
		return nil, fmt.Errorf("node %d: %w", n, err)
	}
	if st.PID == 0 {
		return nil, fmt.Errorf("node %d's admin endpoint %s reports no pid: its cinode is older than this cibench", n, c.addrs[n])
	}
	local, why := localCinode("/proc", c.addrs[n], st.PID)
	route, err := faultRoute(sig, c.killVia, n, local, why)
	if err != nil {
		return nil, err
	}
	via := 0
	if route == "cluster" {
		if via = slices.Min(others(c.table, n)); via == 0 {
			return nil, fmt.Errorf("node %d has no other node to forward SIGKILL through", n)
		}
	}
	c.mu.Lock()
	c.before[n] = st.Incarnation
	c.faultErr = nil
	c.mu.Unlock()
	if route == "local" {
		return func() error {
			if sig == syscall.SIGSTOP {
				c.mu.Lock()
				c.stopped[n] = st.PID // continued by restore or close, whatever happens
				c.mu.Unlock()
			}
			if err := syscall.Kill(st.PID, sig); err != nil {
				return fmt.Errorf("node %d (pid %d): %w", n, st.PID, err)
			}
			return nil
		}, nil
	}
	return func() error {
		// The victim may die before its reply leaves, so the call runs
		// beside the measurement, which must not wait for it; a refusal
		// ends the trial through check.
		fctx, cancel := context.WithTimeout(c.stopCtx, targetCallTimeout)
		c.wg.Add(1)
		go func() { // ends within targetCallTimeout
			defer c.wg.Done()
			defer cancel()
			var acc admin.Accepted
			err := c.cl[via].Post(fctx, "/v1/signal", admin.SignalRequest{Node: uint32(n), PID: st.PID, Signal: "KILL"}, &acc)
			if err := forwardRefused(err, n, via); err != nil {
				c.mu.Lock()
				c.faultErr = err
				c.mu.Unlock()
			}
		}()
		return nil
	}, nil
}

// forwardRefused turns a forwarded kill's error into the reason the
// victim was not killed, or nil when it may have been: a victim that dies
// before its reply leaves makes the call fail with node_down or time out.
func forwardRefused(err error, victim, via int) error {
	var re *admin.RemoteError
	if err == nil || !errors.As(err, &re) {
		return nil
	}
	switch re.Code {
	case "node_down", "timed_out", "failed":
		return nil
	case "refused":
		return fmt.Errorf("node %d refused SIGKILL forwarded by node %d (%s): start node %d's cinode with --allow-fault-kill (CI_ALLOW_FAULT_KILL=1), or run cibench on node %d's machine, where it signals the process itself", victim, via, re.Msg, victim, victim)
	}
	return fmt.Errorf("forwarding SIGKILL to node %d through node %d: %w", victim, via, err)
}

// restore continues a stopped victim, then waits until the cluster has
// re-formed with the victim as a new incarnation: its supervisor's work.
func (c *targetCluster) restore(ctx context.Context, o faultOutcome) (int, error) {
	if err := c.cont(o.victim); err != nil {
		return -1, err
	}
	c.wg.Wait() // the forwarded kill's reply, if any
	if err := c.check(o.victim); err != nil {
		return -1, err
	}
	c.mu.Lock()
	old := c.before[o.victim]
	c.mu.Unlock()
	return -1, c.waitRejoined(ctx, o.victim, old)
}

// cont continues node n if this run stopped it.
func (c *targetCluster) cont(n int) error {
	c.mu.Lock()
	pid, ok := c.stopped[n]
	delete(c.stopped, n)
	c.mu.Unlock()
	if !ok {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("continuing node %d (pid %d): %w", n, pid, err)
	}
	return nil
}

func (c *targetCluster) waitFormed(ctx context.Context) error { return c.waitRejoined(ctx, 0, "") }

// waitRejoined waits up to the rejoin timeout until every node is ready
// and sees every node of the table UP, node victim (if not 0) as another
// incarnation than old.
func (c *targetCluster) waitRejoined(ctx context.Context, victim int, old string) error {
	ctx, cancel := context.WithTimeout(ctx, c.rejoin)
	defer cancel()
	var last string // what was missing at the last poll
	err := c.poll(ctx, "the cluster to re-form", func() (bool, error) {
		for _, n := range c.table {
			st, err := c.status(ctx, n)
			switch {
			case err != nil:
				last = err.Error()
				return false, nil
			case !st.Ready || st.MembersUp < len(c.table):
				last = fmt.Sprintf("node %d: ready %t, %d of %d nodes UP", n, st.Ready, st.MembersUp, len(c.table))
				return false, nil
			case n == victim && st.Incarnation == old:
				last = fmt.Sprintf("node %d is still incarnation %s", n, old)
				return false, nil
			}
		}
		return true, nil
	})
	if err == nil || ctx.Err() == nil || context.Cause(ctx) != context.DeadlineExceeded {
		return err
	}
	if victim != 0 {
		return fmt.Errorf("node %d did not come back within %v (--rejoin-timeout; last: %s): cibench does not restart a target cluster's nodes, so target mode needs each cinode under a supervisor that restarts it (deploy/cinode.service restarts on exit 1 and 4, and a SIGKILL counts as a failure)", victim, c.rejoin, last)
	}
	return fmt.Errorf("the cluster is not formed within %v (--rejoin-timeout): %s; target mode wants every node of the table ready and UP", c.rejoin, last)
}

// close continues every node this run stopped (on every path, Ctrl-C
// included), waits for forwarded kills and drops the connections.
func (c *targetCluster) close() error {
	var errs []error
	c.mu.Lock()
	var ns []int
	for n := range c.stopped {
		ns = append(ns, n)
	}
	c.mu.Unlock()
	for _, n := range ns { // first: nothing else matters as much
		errs = append(errs, c.cont(n))
	}
	c.stopCall()
	c.wg.Wait()
	c.closeClients()
	return errors.Join(errs...)
}

func (c *targetCluster) closeClients() {
	for _, cl := range c.cl {
		cl.Close()
	}
}
