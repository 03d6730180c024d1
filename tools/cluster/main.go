// Command cluster is the cluster's admin command, after CI's cluster(1): it
// asks the nodes' admin endpoints (cinode --admin) who the members are,
// what happened, and tells a node to shut down, move a key service or
// forward a signal. See cluster --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/tools/internal/kongexit"
)

// Exit codes.
const (
	exitOK        = 0
	exitFailed    = 1 // no endpoint answered, or one refused the request
	exitBadUsage  = 2 // flags or arguments make no sense
	exitUnhealthy = 3 // the command worked and the cluster is not healthy (see description)
)

// cli is the command line. Every flag also reads a CI_* environment
// variable, shown in --help.
type cli struct {
	Config    string        `short:"c" help:"The cluster.toml: the admin endpoints are the node table's (admin, or cinode's default)." env:"CI_CONFIG" type:"path" placeholder:"FILE"`
	Endpoint  []string      `short:"e" help:"Admin endpoints to ask, in order (host:port or unix:/path); before the config's. Default 127.0.0.1:${defport} when there is no config." env:"CI_ENDPOINT" placeholder:"ADDR"`
	TokenFile string        `help:"Bearer token file (mode 0600) for endpoints that are not on loopback." env:"CI_TOKEN_FILE" type:"path" placeholder:"FILE"`
	JSON      bool          `help:"Print JSON (schema ci.admin/v1, docs/ADMIN.md) instead of tables." env:"CI_JSON"`
	Timeout   time.Duration `help:"Deadline of each request to an endpoint." default:"5s" env:"CI_TIMEOUT"`
	Verbose   bool          `short:"v" help:"Members: one line per node with its state, address, role, incarnation and key services."`

	Members     membersCmd     `cmd:"" default:"withargs" help:"The members: node numbers that are UP (default command); with -v a table of every node."`
	Node        nodeCmd        `cmd:"" help:"One node's details (CI's clusternode_info)."`
	Transitions transitionsCmd `cmd:"" help:"The history of membership transitions, newest last."`
	Watch       watchCmd       `cmd:"" help:"Follow transitions as they are committed (CI's SIGCLUSTER); Ctrl-C to stop."`
	Keysvc      keysvcCmd      `cmd:"" name:"keysvc" help:"Key services: owner, epoch, ready."`
	Move        moveCmd        `cmd:"" help:"Move a key service to another node (planned; no failover)."`
	Shutdown    shutdownCmd    `cmd:"" help:"Planned shutdown of a node: it goes through SHUTDOWN and its process exits 0."`
	Signal      signalCmd      `cmd:"" help:"Forward a signal to a named handler or a process on a node."`
	Ping        pingCmd        `cmd:"" help:"ICS round trips between two members: latency percentiles, calls/s, errors."`
	Completion  completionCmd  `cmd:"" help:"Print a shell completion script: source <(cluster completion bash)."`
}

const description = `The cluster's admin command: asks the nodes' admin endpoints.

Examples:
  cluster -c /etc/ci/cluster.toml           node numbers of the members that are UP
  cluster -c cluster.toml -v                every node: state, address, master, incarnation, key services
  cluster -e unix:/run/ci/admin.sock -v     the same through one node's endpoint
  cluster -v --json | jq '.members[] | select(.state != "UP")'
  cluster transitions --since 40            what happened after transition 40
  cluster watch                             follow the transitions as they happen
  cluster keysvc --watch                    the key services again each time one changes
  cluster shutdown 3                        node 3 leaves the cluster on purpose
  cluster signal 2 --handler reload HUP     run node 2's "reload" handler
  cluster signal 2 --pid 4242 TERM          SIGTERM to process 4242 on node 2 (if its policy allows)
  cluster ping 2 --from 1 --calls 1000      ICS round trips from node 1 to node 2's echo

Endpoints: --endpoint first, then the node table of --config (each node's
admin address, or cinode's default: port ${defport} on the node's loopback
address, else 127.0.0.1). Read-only commands ask the first that answers;
shutdown asks the node itself.

Exit status: 0 ok; 1 error (no endpoint answered, a request refused);
2 bad usage; 3 the cluster is unhealthy: members and keysvc (without --watch) exit 3 when a
node of the table is not UP, when there is no master, or when a critical
key service has no owner or is not ready (each reason is printed on
stderr).`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func newParser(c *cli, stdout, stderr io.Writer) (*kong.Kong, error) {
	return kong.New(c,
		kong.Name("cluster"),
		kong.Description(description),
		kong.Writers(stdout, stderr),
		kong.Vars{"defport": admin.DefaultPort},
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kongexit.Option(),
	)
}

func run(args []string, stdout, stderr io.Writer) (code int) {
	defer kongexit.Recover(&code) // --help exits through here, so that tests can call run
	var c cli
	parser, err := newParser(&c, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "cluster: %v\n", err) // a bug in the flag definitions
		return exitFailed
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "cluster: %v\nRun 'cluster --help' for usage.\n", err)
		return exitBadUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g := &globals{cli: &c, ctx: ctx, stdout: stdout, stderr: stderr, parser: parser}
	err = kctx.Run(g)
	defer g.close()
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUnhealthy):
		return exitUnhealthy
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "cluster: %v\nRun 'cluster %s --help' for usage.\n", err, kctx.Command())
		return exitBadUsage
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return exitOK // Ctrl-C ends a watch: what the user asked for
	default:
		fmt.Fprintf(stderr, "cluster: %v\n", err)
		return exitFailed
	}
}

// usageError marks an error the user can fix by changing the flags.
type usageError struct{ error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// errUnhealthy: the command printed its output and the reasons; exit 3.
var errUnhealthy = errors.New("cluster: unhealthy")
