package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/seed589fcc9d/tableflip/internal/loadgen"
)

// writeHTMLFile writes r as a self-contained page: the text report and an
// inline SVG timeline, with no script and nothing fetched from elsewhere.
func writeHTMLFile(path string, r *report) error {
	var b bytes.Buffer
	writeHTML(&b, r)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("-html: %w", err)
	}
	return nil
}

func writeHTML(b *bytes.Buffer, r *report) {
	var text bytes.Buffer
	r.writeText(&text)
	verdictClass := "pass"
	if !r.Pass {
		verdictClass = "fail"
	}
	fmt.Fprintf(b, `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>tableflip check: %s</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
pre{background:#f6f6f6;padding:1em;overflow-x:auto}
.pass{color:#17702a}.fail{color:#b00020}
svg text{font:11px system-ui,sans-serif;fill:#444}
.legend span{display:inline-block;margin-right:1.5em}
.sw{display:inline-block;width:1.2em;height:.7em;margin-right:.3em;vertical-align:middle}
</style></head><body>
<h1>tableflip check</h1>
<p class="%s"><strong>%s</strong></p>
<h2>Timeline</h2>
`, html.EscapeString(r.Server), verdictClass, html.EscapeString(r.Verdict))
	writeTimeline(b, r)
	fmt.Fprintf(b, `<p class="legend"><span><i class="sw" style="background:#1f77b4"></i>median latency</span><span><i class="sw" style="background:#ff7f0e"></i>p99 latency</span><span><i class="sw" style="background:#bbb"></i>max latency</span><span><i class="sw" style="background:#d62728"></i>failed requests</span><span><i class="sw" style="background:#9467bd"></i>long-lived connections cut by a draining generation</span><span><i class="sw" style="background:#fff2b3"></i>upgrade (signal to old generation's exit)</span><span><i class="sw" style="background:#2ca02c"></i>new generation ready</span></p>
<p>Each column is one slice of time; latencies are of the successful requests in it, on a logarithmic scale.</p>
<h2>Report</h2>
<pre>%s</pre>
</body></html>
`, html.EscapeString(text.String()))
}

// bucket is what the timeline draws for one slice of time.
type bucket struct {
	lat    []time.Duration
	failed int
	cut    int
}

func writeTimeline(b *bytes.Buffer, r *report) {
	const (
		width, plotH, failH = 1000.0, 300.0, 70.0
		left, top, gap      = 60.0, 10.0, 25.0
		n                   = 400 // buckets
	)
	end := r.Elapsed
	for _, res := range r.results {
		if len(res.Records) > 0 {
			last := res.Records[len(res.Records)-1]
			end = max(end, res.Started.Sub(r.epoch)+last.End())
		}
	}
	if end <= 0 {
		b.WriteString("<p>No requests were made.</p>\n")
		return
	}
	buckets := make([]bucket, n)
	idx := func(t time.Duration) int { return min(n-1, max(0, int(float64(t)/float64(end)*n))) }
	var maxLat time.Duration
	for _, res := range r.results {
		off := res.Started.Sub(r.epoch)
		for _, rec := range res.Records {
			bk := &buckets[idx(off+rec.Start)]
			switch kind, _ := r.classify(off, rec); kind {
			case failed:
				bk.failed++
				continue
			case cut:
				bk.cut++
				continue
			}
			bk.lat = append(bk.lat, rec.Latency)
			maxLat = max(maxLat, rec.Latency)
		}
	}
	maxFailed := 0
	for _, bk := range buckets {
		maxFailed = max(maxFailed, bk.failed+bk.cut)
	}
	// Latency axis: decades from 10µs up to the one above the maximum.
	lo := 10 * time.Microsecond
	hi := lo
	for hi < maxLat {
		hi *= 10
	}
	if hi == lo {
		hi = 10 * lo
	}
	decades := math.Log10(float64(hi) / float64(lo))
	x := func(t time.Duration) float64 { return left + float64(t)/float64(end)*width }
	y := func(d time.Duration) float64 {
		d = max(d, lo)
		return top + plotH - math.Log10(float64(d)/float64(lo))/decades*plotH
	}
	failTop := top + plotH + gap
	totalH := failTop + failH + 30

	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" role="img" aria-label="request latency and failures over time">`+"\n",
		left+width+20, totalH, left+width+20, totalH)
	// Upgrades behind everything else.
	for _, u := range r.Upgrades {
		x0, x1 := x(u.SignalAt), x(u.end())
		fmt.Fprintf(b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#fff2b3"><title>upgrade %d: pid %d → %d</title></rect>`+"\n",
			x0, top, max(1, x1-x0), failTop+failH-top, u.N, u.OldPID, u.NewPID)
		if u.ReadyAt > 0 {
			fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#2ca02c" stroke-dasharray="3,2"/>`+"\n",
				x(u.ReadyAt), x(u.ReadyAt), top, failTop+failH)
		}
	}
	// Axes and grid.
	for i := 0; float64(i) <= decades; i++ {
		d := lo * time.Duration(math.Pow10(i))
		fmt.Fprintf(b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#e4e4e4"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n",
			left, left+width, y(d), y(d), left-5, y(d)+4, fmtDur(d))
	}
	step := niceStep(end)
	for t := time.Duration(0); t <= end; t += step {
		fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#eee"/><text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n",
			x(t), x(t), failTop+failH, failTop+failH+5, x(t), failTop+failH+18, fmtDur(t))
	}
	fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, top, width, plotH)
	fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, failTop, width, failH)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="end">failed</text>`+"\n", left-5, failTop+12)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="end">%d</text>`+"\n", left-5, failTop+26, maxFailed)

	// Latency lines.
	var p50, p99, pmax strings.Builder
	for i := range buckets {
		bk := &buckets[i]
		if len(bk.lat) == 0 {
			continue
		}
		slices.Sort(bk.lat)
		cx := left + (float64(i)+0.5)*width/n
		fmt.Fprintf(&p50, "%.1f,%.1f ", cx, y(loadgen.Percentile(bk.lat, 50)))
		fmt.Fprintf(&p99, "%.1f,%.1f ", cx, y(loadgen.Percentile(bk.lat, 99)))
		fmt.Fprintf(&pmax, "%.1f,%.1f ", cx, y(bk.lat[len(bk.lat)-1]))
	}
	for _, l := range []struct {
		pts   string
		color string
	}{{pmax.String(), "#bbb"}, {p99.String(), "#ff7f0e"}, {p50.String(), "#1f77b4"}} {
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="1.2"/>`+"\n", l.pts, l.color)
	}
	// Failures, and cuts stacked on them.
	for i, bk := range buckets {
		bottom := failTop + failH
		for _, bar := range []struct {
			n     int
			color string
			what  string
		}{{bk.failed, "#d62728", "failed"}, {bk.cut, "#9467bd", "cut by the drain"}} {
			if bar.n == 0 {
				continue
			}
			h := max(2, float64(bar.n)/float64(maxFailed)*failH)
			bottom -= h
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%d %s</title></rect>`+"\n",
				left+float64(i)*width/n, bottom, max(1, width/n), h, bar.color, bar.n, bar.what)
		}
	}
	b.WriteString("</svg>\n")
}

// niceStep returns a step of 1, 2 or 5 times a power of ten that puts
// about ten ticks on a span of d.
func niceStep(d time.Duration) time.Duration {
	raw := float64(d) / 10
	p := math.Pow10(int(math.Floor(math.Log10(raw))))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return max(time.Duration(m*p), time.Microsecond)
		}
	}
	return time.Duration(10 * p)
}
