package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/clusterinfra/ci/services/admin"
)

// A cluster of real cinode processes on 127.0.0.1..N, for the demo and the
// failover and membership scenarios: a temporary directory with the
// cluster.toml, every node's data directory and log, and the processes.
// close stops every process and removes the directory on every path.

// Bounds of a spawned cluster's life cycle; generous, because a loaded
// 2-core machine is slow to start processes. Never reached when things work.
const (
	cinodeUpTimeout   = 30 * time.Second // from exec to every node ready
	cinodeExitTimeout = 10 * time.Second // from SIGTERM (or a fence) to exit
	pollEvery         = time.Millisecond // the resolution of polled times
)

// clusterSpec is what writeClusterTOML writes.
type clusterSpec struct {
	nodes   int
	profile string // CLMS timing profile: "lan-fast" or "default"
	keyseq  bool   // declare keyseq, which every node may run
	// allowFaultKill starts every node with --allow-fault-kill: other
	// nodes may kill it through signal forwarding (target mode's tests).
	allowFaultKill bool
	// keepLogs is where close copies the nodes' logs ("": nowhere).
	keepLogs string
}

// cinodeProc is one cinode process, one incarnation of a node.
type cinodeProc struct {
	num    int
	cmd    *exec.Cmd
	pid    int
	exited chan struct{} // closed when Wait returned
	code   int           // exit status, once exited (-1: killed by a signal)
	sig    syscall.Signal
}

// cinodeCluster is the spawned cluster.
type cinodeCluster struct {
	adminView
	spec   clusterSpec
	dir    string // temporary: cluster.toml, nodeN/ (data), nodeN.log
	toml   string
	bin    string // the cinode binary
	ics    map[int]string
	admins map[int]string
	procs  map[int]*cinodeProc // the current incarnation of each node
	dead   []*cinodeProc       // earlier incarnations, reaped
}

var _ faultCluster = (*cinodeCluster)(nil)

// adminView is a cluster as its nodes' admin endpoints show it: what the
// failover and membership scenarios read, spawned or target.
type adminView struct {
	cl     map[int]*admin.Client
	table  []int // every node of the node table, in number order
	keyseq bool  // keyseq is a key service of the cluster
	// localPID caches localCinode by "admin address/pid" for cpuOf; only
	// the goroutine running the trials uses it.
	localPID map[string]bool
}

func (v *adminView) nodes() []int { return v.table }

// findTool finds a binary of this repository: beside this executable (make
// build puts them all in bin/), else on PATH.
func findTool(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no %s binary beside cibench or on PATH: run make build (make demo does)", name)
}

// freePort returns a port free on host now. Another process could take it
// before cinode binds it; on 127.0.0.x addresses of their own that is rare,
// and the node's start then fails loudly.
func freePort(host string) (string, error) {
	var r portReserver
	defer r.release()
	return r.reserve(host)
}

// portReserver hands out ports free on their host, all different: each
// listener stays open until release. Closing each at once lets the kernel
// hand the same port out again, and a node's ICS and admin addresses then
// collide (seen in CI: "nodes[1].admin ... is also the node's ICS address").
type portReserver struct{ held []net.Listener }

func (r *portReserver) reserve(host string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	r.held = append(r.held, ln)
	return ln.Addr().String(), nil
}

// release closes the listeners: call it just before the ports are bound.
func (r *portReserver) release() {
	for _, ln := range r.held {
		ln.Close()
	}
	r.held = nil
}

// newCinodeCluster writes the configuration; start the nodes with startAll.
func newCinodeCluster(spec clusterSpec) (_ *cinodeCluster, err error) {
	bin, err := findTool("cinode")
	if err != nil {
		return nil, err
	}
	if spec.nodes > 254 {
		return nil, fmt.Errorf("%d nodes: one loopback address each, 127.0.0.1-254", spec.nodes)
	}
	dir, err := os.MkdirTemp("", "cicluster-")
	if err != nil {
		return nil, err
	}
	// The nodes' TMPDIR (below) holds each engine's unix socket, whose path
	// must fit in sun_path (108 bytes).
	if sock := filepath.Join(dir, "ics-loops-0123456789", "loops.sock"); len(sock) > 100 {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("TMPDIR is too deep for the nodes' unix sockets (%s, %d bytes): set a shorter one", sock, len(sock))
	}
	c := &cinodeCluster{spec: spec, dir: dir, toml: filepath.Join(dir, "cluster.toml"), bin: bin,
		ics: map[int]string{}, admins: map[int]string{}, procs: map[int]*cinodeProc{},
		adminView: adminView{cl: map[int]*admin.Client{}, keyseq: spec.keyseq}}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by cibench: %d nodes on 127.0.0.1-%d, free ports.\nname = \"cibench\"\n", spec.nodes, spec.nodes)
	fmt.Fprintf(&b, "\n[security]\nmode = \"insecure\" # loopback only\n\n[timing]\nprofile = %q\n", spec.profile)
	ks := "[]"
	if spec.keyseq {
		b.WriteString("\n[[key_services]]\nname = \"keyseq\"\ncritical = false\n")
		ks = `["keyseq"]`
	}
	var ports portReserver
	defer ports.release()
	for n := 1; n <= spec.nodes; n++ {
		host := fmt.Sprintf("127.0.0.%d", n)
		if c.ics[n], err = ports.reserve(host); err != nil {
			return nil, err
		}
		if c.admins[n], err = ports.reserve(host); err != nil {
			return nil, err
		}
		// Three master-eligible nodes make the raft group: it survives one
		// failure, and more would slow every commit of a large cluster.
		fmt.Fprintf(&b, "\n[[nodes]]\nnumber = %d\naddress = %q\nadmin = %q\nmaster_eligible = %t\nkey_services = %s\n",
			n, c.ics[n], c.admins[n], n <= 3, ks)
		c.cl[n] = admin.NewClient(c.admins[n], "")
		c.table = append(c.table, n)
	}
	if err := os.WriteFile(c.toml, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

// start starts node n (a new incarnation if it ran before); it does not wait.
func (c *cinodeCluster) start(n int) error {
	log, err := os.OpenFile(filepath.Join(c.dir, fmt.Sprintf("node%d.log", n)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor
	// A short shutdown bound: at the end every node leaves at once, and the
	// last ones may find no master to commit their SHUTDOWN.
	cmd := exec.Command(c.bin, "-c", c.toml, "-n", fmt.Sprint(n), "--data-dir", filepath.Join(c.dir, fmt.Sprintf("node%d", n)),
		"--shutdown-timeout", "2s")
	if c.spec.allowFaultKill {
		cmd.Args = append(cmd.Args, "--allow-fault-kill")
	}
	cmd.Stdout, cmd.Stderr = log, log
	// The engine keeps a private directory in TMPDIR that a killed
	// process cannot remove: keep it in ours, which close removes.
	cmd.Env = append(os.Environ(), "TMPDIR="+c.dir)
	// Its own process group: Ctrl-C reaches only cibench, which stops the
	// nodes itself. Pdeathsig: if cibench dies without cleaning up (kill
	// -9), the kernel kills the nodes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %d: %w", n, err)
	}
	p := &cinodeProc{num: n, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() { // ends when the process exits: close makes sure of that
		err := cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.sig = ws.Signal()
		}
		_ = err // the code says it
		close(p.exited)
	}()
	if old := c.procs[n]; old != nil {
		c.dead = append(c.dead, old)
	}
	c.procs[n] = p
	return nil
}

// startAll starts every node and waits until each is ready.
func (c *cinodeCluster) startAll(ctx context.Context) error {
	for n := 1; n <= c.spec.nodes; n++ {
		if err := c.start(n); err != nil {
			return err
		}
	}
	return c.waitReady(ctx, c.nodes())
}

// waitReady waits until every node of ns answers /readyz with 200 and
// every one sees all of ns UP.
func (c *cinodeCluster) waitReady(ctx context.Context, ns []int) error {
	ctx, cancel := context.WithTimeout(ctx, cinodeUpTimeout)
	defer cancel()
	return c.poll(ctx, "every node ready", func() (bool, error) {
		for _, n := range ns {
			if err := c.alive(n); err != nil {
				return false, err
			}
			code, _, err := c.cl[n].Text(ctx, "/readyz")
			if err != nil || code != http.StatusOK {
				return false, nil
			}
			st, err := c.status(ctx, n)
			if err != nil || st.MembersUp < len(ns) {
				return false, nil
			}
		}
		return true, nil
	})
}

// alive is an error if node n's process has exited.
func (c *cinodeCluster) alive(n int) error {
	p := c.procs[n]
	if p == nil {
		return fmt.Errorf("node %d is not running", n)
	}
	select {
	case <-p.exited:
		return fmt.Errorf("node %d (pid %d) exited with status %d; its log: %s", n, p.pid, p.code, c.logTail(n))
	default:
		return nil
	}
}

// logTail is the last lines of node n's log, for an error message.
func (c *cinodeCluster) logTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("node%d.log", n)))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return "\n  " + strings.Join(lines[max(0, len(lines)-5):], "\n  ")
}

// poll calls cond every pollEvery until it is true, fails, or ctx ends.
func (v *adminView) poll(ctx context.Context, what string, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if context.Cause(ctx) == context.DeadlineExceeded {
				return fmt.Errorf("waiting for %s: timed out", what)
			}
			return context.Cause(ctx)
		case <-time.After(pollEvery):
		}
	}
}

func (v *adminView) status(ctx context.Context, n int) (admin.Status, error) {
	var st admin.Status
	err := v.cl[n].Get(ctx, "/v1/status", &st)
	return st, err
}

func (v *adminView) keysvc(ctx context.Context, n int) (admin.KeyService, error) {
	var ks admin.KeyServices
	if err := v.cl[n].Get(ctx, "/v1/keysvc", &ks); err != nil {
		return admin.KeyService{}, err
	}
	return keyseqOf(ks)
}

// keyseqOf is keyseq's entry of a /v1/keysvc reply.
func keyseqOf(ks admin.KeyServices) (admin.KeyService, error) {
	for _, s := range ks.Services {
		if s.Name == "keyseq" {
			return s, nil
		}
	}
	return admin.KeyService{}, errors.New("no keyseq in /v1/keysvc")
}

// transitionsOf returns node n's view of the transitions after since.
func (v *adminView) transitionsOf(ctx context.Context, n int, since uint64) ([]admin.Transition, error) {
	var tr admin.Transitions
	err := v.cl[n].Get(ctx, fmt.Sprintf("/v1/transitions?since=%d", since), &tr)
	return tr.Transitions, err
}

// signal sends sig to node n's process.
func (c *cinodeCluster) signal(n int, sig syscall.Signal) error {
	return c.procs[n].cmd.Process.Signal(sig)
}

// waitExit waits for node n's process to exit and returns its status.
func (c *cinodeCluster) waitExit(ctx context.Context, n int) (int, error) {
	p := c.procs[n]
	t := time.NewTimer(cinodeExitTimeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return p.code, nil
	case <-t.C:
		return 0, fmt.Errorf("node %d (pid %d) did not exit within %v", n, p.pid, cinodeExitTimeout)
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

// pids lists every process the cluster started, for the record.
func (c *cinodeCluster) pids() []int {
	var out []int
	for _, p := range c.dead {
		out = append(out, p.pid)
	}
	for _, p := range c.procs {
		out = append(out, p.pid)
	}
	slices.Sort(out)
	return out
}

// stopped1 is one process close stopped.
type stopped1 struct {
	num, pid, code int
	last           bool   // the master, stopped after the others
	logTail        string // the end of its log when it did not exit 0: the directory goes with close
}

// close stops every process and removes the directory: SIGCONT first (for
// a stopped one), then SIGTERM, a planned shutdown, to every member but the
// master at once, then to the master, which commits the others' SHUTDOWN
// transitions; SIGKILL after cinodeExitTimeout. It returns what it did.
func (c *cinodeCluster) close() (stopped []stopped1, err error) {
	master := 0
	for _, n := range c.nodes() {
		if p := c.procs[n]; p != nil && c.alive(n) == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := c.status(ctx, n)
			cancel()
			if err == nil {
				master = int(st.Master)
				break
			}
		}
	}
	var first, last []*cinodeProc
	for _, n := range c.nodes() {
		p := c.procs[n]
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
			continue
		default:
		}
		if n == master {
			last = append(last, p)
		} else {
			first = append(first, p)
		}
	}
	for _, group := range [][]*cinodeProc{first, last} {
		for _, p := range group {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		t := time.NewTimer(cinodeExitTimeout)
		expired := false
		for _, p := range group {
			if !expired {
				select {
				case <-p.exited:
				case <-t.C:
					expired = true
				}
			}
			if expired { // this one and every one after it: no more grace
				_ = p.cmd.Process.Kill()
			}
			<-p.exited
			st := stopped1{num: p.num, pid: p.pid, code: p.code, last: len(last) > 0 && p == last[0]}
			if p.code != 0 {
				st.logTail = c.logTail(p.num)
			}
			stopped = append(stopped, st)
		}
		t.Stop()
	}
	for _, p := range c.dead {
		<-p.exited // reaped already; this only makes sure
	}
	for _, cl := range c.cl {
		cl.Close()
	}
	return stopped, errors.Join(c.keepLogs(), os.RemoveAll(c.dir))
}

// keepLogs copies every node's log into the spec's keepLogs directory
// (created 0700), before close removes the cluster's own.
func (c *cinodeCluster) keepLogs() error {
	if c.spec.keepLogs == "" {
		return nil
	}
	if err := os.MkdirAll(c.spec.keepLogs, 0o700); err != nil {
		return fmt.Errorf("--keep-logs: %w", err)
	}
	for _, n := range c.nodes() {
		name := fmt.Sprintf("node%d.log", n)
		if err := copyFile(filepath.Join(c.spec.keepLogs, name), filepath.Join(c.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--keep-logs: %w", err)
		}
	}
	return nil
}

// copyFile copies src to dst (created 0600), streaming: a debug log of
// many trials can be large.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err // a node never started has no log: fs.ErrNotExist
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
