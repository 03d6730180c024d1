// Package engine is ICS, CI's internode communication subsystem: numbered
// nodes exchange RPCs and one-way messages for cluster services over
// channels, each a TCP connection per node pair.
//
// # Reading
//
// Each connection is read, and its frames decoded in place, by one
// goroutine blocked in Read, parked in Go's netpoller (ReadNetpoller, what
// the default ReadAuto picks); Config.ReadMode = ReadEventLoops reads with
// gnet event loops instead (Config.EventLoops of them). Both run the same
// frame handling and enforce the same bounds; on a 2-vCPU machine the
// netpoller mode measured as fast at p50 (within noise), better at p99.9
// and at least as fast with 256 callers (docs/ARCHITECTURE.md, "Reading").
// Frames are written straight from the sending goroutine in either mode.
//
// With netpoller reads, a caller reads its reply from the connection
// itself, as a raw TCP client would, instead of being handed it by the
// connection's reader goroutine: on small machines that hand-over cost
// more than everything else in a call (docs/ARCHITECTURE.md, "Callers read
// their own replies"). A caller whose context can end reads in slices of
// 1 to 32 ms and looks at its context between them, so a cancelled call
// returns within a slice; one with a deadline stops reading at it.
//
// # Channels and services
//
// The channel set follows CI: four priority channels (ChanPrio1..4),
// ChanCLMS for CLMS, the cluster API and signal forwarding,
// ChanCLMSProbe for coming-up nodes, and service channels from
// ChanFirstService up to Config.MaxChannels-1. A cluster service is
// registered on a service channel and subservice, ServiceOn(ch, ss), which
// is CI's ICS_NSC_SVC(ch, ss) = ch<<16 | ss.
//
// Each node dials its own connection to each peer for each channel it sends
// on; requests go from dialler to acceptor, and their replies come back on
// the same connection, in the direction that otherwise carries only credit
// grants, so a reply never waits behind a request, for a dial, or for
// credit. (CI had two reply channels; their numbers, 4 and 5, stay
// reserved.) Every connection opens with a handshake (the
// framing.Hello) that names the cluster, both node numbers and the channel:
// a connection from another cluster, an unknown node or another protocol
// version is closed before any service sees a byte.
//
// # Calls
//
// Call is a synchronous RPC bounded by its context; Go and GoFunc send one
// and return without waiting for the reply (but after any wait for a dial
// or credit, within the context); Send is a one-way message. Every error a call returns wraps
// exactly one of the sentinels in errors.go, after CI's CLUSTER_RPC_*
// codes, so callers test them with errors.Is, and Code gives its Status
// (the table is in errors.go). What the remote node answered is a
// *RemoteError, declared errors of icsgen stubs included. When a peer's
// connection drops, it restarts, or NodeDown declares it down, every call
// outstanding to it fails at once with ErrNodeDown: nothing waits for a
// deadline already known to be lost. WaitForReady(ctx) makes a call wait
// for an unreachable peer instead, within ctx.
//
// The caller's deadline travels with the request: the handler's ctx has
// it, and when the caller gives up (deadline, cancel) a cancel frame
// cancels the handler's ctx and its reply is not sent. Calls from a ctx
// that cannot end (context.Background) cost nothing for this; others one
// small allocation on the server, the request's own context.
//
// Config.ClientInterceptors and Config.ServerInterceptors wrap calls and
// handlers (logging, auth decisions, tracing), the first outermost.
// Node.Shutdown drains: peers learn it and fail new calls with
// ErrShuttingDown, running handlers finish and reply, then the node
// closes. Every node serves InfoService: ListServices says what a peer has
// registered (telling ErrProgUnavail from ErrProcUnavail), Health
// whether it serves, and Ping echoes a payload at any priority (an ICS
// round trip between two members, which the admin endpoint's /v1/ping
// measures).
//
// Outstanding calls live in a lock-free table of client handles indexed by
// transaction id (slot and generation, so a late reply to a reused slot is
// recognised and dropped). Requests are served inline on the goroutine that
// read them (Service.Inline, for handlers that never block) or by server handles
// from a lock-free pool bounded by Service.MaxHandles; priority requests
// have handles of their own.
//
// # Hostile and broken peers
//
// Every bound the engine promises is enforced by the receiver, against a
// peer that ignores the protocol: descriptors (shed, never fatal), hellos
// and handshakes (size, per address, node-wide, Noise rate), credit at
// the decompressed size, requests and bytes in flight per peer, write
// queues and a write deadline, a hold-off for members that broke the
// protocol. Each hit counts in ci_ics_limit_hits_total;
// docs/ARCHITECTURE.md lists them with their defaults and tests. A node
// whose event loops (ReadEventLoops) die anyway closes itself: Done is closed and Err says
// why, so its owner can restart instead of running on deaf.
//
// # Example
//
//	cfg := engine.DefaultConfig()
//	cfg.Node, cfg.Cluster = 2, "demo"
//	cfg.ListenAddr = "127.0.0.2:7400"
//	cfg.Peers = map[engine.NodeNum]string{1: "127.0.0.1:7400"}
//	cfg.Insecure = true // or cfg.Security: one of the two must be chosen
//	n, err := engine.New(cfg)
//	if err != nil { ... }
//	if err := n.Start(); err != nil { ... }
//	defer n.Close()
//
//	echo := engine.ServiceOn(engine.ChanFirstService, 1)
//	err = n.Register(engine.Service{ID: echo, Name: "echo", MaxHandles: 8,
//		Procs: []engine.Handler{func(ctx context.Context, req *engine.Request, resp *engine.Response) error {
//			resp.Body = append(resp.Body, req.Args...)
//			return nil
//		}}})
//
//	// On node 1:
//	reply, err := n.Call(ctx, 2, engine.Method{Service: echo}, []byte("hello"), nil)
//
// See Example for a complete program.
package engine
