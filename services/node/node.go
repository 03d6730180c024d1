// Package node assembles one whole cluster node from a cluster.toml and a
// node number: the ICS engine, the CLMS runner with its store, the cluster
// API service fed by the runner, and signal forwarding. cinode runs one; tests
// and benchmarks start several in one process on 127.0.0.x.
//
//	cfg, err := clms.LoadConfig("/etc/ci/cluster.toml")
//	n, err := node.New(node.Config{Cluster: cfg, Node: 3, DataDir: "/var/lib/ci"})
//	if err := n.Start(); err != nil { ... }
//	select {
//	case <-sigterm:
//		err = n.Shutdown(ctx) // the SHUTDOWN transition is committed, then Close
//	case <-n.Done():
//		if errors.Is(n.Err(), clms.ErrFenced) { os.Exit(node.ExitFenced) }
//	}
package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/services/clusterapi"
	"github.com/clusterinfra/ci/services/sigfwd"
)

// ExitFenced is the exit status a node process uses when it fenced itself
// (fencing = "halt"): distinct from errors (1) and bad usage or
// configuration (2), so a supervisor can tell "restart me as a new
// incarnation" from "fix me".
const ExitFenced = 4

// Errors of a Node.
var (
	ErrConfig = errors.New("node: invalid configuration")
)

// Config builds a Node.
type Config struct {
	Cluster *clms.ClusterConfig // parsed and validated cluster.toml
	Node    clms.NodeNum        // which row of its node table this is
	// DataDir keeps the CLMS store (raft log, incarnation counter). Required
	// on master-eligible nodes; optional on the others (their incarnation
	// then comes from the wall clock).
	DataDir string
	// Info is what this node tells the master when it joins; zero fields
	// are detected (CPUs, memory) and KeyServices come from its row.
	Info clms.NodeInfo
	// Timing overrides the cluster's timing (tests); nil keeps it.
	Timing *clms.Timing
	// Subsystems are the CLMS subsystems whose callbacks run on NODEUP and
	// NODEDOWN; nil: a new, empty registry (see Node.Subsystems).
	Subsystems *clms.Subsystems
	// KeyServices is the key-service registry (register before New, which
	// takes the list every node must agree on: later registrations fail;
	// every node of the cluster must register the same services); nil: a
	// new, empty one. Which of them this node may run is its row's
	// key_services.
	KeyServices *clms.KeyServices
	// SignalPolicy says which OS processes other nodes may signal; the zero
	// policy allows none.
	SignalPolicy sigfwd.Policy
	// OnApplied, if set, sees every committed record after the cluster API's
	// view has it, in order, on the CLMS runner's goroutine: it must return
	// quickly (tests and benchmarks timestamp transitions with it).
	OnApplied func([]clms.Record)
	// Engine adjusts the engine configuration derived from the cluster
	// file (tests: dial timeouts, event loops); nil leaves it.
	Engine  func(*engine.Config)
	Logger  *slog.Logger // nil: discard
	Metrics *metrics.Set // nil: a new set (Node.Metrics)
}

// Node is one cluster node. Create with New, then Start; Shutdown leaves
// the cluster and closes; Close stops without leaving (as a crash would,
// seen from the others).
type Node struct {
	cfg      Config
	settings *clms.NodeSettings
	log      *slog.Logger

	eng     *engine.Node
	runner  *clms.Runner
	backend *Backend
	api     *clusterapi.Server
	signals *sigfwd.Forwarder

	done     chan struct{}
	doneOnce sync.Once
	err      atomic.Pointer[error]
	closeMu  sync.Mutex
	closed   bool
	closeErr error
}

// New builds the node: it reads the node's keys, opens its store and
// registers its services. Nothing listens until Start.
func New(cfg Config) (*Node, error) {
	if cfg.Cluster == nil {
		return nil, fmt.Errorf("%w: no cluster configuration", ErrConfig)
	}
	settings, err := cfg.Cluster.ForNode(cfg.Node)
	if err != nil {
		return nil, err
	}
	if cfg.Timing != nil {
		if err := cfg.Timing.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		settings.Timing = *cfg.Timing
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, settings: settings, log: log, done: make(chan struct{})}
	table := make([]clms.NodeConfig, len(settings.Nodes))
	nums := make([]clms.NodeNum, len(settings.Nodes))
	for i, e := range settings.Nodes {
		table[i] = clms.NodeConfig{Num: e.Num, MasterEligible: e.MasterEligible}
		nums[i] = e.Num
	}

	var store *clms.Store
	inc := clms.NewIncarnation()
	switch {
	case cfg.DataDir != "":
		if store, err = clms.OpenStore(cfg.DataDir); err != nil {
			return nil, err
		}
		inc = store.Incarnation()
	case settings.Self.MasterEligible:
		return nil, fmt.Errorf("%w: node %d is master-eligible and needs a data directory for its raft log", ErrConfig, cfg.Node)
	}
	ok := false
	defer func() {
		if !ok {
			n.closeParts(store)
		}
	}()

	ecfg := settings.EngineConfig()
	ecfg.Incarnation, ecfg.Logger, ecfg.Metrics = inc, log, cfg.Metrics
	if cfg.Engine != nil {
		cfg.Engine(&ecfg)
	}
	if n.eng, err = engine.New(ecfg); err != nil {
		return nil, err
	}
	if n.backend, err = newBackend(nums, settings.APIHistory, log); err != nil {
		return nil, err
	}
	subs := cfg.Subsystems
	if subs == nil {
		subs = &clms.Subsystems{}
	}
	n.runner, err = clms.NewRunner(clms.RunnerConfig{
		Engine: n.eng, Nodes: table, Timing: settings.Timing, Incarnation: inc, Info: n.info(),
		Store: store, Fencing: settings.Fencing, Subsystems: subs, Logger: log, Compaction: settings.Compaction,
		KeyServices: cfg.KeyServices, KeyServiceEntries: settings.KeyServices, KeyServicePanic: settings.KeyServicePanic,
		OnApplied:  n.applied,
		OnRestored: n.backend.Restore,
		OnFatal:    n.fatal,
	})
	if err != nil {
		return nil, err
	}
	store = nil // the runner owns it now
	n.backend.runner = n.runner
	if n.api, err = clusterapi.Register(n.eng, n.backend, clusterapi.Config{MaxNodes: settings.MaxNodes}); err != nil {
		return nil, err
	}
	if n.signals, err = sigfwd.New(n.eng, sigfwd.Config{Policy: cfg.SignalPolicy, Logger: log}); err != nil {
		return nil, err
	}
	ok = true
	return n, nil
}

func (n *Node) applied(recs []clms.Record) {
	n.backend.apply(recs)
	if n.cfg.OnApplied != nil {
		n.cfg.OnApplied(recs)
	}
}

// info is cfg.Info with the zero fields detected.
func (n *Node) info() clms.NodeInfo {
	i := n.cfg.Info
	if i.CPUsTotal == 0 {
		i.CPUsTotal = uint32(runtime.NumCPU())
	}
	if i.CPUsOnline == 0 {
		i.CPUsOnline = uint32(runtime.GOMAXPROCS(0))
	}
	if i.MemoryBytes == 0 {
		i.MemoryBytes = memTotal()
	}
	if i.KeyServices == nil {
		i.KeyServices = n.settings.Self.KeyServices
	}
	return i
}

// memTotal reads MemTotal from /proc/meminfo; 0 if it cannot.
func memTotal() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseUint(fields[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// Start opens the engine's listener and starts CLMS: the node probes for
// the master and joins (Joined tells when).
func (n *Node) Start() error {
	if err := n.eng.Start(); err != nil {
		return err
	}
	if err := n.runner.Start(); err != nil {
		return err
	}
	go n.watchEngine()
	n.log.Info("node started", "node", n.cfg.Node, "addr", n.eng.Addr(), "incarnation", n.eng.Incarnation(),
		"master_eligible", n.settings.Self.MasterEligible, "fencing", n.settings.Fencing)
	return nil
}

// watchEngine reports an engine that stopped on its own as the node's end.
func (n *Node) watchEngine() {
	select {
	case <-n.eng.Done():
		if err := n.eng.Err(); err != nil {
			n.fatal(err)
		}
	case <-n.done:
	}
}

// fatal records why the node cannot go on and closes it; Done and Err
// report it. A fence under fencing = "debug" never gets here.
func (n *Node) fatal(err error) {
	n.err.CompareAndSwap(nil, &err)
	n.log.Error("node stopping", "err", err)
	_ = n.Close()
}

// Joined is closed when this node's incarnation is a member.
func (n *Node) Joined() <-chan struct{} { return n.runner.Joined() }

// Done is closed when the node has stopped: Close, Shutdown, or a fatal
// error that Err reports.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err reports why the node stopped on its own: wrapping clms.ErrFenced
// (exit with ExitFenced), clms.ErrJoinTimeout, a store failure or
// engine.ErrEngineStopped. Nil while it runs and after a plain Close.
func (n *Node) Err() error {
	if e := n.err.Load(); e != nil {
		return *e
	}
	return nil
}

// Shutdown leaves the cluster on purpose: the master commits SHUTDOWN for
// this node (the others then see SHUTDOWN .. DOWN), then the node closes.
// If ctx ends first, the node closes anyway and the error says so: the
// others will see it go down as a failure.
func (n *Node) Shutdown(ctx context.Context) error {
	err := n.runner.Shutdown(ctx)
	if cerr := n.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close stops the node without leaving. Safe to call more than once.
func (n *Node) Close() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return n.closeErr
	}
	n.closed = true
	n.closeErr = n.closeParts(nil)
	n.doneOnce.Do(func() { close(n.done) })
	return n.closeErr
}

// closeParts closes what New built, the runner (and its store) first so
// that nothing sends on a closing engine.
func (n *Node) closeParts(store *clms.Store) error {
	var errs []error
	if n.runner != nil {
		errs = append(errs, n.runner.Close())
	}
	if store != nil {
		errs = append(errs, store.Close())
	}
	if n.eng != nil {
		errs = append(errs, n.eng.Close())
	}
	return errors.Join(errs...)
}

// Num is this node's number.
func (n *Node) Num() clms.NodeNum { return n.cfg.Node }

// Engine is the node's ICS endpoint, for registering more services.
func (n *Node) Engine() *engine.Node { return n.eng }

// Runner is the node's CLMS runner.
func (n *Node) Runner() *clms.Runner { return n.runner }

// Subsystems is the CLMS subsystem registry: register before Start to see
// every transition.
func (n *Node) Subsystems() *clms.Subsystems { return n.runner.Subsystems() }

// KeyServices is the key-service registry. Its list was taken by New:
// register in Config.KeyServices before New (a registration here fails).
func (n *Node) KeyServices() *clms.KeyServices { return n.runner.KeyServices() }

// EpochGuard is fed with every record this node applies: key services
// check the epochs their operations carry against it.
func (n *Node) EpochGuard() *clms.EpochGuard { return n.runner.EpochGuard() }

// MoveKeyService moves key service name to node to (0: any capable node)
// by a planned hand-over (`cluster move`) and returns once the new owner
// is ready, as this node applied it; clms.ErrKeyMoveAborted if the owner's
// hand-over failed (it serves on).
func (n *Node) MoveKeyService(ctx context.Context, name string, to clms.NodeNum) error {
	return n.runner.MoveKeyService(ctx, name, to)
}

// Ready reports the node's readiness (the admin endpoint's /readyz): it
// acts as a member (its lease is valid) and the cluster is formed (every
// critical key service has had a ready owner since it joined).
func (n *Node) Ready() bool { return n.runner.Status().Ready }

// Backend is the committed membership as the cluster API serves it.
func (n *Node) Backend() *Backend { return n.backend }

// Signals is the node's signal forwarding service.
func (n *Node) Signals() *sigfwd.Forwarder { return n.signals }

// Metrics is the metric set of the engine, CLMS and the services.
func (n *Node) Metrics() *metrics.Set { return n.eng.Metrics() }

// Settings is this node's view of the cluster configuration.
func (n *Node) Settings() *clms.NodeSettings { return n.settings }
