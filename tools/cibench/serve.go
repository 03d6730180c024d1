package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/clusterinfra/ci/bench"
	"github.com/clusterinfra/ci/engine"
)

type serveCmd struct {
	Peer      string `required:"" enum:"raw,raw-split,netrpc,grpc,ics,flow" help:"Peer to serve: ${enum} (raw-split: raw TCP with replies on a second connection, as ICS sends them; flow: the server of cibench flow)." env:"CI_PEER"`
	Listen    string `default:"127.0.0.1:0" help:"Address to listen on; port 0 picks one." env:"CI_LISTEN"`
	Inline    bool   `default:"true" negatable:"" help:"ics: run the handler on the event loop (--no-inline: on server handle goroutines)." env:"CI_INLINE"`
	WriteMode string `default:"direct" enum:"direct,eventloop" help:"ics: how frames reach the socket: ${enum}." env:"CI_WRITE_MODE"`
	Node      uint32 `default:"2" help:"ics: this server's node number." env:"CI_NODE"`
	Cluster   string `default:"bench" help:"ics: cluster name, the same on both nodes." env:"CI_CLUSTER"`
	ReadMode  string `default:"auto" enum:"auto,loops,netpoll" help:"ics: what reads the sockets: ${enum} (gnet event loops, or a goroutine per connection parked in Go's netpoller; auto is the engine's default)." env:"CI_READ_MODE"`
	Loops     int    `name:"event-loops" default:"0" help:"ics: event loops, with --read-mode=loops; 0 is the engine's default." env:"CI_EVENT_LOOPS"`

	Procs      int    `name:"gomaxprocs" default:"0" help:"GOMAXPROCS for this server; 0 leaves Go's default (one per CPU)." env:"CI_GOMAXPROCS"`
	ClientNode uint32 `default:"1" help:"ics: the client's node number." env:"CI_CLIENT_NODE"`
	ClientAddr string `help:"ics: the client node's address; the server must know it to reply." env:"CI_CLIENT_ADDR"`

	Window     int    `default:"0" help:"flow: credit window in bytes (engine CreditWindow); 0 is the engine's default." env:"CI_WINDOW"`
	CPUProfile string `type:"path" help:"Write a CPU profile of this server to the file, from start to stop." env:"CI_CPUPROFILE"`
}

func (*serveCmd) Help() string {
	return `Prints one JSON line with the address, then serves until stdin is closed
or SIGTERM/SIGINT arrives. compare and rpc run it for you; run it by hand to
put a server on another CPU or machine.

Examples:
  cibench serve --peer=raw
  cibench serve --peer=grpc --listen=127.0.0.1:9000 < /dev/null &   # stdin closed: exits at once
  cibench serve --peer=ics --no-inline --write-mode=eventloop \
      --node=2 --client-node=1 --client-addr=127.0.0.1:40123
  cibench serve --peer=ics --read-mode=netpoll --client-addr=127.0.0.1:40123
  cibench serve --peer=flow --client-addr=127.0.0.1:40123 --window=262144`
}

// readyLine is what serve prints once it accepts calls; the parent reads it.
type readyLine struct {
	Peer string `json:"peer"`
	Addr string `json:"addr"`
	PID  int    `json:"pid"`
}

// peer builds the bench peer the flags describe.
func (s *serveCmd) peer() (bench.Peer, error) {
	if s.Peer != "ics" {
		return bench.ParsePeer(s.Peer)
	}
	p := &bench.ICS{
		Inline:     s.Inline,
		Pair:       bench.Pair{Cluster: s.Cluster, ServerNode: engine.NodeNum(s.Node), ClientNode: engine.NodeNum(s.ClientNode)},
		ClientAddr: s.ClientAddr,
	}
	p.EventLoops = s.Loops
	mode, err := engine.ParseReadMode(s.ReadMode)
	if err != nil {
		return nil, usagef("--read-mode: %v", err)
	}
	p.ReadMode = mode
	if s.WriteMode == "eventloop" {
		p.WriteMode = engine.WriteEventLoop
	}
	if p.ServerNode == 0 || p.ClientNode == 0 || p.ServerNode == p.ClientNode {
		return nil, usagef("--node and --client-node must be different and not 0")
	}
	if p.ClientAddr == "" {
		return nil, usagef("--peer=ics needs --client-addr: the server node must know the client to reply")
	}
	return p, nil
}

func (s *serveCmd) Run(g *globals) (err error) {
	if s.Procs < 0 {
		return usagef("--gomaxprocs must be 0 or more")
	}
	if s.Procs > 0 {
		runtime.GOMAXPROCS(s.Procs)
	}
	if s.Peer == "flow" {
		return s.serveFlow(g)
	}
	if s.CPUProfile != "" {
		stop, err := startCPUProfile(s.CPUProfile)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, stop()) }()
	}
	p, err := s.peer()
	if err != nil {
		return err
	}
	addr, stop, err := p.Serve(s.Listen)
	if err != nil {
		return fmt.Errorf("serve %s: %w", p.Name(), err)
	}
	line, _ := json.Marshal(readyLine{Peer: p.Name(), Addr: addr, PID: os.Getpid()})
	if _, err := fmt.Fprintf(g.stdout, "%s\n", line); err != nil {
		return errors.Join(err, stop())
	}

	// The parent holds our stdin: EOF means it is done or gone, so a killed
	// parent never leaves servers behind.
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stdinClosed:
	case <-g.ctx.Done():
	}
	return stop()
}
