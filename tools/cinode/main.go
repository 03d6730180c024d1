// Command cinode runs one node of a cluster: ICS, CLMS, the cluster API,
// signal forwarding and the admin endpoint, from cluster.toml. See
// cinode --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/node"
	"github.com/clusterinfra/ci/tools/internal/kongexit"
)

// Exit codes. deploy/cinode.service relies on them: it restarts on 1 and
// 4, never on 2 (a bad configuration does not get better by retrying).
const (
	exitOK       = 0               // planned shutdown (SIGTERM, SIGINT, cluster shutdown) completed
	exitFailed   = 1               // runtime error: could not listen, join timed out, the node failed
	exitBadUsage = 2               // bad flags or bad configuration (one line on stderr names the problem), or a cluster.toml the master's differs from
	exitFenced   = node.ExitFenced // 4: fenced (declared down, lease expired); restart to rejoin as a new incarnation
)

// cli is the command line. Every flag also reads a CI_* environment
// variable, shown in --help.
type cli struct {
	Config          string        `short:"c" help:"The cluster's boot configuration (deploy/cluster.toml)." env:"CI_CONFIG" type:"path" placeholder:"FILE"`
	Node            uint32        `short:"n" help:"This node's number in the node table." env:"CI_NODE" placeholder:"N"`
	DataDir         string        `help:"Where this node keeps its raft log and state (created 0700). Default /var/lib/ci/node<N>; with --dev a temporary directory removed on exit." env:"CI_DATA_DIR" type:"path" placeholder:"DIR"`
	Admin           string        `help:"Admin endpoint: host:port or unix:/path. Default: the node table's admin, else port ${defport} on the node's loopback address or 127.0.0.1." env:"CI_ADMIN" placeholder:"ADDR"`
	AdminTokenFile  string        `help:"Bearer token file (mode 0600) that admin clients must present; required when --admin is not loopback or a unix socket." env:"CI_ADMIN_TOKEN_FILE" type:"path" placeholder:"FILE"`
	LogFormat       string        `help:"Log format: text or json." enum:"text,json" default:"text" env:"CI_LOG_FORMAT"`
	LogLevel        string        `help:"Log level: debug, info, warn or error." enum:"debug,info,warn,error" default:"info" env:"CI_LOG_LEVEL"`
	ShutdownTimeout time.Duration `help:"Bound on a planned shutdown (SHUTDOWN committed, calls drained) before the process exits anyway (exit 1; at most 5s more if a handler ignores its context)." default:"30s" env:"CI_SHUTDOWN_TIMEOUT"`
	Dev             bool          `help:"A single-node cluster with no configuration file, for a first try: insecure, loopback only, temporary data directory." env:"CI_DEV"`
	DevAddr         string        `help:"ICS address of the --dev node." default:"127.0.0.1:7100" env:"CI_DEV_ADDR" placeholder:"ADDR"`
	AllowFaultKill  bool          `help:"Let other nodes kill this cinode process through signal forwarding (POST /v1/signal with its pid, sigfwd policy AllowSelf), as cibench failover --target does when this node is on another machine. Off by default: with it, any member can kill this node." env:"CI_ALLOW_FAULT_KILL"`
	Check           bool          `help:"Check the configuration and this node's key files, then exit: 0 if cinode would start, 2 if not." env:"CI_CHECK"`
}

const description = `Runs one node of a CI cluster: ICS, CLMS membership, the cluster API,
signal forwarding and the admin endpoint (/metrics, /healthz, /readyz, /v1/...).

Examples:
  cinode --dev                                     a single-node cluster to try things (then: cluster -v)
  cinode -c /etc/ci/cluster.toml -n 2              node 2 of the cluster the file describes
  CI_CONFIG=/etc/ci/cluster.toml CI_NODE=2 cinode  the same from the environment (systemd)
  cinode -c cluster.toml -n 2 --check              is the file, and node 2's keys, fine?
  cinode -c cluster.toml -n 1 --admin unix:/run/ci/admin.sock --log-format json
  cinode -c cluster.toml -n 3 --allow-fault-kill   cibench failover --target may kill it from afar

SIGTERM or SIGINT: planned shutdown (this node goes through SHUTDOWN, its
calls are drained) and exit 0; a second signal exits at once.

Exit status: 0 planned shutdown done; 1 runtime error; 2 bad flags or
configuration (one line on stderr names the file, line and field); 4 fenced:
the cluster declared this node down or its membership lease ran out (with
fencing = "halt"), restart it to rejoin as a new incarnation.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) (code int) {
	defer kongexit.Recover(&code) // --help exits through here, so that tests can call run
	var c cli
	parser, err := kong.New(&c,
		kong.Name("cinode"),
		kong.Description(description),
		kong.Writers(stdout, stderr),
		kong.Vars{"defport": admin.DefaultPort},
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kongexit.Option(),
	)
	if err != nil {
		fmt.Fprintf(stderr, "cinode: %v\n", err) // a bug in the flag definitions
		return exitFailed
	}
	if _, err := parser.Parse(args); err != nil {
		fmt.Fprintf(stderr, "cinode: %v (see cinode --help)\n", err)
		return exitBadUsage
	}
	st, err := c.settings()
	if err != nil {
		// Exactly one line: clms's errors name the file, line and field.
		fmt.Fprintf(stderr, "cinode: %s\n", oneLine(err))
		return exitBadUsage
	}
	if c.Check {
		fmt.Fprintf(stdout, "%s: node %d of cluster %q: ok (admin %s)\n", st.cfgName, st.num, st.cfg.Name, st.admin.Addr)
		return exitOK
	}
	// The engine and CLMS label their own lines with the node's number.
	log := newLogger(stderr, c.LogFormat, c.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runNode(ctx, st, log)
}

// oneLine makes sure an error prints as one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ")), " ")
}

// settings is everything cinode needs before it starts a node, checked.
type settings struct {
	cfg     *clms.ClusterConfig
	cfgName string
	node    *clms.NodeSettings // with keys loaded
	num     clms.NodeNum
	dataDir string
	tempDir bool // dataDir is --dev's temporary directory: removed on exit
	admin   admin.Config
	timeout time.Duration
	// closeGrace bounds closing the node once it must stop: after a
	// planned shutdown's timeout, and on every way out (closeWithin).
	closeGrace time.Duration
	// allowSelfKill is --allow-fault-kill: other nodes may signal this
	// process through sigfwd.
	allowSelfKill bool
}

// settings loads and checks the configuration, the keys, the data
// directory and the admin endpoint's settings: every problem an operator
// can fix is found here, before anything starts, and is one line.
func (c *cli) settings() (*settings, error) {
	st := &settings{timeout: c.ShutdownTimeout, closeGrace: closeGrace, allowSelfKill: c.AllowFaultKill}
	switch {
	case c.Dev && c.Config != "":
		return nil, errors.New("--dev starts a cluster without a configuration file: drop --config or --dev")
	case c.Dev:
		if c.Node != 0 && c.Node != 1 {
			return nil, errors.New("--dev runs node 1 only")
		}
		st.num, st.cfgName = 1, "(--dev)"
		cfg, err := clms.ParseConfig("(--dev)", devConfig(c.DevAddr))
		if err != nil {
			return nil, fmt.Errorf("--dev-addr %s: %w", c.DevAddr, err)
		}
		st.cfg = cfg
	case c.Config == "":
		return nil, errors.New("no configuration: give --config FILE (or CI_CONFIG) and --node N, or try --dev")
	case c.Node == 0:
		return nil, errors.New("no node number: give --node N (or CI_NODE), N from the node table of " + c.Config)
	default:
		st.num, st.cfgName = clms.NodeNum(c.Node), c.Config
		cfg, err := clms.LoadConfig(c.Config)
		if err != nil {
			return nil, err
		}
		st.cfg = cfg
	}
	ns, err := st.cfg.ForNode(st.num)
	if err != nil {
		return nil, err
	}
	st.node = ns
	st.admin = admin.DefaultConfig()
	st.admin.Addr = c.Admin
	if st.admin.Addr == "" {
		st.admin.Addr = admin.AddrFor(ns.Self)
	}
	st.admin.TokenFile = c.AdminTokenFile
	st.admin.Nodes = ns.Nodes
	if err := admin.CheckConfig(st.admin); err != nil {
		return nil, err
	}
	st.dataDir = c.DataDir
	switch {
	case st.dataDir == "" && c.Dev:
		// Created by runNode, so that --check leaves nothing behind.
		st.tempDir = true
	case st.dataDir == "":
		st.dataDir = filepath.Join("/var/lib/ci", fmt.Sprintf("node%d", st.num))
		fallthrough
	default:
		if err := checkDataDir(st.dataDir); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// devConfig is --dev's cluster: one master-eligible node, insecure, with
// the fast timing (there is no one to disagree with).
func devConfig(addr string) []byte {
	return fmt.Appendf(nil, `name = "dev"
[security]
mode = "insecure"
[timing]
profile = "lan-fast"
[[nodes]]
number = 1
address = %q
master_eligible = true
`, addr)
}

// checkDataDir makes sure dir exists (creating it 0700) and is writable.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	f, err := os.CreateTemp(dir, ".cinode-check-")
	if err != nil {
		return fmt.Errorf("--data-dir %s is not writable: %w", dir, errors.Unwrap(err))
	}
	f.Close()
	return os.Remove(f.Name())
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // kong checked the enum
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)) // stamps to the nanosecond
	}
	// The text handler stamps to the millisecond; a failover's steps are
	// tens of microseconds apart (clms's debug trace), and reading one
	// from several nodes' logs needs their order.
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
			return slog.String(slog.TimeKey, a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
		}
		return a
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
