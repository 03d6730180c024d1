// Package benchplot draws the result schema's figures (package bench's
// Report) with gonum.org/v1/plot: a latency CDF per peer, throughput by
// payload size and the failover-time distribution by phase. The file's
// extension picks the format (.png, .svg, .pdf).
package benchplot

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"slices"
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
	p.Legend.XOffs, p.Legend.YOffs = -vg.Centimeter, vg.Centimeter/2
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
	return p.Save(width, height, path)
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
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Throughput by payload size, %d concurrent callers", cs[0].Concurrency)
	p.X.Label.Text = "request and response size (bytes, log scale)"
	p.Y.Label.Text = "calls per second (median of rounds)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = sizeTicks(cs)
	p.Y.Min = 0
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	for i, ps := range cs[0].Peers {
		xy := make(plotter.XYs, 0, len(cs))
		for _, c := range cs {
			for _, q := range c.Peers {
				if q.Peer == ps.Peer {
					xy = append(xy, plotter.XY{X: float64(c.ReqSize), Y: q.CallsPerSec})
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
	// Room around the first and last sizes, whose points sit on the frame.
	p.X.Min, p.X.Max = p.X.Min/1.5, p.X.Max*1.5
	p.Y.Max *= 1.15 // headroom for the legend
	return p.Save(width, height, path)
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
	p.Legend.Top, p.Legend.Left = true, true // every curve starts at the bottom left
	p.Legend.XOffs = vg.Centimeter
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
	return p.Save(width, height, path)
}

func style(s *draw.LineStyle, i int) {
	s.Color = plotutil.Color(i)
	s.Width = vg.Points(1.5)
	s.Dashes = plotutil.Dashes(i / len(plotutil.DefaultColors))
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// sizeTicks labels the sizes measured, as 64 B, 4 KiB, 64 KiB.
func sizeTicks(cs []*bench.Comparison) plot.Ticker {
	var ticks plot.ConstantTicks
	for _, c := range cs {
		ticks = append(ticks, plot.Tick{Value: float64(c.ReqSize), Label: bench.SizeString(c.ReqSize)})
	}
	return ticks
}
