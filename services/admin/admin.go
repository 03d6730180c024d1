package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
)

// Sentinel errors.
var (
	// ErrConfig: the admin endpoint's configuration cannot work (a bad
	// address, a missing or readable token file). cinode exits 2 on it.
	ErrConfig = errors.New("admin: bad configuration")
	// ErrNotImplemented: what was asked exists in the API but not in this
	// node (no key services yet, no signal forwarding).
	ErrNotImplemented = errors.New("admin: not implemented on this node")
	// ErrClosed: the server was closed.
	ErrClosed = errors.New("admin: closed")
)

// Source is one node's view that the endpoint serves. services/node's Node
// implements it; every method may be called from many goroutines at once.
// The membership methods are clusterapi.Backend's, so that a node serves
// the admin endpoint and the cluster API from the same committed state.
type Source interface {
	// Local is this node as it sees itself now.
	Local() Local
	// Membership returns every node of the table in number order and the
	// id of the last transition that view includes.
	Membership() ([]clms.Member, clms.TransitionID)
	// Transitions returns up to max committed transitions after after,
	// oldest first; from the oldest kept one if after+1 is gone.
	Transitions(after clms.TransitionID, max int) []clms.Transition
	// WaitTransition returns nil once a transition after after is
	// committed, or ctx's error.
	WaitTransition(ctx context.Context, after clms.TransitionID) error
}

// ViewWaiter is a Source whose view (Local, the membership's last
// transition, the key services) carries a change sequence: the long polls
// of /v1/status and /v1/keysvc (?after=SEQ&wait=DUR) wait on it. A Source
// without it answers those at once, without "seq".
type ViewWaiter interface {
	// ViewSeq is the sequence of the view now: 1 or more, growing by at
	// least one with every change of what /v1/status or /v1/keysvc show
	// (and possibly more often); a view read after it is at least as new.
	ViewSeq() uint64
	// WaitView returns nil once ViewSeq is above after (at once if it
	// is), or ctx's error.
	WaitView(ctx context.Context, after uint64) error
}

// Local is what a node knows of itself that the membership does not say.
type Local struct {
	Node        clms.NodeNum
	Cluster     string
	Incarnation uint64       // this process's incarnation
	Master      clms.NodeNum // the CLMS master as this node knows it; 0 for none
	// Ready is /readyz: joined, and (with key services) every critical key
	// service owned. NotReady says why not, for the 503 body.
	Ready    bool
	NotReady string
	// Fenced: the node learned it was declared down, or its lease ran out,
	// and stays up isolated (fencing = "debug").
	Fenced bool
	// LeaseValid: the node may act as a member now (its membership lease,
	// renewed by the master, has not run out).
	LeaseValid bool
	// RaftTerm is the CLMS raft term this node knows (0 on a node that is
	// not master-eligible and has not heard one).
	RaftTerm uint64
	// PID is the process that runs the node (cinode's), for tools that
	// signal it (cibench failover --target); 0 when the node does not say
	// (in-process test nodes share one process).
	PID int
}

// KeyServiceSource is the key services of the cluster as a node sees them
// (issue 12). Config.KeyServices is nil until they exist, and the endpoint
// says so.
type KeyServiceSource interface {
	KeyServices() []KeyService
	// Move hands name over to node to (a planned move) and returns once
	// the new owner is ready, or why not.
	Move(ctx context.Context, name string, to clms.NodeNum) error
}

// Signaller forwards signals: *sigfwd.Forwarder.
type Signaller interface {
	Signal(ctx context.Context, to engine.NodeNum, handler, signal string, arg []byte) error
	Kill(ctx context.Context, to engine.NodeNum, pid int, sig syscall.Signal) error
}

// DefaultPort is the admin port when the node table gives no admin
// address: beside ICS's 7100 of the examples, clear of node_exporter's 9100.
const DefaultPort = "7180"

// Config configures the endpoint. Start from DefaultConfig.
type Config struct {
	// Addr is host:port or unix:/absolute/path. Anything but a Unix socket
	// or a loopback address requires TokenFile.
	Addr string
	// TokenFile holds the bearer token (mode 0600). Required off
	// loopback; if set on loopback too, every request needs it there as
	// well.
	TokenFile string
	// Nodes is the node table, for the addresses in /v1/members.
	Nodes []clms.NodeEntry
	// Metrics is the node's set (engine, CLMS, services); /metrics writes
	// it, then the Go runtime and process metrics. nil: only those.
	Metrics *metrics.Set
	// KeyServices is nil until the node has key services.
	KeyServices KeyServiceSource
	// Signaller is nil when the node forwards no signals: /v1/signal is 501.
	Signaller Signaller
	// Pinger makes /v1/ping's ICS calls (the node's engine); nil: 501.
	Pinger Pinger
	// Extra are routes the node's own services add (pattern -> handler,
	// patterns as http.ServeMux's, e.g. "GET /v1/keyseq"), behind the same
	// authentication; cinode serves keyseq's here. They must not shadow
	// the endpoints above.
	Extra map[string]http.HandlerFunc
	// Shutdown starts the node's planned shutdown and returns at once;
	// POST /v1/shutdown calls it after replying. nil: 501.
	Shutdown func(reason string)
	Logger   *slog.Logger

	// MaxWatchers bounds /v1/watch streams and waiting long polls at
	// once; more get 503.
	MaxWatchers int
	// MaxWait caps a long poll's ?wait= (longer is a 400).
	MaxWait time.Duration
	// MaxPings bounds /v1/ping runs at once; more get 429.
	MaxPings int
	// Heartbeat is how often a quiet watch stream says it is alive.
	Heartbeat time.Duration
	// MaxTransitions bounds one /v1/transitions reply (and a watch batch).
	MaxTransitions int
	// ReadHeaderTimeout bounds a request's headers: a client that opens a
	// connection and says nothing must not hold it.
	ReadHeaderTimeout time.Duration
	// CallTimeout bounds a mutating call's work (a signal, a move).
	CallTimeout time.Duration
}

// DefaultConfig returns the defaults, each with its reason.
func DefaultConfig() Config {
	return Config{
		Addr:              "127.0.0.1:" + DefaultPort, // only this machine's users
		MaxWatchers:       64,                         // operators and a few scripts; each is a goroutine and a socket
		MaxWait:           60 * time.Second,           // under common proxies' idle timeouts; a client asks again
		MaxPings:          2,                          // a load and a probe beside it (cibench priority); more would measure each other
		Heartbeat:         5 * time.Second,            // a hung node shows within seconds on a quiet cluster
		MaxTransitions:    1000,                       // ~150 KB of JSON; a client pages with since
		ReadHeaderTimeout: 5 * time.Second,            // a slow client on localhost still fits
		CallTimeout:       30 * time.Second,           // a key service move may pull data
	}
}

func (c *Config) fill() error {
	d := DefaultConfig()
	if c.Addr == "" {
		c.Addr = d.Addr
	}
	if c.MaxWatchers == 0 {
		c.MaxWatchers = d.MaxWatchers
	}
	if c.MaxWait == 0 {
		c.MaxWait = d.MaxWait
	}
	if c.MaxPings == 0 {
		c.MaxPings = d.MaxPings
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = d.Heartbeat
	}
	if c.MaxTransitions == 0 {
		c.MaxTransitions = d.MaxTransitions
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = d.ReadHeaderTimeout
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = d.CallTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaxWatchers < 0 || c.MaxWait < 0 || c.MaxPings < 0 || c.Heartbeat < 0 || c.MaxTransitions < 0 || c.ReadHeaderTimeout < 0 || c.CallTimeout < 0 {
		return fmt.Errorf("%w: negative limit", ErrConfig)
	}
	if err := CheckAddr(c.Addr); err != nil {
		return err
	}
	if c.TokenFile == "" && !IsLocal(c.Addr) {
		return fmt.Errorf("%w: admin address %s is not a loopback address or a unix socket: give a token file (mode 0600) that clients must present", ErrConfig, c.Addr)
	}
	return nil
}

// Server is a node's admin endpoint.
type Server struct {
	cfg     Config
	src     Source
	token   string // "" when none is required
	started time.Time
	mux     *http.ServeMux
	watch   chan struct{} // a slot per watch stream
	pings   chan struct{} // a slot per /v1/ping run

	mu     sync.Mutex
	http   *http.Server // nil until Start; guarded by mu
	ln     net.Listener // guarded by mu
	closed bool         // guarded by mu

	ctx    context.Context // cancelled by Close: ends watch streams
	cancel context.CancelFunc
	done   chan struct{} // closed when the serving goroutine returns
}

// New validates cfg and reads the token file. Nothing listens until Start.
func New(cfg Config, src Source) (*Server, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: no source", ErrConfig)
	}
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, src: src, started: time.Now(), watch: make(chan struct{}, cfg.MaxWatchers),
		pings: make(chan struct{}, cfg.MaxPings), done: make(chan struct{})}
	if cfg.TokenFile != "" {
		tok, err := ReadToken(cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		s.token = tok
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mux = s.routes()
	return s, nil
}

// Handler is the endpoint's handler, authentication included, for a caller
// that serves it itself (tests, an embedding process).
func (s *Server) Handler() http.Handler { return s.auth(s.mux) }

// Start listens on Config.Addr and serves in a goroutine that Close stops.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.http != nil {
		return fmt.Errorf("%w: started twice", ErrConfig)
	}
	ln, err := listen(s.cfg.Addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	go s.routineServe(s.http, ln)
	s.cfg.Logger.Info("admin endpoint listening", "addr", ln.Addr().String(), "token", s.token != "")
	return nil
}

func (s *Server) routineServe(h *http.Server, ln net.Listener) {
	defer close(s.done)
	if err := h.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.cfg.Logger.Error("admin endpoint stopped", "err", err)
	}
}

// Addr is where the endpoint listens: host:port, or unix:/path; "" before
// Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	if u, ok := s.ln.Addr().(*net.UnixAddr); ok {
		return UnixPrefix + u.Name
	}
	return s.ln.Addr().String()
}

// Close ends the watch streams, lets the other requests finish until ctx
// ends, and stops listening (removing a Unix socket).
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	h := s.http
	s.mu.Unlock()
	s.cancel()
	if h == nil {
		return nil
	}
	err := h.Shutdown(ctx)
	if err != nil {
		h.Close()
	}
	<-s.done
	return err
}

// CheckConfig reports what New would refuse in cfg (a bad address, a
// missing token or token file), without a source: for a daemon that checks
// its whole configuration before it starts anything.
func CheckConfig(cfg Config) error {
	if err := cfg.fill(); err != nil {
		return err
	}
	if cfg.TokenFile != "" {
		_, err := ReadToken(cfg.TokenFile)
		return err
	}
	return nil
}
