// Command cikey makes and inspects the keys that authenticate ICS
// connections: one static key pair per node, one cluster key shared by all.
// See cikey --help. (It becomes a cinode subcommand when the daemon exists.)
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/alecthomas/kong"

	"github.com/clusterinfra/ci/engine"
)

const (
	exitOK       = 0
	exitFailed   = 1
	exitBadUsage = 2
)

type cli struct {
	Node    nodeCmd    `cmd:"" help:"Generate a node's static key pair: the private key to a file, the public key to stdout."`
	Cluster clusterCmd `cmd:"" help:"Generate a cluster key, the secret every member shares."`
	Public  publicCmd  `cmd:"" help:"Print the public key of a node key file, for the other members' node tables."`
}

// Key files say what they hold (engine/keys.go): a first word of
// ci-node-private-key, ci-node-public-key or ci-cluster-key, then the hex.
type nodeCmd struct {
	Out string `required:"" short:"o" type:"path" help:"File to write the private key to; must not exist (written with mode 0600)." env:"CI_KEY_OUT"`
}

func (*nodeCmd) Help() string {
	return `Examples:
  cikey node -o /etc/ci/node3.key        # prints node 3's public key
  cikey node -o node3.key > node3.pub`
}

func (c *nodeCmd) Run(out io.Writer) error {
	k, err := engine.GenerateNodeKey()
	if err != nil {
		return err
	}
	if err := engine.WriteNodeKeyFile(c.Out, k); err != nil {
		return err
	}
	return engine.WritePublicKey(out, k.Public)
}

type clusterCmd struct {
	Out string `required:"" short:"o" type:"path" help:"File to write the cluster key to; must not exist (written with mode 0600)." env:"CI_KEY_OUT"`
}

func (*clusterCmd) Help() string {
	return `Copy the file to every member over a secure channel; keep it mode 0600.

Example:
  cikey cluster -o /etc/ci/cluster.key`
}

func (c *clusterCmd) Run(io.Writer) error {
	k, err := engine.GenerateClusterKey()
	if err != nil {
		return err
	}
	return engine.WriteClusterKeyFile(c.Out, k)
}

type publicCmd struct {
	File string `arg:"" type:"path" help:"Node key file written by 'cikey node'."`
}

func (c *publicCmd) Run(out io.Writer) error {
	k, err := engine.LoadNodeKey(c.File)
	if err != nil {
		return err
	}
	return engine.WritePublicKey(out, k.Public)
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// helpExit carries kong's exit after --help out of the parser, so that run
// returns the code instead of the process exiting under a caller (tests).
type helpExit int

func run(args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(helpExit)
			if !ok {
				panic(r)
			}
			code = int(e)
		}
	}()
	var c cli
	parser, err := kong.New(&c,
		kong.Name("cikey"),
		kong.Description("Keys for ICS authentication: a static key pair per node and a shared cluster key.\n\nExit status: 0 ok, 1 failed, 2 bad usage."),
		kong.Writers(stdout, stderr),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.BindTo(stdout, (*io.Writer)(nil)),
		kong.Exit(func(code int) { panic(helpExit(code)) }),
	)
	if err != nil {
		fmt.Fprintf(stderr, "cikey: %v\n", err)
		return exitFailed
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		parser.Errorf("%s", err)
		return exitBadUsage
	}
	if err := kctx.Run(); err != nil {
		fmt.Fprintf(stderr, "cikey: %v\n", err)
		return exitFailed
	}
	return exitOK
}
