// Package sigfwd is the ICS signal forwarding service, one of CI's three
// cluster services: a node delivers a named signal to a handler registered
// on another node, or an OS signal to a process there when that node's
// Policy allows it. It is served on the CLMS channel as subservice 2 and
// built with icsgen from the Forwarding interface (wire.go).
//
// Every node that takes part creates one Forwarder:
//
//	fwd, err := sigfwd.New(node, sigfwd.Config{
//		// Off by default; here: only the processes of user 1000.
//		Policy: sigfwd.Policy{AllowProcesses: true, AllowUID: true, UID: 1000},
//	})
//	_ = fwd.RegisterHandler("reload", func(ctx context.Context, from engine.NodeNum, signal string, arg []byte) error {
//		return reloadConfig(arg)
//	})
//
// and signals the others:
//
//	err := fwd.Signal(ctx, 3, "reload", "SIGHUP", []byte("/etc/app.toml"))
//	err = fwd.Kill(ctx, 3, pid, syscall.SIGTERM)
//	switch {
//	case err == nil: // delivered
//	case errors.Is(err, sigfwd.ErrRefused): // node 3's policy said no
//	case errors.Is(err, sigfwd.ErrNotFound): // no such handler or process there
//	case errors.Is(err, engine.ErrNodeDown): // node 3 is gone
//	}
//
// The serving node logs every forwarded signal with the node that asked
// for it, the target and the outcome. OS signals go through a pidfd, so a
// process that exits and whose PID is reused between the policy check and
// the signal is not the one signalled; init and the node's own process are
// never signalled.
package sigfwd
