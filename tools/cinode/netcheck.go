package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/clusterinfra/ci/clms"
)

// A node whose own link flaps (a cable, a switch port: the carrier drops)
// loses its kernel's neighbour (ARP) entries; a packet sent meanwhile
// leaves an entry that is resolved again only at the next ARP retry,
// net.ipv4.neigh.<dev>.retrans_time_ms later (1000 ms by default). Until
// then everything this node sends to that peer waits, its imalives
// included, so a flap of any length silences it for up to that long. When
// that outlasts the lease, every flap costs the node its membership:
// docs/CLMS.md, "Real partitions" (lan-fast, 50 ms flaps, 18 of 18).

// neighCheck is what arpRetryWarning needs of the machine.
type neighCheck struct {
	ifaceOf  func(ip net.IP) (string, error)   // the interface holding ip
	readFile func(path string) ([]byte, error) // os.ReadFile
}

var machineNeigh = neighCheck{ifaceOf: ifaceOf, readFile: os.ReadFile}

// arpRetryWarning returns a warning when the ARP retry of the interface
// holding addr (this node's ICS address) plus a heartbeat reaches the
// lease, with the interface and the retry; "" when it does not, or when it
// cannot tell (loopback, an address on no interface, no /proc).
func (c neighCheck) arpRetryWarning(t clms.Timing, addr string) (msg, dev string, retry time.Duration) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", 0
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsLoopback() || ip.To4() == nil {
		return "", "", 0 // no ARP on loopback; IPv6 uses neighbour discovery (net.ipv6.neigh), not checked
	}
	dev, err = c.ifaceOf(ip)
	if err != nil || dev == "" {
		return "", "", 0
	}
	b, err := c.readFile(filepath.Join("/proc/sys/net/ipv4/neigh", dev, "retrans_time_ms"))
	if err != nil {
		return "", "", 0
	}
	ms, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return "", "", 0
	}
	retry = time.Duration(ms) * time.Millisecond
	if retry+t.Heartbeat < t.LeaseTimeout {
		return "", dev, retry
	}
	want := (t.LeaseTimeout - t.Heartbeat) / 2
	return fmt.Sprintf("ARP retries every %v on %s, as long as the %v lease: a flap of this node's link (any length) will cost it its membership; "+
		"set net.ipv4.neigh.%s.retrans_time_ms to %d or less (docs/CLMS.md, \"Real partitions\")",
		retry, dev, t.LeaseTimeout, dev, want.Milliseconds()), dev, retry
}

// ifaceOf returns the name of the interface that holds ip.
func ifaceOf(ip net.IP) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, i := range ifs {
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return i.Name, nil
			}
		}
	}
	return "", nil
}
