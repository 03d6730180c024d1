// Package benchplot draws the result schema's figures (package bench's
// Report) with gonum.org/v1/plot: a latency CDF per peer, throughput by
// payload size and by concurrency, and the failover-time distribution by
// phase. The file's
// extension picks the format (.png, .svg, .pdf).
package benchplot

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/clusterinfra/ci/bench"
)

// ErrNoData means the section to plot has nothing in it.
var ErrNoData = errors.New("benchplot: nothing to plot")

// Size of every figure: wide enough for a legend beside five curves,
// readable at GitHub's page width.
const (
	width  = 7 * vg.Inch
	height = 4.5 * vg.Inch
)

// LatencyCDF plots each peer's latency distribution over all rounds of c:
// the fraction of calls at most x, x on a log scale so that a p50 of 20 µs
// and a tail of 10 ms fit on one figure, y on a scale of nines (0.9, 0.99,
// 0.999 equally spaced) so that the tail, where peers differ most, is not
// squeezed into the top pixel.
func LatencyCDF(c *bench.Comparison, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Latency CDF, %s request / %s response, %d caller(s)",
		bench.SizeString(c.ReqSize), bench.SizeString(c.RespSize), c.Concurrency)
	p.X.Label.Text = "latency (µs, log scale)"
	p.Y.Label.Text = "fraction of calls ≤ x (scale of nines)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Scale = ninesScale{}
	p.Y.Tick.Marker = ninesTicks
	p.Y.Min, p.Y.Max = 0, maxFraction
	// The bottom right is empty: every curve rises from the bottom left and
	// ends at the top, at its slowest call.
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.XOffs, p.Legend.YOffs = -vg.Centimeter/2, vg.Centimeter/2
	p.Add(plotter.NewGrid())
	n := 0
	for i, ps := range c.Peers {
		if len(ps.CDF) == 0 {
			continue
		}
		xy := make(plotter.XYs, 0, len(ps.CDF))
		for _, pt := range ps.CDF {
			xy = append(xy, plotter.XY{X: micros(pt.Latency), Y: min(pt.Fraction, maxFraction)})
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		style(&l.LineStyle, i)
		p.Add(l)
		p.Legend.Add(ps.Peer, l)
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: no peer has a CDF", ErrNoData)
	}
	return save(p, path)
}

// maxFraction is where the nines scale stops: the slowest call (fraction
// 1, infinitely many nines) is drawn at six nines.
const maxFraction = 0.999999

// ninesScale maps a fraction f to -log10(1-f): 0.9 is 1, 0.99 is 2.
type ninesScale struct{}

func (ninesScale) Normalize(lo, hi, x float64) float64 {
	t := func(f float64) float64 { return -math.Log10(1 - min(max(f, 0), maxFraction)) }
	return (t(x) - t(lo)) / (t(hi) - t(lo))
}

var ninesTicks = plot.ConstantTicks{
	{Value: 0, Label: "0"}, {Value: 0.5, Label: "0.5"}, {Value: 0.9, Label: "0.9"}, {Value: 0.99, Label: "0.99"},
	{Value: 0.999, Label: "0.999"}, {Value: 0.9999, Label: "0.9999"}, {Value: 0.99999, Label: "0.99999"},
	{Value: maxFraction, Label: "max"},
}

// Throughput plots each peer's calls per second against payload size, one
// point per comparison in cs (one per size, same peers), log-scale x.
func Throughput(cs []*bench.Comparison, path string) error {
	if len(cs) == 0 {
		return fmt.Errorf("%w: no throughput runs", ErrNoData)
	}
	cs = slices.Clone(cs)
	slices.SortFunc(cs, func(a, b *bench.Comparison) int { return a.ReqSize - b.ReqSize })
	return rateFigure(cs, rateAxes{
		title:  fmt.Sprintf("Throughput by payload size, %d concurrent callers", cs[0].Concurrency),
		xLabel: "request and response size (bytes, log scale)",
		x:      func(c *bench.Comparison) float64 { return float64(c.ReqSize) },
		tick:   func(c *bench.Comparison) string { return bench.SizeString(c.ReqSize) },
		// The top right is empty: calls per second fall as the payload grows.
		legendLeft: false,
	}, path)
}

// ThroughputByConcurrency plots each peer's calls per second against the
// number of concurrent callers, one point per comparison in cs (one size,
// one per concurrency, same peers), log-scale x.
func ThroughputByConcurrency(cs []*bench.Comparison, path string) error {
	if len(cs) < 2 {
		return fmt.Errorf("%w: %d concurrencies, a curve needs two", ErrNoData, len(cs))
	}
	cs = slices.Clone(cs)
	slices.SortFunc(cs, func(a, b *bench.Comparison) int { return a.Concurrency - b.Concurrency })
	return rateFigure(cs, rateAxes{
		title: fmt.Sprintf("Throughput by concurrency, %s request / %s response",
			bench.SizeString(cs[0].ReqSize), bench.SizeString(cs[0].RespSize)),
		xLabel: "concurrent callers on one client (log scale)",
		x:      func(c *bench.Comparison) float64 { return float64(c.Concurrency) },
		tick:   func(c *bench.Comparison) string { return strconv.Itoa(c.Concurrency) },
		// The top left is empty: one caller is the slowest point of
		// every curve.
		legendLeft: true,
	}, path)
}

// rateAxes is what the throughput figures differ in: the x of a
// comparison and its tick label, and the top corner the legend goes in.
type rateAxes struct {
	title, xLabel string
	x             func(*bench.Comparison) float64
	tick          func(*bench.Comparison) string
	legendLeft    bool
}

// rateFigure plots calls per second (linear from 0, SI-labelled) against
// a.x on a log scale, a tick at each comparison of cs.
func rateFigure(cs []*bench.Comparison, a rateAxes, path string) error {
	p := plot.New()
	p.Title.Text = a.title
	p.X.Label.Text = a.xLabel
	p.Y.Label.Text = "calls per second (median of rounds)"
	p.X.Scale = plot.LogScale{}
	var ticks plot.ConstantTicks
	for _, c := range cs {
		ticks = append(ticks, plot.Tick{Value: a.x(c), Label: a.tick(c)})
	}
	p.X.Tick.Marker = ticks
	p.Y.Min = 0
	p.Y.Tick.Marker = siTicks{}
	p.Legend.Top, p.Legend.Left = true, a.legendLeft
	p.Legend.XOffs, p.Legend.YOffs = -vg.Centimeter/2, -vg.Centimeter/4
	if a.legendLeft {
		p.Legend.XOffs = vg.Centimeter / 2
	}
	p.Add(plotter.NewGrid())
	if err := ratePerPeer(p, cs, a.x); err != nil {
		return err
	}
	// Room around the first and last points, which would sit on the frame.
	p.X.Min, p.X.Max = p.X.Min/1.5, p.X.Max*1.5
	p.Y.Max *= 1.15 // headroom for the legend
	return save(p, path)
}

// ratePerPeer adds a line with points per peer of cs[0]: its calls per
// second in each comparison, at x(comparison).
func ratePerPeer(p *plot.Plot, cs []*bench.Comparison, x func(*bench.Comparison) float64) error {
	for i, ps := range cs[0].Peers {
		xy := make(plotter.XYs, 0, len(cs))
		for _, c := range cs {
			for _, q := range c.Peers {
				if q.Peer == ps.Peer {
					xy = append(xy, plotter.XY{X: x(c), Y: q.CallsPerSec})
				}
			}
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		style(&l.LineStyle, i)
		pts.Color = l.LineStyle.Color
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(ps.Peer, l, pts)
	}
	return nil
}

// siTicks are gonum's default ticks labelled with SI prefixes: 750k, not
// 750000.00.
type siTicks struct{}

func (siTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = siLabel(ticks[i].Value)
		}
	}
	return ticks
}

// siLabel writes v with k, M or G and at most three significant digits:
// 0, 250, 2.5k, 750k, 1.25M.
func siLabel(v float64) string {
	prefixes := []struct {
		scale  float64
		suffix string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}, {1, ""}}
	for _, p := range prefixes {
		if math.Abs(v) >= p.scale || p.scale == 1 {
			x, _ := strconv.ParseFloat(strconv.FormatFloat(v/p.scale, 'g', 3, 64), 64)
			return strconv.FormatFloat(x, 'f', -1, 64) + p.suffix
		}
	}
	return "" // not reached: the last scale always matches
}

// Failover plots, for each phase, the fraction of trials that had reached
// it by x milliseconds after the fault: one step curve per phase, so the
// gap between curves is each phase's share of the failover time.
func Failover(f *bench.FailoverResult, path string) error {
	if f == nil || len(f.Trials) == 0 {
		return fmt.Errorf("%w: no failover trials", ErrNoData)
	}
	times := bench.PhaseTimes(f.Trials)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Failover time by phase, %d trials, %d nodes, %s profile", len(f.Trials), f.Nodes, f.Profile)
	p.X.Label.Text = "time since the fault (ms)"
	p.Y.Label.Text = "fraction of trials that reached the phase"
	p.X.Min, p.Y.Min, p.Y.Max = 0, 0, 1
	// The bottom right is empty: a curve reaches 1 (or its phase's share
	// of the trials) at its slowest trial and stays there, and the target
	// line is at the right edge; the legend's right end stays clear of it.
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.XOffs, p.Legend.YOffs = -vg.Centimeter, vg.Centimeter/2
	p.Add(plotter.NewGrid())
	n := 0
	for i, name := range bench.FailoverPhases {
		ds := times[name]
		if len(ds) == 0 {
			continue
		}
		// A step up at each trial's time: the empirical distribution.
		xy := plotter.XYs{{X: 0, Y: 0}}
		for k, d := range ds {
			ms := float64(d) / float64(time.Millisecond)
			xy = append(xy, plotter.XY{X: ms, Y: float64(k) / float64(len(f.Trials))},
				plotter.XY{X: ms, Y: float64(k+1) / float64(len(f.Trials))})
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		style(&l.LineStyle, i)
		p.Add(l)
		p.Legend.Add(name, l)
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: no trial reached any phase", ErrNoData)
	}
	if f.TargetP99 > 0 {
		ms := float64(f.TargetP99) / float64(time.Millisecond)
		l, err := plotter.NewLine(plotter.XYs{{X: ms, Y: 0}, {X: ms, Y: 1}})
		if err != nil {
			return err
		}
		l.Color = color.Gray{Y: 96}
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		p.Add(l)
		p.Legend.Add("target p99", l)
	}
	p.X.Max *= 1.05 // the last step or the target line off the frame
	return save(p, path)
}

// save writes p to path, in the format its extension names, with the
// legend placed inside the data area (gonum places it in the area right
// of the y axis, which on a log x axis with padding can run past the last
// data point and off the frame): its Top, Left and offsets are taken from
// the data area's corners.
func save(p *plot.Plot, path string) (err error) {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	c, err := draw.NewFormattedCanvas(width, height, format)
	if err != nil {
		return err
	}
	legend := p.Legend
	p.Legend = plot.NewLegend() // no entries: Draw leaves the legend to us
	dc := draw.New(c)
	p.Draw(dc)
	legend.Draw(p.DataCanvas(dc))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	_, err = c.WriteTo(f)
	return err
}

func style(s *draw.LineStyle, i int) {
	s.Color = plotutil.Color(i)
	s.Width = vg.Points(1.5)
	s.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
