// Command exitlatency measures how long a killed process keeps its
// connections open: the time from SIGKILL to the end of file its peer
// reads, for a child holding a given amount of touched heap.
//
// Crash detection in CLMS starts from that end of file (a lost
// connection, then a refused probe). Linux frees a dying process's memory
// (exit_mm) before it closes its files (exit_files), so the evidence of a
// crash comes only after the victim's memory is torn down, and a victim
// with a large heap is detected later by as much. docs/CLMS.md, "Where a
// failover's milliseconds go", has what it measured.
//
//	go run ./bench/exitlatency --sizes=0,10,30,100,300 --kills=15
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) == 4 && os.Args[1] == "child" {
		child(os.Args[2], os.Args[3])
		return
	}
	sizes := flag.String("sizes", "0,10,30,100", "heap sizes in MiB, comma-separated: the child touches every page of that much memory before it connects")
	kills := flag.Int("kills", 15, "kills per size")
	flag.Parse()
	var mibs []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n > 64<<10 {
			fmt.Fprintf(os.Stderr, "exitlatency: --sizes: %q is not a size in MiB (0 to 65536)\n", f)
			os.Exit(2)
		}
		mibs = append(mibs, n)
	}
	if *kills < 1 {
		fmt.Fprintln(os.Stderr, "exitlatency: --kills must be at least 1")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "exitlatency:", err)
		os.Exit(1)
	}
	defer ln.Close()
	fmt.Printf("%8s  %9s  %9s  %9s\n", "heap MiB", "p50", "min", "max")
	for _, mib := range mibs {
		var ds []time.Duration
		for range *kills {
			d, err := killOnce(ln, mib)
			if err != nil {
				fmt.Fprintln(os.Stderr, "exitlatency:", err)
				os.Exit(1)
			}
			ds = append(ds, d)
		}
		slices.Sort(ds)
		fmt.Printf("%8d  %9s  %9s  %9s\n", mib, ds[len(ds)/2].Round(time.Microsecond), ds[0].Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond))
	}
}

// killOnce starts a child holding mib MiB, waits for its connection, kills
// it and times the end of file.
func killOnce(ln net.Listener, mib int) (time.Duration, error) {
	cmd := exec.Command(os.Args[0], "child", ln.Addr().String(), strconv.Itoa(mib))
	cmd.Stderr = os.Stderr
	// If we die first, so does the child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill() // on every error path; a no-op after the kill
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return 0, fmt.Errorf("the child did not connect: %w", err)
	}
	defer c.Close()
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil { // the child is ready
		return 0, fmt.Errorf("the child's hello: %w", err)
	}
	time.Sleep(20 * time.Millisecond) // the child idle in its wait
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return 0, err
	}
	if _, err := c.Read(b); err == nil {
		return 0, fmt.Errorf("the child sent more than its hello")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return 0, fmt.Errorf("no end of file 30 s after the kill")
	}
	return time.Since(start), nil
}

// held keeps the child's heap reachable until the kill.
var held []byte

// child touches mib MiB, connects, says hello and waits to be killed.
func child(addr, mibArg string) {
	mib, _ := strconv.Atoi(mibArg)
	held = make([]byte, mib<<20)
	for i := 0; i < len(held); i += 4096 {
		held[i] = 1
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "exitlatency child:", err)
		os.Exit(1)
	}
	if _, err := c.Write([]byte{1}); err != nil {
		os.Exit(1)
	}
	select {}
}
