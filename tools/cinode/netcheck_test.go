package main

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/clusterinfra/ci/clms"
)

func TestARPRetryWarning(t *testing.T) {
	fake := func(dev, retrans string, readErr error) neighCheck {
		return neighCheck{
			ifaceOf: func(net.IP) (string, error) { return dev, nil },
			readFile: func(path string) ([]byte, error) {
				if path != "/proc/sys/net/ipv4/neigh/"+dev+"/retrans_time_ms" {
					t.Errorf("read %s", path)
				}
				return []byte(retrans), readErr
			},
		}
	}
	for _, c := range []struct {
		name   string
		check  neighCheck
		timing clms.Timing
		addr   string
		want   string // in the warning; "" for none
	}{
		{"lan-fast, kernel default", fake("eth0", "1000\n", nil), clms.LANFastTiming(), "10.0.0.1:7100", "set net.ipv4.neigh.eth0.retrans_time_ms to 100 or less"},
		{"lan-fast, tuned", fake("eth0", "100\n", nil), clms.LANFastTiming(), "10.0.0.1:7100", ""},
		{"lan-fast, retry plus heartbeat is the lease", fake("bond0", "200\n", nil), clms.LANFastTiming(), "10.0.0.1:7100", "ARP retries every 200ms on bond0"},
		{"default, kernel default", fake("eth0", "1000\n", nil), clms.DefaultTiming(), "10.0.0.1:7100", ""},
		{"loopback", fake("lo", "1000\n", nil), clms.LANFastTiming(), "127.0.0.2:7100", ""},
		{"IPv6", fake("eth0", "1000\n", nil), clms.LANFastTiming(), "[fd00::1]:7100", ""},
		{"on no interface", fake("", "1000\n", nil), clms.LANFastTiming(), "10.0.0.1:7100", ""},
		{"no /proc", fake("eth0", "", errors.New("no such file")), clms.LANFastTiming(), "10.0.0.1:7100", ""},
		{"garbage", fake("eth0", "soon\n", nil), clms.LANFastTiming(), "10.0.0.1:7100", ""},
		{"bad address", fake("eth0", "1000\n", nil), clms.LANFastTiming(), "nowhere", ""},
	} {
		msg, _, _ := c.check.arpRetryWarning(c.timing, c.addr)
		if (c.want == "") != (msg == "") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: %q, want %q", c.name, msg, c.want)
		}
	}
}
