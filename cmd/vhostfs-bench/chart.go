package main

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// drawChart draws the ratios of rec as bars, one per line of the summary
// (single-queue workloads, then the multi-queue lines and the pool-of-one
// lines, each in another colour),
// with the parity line at 1 and the geometric mean as a dashed line.
func drawChart(path string, rec *compareRecord) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("govirtiofsd / reference virtiofsd: median ops/s ratio (depth %d, %d rounds of %gs)",
		rec.Config.Depth, rec.Config.Rounds, rec.Config.DurationSeconds)
	if rec.Config.SpinSeconds > 0 {
		p.Title.Text += fmt.Sprintf(", spin %gus", rec.Config.SpinSeconds*1e6)
	}
	p.Y.Label.Text = "ratio ours / ref (above 1: govirtiofsd faster)"
	p.Y.Min = 0

	var labels []string
	var single, multi, pool plotter.Values
	var points plotter.XYs
	var texts []string
	top := 1.0
	for i, l := range rec.Workloads {
		labels = append(labels, l.Name)
		single = append(single, l.Ratio)
		points = append(points, plotter.XY{X: float64(i), Y: l.Ratio})
		texts = append(texts, fmt.Sprintf("%.2f", l.Ratio))
		top = max(top, l.Ratio)
	}
	for i, l := range rec.MultiQueue {
		labels = append(labels, l.Name+"\nvs ref-best-1q")
		multi = append(multi, l.Ratio)
		points = append(points, plotter.XY{X: float64(len(single) + i), Y: l.Ratio})
		texts = append(texts, fmt.Sprintf("%.2f", l.Ratio))
		top = max(top, l.Ratio)
	}
	for i, l := range rec.Pool {
		labels = append(labels, l.Name)
		pool = append(pool, l.Ratio)
		points = append(points, plotter.XY{X: float64(len(single) + len(multi) + i), Y: l.Ratio})
		texts = append(texts, fmt.Sprintf("%.2f", l.Ratio))
		top = max(top, l.Ratio)
	}
	width := vg.Points(28)
	if len(single) > 0 {
		b, err := plotter.NewBarChart(single, width)
		if err != nil {
			return err
		}
		b.Color = color.RGBA{R: 0x33, G: 0x66, B: 0xcc, A: 0xff}
		b.LineStyle.Width = 0
		p.Add(b)
		p.Legend.Add("1 request queue each", b)
	}
	if len(multi) > 0 {
		b, err := plotter.NewBarChart(multi, width)
		if err != nil {
			return err
		}
		b.XMin = float64(len(single))
		b.Color = color.RGBA{R: 0xee, G: 0x88, B: 0x22, A: 0xff}
		b.LineStyle.Width = 0
		p.Add(b)
		p.Legend.Add(fmt.Sprintf("ours with %d queues", rec.Config.MultiQueues), b)
	}
	if len(pool) > 0 {
		b, err := plotter.NewBarChart(pool, width)
		if err != nil {
			return err
		}
		b.XMin = float64(len(single) + len(multi))
		b.Color = color.RGBA{R: 0x33, G: 0x99, B: 0x55, A: 0xff}
		b.LineStyle.Width = 0
		p.Add(b)
		p.Legend.Add("both with --thread-pool-size=1", b)
	}
	n := float64(len(labels))
	parity, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: 1}, {X: n - 0.5, Y: 1}})
	if err != nil {
		return err
	}
	parity.LineStyle.Width = vg.Points(1)
	parity.LineStyle.Color = color.Black
	p.Add(parity)
	if rec.GeomeanRatio > 0 {
		g, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: rec.GeomeanRatio}, {X: float64(len(single)) - 0.5, Y: rec.GeomeanRatio}})
		if err != nil {
			return err
		}
		g.LineStyle.Width = vg.Points(1)
		g.LineStyle.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		g.LineStyle.Color = color.RGBA{R: 0xcc, A: 0xff}
		p.Add(g)
		p.Legend.Add(fmt.Sprintf("geomean %.2f", rec.GeomeanRatio), g)
	}
	lab, err := plotter.NewLabels(plotter.XYLabels{XYs: points, Labels: texts})
	if err != nil {
		return err
	}
	for i := range lab.TextStyle {
		lab.TextStyle[i].XAlign = draw.XCenter
	}
	lab.Offset = vg.Point{Y: vg.Points(3)}
	p.Add(lab)
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.6, n-0.4
	p.Y.Max = top * 1.15
	p.Legend.Top = true
	return p.Save(vg.Points(max(560, 80*n)), vg.Points(380), path)
}
