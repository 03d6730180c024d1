package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
)

// member is a running cluster node, as cinode drives it: node.go builds one
// from services/node.
type member interface {
	admin.Source
	// Start brings the node up; it returns once the node listens and has
	// begun to join (joining goes on in the background).
	Start() error
	// Shutdown is the planned leave: SHUTDOWN committed, calls drained.
	Shutdown(ctx context.Context) error
	// Close stops everything at once.
	Close() error
	// Fatal delivers the error that ends this incarnation: a fence (wraps
	// clms.ErrFenced) or a failed join.
	Fatal() <-chan error
}

// runNode runs the node until a signal, an admin shutdown or a fatal error,
// and returns the exit code.
func runNode(ctx context.Context, st *settings, base *slog.Logger) int {
	log := base.With("node", st.num)
	if st.tempDir {
		dir, err := os.MkdirTemp("", "cinode-dev-")
		if err != nil {
			log.Error("cannot create a temporary data directory", "err", err)
			return exitFailed
		}
		st.dataDir = dir
		defer os.RemoveAll(dir)
		log.Warn("--dev: insecure single-node cluster on loopback; state is thrown away on exit", "data_dir", dir, "ics", st.node.Self.Address)
	}
	set := metrics.NewSet()
	m, err := newMember(st, base, set)
	if err != nil {
		log.Error("cannot build the node", "err", err)
		return exitFailed
	}
	closeBound := st.closeGrace
	defer func() { closeWithin(m, closeBound, log) }()

	shutdownAsked := make(chan string, 1)
	acfg := st.admin
	acfg.Metrics = set
	acfg.Logger = log.With("component", "admin")
	acfg.Shutdown = func(reason string) {
		select {
		case shutdownAsked <- reason:
		default: // one is enough
		}
	}
	withAdmin(&acfg, m)
	srv, err := admin.New(acfg, m)
	if err != nil {
		log.Error("admin endpoint", "err", err)
		return exitBadUsage
	}
	if err := srv.Start(); err != nil {
		log.Error("admin endpoint cannot listen", "addr", acfg.Addr, "err", err)
		return exitFailed
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Close(cctx)
	}()
	if err := m.Start(); err != nil {
		log.Error("cannot start the node", "err", err)
		return exitFailed
	}
	log.Info("cinode running", "cluster", st.cfg.Name, "ics", st.node.Self.Address, "admin", srv.Addr(), "data_dir", st.dataDir)
	if msg, dev, retry := machineNeigh.arpRetryWarning(st.node.Timing, st.node.Self.Address); msg != "" {
		log.Warn(msg, "interface", dev, "arp_retry", retry, "lease_timeout", st.node.Timing.LeaseTimeout)
	}

	var reason string
	select {
	case err := <-m.Fatal():
		if isFenced(err) {
			log.Error("fenced: this incarnation is no longer a member; exiting so that a restart rejoins as a new one", "err", err, "exit", exitFenced)
			return exitFenced
		}
		if errors.Is(err, clms.ErrConfigMismatch) {
			// Not restarted by systemd (RestartPreventExitStatus=2): the
			// same file would be refused again.
			log.Error("refused by the cluster: its cluster.toml differs from this node's", "err", err, "exit", exitBadUsage)
			return exitBadUsage
		}
		log.Error("node failed", "err", err)
		return exitFailed
	case <-ctx.Done():
		reason = "signal"
	case reason = <-shutdownAsked:
	}
	log.Info("planned shutdown", "reason", reason, "timeout", st.timeout)
	// A second signal during the shutdown exits at once.
	sctx, cancel := context.WithTimeout(context.Background(), st.timeout)
	defer cancel()
	second := make(chan os.Signal, 1)
	signal.Notify(second, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(second)
	done := make(chan error, 1)
	go func() { done <- m.Shutdown(sctx) }()
	// Shutdown returns soon after sctx ends, closing the node; but Close
	// waits for running handlers, and one that ignores its context would
	// hold it, and the process, for ever.
	exitAnyway := time.NewTimer(st.timeout + st.closeGrace)
	defer exitAnyway.Stop()
	select {
	case <-exitAnyway.C:
		log.Error("planned shutdown did not finish: exiting anyway (a handler or callback ignores its context?)",
			"timeout", st.timeout, "grace", st.closeGrace, "exit", exitFailed)
		closeBound = 0 // its Close is the one that hangs
		return exitFailed
	case err := <-done:
		if errors.Is(err, clms.ErrNoQuorum) {
			// The cluster is being stopped as a whole and this is one of
			// its last voters: nobody is left to record the leave, and
			// waiting would not change that. Stopping is still what the
			// operator asked for; the next start rejoins as after a crash.
			log.Warn("leaving without a recorded SHUTDOWN: no majority of master-eligible nodes is left to commit it", "err", err)
			log.Info("shutdown complete")
			return exitOK
		}
		if err != nil {
			log.Error("planned shutdown did not complete", "err", err)
			return exitFailed
		}
	case <-second:
		log.Warn("second signal: exiting without completing the shutdown")
		return exitFailed
	case err := <-m.Fatal():
		if isFenced(err) {
			log.Error("fenced during shutdown", "err", err)
			return exitFenced
		}
		log.Error("node failed during shutdown", "err", err)
		return exitFailed
	}
	log.Info("shutdown complete")
	return exitOK
}

// closeGrace is how long closeWithin waits: Close normally takes
// milliseconds (handlers' contexts end at once).
const closeGrace = 5 * time.Second

// closeWithin closes m, waiting at most bound for it: Close waits for the
// node's running handlers, and one that ignores its context would keep
// the process from exiting, which a supervisor (and an operator's SIGTERM)
// counts on. The process exits right after, which ends what Close left
// running.
func closeWithin(m member, bound time.Duration, log *slog.Logger) {
	done := make(chan struct{})
	go func() {
		_ = m.Close()
		close(done)
	}()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		if bound > 0 {
			log.Error("the node did not close in time: exiting anyway (a handler or callback ignores its context?)", "bound", bound)
		}
	}
}
