package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"
)

// Bounds on a child's life cycle. Generous: a loaded 2-core machine can be
// slow to start a process, and stopping an engine node closes sockets.
const (
	readyTimeout = 15 * time.Second // from exec to the ready line
	stopGrace    = 5 * time.Second  // from closing stdin to exit, before SIGTERM
	termGrace    = 2 * time.Second  // from SIGTERM to exit, before SIGKILL
)

// child is one "cibench serve" process.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string

	stopping atomic.Bool   // set by stop: an exit from then on is expected
	exited   chan struct{} // closed when Wait has returned
	err      error         // Wait's result; read after exited is closed
}

// spawn starts argv, waits for its ready line and returns the child.
// onExit is called if the child exits before stop is called: the run it
// serves cannot go on.
func spawn(ctx context.Context, name string, argv []string, stderr io.Writer, onExit func(error)) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = stderr
	// A process group of its own: Ctrl-C reaches only the parent, which
	// then stops every child in order instead of racing them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("server %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, exited: make(chan struct{})}

	lines := make(chan readyLine, 1)
	readErr := make(chan error, 1)
	go func() { // ends when the child writes its line or exits
		line, err := bufio.NewReader(stdout).ReadBytes('\n')
		var r readyLine
		if err == nil {
			err = json.Unmarshal(line, &r)
		}
		if err == nil && r.Addr == "" {
			err = fmt.Errorf("no address in %q", line)
		}
		if err != nil {
			readErr <- err
			return
		}
		lines <- r
	}()
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case r := <-lines:
		c.addr = r.Addr
	case err = <-readErr:
	case <-timer.C:
		err = fmt.Errorf("no ready line within %v", readyTimeout)
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		waitErr := cmd.Wait()
		return nil, fmt.Errorf("server %s did not start: %w (exit: %v)", name, err, waitErr)
	}

	go func() {
		c.err = c.cmd.Wait()
		close(c.exited)
		if !c.stopping.Load() {
			onExit(fmt.Errorf("server %s (pid %d) exited during the run: %v", name, cmd.Process.Pid, c.err))
		}
	}()
	return c, nil
}

// stop asks the child to exit by closing its stdin, then insists.
func (c *child) stop() error {
	c.stopping.Store(true)
	_ = c.stdin.Close()
	for _, step := range []struct {
		wait time.Duration
		sig  syscall.Signal
	}{{stopGrace, syscall.SIGTERM}, {termGrace, syscall.SIGKILL}} {
		t := time.NewTimer(step.wait)
		select {
		case <-c.exited:
			t.Stop()
			return c.exitErr()
		case <-t.C:
			_ = c.cmd.Process.Signal(step.sig)
		}
	}
	<-c.exited
	return c.exitErr()
}

func (c *child) exitErr() error {
	if c.err != nil {
		return fmt.Errorf("server %s: %w", c.name, c.err)
	}
	return nil
}

// stopAll stops children concurrently: each may take its grace period.
func stopAll(children []*child) error {
	errs := make(chan error, len(children))
	for _, c := range children {
		go func() { errs <- c.stop() }()
	}
	var all []error
	for range children {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}
