package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress is a bar on stderr, or nothing: with --quiet, or when stderr is
// not a terminal (a log file or a pipe would fill with redraws).
type progress struct{ bar *progressbar.ProgressBar }

// newProgress shows a bar counting to total calls; total -1 counts without
// an end (duration-bound runs).
func newProgress(g *globals, total int64, desc string) *progress {
	if g.quiet || !isTerminal(g.stderr) {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetItsString("calls"),
		progressbar.OptionShowIts(),
		progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100*time.Millisecond), // redraws cost the client CPU
		progressbar.OptionSetSpinnerChangeInterval(0),    // no redraw goroutine of its own
		progressbar.OptionClearOnFinish(),
	)}
}

// add counts calls done; safe for concurrent use.
func (p *progress) add(n int) {
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
}

// done removes the bar, so the report starts on a clean line.
func (p *progress) done() {
	if p.bar != nil {
		_ = p.bar.Finish()
		_ = p.bar.Clear()
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
