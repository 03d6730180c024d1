package main

import (
	"net"
	"os"
	"testing"
	"time"
)

// The test binary is also the child: killOnce starts os.Args[0] child ADDR MIB.
func TestMain(m *testing.M) {
	if len(os.Args) == 4 && os.Args[1] == "child" {
		child(os.Args[2], os.Args[3])
		return
	}
	os.Exit(m.Run())
}

// TestKillOnce: a killed child's connection ends, and the time to that end
// is measured from the kill; the child is reaped.
func TestKillOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, mib := range []int{0, 8} {
		d, err := killOnce(ln, mib)
		if err != nil {
			t.Fatalf("%d MiB: %v", mib, err)
		}
		if d <= 0 || d > 30*time.Second {
			t.Fatalf("%d MiB: end of file %v after the kill", mib, d)
		}
	}
}
