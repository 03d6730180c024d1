// Command benchreport turns the JSON report of one "cibench all" run into
// BENCHMARKS.md and its plots (make bench-report). It keeps the file's
// hand-written introduction and regenerates everything else. See
// benchreport --help.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/alecthomas/kong"

	"github.com/clusterinfra/ci/bench"
)

const (
	exitOK       = 0
	exitFailed   = 1
	exitBadUsage = 2
)

type cli struct {
	In    string `required:"" type:"existingfile" placeholder:"FILE" help:"The JSON report of cibench all." env:"CI_IN"`
	Out   string `default:"BENCHMARKS.md" type:"path" placeholder:"FILE" help:"The Markdown file to write; its introduction (between the intro markers) is kept." env:"CI_OUT"`
	Plots string `default:"docs/bench" type:"path" placeholder:"DIR" help:"Directory for the plots (PNG), linked from the Markdown by a path relative to it." env:"CI_PLOTS"`
}

const description = `Writes BENCHMARKS.md from one cibench all run: a headline table of ICS
against raw TCP, net/rpc and gRPC-go with every goal of issues 10 and 14 and a
met/missed verdict, the detailed tables, the plots, and the machine, date and
command. Text between "<!-- intro -->" and "<!-- /intro -->" in the existing
file is hand-written and kept.

Example:
  cibench all --out=bench/results/latest.json && benchreport --in=bench/results/latest.json`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var c cli
	parser, err := kong.New(&c, kong.Name("benchreport"), kong.Description(description), kong.Writers(stdout, stderr))
	if err != nil {
		fmt.Fprintf(stderr, "benchreport: %v\n", err)
		return exitFailed
	}
	if _, err := parser.Parse(args); err != nil {
		parser.Errorf("%s", err)
		return exitBadUsage
	}
	if err := c.generate(); err != nil {
		fmt.Fprintf(stderr, "benchreport: %v\n", err)
		return exitFailed
	}
	return exitOK
}

func (c *cli) generate() (err error) {
	f, err := os.Open(c.In)
	if err != nil {
		return err
	}
	rep, err := bench.ReadReport(f)
	err = errors.Join(err, f.Close())
	if err != nil {
		return fmt.Errorf("%s: %w", c.In, err)
	}
	old, err := os.ReadFile(c.Out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(c.Plots, 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(c.Out), c.Plots)
	if err != nil {
		return err
	}
	md, err := Generate(rep, string(old), c.Plots, filepath.ToSlash(rel))
	if err != nil {
		return err
	}
	// Write beside the target and rename: a failure half-way never leaves
	// a truncated BENCHMARKS.md.
	tmp := c.Out + ".tmp"
	if err := os.WriteFile(tmp, []byte(md), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.Out)
}
