// Package admin is the admin endpoint of a cluster node (cinode): what an
// operator, a supervisor and Prometheus talk to, over HTTP on localhost or
// a Unix socket.
//
//	GET  /metrics               Prometheus text format: the node's metrics.Set, Go runtime, process
//	GET  /healthz               200 while the process serves at all
//	GET  /readyz                200 once the node is ready (joined; critical key services owned)
//	GET  /v1/status             this node: number, state, master, incarnation, readiness
//	     ?after=SEQ&wait=DUR    a long poll: once the view's seq passed SEQ (ViewWaiter)
//	GET  /v1/members            the membership as this node has it committed
//	GET  /v1/transitions?since=ID&limit=N   the history after ID, newest last
//	GET  /v1/watch?since=ID     newline-delimited JSON, one line per transition, as committed
//	GET  /v1/node/N             node N's row of the membership
//	GET  /v1/keysvc             key services, owners, epochs (says so while there are none)
//	     ?after=SEQ&wait=DUR    a long poll, as /v1/status's (the same sequence)
//	POST /v1/shutdown           planned shutdown of this node (SHUTDOWN transition)
//	POST /v1/move               move a key service to another node
//	POST /v1/signal             forward a signal to a handler or a process on a node
//	POST /v1/ping               this node makes ICS round trips to another's echo: latency, calls/s
//	GET  /debug/pprof/...       net/http/pprof
//
// The JSON schema is versioned (SchemaVersion, in every object) and
// documented in docs/ADMIN.md.
//
// Security: by default the endpoint listens on a loopback address or on a
// Unix socket created with mode 0600, where the operating system decides
// who may connect. Bound anywhere else, it requires a bearer token read
// from a file of mode 0600 on every request (401 without one, 403 with a
// wrong one), so that nobody on the network can read the cluster's state,
// shut a node down or signal its processes.
//
// The endpoint serves one node's view from a Source, which the node
// implements:
//
//	srv, err := admin.New(admin.Config{Addr: "unix:/run/ci/admin.sock", Metrics: set}, node)
//	err = srv.Start()
//	defer srv.Close(ctx)
package admin
