package engine

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

// NodeNum is a node's number in the cluster. 0 is never a valid node.
type NodeNum uint32

// Channel numbers an ICS channel. Each is a TCP connection per node pair
// and direction; see the package documentation for the set.
type Channel uint8

// The CI channel set. Priority p (1..4) travels on ChanPrio1+p-1.
const (
	ChanPrio1 Channel = 0 // RPCs and messages sent at priority 1; never throttled
	ChanPrio2 Channel = 1 // priority 2
	ChanPrio3 Channel = 2 // priority 3
	ChanPrio4 Channel = 3 // priority 4
	// Channels 4 and 5 were CI's reply channels. Replies now travel back
	// on their request's own connection (see sendReply); the numbers stay
	// reserved, so that the other channels keep theirs on the wire.
	chanReservedReply     Channel = 4
	chanReservedReplyPrio Channel = 5
	ChanCLMS              Channel = 6 // CLMS, cluster API and signal forwarding services
	ChanCLMSProbe         Channel = 7 // transient: a coming-up node asks who the master is
	ChanFirstService      Channel = 8 // first channel for application cluster services
)

var channelNames = [...]string{"prio1", "prio2", "prio3", "prio4", "reserved4", "reserved5", "clms", "clms_probe"}

func (c Channel) String() string {
	if int(c) < len(channelNames) {
		return channelNames[c]
	}
	return fmt.Sprintf("svc%d", int(c-ChanFirstService))
}

// IsServiceChannel reports whether services may be registered on c: the
// priority channels only carry traffic for services that live on a service
// channel.
func (c Channel) IsServiceChannel() bool { return c >= ChanCLMS }

// reserved reports whether c is one of the numbers no connection uses.
func (c Channel) reserved() bool { return c == chanReservedReply || c == chanReservedReplyPrio }

// Throttled reports whether senders on c spend credit: every channel but the
// priority channels, which must always get through (CI). Replies travel
// back on their request's connection and are never throttled either.
func (c Channel) Throttled() bool { return c >= ChanCLMS }

// ServiceID names a cluster service: channel<<16 | subservice.
type ServiceID = framing.ServiceID

// ServiceOn is CI's ICS_NSC_SVC(channel, subservice).
func ServiceOn(ch Channel, subservice uint16) ServiceID {
	return framing.NewServiceID(uint16(ch), subservice)
}

// WriteMode selects how frames reach the socket.
type WriteMode uint8

const (
	// WriteDirect writes from the sending goroutine with one writev, frames
	// queued meanwhile going out in the next one. It saves the cross-thread
	// hop of WriteEventLoop and is the default; see BENCHMARKS.md.
	WriteDirect WriteMode = iota
	// WriteEventLoop hands every batch to the connection's gnet event loop
	// (AsyncWritev). Kept for comparison.
	WriteEventLoop
)

// ReadMode selects what reads the sockets: gnet event loops, or a goroutine
// per connection parked in Go's netpoller. Both parse frames in place and
// run the same frame handling, and every bound holds in both; see
// docs/ARCHITECTURE.md ("Reading") for the measurements that chose the
// default.
type ReadMode uint8

const (
	// ReadAuto is the mode measured best: ReadNetpoller, as fast at p50
	// and better at p99.9 and under 256 callers on a 2-vCPU machine; or
	// ReadEventLoops when WriteMode is WriteEventLoop (which needs gnet's
	// loops to write). No machine was measured on which the loops won.
	ReadAuto ReadMode = iota
	// ReadEventLoops reads every socket on gnet event loops
	// (Config.EventLoops of them).
	ReadEventLoops
	// ReadNetpoller reads each socket on a goroutine of its own, blocked
	// in Read and so parked in Go's netpoller: the runtime wakes it, and
	// the caller it then readies, without a loop holding a P in epoll_wait.
	ReadNetpoller
)

var readModeNames = [...]string{"auto", "loops", "netpoll"}

// String is the mode's name as ParseReadMode reads it: auto, loops, netpoll.
func (m ReadMode) String() string {
	if int(m) < len(readModeNames) {
		return readModeNames[m]
	}
	return fmt.Sprintf("ReadMode(%d)", m)
}

// ParseReadMode reads a ReadMode by name (auto, loops, netpoll), for flags
// and environment variables.
func ParseReadMode(s string) (ReadMode, error) {
	for i, name := range readModeNames {
		if s == name {
			return ReadMode(i), nil
		}
	}
	return 0, fmt.Errorf("%w: read mode %q: want auto, loops or netpoll", ErrBadConfig, s)
}

// Config configures a Node. Start from DefaultConfig.
type Config struct {
	Node    NodeNum // this node's number; required
	Cluster string  // cluster name; connections from other clusters are refused; required

	// ListenAddr is host:port to accept ICS connections on; port 0 picks a
	// free port (see Node.Addr).
	ListenAddr string
	// Peers maps the other members to their ICS addresses. Connections from
	// nodes not in this table are refused. SetPeer changes it at run time.
	Peers map[NodeNum]string

	MaxChannels         int           // channels in the set, ChanFirstService+1 .. 255
	MaxSubservices      int           // subservices per service channel
	MaxPayload          int           // largest payload accepted, compressed or not
	MaxOutstandingCalls int           // size of the client handle table
	DialTimeout         time.Duration // bound on one connection attempt, handshake included
	DialBackoff         time.Duration // wait after a failed dial before the next; doubles per failure in a row
	MaxDialBackoff      time.Duration // bound on that wait
	HandshakeTimeout    time.Duration // an accepted connection must say hello within this
	ReadMode            ReadMode      // what reads the sockets; ReadAuto picks the measured best (ReadNetpoller)
	EventLoops          int           // gnet event loops with ReadEventLoops (ignored by ReadAuto otherwise, refused with ReadNetpoller); 0: GOMAXPROCS-1, at least one
	WriteMode           WriteMode     // how frames reach the socket
	MaxPendingWrite     int           // bytes queued on one connection before senders wait; event loops never queue more
	// WriteTimeout ends a connection whose peer has read nothing of what
	// is queued for it for this long, and with it the link: a peer that
	// stops reading must not hold server handles, or memory, for ever.
	WriteTimeout time.Duration

	// CreditWindow is the flow-control window, in bytes, a node grants each
	// peer on each throttled channel (CLMS, probe and service channels): no
	// more than this, plus one frame, is ever waiting for its server handles.
	// ChannelWindows overrides it per channel. Priority and reply channels
	// are never throttled.
	CreditWindow   int
	ChannelWindows map[Channel]int
	// MaxCreditWindow bounds how far a window widens for a sender that the
	// window, not the receiver's handlers, is holding back.
	MaxCreditWindow int

	// DisableEscalation turns off CI's priority escalation of RPCs sent from
	// inside a handler. For tests and benchmarks only: it brings back the
	// deadlock escalation exists to prevent.
	DisableEscalation bool

	// ClientInterceptors wrap every call this node makes (Call, Go, GoFunc,
	// Send) and ServerInterceptors every handler it runs, the first
	// outermost: for logging, auth decisions, tracing (intercept.go).
	// Empty: none, and calls pay nothing for them.
	ClientInterceptors []ClientInterceptor
	ServerInterceptors []ServerInterceptor

	// Security turns on mutual authentication (and optionally encryption)
	// of every connection. Without it a node must say Insecure: New refuses
	// a Config that sets neither, so that running open is always a choice.
	Security *Security
	// Insecure runs the node without authentication: anyone who can reach
	// ListenAddr and knows a member's number is taken for that member. For
	// tests and closed networks only (the counterpart of grpc's
	// insecure.NewCredentials()). Exactly one of Security and Insecure.
	Insecure bool

	// Limits against hostile or broken peers; each one that triggers counts
	// in ci_ics_limit_hits_total.
	MaxUnauthPerSource int // connections from one IP that have not yet named a member
	// MaxPendingHandshakes bounds the connections in their handshake
	// node-wide. At either limit the oldest such connection (from that
	// address, or anywhere) is shed to make room, so that a flood of idle
	// connections cannot keep a member out: its handshake takes
	// milliseconds, a stranger's lasts until it is shed.
	MaxPendingHandshakes int
	// MaxHandshakesPerSecond bounds the Noise key exchanges a node computes
	// for accepted hellos, separately for members dialling from their
	// configured address and for everyone else; hellos over it are refused.
	MaxHandshakesPerSecond int
	// MaxConnections bounds the accepted connections open at once,
	// handshaking or not; later ones are reset at once. Each costs two
	// descriptors, and running out of descriptors must never be what
	// stops a flood (see acceptLoop).
	MaxConnections     int
	MaxInflightPerPeer int // requests from one peer received and not yet answered
	// MaxInflightBytesPerPeer bounds the same requests in bytes (their
	// decompressed size when compressed); past either bound they are
	// answered busy.
	MaxInflightBytesPerPeer int
	// MaxConnsPerChannel bounds a peer's accepted connections on one
	// channel: each would get a window of its own.
	MaxConnsPerChannel int
	// ViolationHoldOff is how long a member whose connection broke the
	// protocol (a bad frame, credit it was not granted) is refused before
	// it may connect again. Each reconnect would earn a fresh window.
	ViolationHoldOff time.Duration

	// Incarnation identifies this run of the node in every hello; 0 picks a
	// random one. CLMS sets it to its own incarnation, which grows with
	// every run, so that a peer can tell an old process from a new one and
	// refuse the old one for good (NodeDownIncarnation).
	Incarnation uint64

	Logger  *slog.Logger // nil: discard
	Metrics *metrics.Set // nil: a new set, see Node.Metrics
}

// DefaultConfig returns the defaults, each with its reason.
func DefaultConfig() Config {
	return Config{
		ListenAddr:              "127.0.0.1:0",             // loopback: a node is exposed only on purpose
		MaxChannels:             12,                        // CI's ICS_MAX_CHANNELS
		MaxSubservices:          6,                         // CI's ICS_NUM_SUBSERVICES
		MaxPayload:              framing.DefaultMaxPayload, // 16 MiB: big enough for bulk, small enough to refuse nonsense
		MaxOutstandingCalls:     16384,                     // per node; a full table fails fast instead of growing memory
		DialTimeout:             2 * time.Second,           // loopback/LAN connects take microseconds; a dead host should not stall callers long
		DialBackoff:             20 * time.Millisecond,     // a restarting peer listens again within tens of ms; far below a human's notice
		MaxDialBackoff:          time.Second,               // a peer back up is reached within a second; one dial a second costs an unreachable peer nothing
		HandshakeTimeout:        5 * time.Second,           // generous for a loaded peer, short enough to shed half-open connections
		ReadMode:                ReadAuto,                  // netpoller readers: measured faster on p50 and the tail (docs/ARCHITECTURE.md, "Reading")
		EventLoops:              0,                         // with ReadEventLoops: GOMAXPROCS-1: a P no loop can hold in epoll_wait, so nothing waits for sysmon (DefaultEventLoops)
		WriteMode:               WriteDirect,               // measured faster; BENCHMARKS.md
		MaxPendingWrite:         8 << 20,                   // two max-size frames in flight, then senders feel it
		WriteTimeout:            10 * time.Second,          // a live peer drains its socket in milliseconds; a stalled one is ended well before CLMS would notice
		MaxUnauthPerSource:      32,                        // a peer opens at most a dozen channels at once; a flood from one address is cut off
		MaxPendingHandshakes:    1024,                      // a full restart of a 64-node cluster opens ~800 at once; a flood is shed oldest first
		MaxHandshakesPerSecond:  1000,                      // a 64-node cluster's restart needs ~800; at ~0.3 ms each, a flood costs at most 0.3 CPU
		MaxConnections:          defaultMaxConnections(),   // half the descriptors (two per connection): the rest stays for dials and the process
		MaxInflightPerPeer:      65536,                     // far above what credits let a well-behaved peer queue; bounds priority-channel floods
		MaxInflightBytesPerPeer: 256 << 20,                 // 16 max-size requests: more than credit windows and priority traffic need, a bound on what one peer pins
		MaxConnsPerChannel:      2,                         // one, and its replacement arriving before the old one's close is seen
		ViolationHoldOff:        time.Second,               // a correct member never pays it; a reconnecting attacker gets one window a second
		CreditWindow:            256 << 10,                 // a few hundred small RPCs or a few bulk chunks, small enough to bound memory per peer
		MaxCreditWindow:         1 << 20,                   // enough in flight for one bulk stream to match raw TCP on loopback (BENCHMARKS.md); reached only while handlers keep up
	}
}

// validate fills zero fields from DefaultConfig and rejects nonsense.
func (c *Config) validate() error {
	d := DefaultConfig()
	if c.Node == 0 {
		return fmt.Errorf("%w: Node must be set (1 or more)", ErrBadConfig)
	}
	if c.Cluster == "" || len(c.Cluster) > framing.MaxClusterName {
		return fmt.Errorf("%w: Cluster has %d bytes: a cluster name has 1..%d", ErrBadConfig, len(c.Cluster), framing.MaxClusterName)
	}
	if c.ListenAddr == "" {
		c.ListenAddr = d.ListenAddr
	}
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		return fmt.Errorf("%w: ListenAddr %q: %v", ErrBadConfig, c.ListenAddr, err)
	}
	for num, addr := range c.Peers {
		if num == 0 {
			return fmt.Errorf("%w: Peers has node 0: nodes are numbered from 1", ErrBadConfig)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil && num != c.Node {
			return fmt.Errorf("%w: Peers[%d] %q: %v", ErrBadConfig, num, addr, err)
		}
	}
	// Zero means the default; a negative bound is a mistake, never "off".
	for _, f := range []struct {
		name string
		v    int
	}{
		{"MaxPendingWrite", c.MaxPendingWrite}, {"MaxCreditWindow", c.MaxCreditWindow},
		{"MaxUnauthPerSource", c.MaxUnauthPerSource}, {"MaxPendingHandshakes", c.MaxPendingHandshakes},
		{"MaxHandshakesPerSecond", c.MaxHandshakesPerSecond}, {"MaxConnections", c.MaxConnections},
		{"MaxInflightPerPeer", c.MaxInflightPerPeer}, {"MaxInflightBytesPerPeer", c.MaxInflightBytesPerPeer},
		{"MaxConnsPerChannel", c.MaxConnsPerChannel},
	} {
		if f.v < 0 {
			return fmt.Errorf("%w: %s %d is negative (0: the default)", ErrBadConfig, f.name, f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"DialTimeout", c.DialTimeout}, {"HandshakeTimeout", c.HandshakeTimeout}, {"WriteTimeout", c.WriteTimeout},
		{"DialBackoff", c.DialBackoff}, {"MaxDialBackoff", c.MaxDialBackoff}, {"ViolationHoldOff", c.ViolationHoldOff},
	} {
		if f.v < 0 {
			return fmt.Errorf("%w: %s %v is negative (0: the default)", ErrBadConfig, f.name, f.v)
		}
	}
	fill := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&c.MaxChannels, d.MaxChannels)
	fill(&c.MaxSubservices, d.MaxSubservices)
	fill(&c.MaxPayload, d.MaxPayload)
	fill(&c.MaxOutstandingCalls, d.MaxOutstandingCalls)
	fill(&c.MaxPendingWrite, d.MaxPendingWrite)
	fill(&c.CreditWindow, d.CreditWindow)
	fill(&c.MaxCreditWindow, d.MaxCreditWindow)
	fill(&c.MaxUnauthPerSource, d.MaxUnauthPerSource)
	fill(&c.MaxInflightPerPeer, d.MaxInflightPerPeer)
	fill(&c.MaxInflightBytesPerPeer, d.MaxInflightBytesPerPeer)
	fill(&c.MaxConnsPerChannel, d.MaxConnsPerChannel)
	fill(&c.MaxConnections, d.MaxConnections)
	fill(&c.MaxPendingHandshakes, d.MaxPendingHandshakes)
	fill(&c.MaxHandshakesPerSecond, d.MaxHandshakesPerSecond)
	switch {
	case c.Security == nil && !c.Insecure:
		return fmt.Errorf("%w: no Security: set Config.Security, or Config.Insecure to run without authentication on purpose", ErrBadConfig)
	case c.Security != nil && c.Insecure:
		return fmt.Errorf("%w: both Security and Insecure are set", ErrBadConfig)
	case c.Security != nil:
		if err := c.Security.validate(); err != nil {
			return err
		}
		c.Security = c.Security.clone()
	}
	// The node keeps these maps; the caller's must not change them behind
	// the loops' backs.
	c.Peers = maps.Clone(c.Peers)
	c.ChannelWindows = maps.Clone(c.ChannelWindows)
	if c.DialTimeout == 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.DialBackoff == 0 {
		c.DialBackoff = d.DialBackoff
	}
	if c.MaxDialBackoff == 0 {
		c.MaxDialBackoff = max(d.MaxDialBackoff, c.DialBackoff)
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.ViolationHoldOff == 0 {
		c.ViolationHoldOff = d.ViolationHoldOff
	}
	switch {
	case c.MaxChannels <= int(ChanFirstService) || c.MaxChannels > 255:
		return fmt.Errorf("%w: MaxChannels %d: need %d..255 (8 are CI's fixed channels)", ErrBadConfig, c.MaxChannels, ChanFirstService+1)
	case c.MaxSubservices < 1 || c.MaxSubservices > 1<<16:
		return fmt.Errorf("%w: MaxSubservices %d out of 1..65536", ErrBadConfig, c.MaxSubservices)
	case c.MaxPayload < 1 || c.MaxPayload > 1<<30:
		return fmt.Errorf("%w: MaxPayload %d out of 1..1GiB", ErrBadConfig, c.MaxPayload)
	case c.MaxOutstandingCalls < 1 || c.MaxOutstandingCalls > 1<<24:
		return fmt.Errorf("%w: MaxOutstandingCalls %d out of 1..16M", ErrBadConfig, c.MaxOutstandingCalls)
	case c.MaxDialBackoff < c.DialBackoff:
		return fmt.Errorf("%w: MaxDialBackoff %v under DialBackoff %v", ErrBadConfig, c.MaxDialBackoff, c.DialBackoff)
	case c.CreditWindow < framing.HeaderSize || c.CreditWindow > 1<<30:
		return fmt.Errorf("%w: CreditWindow %d out of %d..1GiB", ErrBadConfig, c.CreditWindow, framing.HeaderSize)
	case c.EventLoops < 0:
		return fmt.Errorf("%w: EventLoops %d is negative", ErrBadConfig, c.EventLoops)
	case c.WriteMode > WriteEventLoop:
		return fmt.Errorf("%w: unknown WriteMode %d", ErrBadConfig, c.WriteMode)
	case c.ReadMode > ReadNetpoller:
		return fmt.Errorf("%w: unknown ReadMode %d (ReadAuto, ReadEventLoops or ReadNetpoller)", ErrBadConfig, c.ReadMode)
	case c.ReadMode == ReadNetpoller && c.WriteMode == WriteEventLoop:
		return fmt.Errorf("%w: WriteMode WriteEventLoop needs ReadMode ReadEventLoops: without event loops nothing would write", ErrBadConfig)
	case c.ReadMode == ReadNetpoller && c.EventLoops > 0:
		return fmt.Errorf("%w: EventLoops %d with ReadMode ReadNetpoller: event loops apply to ReadEventLoops only", ErrBadConfig, c.EventLoops)
	case c.MaxPendingWrite < c.MaxPayload+framing.HeaderSize:
		// A whole frame must always fit, or a max-size frame could never be sent.
		c.MaxPendingWrite = c.MaxPayload + framing.HeaderSize
	}
	c.ReadMode = c.EffectiveReadMode()
	for ch, w := range c.ChannelWindows {
		if !ch.Throttled() {
			return fmt.Errorf("%w: ChannelWindows[%s]: channel is never throttled", ErrBadConfig, ch)
		}
		if int(ch) >= c.MaxChannels {
			return fmt.Errorf("%w: ChannelWindows[%s]: channel %d is past MaxChannels %d", ErrBadConfig, ch, ch, c.MaxChannels)
		}
		if w < framing.HeaderSize || w > 1<<30 {
			return fmt.Errorf("%w: ChannelWindows[%s] = %d out of %d..1GiB", ErrBadConfig, ch, w, framing.HeaderSize)
		}
	}
	return nil
}

// window is the credit window for ch, 0 for channels that are not throttled.
func (c *Config) window(ch Channel) int {
	if !ch.Throttled() {
		return 0
	}
	if w, ok := c.ChannelWindows[ch]; ok {
		return w
	}
	return c.CreditWindow
}

// defaultMaxConnections is a quarter of RLIMIT_NOFILE: accepted connections
// take two descriptors each (gnet's and the writer's dup), so they use at
// most half, and dials, files and other nodes in the process keep the rest.
func defaultMaxConnections() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > 1<<24 {
		return 1 << 16
	}
	return max(int(rl.Cur/4), 16)
}

// EffectiveReadMode is the read mode a node built from c runs: ReadMode,
// or what ReadAuto stands for with c's WriteMode.
func (c *Config) EffectiveReadMode() ReadMode {
	if c.ReadMode != ReadAuto {
		return c.ReadMode
	}
	return autoReadMode(c.WriteMode)
}

// autoReadMode is what ReadAuto means: the netpoller readers, which beat
// gnet's loops on this project's measurements (docs/ARCHITECTURE.md,
// "Reading"), unless writes go through the loops.
func autoReadMode(w WriteMode) ReadMode {
	if w == WriteEventLoop {
		return ReadEventLoops
	}
	return ReadNetpoller
}
