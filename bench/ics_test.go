package bench

import "testing"

// TestICS runs every ICS variant: handler inline or on server handles,
// writes direct or through the event loop, sockets read by event loops or
// netpoller goroutines.
func TestICS(t *testing.T) {
	for _, name := range []string{"ics", "ics-handle", "ics-eventloop", "ics-handle-eventloop", "ics-gnet", "ics-netpoll", "ics-handle-netpoll", "ics-loops1"} {
		t.Run(name, func(t *testing.T) {
			c := startPeer(t, name)
			checkEcho(t, c)
			checkConcurrent(t, c)
		})
	}
}

// TestICSClientFirst is the two-process order cibench uses: the client node
// starts first, the server learns its address from ClientAddr, then the
// client learns the server's.
func TestICSClientFirst(t *testing.T) {
	cp := &ICS{Inline: true}
	c, err := cp.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sp := &ICS{Inline: true, ClientAddr: c.Addr()}
	addr, stop, err := sp.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := c.Connect(addr); err != nil {
		t.Fatal(err)
	}
	checkEcho(t, c)
}
