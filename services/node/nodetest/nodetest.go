// Package nodetest writes cluster.toml files for test clusters on
// 127.0.0.x, for tests and benchmarks that start node.Nodes in one process
// or as separate processes.
package nodetest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/clusterinfra/ci/clms"
)

// Options describe a test cluster. Zero values take the defaults noted.
type Options struct {
	Nodes    int    // nodes 1..Nodes on 127.0.0.1..Nodes (default 3)
	Eligible int    // the first Eligible are master-eligible (default all)
	Profile  string // timing profile (default "lan-fast")
	Fencing  string // "halt" or "debug" (default "halt")
	// Timing adds lines to the [timing] table, as "lease_timeout = \"1s\"".
	Timing []string
	// Top adds top-level lines, as "key_service_panic = \"degraded\"".
	Top []string
	// KeyServices declares [[key_services]] tables; each node's
	// key_services lists them all, unless Capable says which it may run.
	KeyServices []clms.KeyServiceEntry
	Capable     func(node int) []string
}

// Cluster is a written cluster.toml.
type Cluster struct {
	Path   string
	Config *clms.ClusterConfig
	Addrs  map[clms.NodeNum]string // each node's ICS address
}

// Write writes dir/cluster.toml for opt, with a free port for each node
// (insecure mode: test clusters run open), and parses it back.
func Write(dir string, opt Options) (*Cluster, error) {
	if opt.Nodes == 0 {
		opt.Nodes = 3
	}
	if opt.Eligible == 0 {
		opt.Eligible = opt.Nodes
	}
	if opt.Profile == "" {
		opt.Profile = "lan-fast"
	}
	if opt.Fencing == "" {
		opt.Fencing = "halt"
	}
	c := &Cluster{Path: filepath.Join(dir, "cluster.toml"), Addrs: map[clms.NodeNum]string{}}
	var b strings.Builder
	fmt.Fprintf(&b, "name = \"test\"\nfencing = %q\n", opt.Fencing)
	for _, l := range opt.Top {
		b.WriteString(l + "\n")
	}
	fmt.Fprintf(&b, "\n[security]\nmode = \"insecure\"\n\n[timing]\nprofile = %q\n", opt.Profile)
	for _, l := range opt.Timing {
		b.WriteString(l + "\n")
	}
	var all []string
	for _, ks := range opt.KeyServices {
		fmt.Fprintf(&b, "\n[[key_services]]\nname = %q\ncritical = %v\n", ks.Name, ks.Critical)
		all = append(all, ks.Name)
	}
	for i := 1; i <= opt.Nodes; i++ {
		addr, err := FreeAddr(fmt.Sprintf("127.0.0.%d", i))
		if err != nil {
			return nil, err
		}
		c.Addrs[clms.NodeNum(i)] = addr
		fmt.Fprintf(&b, "\n[[nodes]]\nnumber = %d\naddress = %q\nmaster_eligible = %v\n", i, addr, i <= opt.Eligible)
		capable := all
		if opt.Capable != nil {
			capable = opt.Capable(i)
		}
		if len(capable) > 0 {
			fmt.Fprintf(&b, "key_services = [%s]\n", quoteList(capable))
		}
	}
	if err := os.WriteFile(c.Path, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	cfg, err := clms.LoadConfig(c.Path)
	if err != nil {
		return nil, err
	}
	c.Config = cfg
	return c, nil
}

// FreeAddr returns host:port with a port that was free a moment ago.
func FreeAddr(host string) (string, error) {
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
