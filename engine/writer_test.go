package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterinfra/ci/framing"
)

// TestWriterBackpressure drives the direct writer against a socket nobody
// reads: writes fill the kernel buffer, the rest queues behind a flusher
// goroutine waiting for POLLOUT, a sender past MaxPendingWrite waits until
// its context ends, and once the reader drains the socket every frame
// arrives whole and in order.
func TestWriterBackpressure(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetNonblock(fds[0], true)
	_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	reader := os.NewFile(uintptr(fds[1]), "reader")
	defer reader.Close()

	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.Node, cfg.Cluster = 1, "test"
	cfg.MaxPayload = 1 << 16
	cfg.MaxPendingWrite = 256 << 10
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c := n.newConn(true, n.newPeer(2, "127.0.0.1:1"), ChanFirstService)
	c.fd = fds[0]

	const size = 32 << 10
	payload := make([]byte, size)
	sent := 0
	for {
		payload[0], payload[1] = byte(sent), byte(sent>>8)
		h := framing.Header{Type: framing.TypeOneWay, Service: throttledSvc, Proc: uint32(sent)}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := c.send(ctx, &h, payload)
		cancel()
		if errors.Is(err, ErrThrottled) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if sent++; sent > 1000 {
			t.Fatal("the queue never filled")
		}
	}
	c.wmu.Lock()
	queued, flushing := c.batch.Len(), c.flushing
	c.wmu.Unlock()
	if !flushing || queued < cfg.MaxPendingWrite {
		t.Fatalf("sender refused with %d bytes queued (flushing %v), limit %d", queued, flushing, cfg.MaxPendingWrite)
	}
	// Drain: every frame comes out whole, in order, and the flusher ends.
	var dec framing.Decoder
	var buf []byte
	got := 0
	chunk := make([]byte, 64<<10)
	_ = reader.SetReadDeadline(time.Now().Add(10 * time.Second))
	for got < sent {
		k, err := reader.Read(chunk)
		if err != nil && err != io.EOF {
			t.Fatalf("after %d frames: %v", got, err)
		}
		buf = append(buf, chunk[:k]...)
		for {
			f, used, err := dec.Next(buf)
			if err != nil {
				t.Fatal(err)
			}
			if used == 0 {
				break
			}
			if int(f.Proc) != got || len(f.Payload) != size || f.Payload[0] != byte(got) || f.Payload[1] != byte(got>>8) {
				t.Fatalf("frame %d arrived as proc %d with %d bytes", got, f.Proc, len(f.Payload))
			}
			got++
			buf = buf[used:]
		}
	}
	eventually(t, "flusher done", func() bool {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return !c.flushing && c.batch.Len() == 0
	})
	c.markClosed()
}

// socketConn is a conn writing to one end of a socketpair whose other end
// the test holds, with a small send buffer so that writes back up.
func socketConn(t *testing.T, n *Node) (*conn, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetNonblock(fds[0], true)
	_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	c := n.newConn(true, n.newPeer(2, "127.0.0.1:1"), ChanFirstService)
	c.fd = fds[0]
	return c, os.NewFile(uintptr(fds[1]), "reader")
}

// TestCloseDuringFlush closes connections while their flushers are in the
// middle of writing many-segment batches to a slow reader: no panic (the
// batch's buffers must not be cleared under the flusher), and no
// descriptor left open once the flusher is done.
func TestCloseDuringFlush(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.Node, cfg.Cluster = 1, "test"
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	big := make([]byte, 8<<10) // referenced, not copied: one segment each
	for i := 0; i < 300; i++ {
		c, reader := socketConn(t, n)
		_ = unix.SetNonblock(c.fd, false) // the flusher sits in writev while we close
		go func() {
			b := make([]byte, 512)
			for {
				if k, _ := reader.Read(b); k <= 0 {
					return
				}
			}
		}()
		c.wmu.Lock()
		for k := 0; k < 64; k++ {
			h := framing.Header{Type: framing.TypeOneWay, Service: throttledSvc}
			c.batch.Append(&h, big)
		}
		c.flushing = true
		c.wmu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c.wmu.Lock()
				_ = c.flushLocked(true)
				busy := c.flushing
				c.wmu.Unlock()
				if !busy {
					return
				}
			}
		}()
		time.Sleep(time.Duration(i%50) * time.Microsecond)
		c.markClosed()
		<-done
		c.wmu.Lock()
		fd := c.fd
		c.wmu.Unlock()
		if fd >= 0 {
			t.Fatalf("iteration %d: descriptor %d still open after the flusher ended", i, fd)
		}
		reader.Close()
	}
}

// TestCreditRefundedWhenSendGivesUp: a sender that paid credit and then
// gave up waiting for the write queue gets the credit back; otherwise the
// receiver never returns it and the window shrinks for good.
func TestCreditRefundedWhenSendGivesUp(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.Node, cfg.Cluster = 1, "test"
	cfg.MaxPayload = 1 << 16
	cfg.MaxPendingWrite = 128 << 10
	n, err := New(testMode(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	c, reader := socketConn(t, n)
	defer reader.Close()
	c.credit = n.m.newSendCredit(n, c.peer, ChanFirstService)
	c.credit.grant(1 << 30) // far more credit than the queue takes
	payload := make([]byte, 32<<10)
	for {
		before := c.credit.avail.Load()
		h := framing.Header{Type: framing.TypeOneWay, Service: throttledSvc}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := c.send(ctx, &h, payload)
		cancel()
		if errors.Is(err, ErrThrottled) {
			if got := c.credit.avail.Load(); got != before {
				t.Fatalf("credit %d after a send that gave up, %d before", got, before)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	c.markClosed()
}

// TestCorkedInlineReplies: inline handlers' replies to the requests of one
// read are queued and written together at the end of the read
// (conn.sendCorked). Many callers at once put many requests in each read;
// with replies of every size, small ones (corked), ones that fill the cork
// past corkMax (written early) and large ones (written from the handler's
// buffer), every caller still gets its own reply, whole.
func TestCorkedInlineReplies(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	mustRegister(t, nodes[1], Service{ID: echoSvc, Procs: []Handler{echo}, Inline: true})
	sizes := []int{0, 1, 64, 3000, framing.LargePayload - 1, framing.LargePayload, 40 << 10}
	const callers, calls = 32, 40
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			ctx := ctxFor(t, time.Minute)
			for i := range calls {
				args := bytes.Repeat([]byte{byte(g*calls + i)}, sizes[(g+i)%len(sizes)])
				reply, err := nodes[0].Call(ctx, 2, Method{Service: echoSvc}, args, nil)
				if err != nil {
					errs <- fmt.Errorf("caller %d call %d: %w", g, i, err)
					return
				}
				if !bytes.Equal(reply, args) {
					errs <- fmt.Errorf("caller %d call %d: %d bytes back for %d sent, or not its own", g, i, len(reply), len(args))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
