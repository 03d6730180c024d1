// Command cibench load-tests ICS and compares it with raw TCP, net/rpc and
// grpc-go in the same run. See cibench --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"
)

// Exit codes.
const (
	exitOK       = 0
	exitFailed   = 1 // the run failed or was interrupted
	exitBadUsage = 2 // flags or arguments make no sense
)

// cli is the command line. Every flag also reads a CI_* environment
// variable, shown in --help.
type cli struct {
	Quiet bool `help:"No progress bar (it is also off when stderr is not a terminal)." env:"CI_QUIET"`

	Serve      serveCmd      `cmd:"" help:"Serve one peer's echo server (used by compare and rpc, one process per peer)."`
	Compare    compareCmd    `cmd:"" help:"Latency of ICS against raw TCP, net/rpc and grpc-go, in interleaved rounds."`
	RPC        rpcCmd        `cmd:"" name:"rpc" help:"Throughput of ICS against raw TCP, net/rpc and grpc-go with many concurrent callers on one node pair."`
	Flow       flowCmd       `cmd:"" help:"Flow control: ICS bulk on a throttled channel vs raw TCP, and priority RPC latency idle vs under that bulk."`
	Priority   priorityCmd   `cmd:"" help:"Priority RPC latency under saturation beside its raw-TCP control, and the nested-RPC deadlock with and without escalation."`
	Failover   failoverCmd   `cmd:"" help:"Failover times of a spawned cinode cluster, or a running one (--target): SIGKILL or SIGSTOP of keyseq's owner, the master or a member; detection, NODEDOWN everywhere, new master, key service ready, p50/p99 over trials."`
	Membership membershipCmd `cmd:"" help:"Formation time, transition propagation and the master's steady CPU and bytes/s of spawned cinode clusters of 3 to 254 nodes, or of a running one (--target)."`
	All        allCmd        `cmd:"" help:"Every scenario in one run, one JSON file (make bench-report; --quick in under two minutes)."`
	Demo       demoCmd       `cmd:"" help:"A local four-node ICS cluster doing work, losing a node and getting it back (make demo)."`
	Node       nodeCmd       `cmd:"" help:"Serve one demo cluster node (used by demo, one process per node)."`
}

// globals is what every command's Run receives.
type globals struct {
	ctx    context.Context // cancelled on SIGINT/SIGTERM/SIGHUP
	args   []string        // the command line, for the result's record
	quiet  bool
	stdout io.Writer
	stderr io.Writer
}

const description = `Load tests and benchmarks for ICS, the cluster's RPC transport.

compare and rpc start every server peer in its own child process ("cibench
serve") and drive them all from this one, in interleaved rounds, so that a
noisy machine's drift hits every peer alike. Quote the medians of the
per-round ratios. With --target=ADMIN1,ADMIN2 they (and flow, priority and
all) measure ICS between two nodes of a running cluster instead, through a
node's admin endpoint (POST /v1/ping).

Exit status: 0 ok, 1 the run failed or was interrupted, 2 bad usage.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var c cli
	parser, err := kong.New(&c,
		kong.Name("cibench"),
		kong.Description(description),
		kong.Writers(stdout, stderr),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)
	if err != nil {
		fmt.Fprintf(stderr, "cibench: %v\n", err) // a bug in the flag definitions
		return exitFailed
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		parser.Errorf("%s", err)
		fmt.Fprintln(stderr, "Run 'cibench --help' for usage.")
		return exitBadUsage
	}
	// SIGHUP too (the terminal went away): a run against a --target
	// cluster must continue the node it stopped on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err = kctx.Run(&globals{ctx: ctx, args: append([]string{"cibench"}, args...), quiet: c.Quiet, stdout: stdout, stderr: stderr})
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "cibench: %v\nRun 'cibench %s --help' for usage.\n", err, kctx.Command())
		return exitBadUsage
	default:
		fmt.Fprintf(stderr, "cibench: %v\n", err)
		return exitFailed
	}
}

// usageError marks an error the user can fix by changing the flags.
type usageError struct{ error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}
