package engine

import (
	"context"
	"errors"
	"io"
	"os"
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
	cfg.Node, cfg.Cluster = 1, "test"
	cfg.MaxPayload = 1 << 16
	cfg.MaxPendingWrite = 256 << 10
	n, err := New(cfg)
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
