package engine

import (
	"cmp"
	"container/list"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

// Node is one ICS endpoint: it accepts and dials the channel connections of
// one cluster member, serves the services registered on it and makes RPCs
// to its peers. Create it with New, then Start; Close releases everything.
type Node struct {
	cfg         Config
	log         *slog.Logger
	m           *nodeMetrics
	codec       *framing.Codec
	incarnation uint64
	version     uint16 // the protocol version this node speaks: framing.ProtocolVersion; tests pretend others

	sec      atomic.Pointer[Security] // nil: no authentication; replaced whole on key changes
	handles  *handleTable
	prioPool *handlePool                         // server handles for priority channels, apart from every service's own
	bufs     sync.Pool                           // *[]byte payload buffers handed to server handles
	hctx     [framing.MaxPriority + 1]handlerCtx // handlers' contexts, per priority; immutable once built

	// Request contexts somebody waits on (cancel.go), for Close to end.
	rcMu      sync.Mutex
	rcWatched *reqCtx // head of the list linked by reqCtx.prev/next
	rcClosed  bool    // Close has ended them: watch refuses

	clientChain Invoker // the client interceptors around invoke; nil without any

	// Shutdown (shutdown.go): whether new requests are refused; drainIdle
	// is signalled when a request finishes meanwhile.
	draining  atomic.Bool
	drainIdle chan struct{}

	// services[channel][subservice]; written by Register, read by loops.
	services [][]atomic.Pointer[service]
	namesMu  sync.Mutex
	names    map[string]bool // registered service names (and "priority"); guarded by namesMu

	peersMu sync.Mutex
	peers   atomic.Pointer[map[NodeNum]*peer] // copy-on-write; readers never lock

	downMu        sync.Mutex
	downCallbacks []func(NodeNum, error)

	// pending are accepted connections that have not completed the
	// handshake, oldest first; pendingBySource counts those that have not
	// yet named a member (see admitPending).
	pendingMu       sync.Mutex
	pending         list.List      // of *conn; guarded by pendingMu
	pendingBySource map[string]int // guarded by pendingMu

	ctx    context.Context // cancelled by Close; the base of handler contexts
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines the node started: dials, callbacks, flushers

	ownMu     sync.Mutex
	ownClosed bool // guarded by ownMu: Close is waiting for wg, goOwned refuses

	eng      gnet.Engine
	engDone  chan error
	booted   chan struct{} // closed once the event loops run, or Run failed; at Start with netpoller readers
	bootOnce sync.Once
	addr     string
	started  atomic.Bool
	closed   atomic.Bool
	closeErr error
	closeMu  sync.Mutex
	enrollMu sync.RWMutex // held shared while a socket is handed to a loop

	// The listener is the node's own, not gnet's: gnet's acceptor shuts the
	// whole engine down on the first failed accept (EMFILE), taking every
	// member's link with it. See acceptLoop.
	ln         *net.TCPListener
	loopDir    string        // private directory of the loops' idle unix listener
	acceptDone chan struct{} // closed when acceptLoop returns
	spareFD    int           // a reserved descriptor, freed to shed a connection at EMFILE; acceptLoop's
	accepted   atomic.Int64  // accepted connections open, handshaking or not
	// attachFailed is OnOpen's report, for enrollAccepted, that the
	// connection being enrolled could not be attached (its write side's
	// duplicate failed). acceptLoop enrolls one connection at a time and
	// gnet runs OnOpen before it answers the enrolment, so the report
	// always belongs to the connection enrollAccepted is waiting for.
	attachFailed atomic.Pointer[error]

	// Handshake workers and their budgets (noise.go).
	noiseJobs                    chan noiseJob
	noiseMembers, noiseStrangers tokenBucket

	// Netpoller readers (ReadNetpoller): one per connection, ended by
	// stopReaders, which refuses new ones from then on.
	readersMu     sync.Mutex
	readers       map[*conn]struct{} // guarded by readersMu
	readersClosed bool               // guarded by readersMu
	readersWG     sync.WaitGroup
	callerIdle    time.Duration // callread.go's callerIdle; tests lengthen it

	engStopped chan struct{}         // closed when gnet.Run has returned; engErr is then set
	engErr     error                 // what gnet.Run returned
	fatal      atomic.Pointer[error] // why the node stopped on its own; see Err
	done       chan struct{}         // closed when the node has stopped; see Done
	doneOnce   sync.Once
}

// service is a registered Service and its server handles.
type service struct {
	Service
	pool    *handlePool
	metrics []*procMetrics // indexed like Procs; nil where Procs is
}

// peer is what a node knows of one other member.
type peer struct {
	num  NodeNum
	addr atomic.Pointer[string]

	// out[channel] is the established connection this node dials to send on
	// channel; nil until first use and after a loss.
	out []atomic.Pointer[conn]

	mu      sync.Mutex         // serialises dials and link bookkeeping
	inbound map[*conn]struct{} // accepted connections from this peer; guarded by mu
	dialing []*dialResult      // per channel: the dial in progress, nil if none; guarded by mu

	// Dial backoff, guarded by mu: after dialFailures failed dials in a row,
	// no dial starts before retryAt (see dialFailedLocked).
	dialFailures int
	retryAt      time.Time
	lastDialErr  error
	dialAttempts *metrics.Counter
	dialErrors   *metrics.Counter

	linkGen       atomic.Uint64            // bumped on every loss; connections of an older link are stale
	inflight      atomic.Int64             // requests from this peer admitted and not yet finished
	inflightBytes atomic.Int64             // their frameCost
	holdOffUntil  atomic.Int64             // unix ns: hellos refused until then, after a protocol violation
	down          atomic.Bool              // declared down: calls fail fast until NodeUp
	downUntilNew  atomic.Bool              // down was declared for one incarnation: a hello from another lifts it
	draining      atomic.Bool              // it said TypeDraining on this link: calls fail fast with ErrShuttingDown
	refused       atomic.Pointer[[]uint64] // incarnations declared down, refused for good (incarnation.go)
	incarnation   atomic.Uint64            // the peer's boot incarnation, from its hellos

	m *peerMetrics // this node's calls to the peer
}

// prioPoolName names the priority channels' handles in metrics; no service
// may take it.
const prioPoolName = "priority"

// New validates cfg and builds a node. Nothing listens until Start.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	log = log.With("node", cfg.Node)
	set := cfg.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	var inc [8]byte
	_, _ = rand.Read(inc[:])
	n := &Node{
		cfg:         cfg,
		log:         log,
		m:           newNodeMetrics(set, cfg.Node),
		codec:       framing.NewCodec(cfg.MaxPayload),
		callerIdle:  callerIdle,
		incarnation: cmp.Or(cfg.Incarnation, binary.LittleEndian.Uint64(inc[:])|1),
		version:     framing.ProtocolVersion,
		handles:     newHandleTable(cfg.MaxOutstandingCalls),
		names:       map[string]bool{prioPoolName: true},

		pendingBySource: make(map[string]int),
		booted:          make(chan struct{}),
		engDone:         make(chan error, 1),
		engStopped:      make(chan struct{}),
		acceptDone:      make(chan struct{}),
		done:            make(chan struct{}),
		spareFD:         -1,
		noiseJobs:       make(chan noiseJob, noiseQueue),
		drainIdle:       make(chan struct{}, 1),
	}
	if len(cfg.ClientInterceptors) > 0 {
		n.clientChain = chainClient(cfg.ClientInterceptors, n.invoke)
	}
	n.noiseMembers.init(cfg.MaxHandshakesPerSecond)
	n.noiseStrangers.init(cfg.MaxHandshakesPerSecond)
	if cfg.Security != nil {
		n.sec.Store(cfg.Security)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	for p := range n.hctx {
		n.hctx[p] = handlerCtx{Context: n.ctx, prio: priorityValue(p) | inHandlerBit}
	}
	n.bufs.New = func() any { b := make([]byte, 0, 512); return &b }
	n.services = make([][]atomic.Pointer[service], cfg.MaxChannels)
	for ch := range n.services {
		if Channel(ch).IsServiceChannel() {
			n.services[ch] = make([]atomic.Pointer[service], cfg.MaxSubservices)
		}
	}
	// Four handles per priority level keep nested priority RPCs moving even
	// when every service pool is exhausted; 64 bounds a priority storm.
	n.prioPool = newHandlePool(prioPoolName, 4, 64, n.runJob)
	n.m.watchPool(cfg.Node, n.prioPool)
	peers := make(map[NodeNum]*peer, len(cfg.Peers))
	for num, addr := range cfg.Peers {
		if num != cfg.Node {
			peers[num] = n.newPeer(num, addr)
		}
	}
	n.peers.Store(&peers)
	n.registerInfo()
	return n, nil
}

func (n *Node) newPeer(num NodeNum, addr string) *peer {
	p := &peer{
		num:     num,
		out:     make([]atomic.Pointer[conn], n.cfg.MaxChannels),
		inbound: make(map[*conn]struct{}),
		dialing: make([]*dialResult, n.cfg.MaxChannels),
		m:       n.m.forPeer(num),
	}
	l := fmt.Sprintf(`%s,peer="%d"`, n.m.node, num)
	p.dialAttempts = n.m.exp.counter("ci_ics_dial_attempts_total", l)
	p.dialErrors = n.m.exp.counter("ci_ics_dial_failures_total", l)
	p.addr.Store(&addr)
	return p
}

// Num is this node's number.
func (n *Node) Num() NodeNum { return n.cfg.Node }

// Cluster is the cluster name.
func (n *Node) Cluster() string { return n.cfg.Cluster }

// Incarnation identifies this run of the node; it changes on every New.
func (n *Node) Incarnation() uint64 { return n.incarnation }

// Metrics is the node's metric set, for a /metrics endpoint.
func (n *Node) Metrics() *metrics.Set { return n.m.set }

// MaxPayload is the largest payload this node sends or accepts
// (Config.MaxPayload): the bound of a Ping's payload.
func (n *Node) MaxPayload() int { return n.cfg.MaxPayload }

// Addr is the address the node listens on, valid after Start.
func (n *Node) Addr() string { return n.addr }

// Logger is the node's logger.
func (n *Node) Logger() *slog.Logger { return n.log }

// Start opens the listener and the event loops. It returns once the node
// accepts connections. A node is started once; after Close, Start fails
// with ErrClosed.
func (n *Node) Start() error {
	// Under Close's lock: a node closed before it ever started must not
	// start listening and serving afterwards, with nothing left to stop it.
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed.Load() {
		return fmt.Errorf("%w: node %d cannot start after Close", ErrClosed, n.cfg.Node)
	}
	if !n.started.CompareAndSwap(false, true) {
		return fmt.Errorf("ics: node %d already started", n.cfg.Node)
	}
	ln, err := net.Listen("tcp", n.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("ics: node %d cannot listen on %s: %w", n.cfg.Node, n.cfg.ListenAddr, err)
	}
	n.ln = ln.(*net.TCPListener)
	n.addr = ln.Addr().String()
	if n.cfg.ReadMode == ReadNetpoller {
		// No event loops: each connection gets a reader goroutine, and a
		// ticker of the node's sheds the handshakes that take too long.
		n.bootOnce.Do(func() { close(n.booted) })
		n.goOwned(n.routineTick)
	} else if err := n.startLoops(); err != nil {
		_ = ln.Close()
		n.ln = nil // Close must not wait for loops and an accept loop that never ran
		close(n.acceptDone)
		return err
	}
	n.startNoiseWorkers()
	n.spareFD, _ = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	go n.acceptLoop()
	if sec := n.sec.Load(); sec != nil {
		n.log.Info("ics node listening", "addr", n.addr, "cluster", n.cfg.Cluster, "security", sec.Mode, "read", n.cfg.ReadMode)
	} else {
		n.log.Warn("ics node listening WITHOUT authentication: anyone who reaches this address can claim to be a member",
			"addr", n.addr, "cluster", n.cfg.Cluster, "read", n.cfg.ReadMode)
	}
	return nil
}

// startLoops starts the gnet event loops (ReadEventLoops) and returns once
// they run.
func (n *Node) startLoops() error {
	// gnet runs event loops only behind a listener of its own; it gets a
	// unix socket in a private directory that nobody else can reach, and
	// the node's own acceptLoop hands it the TCP connections.
	var err error
	if n.loopDir, err = os.MkdirTemp("", "ics-loops-"); err != nil {
		return fmt.Errorf("ics: node %d: %w", n.cfg.Node, err)
	}
	opts := []gnet.Option{
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		// Least-connections, not round-robin: gnet documents round-robin as
		// racy with Register from outside the loops, which is how every
		// connection arrives.
		gnet.WithLoadBalancing(gnet.LeastConnections),
		gnet.WithLogger(gnetLogger{n.log}),
	}
	loops := n.cfg.EventLoops
	if loops == 0 {
		loops = DefaultEventLoops(runtime.GOMAXPROCS(0))
	}
	opts = append(opts, gnet.WithNumEventLoop(loops))
	h := &loopHandler{n: n}
	go func() {
		err := gnet.Run(h, "unix://"+filepath.Join(n.loopDir, "loops.sock"), opts...)
		n.engDone <- err
		n.bootOnce.Do(func() { close(n.booted) }) // Run failed: unblock Start
	}()
	<-n.booted
	if n.eng.Validate() != nil {
		err := <-n.engDone
		_ = os.RemoveAll(n.loopDir)
		return fmt.Errorf("ics: node %d cannot start its event loops: %w", n.cfg.Node, err)
	}
	// The loops' listener is bound and nobody ever connects to it by
	// name: unlink it now, so that a node killed with SIGKILL leaves no
	// directory behind (the socket lives on as the open descriptor).
	_ = os.RemoveAll(n.loopDir)
	go n.watchEngine()
	return nil
}

// boot runs on gnet's OnBoot. gnet calls it before it starts the event
// loops, so Start waits for the first OnTick, which the ticker only makes
// once they run.
// DefaultEventLoops is the event loops a node runs when Config.EventLoops
// is 0, for GOMAXPROCS procs: one per P but one, and at least one; not one
// per CPU as gnet's multicore would. A gnet loop waits in a plain
// epoll_wait system call, which keeps its P until the runtime's monitor
// (sysmon) retakes it, 20 µs to 10 ms later, and a goroutine the loop
// readied just before blocking (a caller whose reply it read, a server
// handle) can be left in that P's run queue meanwhile. With a loop per P
// every P can be held so and only sysmon frees the goroutine: the
// millisecond stalls of issue 10, seen in runtime traces
// (docs/PERFORMANCE.md, "Stalls at p99.9"). With one P that no loop holds,
// the thread woken for that goroutine steals it at once. Loops beyond
// GOMAXPROCS would only wait for each other.
func DefaultEventLoops(procs int) int { return max(1, procs-1) }

func (n *Node) boot(eng gnet.Engine) {
	n.eng = eng
}

// watchEngine waits for gnet.Run to return. Before Close, that means the
// event loops died (gnet ends every loop when one fails): every connection
// is gone and none will be served again, so the node stops itself and
// reports it through Done and Err instead of living on deaf.
func (n *Node) watchEngine() {
	n.engErr = <-n.engDone
	close(n.engStopped)
	if n.closed.Load() {
		return
	}
	err := fmt.Errorf("%w: %v", ErrEngineStopped, n.engErr)
	n.fatal.Store(&err)
	n.log.Error("ics event loops stopped; the node is shutting down", "err", n.engErr)
	_ = n.Close()
}

// Done is closed when the node has stopped: Close returned, or the node
// stopped itself on a fatal error, which Err then reports. A program
// watches it to restart (or exit) instead of running on with a node that
// no longer answers.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err reports why the node stopped on its own (wrapping ErrEngineStopped),
// or nil while it runs and after a Close that nobody forced.
func (n *Node) Err() error {
	if e := n.fatal.Load(); e != nil {
		return *e
	}
	return nil
}

// Close shuts the node down: outstanding calls fail with ErrClosed, peers
// see the connections drop, server handles finish what they run (their
// ctx ends, and what they answer is not sent: their callers get
// ErrNodeDown; Shutdown is the drain that lets them reply), and every
// goroutine the node started has returned when Close does. Close waits
// for running handlers, inline ones included: a handler that ignores its
// ctx holds Close until it returns.
func (n *Node) Close() error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if !n.closed.CompareAndSwap(false, true) {
		return n.closeErr
	}
	n.cancel()
	n.cancelWatched()
	if n.ln != nil {
		_ = n.ln.Close()
		<-n.acceptDone
		if n.spareFD >= 0 {
			_ = unix.Close(n.spareFD)
		}
	}
	n.enrollMu.Lock() // no socket is half-way into a loop when the loops stop
	n.enrollMu.Unlock()
	n.handles.failPeer(0, ErrClosed)
	if n.started.Load() && n.ln != nil && n.cfg.ReadMode == ReadNetpoller {
		n.stopReaders()
	} else if n.started.Load() && n.ln != nil {
		// Engine.Stop polls for the end every 500ms; with a context that is
		// already done it only triggers the shutdown, and Run's return is
		// the real end.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = n.eng.Stop(ctx)
		<-n.engStopped
		n.closeErr = n.engErr
		_ = os.RemoveAll(n.loopDir)
	}
	// The loops (or readers) are gone, so no new job can be dispatched.
	for _, byCh := range n.services {
		for i := range byCh {
			if s := byCh[i].Load(); s != nil {
				s.pool.close()
			}
		}
	}
	n.prioPool.close()
	n.ownMu.Lock()
	n.ownClosed = true
	n.ownMu.Unlock()
	// Calls armed while the loops stopped; none can be armed from now on.
	n.handles.failPeer(0, ErrClosed)
	n.wg.Wait()
	// Outbound connections whose close was still in flight when the loops stopped.
	for _, p := range *n.peers.Load() {
		for i := range p.out {
			if c := p.out[i].Swap(nil); c != nil {
				c.markClosed()
			}
		}
	}
	n.codec.Close()
	n.log.Info("ics node closed")
	n.doneOnce.Do(func() { close(n.done) })
	if err := n.Err(); err != nil {
		n.closeErr = err
	}
	return n.closeErr
}

// Register makes a service available to the cluster on its channel and
// subservice.
func (n *Node) Register(s Service) error {
	if n.closed.Load() {
		return ErrClosed
	}
	ch, ss := Channel(s.ID.Channel()), int(s.ID.Subservice())
	switch {
	case int(ch) >= n.cfg.MaxChannels || !ch.IsServiceChannel():
		return fmt.Errorf("%w: %s: channel %d is not a service channel (%d..%d)", ErrBadService, s.Name, ch, ChanCLMS, n.cfg.MaxChannels-1)
	case ss >= n.cfg.MaxSubservices:
		return fmt.Errorf("%w: %s: subservice %d out of 0..%d", ErrBadService, s.Name, ss, n.cfg.MaxSubservices-1)
	case len(s.Procs) == 0:
		return fmt.Errorf("%w: %s: no procedures", ErrBadService, s.Name)
	case s.MinHandles < 0 || s.MaxHandles < 0 || (s.MaxHandles > 0 && s.MinHandles > s.MaxHandles):
		return fmt.Errorf("%w: %s: handles min %d max %d", ErrBadService, s.Name, s.MinHandles, s.MaxHandles)
	}
	if s.MaxHandles == 0 {
		s.MaxHandles = 64 // enough concurrency for a service that did not say; bounded so a flood cannot spawn without limit
	}
	if s.Name == "" {
		s.Name = "svc" + s.ID.String()
	}
	if err := checkServiceName(s.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrBadService, err)
	}
	// Names label the service's metrics: two services with one name would
	// share (and the second overwrite) its gauges.
	n.namesMu.Lock()
	defer n.namesMu.Unlock()
	if n.names[s.Name] {
		return fmt.Errorf("%w: %s: a service of that name is already registered", ErrBadService, s.Name)
	}
	svc := &service{Service: s}
	svc.Procs = append([]Handler(nil), s.Procs...)
	svc.metrics = n.m.serverProcMetrics(&svc.Service)
	svc.pool = newHandlePool(s.Name, s.MinHandles, s.MaxHandles, n.runJob)
	if !n.services[ch][ss].CompareAndSwap(nil, svc) {
		svc.pool.close()
		return fmt.Errorf("%w: %s: %s already registered", ErrBadService, s.Name, s.ID)
	}
	n.names[s.Name] = true
	n.m.watchPool(n.cfg.Node, svc.pool)
	return nil
}

// maxServiceName bounds a service name, which labels metrics and logs.
const maxServiceName = 64

// checkServiceName accepts the names a metric label can carry as written:
// letters, digits and _ . - : /, so no name needs escaping (and none can
// make the metrics library panic, as a '"' did).
func checkServiceName(name string) error {
	if len(name) > maxServiceName {
		return fmt.Errorf("service name %.20q... over %d bytes", name, maxServiceName)
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case b == '_', b == '.', b == '-', b == ':', b == '/':
		default:
			return fmt.Errorf("service name %q: byte %q not allowed (letters, digits and _ . - : / only)", name, b)
		}
	}
	return nil
}

func (n *Node) lookupService(id ServiceID) *service {
	ch, ss := int(id.Channel()), int(id.Subservice())
	if ch >= len(n.services) || ss >= len(n.services[ch]) {
		return nil
	}
	return n.services[ch][ss].Load()
}

// SetPeer adds a member or changes its address. A changed address takes
// effect on the next connection; current ones are left alone.
func (n *Node) SetPeer(num NodeNum, addr string) error {
	if num == 0 || num == n.cfg.Node {
		return fmt.Errorf("%w: SetPeer(%d): not a peer number", ErrBadConfig, num)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%w: node %d address %q: %v", ErrBadConfig, num, addr, err)
	}
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	old := *n.peers.Load()
	if p, ok := old[num]; ok {
		p.addr.Store(&addr)
		p.resetBackoff() // the old address's failures say nothing of the new one
		return nil
	}
	next := make(map[NodeNum]*peer, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[num] = n.newPeer(num, addr)
	n.peers.Store(&next)
	return nil
}

// SetClusterKeys replaces the accepted cluster keys; the first is used to
// dial. Connections already up are left alone. To rotate without a restart:
// on every node SetClusterKeys(old, new); then on every node
// SetClusterKeys(new, old), so all dial with the new key; then
// SetClusterKeys(new), after which the old key is refused.
func (n *Node) SetClusterKeys(keys ...ClusterKey) error {
	return n.updateSecurity(func(s *Security) error {
		if len(keys) == 0 {
			return fmt.Errorf("%w: SetClusterKeys needs at least one key", ErrBadConfig)
		}
		s.ClusterKeys = append([]ClusterKey(nil), keys...)
		return nil
	})
}

// SetPeerKey records (or replaces) a member's public key, as a node joins.
func (n *Node) SetPeerKey(num NodeNum, pub PublicKey) error {
	return n.updateSecurity(func(s *Security) error {
		s.PeerKeys[num] = pub
		return nil
	})
}

func (n *Node) updateSecurity(change func(*Security) error) error {
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	cur := n.sec.Load()
	if cur == nil {
		return fmt.Errorf("%w: the node was started without Security", ErrBadConfig)
	}
	next := cur.clone()
	if err := change(next); err != nil {
		return err
	}
	if err := next.validate(); err != nil {
		return err
	}
	n.sec.Store(next)
	return nil
}

// Peers lists the configured peers.
func (n *Node) Peers() map[NodeNum]string {
	out := make(map[NodeNum]string)
	for num, p := range *n.peers.Load() {
		out[num] = *p.addr.Load()
	}
	return out
}

func (n *Node) peer(num NodeNum) *peer {
	return (*n.peers.Load())[num]
}

// OnNodeDown registers fn to run, on its own goroutine, each time a peer is
// lost: a connection to it dropped, it restarted, or NodeDown declared it.
// The node owns that goroutine: Close waits for a running fn to return, so
// fn must not wait for anything that happens only after Close.
func (n *Node) OnNodeDown(fn func(NodeNum, error)) {
	n.downMu.Lock()
	n.downCallbacks = append(n.downCallbacks, fn)
	n.downMu.Unlock()
}

// NodeDown declares peer num down, as CLMS does on NODEDOWN: every call
// outstanding to it fails now with ErrNodeDown, its connections are closed,
// and new calls fail fast until NodeUp.
func (n *Node) NodeDown(num NodeNum, cause error) {
	p := n.peer(num)
	if p == nil {
		return
	}
	p.downUntilNew.Store(false)
	p.down.Store(true)
	if cause == nil {
		cause = errors.New("declared down")
	}
	n.peerLost(p, p.linkGen.Load(), cause)
}

// NodeUp lifts NodeDown: calls to num dial it again, at once (without
// waiting out a dial backoff).
func (n *Node) NodeUp(num NodeNum) {
	if p := n.peer(num); p != nil {
		p.down.Store(false)
		p.resetBackoff()
	}
}

// resetBackoff lets the next call dial p at once.
func (p *peer) resetBackoff() {
	p.mu.Lock()
	p.dialFailures, p.retryAt, p.lastDialErr = 0, time.Time{}, nil
	p.mu.Unlock()
}

// dialFailedLocked records a failed dial: the next may start only after a
// backoff that doubles with each failure in a row, from DialBackoff up to
// MaxDialBackoff, and is drawn at random from its upper half so that nodes
// that lost the same peer do not dial it in step. Without it every call to
// an unreachable peer dialled (22,000 attempts/s from 4 callers).
func (p *peer) dialFailedLocked(cfg Config, err error) {
	p.dialFailures++
	d := cfg.MaxDialBackoff
	if shift := p.dialFailures - 1; shift < 30 && cfg.DialBackoff<<shift < d {
		d = cfg.DialBackoff << shift
	}
	d = d/2 + mrand.N(d/2+1)
	p.retryAt = time.Now().Add(d)
	p.lastDialErr = err
}

// IsDown reports whether num was declared down and not brought up since.
func (n *Node) IsDown(num NodeNum) bool {
	p := n.peer(num)
	return p != nil && p.down.Load()
}

// peerLost tears down the link to p if gen is still its current link: fail
// the calls waiting on p, close every connection with it, tell the
// node-down callbacks. Losses reported for an older link are ignored, so a
// peer whose n connections all drop is lost once.
func (n *Node) peerLost(p *peer, gen uint64, cause error) {
	p.mu.Lock()
	if p.linkGen.Load() != gen {
		p.mu.Unlock()
		return
	}
	err := fmt.Errorf("%w: node %d: %v", ErrNodeDown, p.num, cause)
	conns, failed := n.endLinkLocked(p, err)
	p.mu.Unlock()
	n.finishLinkDown(p, conns, failed, err)
}

// endLinkLocked starts a new link generation for p: calls waiting on the old
// one fail, its connections are unpublished and returned for closing. Under
// p.mu, so that no connection of the new link is published before the old
// link's calls have failed.
func (n *Node) endLinkLocked(p *peer, err error) ([]*conn, int) {
	p.linkGen.Add(1)
	p.draining.Store(false) // that was the old link's run
	failed := n.handles.failPeer(p.num, err)
	var conns []*conn
	for i := range p.out {
		if c := p.out[i].Swap(nil); c != nil {
			conns = append(conns, c)
		}
	}
	for c := range p.inbound {
		conns = append(conns, c)
	}
	clear(p.inbound)
	return conns, failed
}

func (n *Node) finishLinkDown(p *peer, conns []*conn, failed int, err error) {
	n.m.peerLosses.Inc()
	n.log.Warn("peer lost", "peer", p.num, "cause", err, "failed_calls", failed)
	for _, c := range conns {
		c.close()
	}
	if n.closed.Load() {
		return
	}
	n.downMu.Lock()
	cbs := slices.Clone(n.downCallbacks)
	n.downMu.Unlock()
	for _, fn := range cbs {
		n.goOwned(func() { fn(p.num, err) })
	}
}

// joinLink records a handshake with p's incarnation inc and returns the link
// generation the new connection belongs to; an accepted connection is
// registered with the link at the same time. A new incarnation means p
// restarted: the old link, whose calls can never be answered, ends first.
// A peer declared down joins nothing: its connection is refused. Under
// p.mu, so a NodeDown either sees the connection in the link it ends or
// the connection sees it declared down.
func (n *Node) joinLink(p *peer, inc uint64, accepted *conn) (uint64, error) {
	p.mu.Lock()
	if p.down.Load() {
		p.mu.Unlock()
		return 0, fmt.Errorf("%w: node %d is declared down", ErrNodeDown, p.num)
	}
	old := p.incarnation.Swap(inc)
	var conns []*conn
	var failed int
	var err error
	if old != 0 && old != inc {
		err = fmt.Errorf("%w: node %d: restarted (incarnation %#x, was %#x)", ErrNodeDown, p.num, inc, old)
		conns, failed = n.endLinkLocked(p, err)
	}
	gen := p.linkGen.Load()
	if accepted != nil {
		// Set before it is in p.inbound, under p.mu: other goroutines read
		// the linkGen of p.inbound's connections (repliesOpen, endLink).
		accepted.linkGen = gen
		p.inbound[accepted] = struct{}{}
		// It dialled us: whatever made our dials fail is over.
		p.dialFailures, p.retryAt, p.lastDialErr = 0, time.Time{}, nil
	}
	p.mu.Unlock()
	if err != nil {
		n.finishLinkDown(p, conns, failed, err)
	}
	return gen, nil
}

// goOwned runs fn on a goroutine that Close waits for. Once Close has
// started waiting it refuses (false): adding to a WaitGroup being waited on
// is a race, and the caller then handles fn's work itself.
func (n *Node) goOwned(fn func()) bool {
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	if n.ownClosed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
	return true
}

// gnetLogger routes gnet's logging into the node's slog logger.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error(fmt.Sprintf(f, a...), "src", "gnet") }
