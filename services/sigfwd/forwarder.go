package sigfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/engine"
)

// HandlerFunc receives a named signal forwarded from node from. ctx is
// valid only until it returns. A returned error reaches the caller as an
// *engine.RemoteError wrapping engine.ErrFailed, with the error's text.
type HandlerFunc func(ctx context.Context, from engine.NodeNum, signal string, arg []byte) error

// Config configures a Forwarder.
type Config struct {
	Policy Policy       // which OS processes other nodes may signal; the zero Policy allows none
	Logger *slog.Logger // nil: the node's logger
}

// Forwarder is a node's signal forwarding service: it delivers the
// signals other nodes forward to it, and forwards this node's signals to
// theirs. Create one per node with New.
type Forwarder struct {
	node     *engine.Node
	client   *ForwardingClient
	log      *slog.Logger
	procRoot string // /proc; a test may point it elsewhere
	self     int    // this process: never signalled from afar

	policy atomic.Pointer[Policy]

	mu       sync.RWMutex
	handlers map[string]HandlerFunc // guarded by mu
}

// New registers the signal forwarding service on node and returns it.
func New(node *engine.Node, cfg Config) (*Forwarder, error) {
	if err := cfg.Policy.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = node.Logger()
	}
	f := &Forwarder{
		node:     node,
		client:   NewForwardingClient(node),
		log:      log.With("service", "sigfwd"),
		procRoot: "/proc",
		self:     os.Getpid(),
		handlers: map[string]HandlerFunc{},
	}
	p := cfg.Policy.clone()
	f.policy.Store(&p)
	if err := RegisterForwarding(node, server{f}); err != nil {
		return nil, err
	}
	return f, nil
}

// RegisterHandler makes fn receive the named signals forwarded to name on
// this node.
func (f *Forwarder) RegisterHandler(name string, fn HandlerFunc) error {
	if name == "" || fn == nil {
		return fmt.Errorf("sigfwd: RegisterHandler needs a name and a function")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.handlers[name]; dup {
		return fmt.Errorf("sigfwd: handler %q already registered", name)
	}
	f.handlers[name] = fn
	return nil
}

// UnregisterHandler removes the handler registered under name, if any.
func (f *Forwarder) UnregisterHandler(name string) {
	f.mu.Lock()
	delete(f.handlers, name)
	f.mu.Unlock()
}

// SetPolicy replaces this node's policy for OS signals.
func (f *Forwarder) SetPolicy(p Policy) error {
	if err := p.validate(); err != nil {
		return err
	}
	p = p.clone()
	f.policy.Store(&p)
	f.log.Info("signal policy set", "allow_processes", p.AllowProcesses, "pids", p.PIDs, "allow_uid", p.AllowUID, "uid", p.UID, "allow_self", p.AllowSelf)
	return nil
}

// Policy returns this node's policy for OS signals.
func (f *Forwarder) Policy() Policy { return f.policy.Load().clone() }

// Signal delivers signal and arg to the handler registered as handler on
// node to. It returns nil once the handler has run without error,
// ErrNotFound when node to has no such handler, or the handler's error
// (an *engine.RemoteError wrapping engine.ErrFailed); engine errors such as
// engine.ErrNodeDown when the node cannot be reached.
func (f *Forwarder) Signal(ctx context.Context, to engine.NodeNum, handler, signal string, arg []byte) error {
	f.log.Debug("forwarding signal", "to", to, "handler", handler, "signal", signal)
	if to == f.node.Num() {
		return server{f}.Named(ctx, to, handler, signal, arg)
	}
	return f.client.Named(ctx, to, handler, signal, arg)
}

// Kill sends OS signal sig to process pid on node to. It returns nil once
// the signal was sent, ErrRefused when that node's policy does not allow
// it, ErrNotFound when there is no such process, ErrInvalid for a pid or
// signal that is never valid; engine errors when the node cannot be
// reached.
func (f *Forwarder) Kill(ctx context.Context, to engine.NodeNum, pid int, sig syscall.Signal) error {
	f.log.Debug("forwarding OS signal", "to", to, "pid", pid, "signal", sig)
	if pid <= 0 || pid > 1<<30 || sig <= 0 || sig > maxSignal {
		return fmt.Errorf("%w: pid %d signal %d", ErrInvalid, pid, int(sig))
	}
	if to == f.node.Num() {
		return server{f}.Process(ctx, to, int32(pid), int32(sig))
	}
	return f.client.Process(ctx, to, int32(pid), int32(sig))
}

// server serves Forwarding for f.
type server struct{ f *Forwarder }

var _ Forwarding = server{}

func (s server) Named(ctx context.Context, from engine.NodeNum, handler, signal string, arg []byte) error {
	s.f.mu.RLock()
	fn := s.f.handlers[handler]
	s.f.mu.RUnlock()
	var err error
	if fn == nil {
		err = fmt.Errorf("%w: no handler %q on node %d", ErrNotFound, handler, s.f.node.Num())
	} else {
		err = fn(ctx, from, signal, arg)
	}
	s.f.log.Info("forwarded signal", "from", from, "handler", handler, "signal", signal, "arg_bytes", len(arg), "outcome", outcome(err))
	return err
}

func (s server) Process(_ context.Context, from engine.NodeNum, pid, sig int32) error {
	err := s.f.deliver(int(pid), syscall.Signal(sig))
	s.f.log.Info("forwarded OS signal", "from", from, "pid", pid, "signal", syscall.Signal(sig).String(), "outcome", outcome(err), "err", err)
	return err
}

// deliver checks the policy and sends the signal. It signals through a
// pidfd, so that a process that exits and whose PID is reused between the
// check and the signal is not the one signalled.
func (f *Forwarder) deliver(pid int, sig syscall.Signal) error {
	num := f.node.Num()
	if pid <= 0 || sig <= 0 || sig > maxSignal {
		return fmt.Errorf("%w: pid %d signal %d", ErrInvalid, pid, int(sig))
	}
	p := f.policy.Load()
	self := pid == f.self && p.AllowSelf
	switch {
	case pid == 1:
		return fmt.Errorf("%w: node %d never signals init", ErrRefused, num)
	case pid == f.self && !p.AllowSelf:
		return fmt.Errorf("%w: node %d does not let other nodes signal its own process (policy AllowSelf is off)", ErrRefused, num)
	case self && sig != syscall.SIGKILL:
		// Policy.AllowSelf: a kill, which the node's supervisor repairs,
		// and nothing more (a stop would hang it for good, SIGQUIT exit 2
		// unrestarted, SIGTERM make it leave).
		return fmt.Errorf("%w: node %d lets other nodes send its own process SIGKILL only, not %v (policy AllowSelf)", ErrRefused, num, sig)
	case !p.AllowProcesses && !self:
		return fmt.Errorf("%w: node %d does not forward OS signals", ErrRefused, num)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("%w: no process %d on node %d", ErrNotFound, pid, num)
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
		fd = -1 // no pidfd here (old kernel, seccomp): plain kill below
	case err != nil:
		return fmt.Errorf("sigfwd: pidfd_open %d: %w", pid, err)
	}
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if testHookPidfdOpened != nil {
		testHookPidfdOpened(pid)
	}
	if !self && !slices.Contains(p.PIDs, pid) {
		if !p.AllowUID {
			return fmt.Errorf("%w: pid %d is not allowed on node %d", ErrRefused, pid, num)
		}
		real, eff, err := processOwner(f.procRoot, pid)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("%w: no process %d on node %d", ErrNotFound, pid, num)
		case err != nil:
			return err
		case real != p.UID || eff != p.UID:
			return fmt.Errorf("%w: pid %d runs as uid %d/%d, not %d, on node %d", ErrRefused, pid, real, eff, p.UID, num)
		}
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, sig, nil, 0)
	} else {
		err = unix.Kill(pid, sig)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ESRCH):
		return fmt.Errorf("%w: process %d on node %d exited", ErrNotFound, pid, num)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: the system refused to signal %d on node %d", ErrRefused, pid, num)
	}
	return fmt.Errorf("sigfwd: signal %d to %d: %w", int(sig), pid, err)
}

// testHookPidfdOpened, when set (by a test, before deliver is called, in
// the same goroutine), runs between the pidfd's opening and the signal:
// where a PID can be reused under a plain kill.
var testHookPidfdOpened func(pid int)

// outcome names an error for the log.
func outcome(err error) string {
	switch {
	case err == nil:
		return "delivered"
	case errors.Is(err, ErrRefused):
		return "refused"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrInvalid):
		return "invalid"
	}
	return "failed"
}
