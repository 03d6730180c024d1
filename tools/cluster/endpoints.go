package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
)

// globals is what every command's Run receives.
type globals struct {
	*cli
	ctx    context.Context // cancelled on SIGINT/SIGTERM
	stdout io.Writer
	stderr io.Writer
	parser *kong.Kong

	targets []target // resolved once
	clients []*admin.Client
}

// target is an admin endpoint and, when the config says, its node.
type target struct {
	node clms.NodeNum // 0: unknown (--endpoint)
	addr string
}

// resolve lists the endpoints: --endpoint, then the config's node table;
// the default endpoint when there is neither.
func (g *globals) resolve() error {
	if g.targets != nil {
		return nil
	}
	token := ""
	if g.TokenFile != "" {
		t, err := admin.ReadToken(g.TokenFile)
		if err != nil {
			return usageError{err}
		}
		token = t
	}
	for _, e := range g.Endpoint {
		if err := admin.CheckAddr(e); err != nil {
			return usagef("--endpoint %s", strings.TrimPrefix(err.Error(), admin.ErrConfig.Error()+": "))
		}
		g.targets = append(g.targets, target{addr: e})
	}
	if g.Config != "" {
		cfg, err := clms.LoadConfig(g.Config)
		if err != nil {
			return usageError{err} // one line naming the file, line and field
		}
		for _, n := range cfg.Nodes {
			g.targets = append(g.targets, target{node: n.Num, addr: admin.AddrFor(n)})
		}
	}
	if len(g.targets) == 0 {
		g.targets = []target{{addr: "127.0.0.1:" + admin.DefaultPort}}
	}
	for _, t := range g.targets {
		g.clients = append(g.clients, admin.NewClient(t.addr, token))
	}
	return nil
}

func (g *globals) close() {
	for _, c := range g.clients {
		c.Close()
	}
}

// first calls fn on each endpoint in turn until one answers: an endpoint
// that cannot be reached (down, hung past --timeout) is skipped; one that
// answers with an error ends the search with that error.
func (g *globals) first(fn func(ctx context.Context, c *admin.Client) error) error {
	if err := g.resolve(); err != nil {
		return err
	}
	var errs []string
	for _, c := range g.clients {
		ctx, cancel := context.WithTimeout(g.ctx, g.Timeout)
		err := fn(ctx, c)
		cancel()
		if err == nil || errors.Is(err, admin.ErrRemote) || g.ctx.Err() != nil {
			return err
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("no admin endpoint answered:\n  %s", strings.Join(errs, "\n  "))
}

// forNode returns the clients to try for an action on node n: n's own
// endpoint when the config names it, else every --endpoint (each checks
// that it is n's before acting).
func (g *globals) forNode(n clms.NodeNum) ([]*admin.Client, error) {
	if err := g.resolve(); err != nil {
		return nil, err
	}
	var own, unknown []*admin.Client
	for i, t := range g.targets {
		switch t.node {
		case n:
			own = append(own, g.clients[i])
		case 0:
			unknown = append(unknown, g.clients[i])
		}
	}
	if len(own) > 0 {
		return own, nil
	}
	if len(unknown) == 0 {
		return nil, usagef("node %d is not in the node table of %s", n, g.Config)
	}
	return unknown, nil
}
