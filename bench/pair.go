package bench

import "github.com/clusterinfra/ci/engine"

// Pair names the two nodes of an ICS benchmark, one serving and one
// calling, and how they are built. ICS and FlowConfig embed it.
type Pair struct {
	Cluster    string         // cluster name; "" is the benchmark's own
	ServerNode engine.NodeNum // 0 is 2
	ClientNode engine.NodeNum // 0 is 1
	EventLoops int            // per node, with event loops; 0 is the engine's default (engine.DefaultEventLoops)
	// ReadMode is what reads both nodes' sockets; ReadAuto is the engine's
	// default.
	ReadMode engine.ReadMode
}

func (p Pair) nodes() (server, client engine.NodeNum) {
	server, client = p.ServerNode, p.ClientNode
	if server == 0 {
		server = 2
	}
	if client == 0 {
		client = 1
	}
	return server, client
}

// config is node num's engine configuration; cluster names the cluster
// when Pair does not.
func (p Pair) config(num engine.NodeNum, listen, cluster string) engine.Config {
	cfg := engine.DefaultConfig()
	cfg.Node = num
	cfg.Cluster = p.Cluster
	if cfg.Cluster == "" {
		cfg.Cluster = cluster
	}
	if listen != "" {
		cfg.ListenAddr = listen
	}
	cfg.EventLoops = p.EventLoops
	cfg.ReadMode = p.ReadMode
	cfg.Insecure = true // benchmarks measure the open transport on loopback
	return cfg
}
