// Package perf holds nsx-ujo's benchmarks. Every figure is reported beside a
// baseline measured in the same run, as a ratio, with min/median/max over
// repeated runs, because these machines are noisy.
//
// The benchmarks (the _test files) add their figures to a Report; at the end
// of the test binary TestMain prints one Markdown table and writes
// results/<UTC timestamp>.md, .json and .svg. This file is the reporting
// layer; it has no test dependencies so that tests/perf/benchcompare can read
// the JSON files with the same types.
package perf

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SchemaVersion is the version of the JSON results file.
const SchemaVersion = 1

// Figure is one quantity measured for a subject and, in the same run, for
// its baseline; one value per repetition.
type Figure struct {
	Bench    string `json:"bench"`    // e.g. "programming"
	Case     string `json:"case"`     // e.g. "N=10000 change p99"
	Subject  string `json:"subject"`  // e.g. "nsx ovs"
	Baseline string `json:"baseline"` // e.g. "iptables"
	Unit     string `json:"unit"`     // e.g. "ms", "pods/s"
	// HigherIsBetter is set for rates; times are better lower.
	HigherIsBetter bool `json:"higher_is_better,omitempty"`
	// N is the size the case scales with (services), 0 if none; the plot
	// uses it as x.
	N              int       `json:"n,omitempty"`
	Values         []float64 `json:"values"`
	BaselineValues []float64 `json:"baseline_values"`
	// Summary is derived from the values when the results are written;
	// readers should recompute it from the values.
	Summary *Summary `json:"summary,omitempty"`
}

// Stats are the minimum, median and maximum of a figure's repetitions.
type Stats struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
	Runs   int     `json:"runs"`
}

// Summary is what the table shows of a figure.
type Summary struct {
	Subject  Stats `json:"subject"`
	Baseline Stats `json:"baseline"`
	// Ratio is subject median / baseline median; absent when the baseline
	// median is 0.
	Ratio *float64 `json:"ratio,omitempty"`
}

// Summarize returns min, median (mean of the middle two for an even count)
// and max of v.
func Summarize(v []float64) Stats {
	if len(v) == 0 {
		return Stats{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stats{Min: s[0], Median: med, Max: s[len(s)-1], Runs: len(s)}
}

// Key identifies a figure across runs.
func (f Figure) Key() string { return f.Bench + "\x00" + f.Case + "\x00" + f.Subject }

// Ratio is the subject's median over the baseline's median; ok is false
// when the baseline median is 0 or missing.
func (f Figure) Ratio() (r float64, ok bool) {
	s, b := Summarize(f.Values), Summarize(f.BaselineValues)
	if b.Runs == 0 || b.Median == 0 || s.Runs == 0 {
		return 0, false
	}
	return s.Median / b.Median, true
}

// Summarized returns f with Summary filled in.
func (f Figure) Summarized() Figure {
	sum := &Summary{Subject: Summarize(f.Values), Baseline: Summarize(f.BaselineValues)}
	if r, ok := f.Ratio(); ok {
		sum.Ratio = &r
	}
	f.Summary = sum
	return f
}

// Report collects the figures of one test binary. Safe for concurrent use.
type Report struct {
	mu       sync.Mutex
	figures  []Figure
	notes    []string
	sections []Section
}

// Section is a benchmark's own detail table (Markdown), written to the .md
// file after the common table.
type Section struct {
	Title string `json:"title"`
	Text  string `json:"text"`
}

// Add records a figure. A figure with the same bench, case and subject
// replaces the earlier one (the benchmark function ran again, e.g. without
// -benchtime=1x); repetitions come from NSX_BENCH_REPEAT, not -count.
// Non-finite values are dropped (JSON cannot hold them).
func (r *Report) Add(f Figure) {
	f.Values, f.BaselineValues = finite(f.Values), finite(f.BaselineValues)
	f.Summary = nil
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.figures {
		if r.figures[i].Key() == f.Key() {
			r.figures[i] = f
			return
		}
	}
	r.figures = append(r.figures, f)
}

func finite(v []float64) []float64 {
	out := make([]float64, 0, len(v))
	for _, x := range v {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			out = append(out, x)
		}
	}
	return out
}

// Note adds a line under the table (once).
func (r *Report) Note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.notes {
		if n == s {
			return
		}
	}
	r.notes = append(r.notes, s)
}

// Section records a benchmark's detail table; a section with the same title
// replaces the earlier one.
func (r *Report) Section(title, markdown string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.sections {
		if r.sections[i].Title == title {
			r.sections[i].Text = markdown
			return
		}
	}
	r.sections = append(r.sections, Section{title, markdown})
}

// Empty reports whether no figure was recorded.
func (r *Report) Empty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.figures) == 0
}

// Machine describes where a run was measured.
type Machine struct {
	NProc     int    `json:"nproc"`
	CPU       string `json:"cpu,omitempty"`    // model name from /proc/cpuinfo
	Kernel    string `json:"kernel,omitempty"` // uname -srm
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit,omitempty"` // git rev-parse HEAD
	Dirty     bool   `json:"dirty,omitempty"`  // tracked files modified
	Hostname  string `json:"hostname,omitempty"`
}

// Run is one results file.
type Run struct {
	Version int       `json:"version"`
	Start   time.Time `json:"start"` // UTC; also the file name
	End     time.Time `json:"end"`
	Failed  bool      `json:"failed,omitempty"` // the test binary failed: figures may be missing
	Machine Machine   `json:"machine"`
	// Settings are the NSX_BENCH_* environment and the test binary's flags.
	Settings map[string]string `json:"settings,omitempty"`
	Notes    []string          `json:"notes,omitempty"`
	Figures  []Figure          `json:"figures"`
	Sections []Section         `json:"sections,omitempty"`
}

// Snapshot returns the run so far, with machine information and summaries.
func (r *Report) Snapshot(start time.Time, failed bool) *Run {
	r.mu.Lock()
	run := &Run{Version: SchemaVersion, Start: start.UTC().Truncate(time.Second), End: time.Now().UTC().Truncate(time.Second),
		Failed: failed, Notes: append([]string(nil), r.notes...), Sections: append([]Section(nil), r.sections...)}
	for _, f := range r.figures {
		run.Figures = append(run.Figures, f.Summarized())
	}
	r.mu.Unlock()
	run.Machine = machineInfo()
	run.Settings = map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "NSX_BENCH_") {
			run.Settings[k] = v
		}
	}
	if len(os.Args) > 1 {
		run.Settings["args"] = strings.Join(os.Args[1:], " ")
	}
	return run
}

func machineInfo() Machine {
	m := Machine{NProc: runtime.NumCPU(), GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if out, err := exec.Command("uname", "-srm").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
			m.Dirty = len(bytes.TrimSpace(st)) > 0
		}
	}
	return m
}

// ReadRun reads a results file; its errors start with the path.
func ReadRun(path string) (*Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var run Run
	if err := json.Unmarshal(b, &run); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if run.Version != SchemaVersion {
		return nil, fmt.Errorf("%s: results version %d, want %d", path, run.Version, SchemaVersion)
	}
	return &run, nil
}

// Stamp is the file name of a run's files, without extension.
func (run *Run) Stamp() string { return run.Start.UTC().Format("20060102T150405Z") }

// Write writes <dir>/<stamp>.md, .json and, when there is something to
// plot, .svg, and returns the paths written.
func (run *Run) Write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, run.Stamp())
	for i := 2; ; i++ { // two runs started in the same second
		if _, err := os.Stat(base + ".json"); os.IsNotExist(err) {
			break
		}
		base = filepath.Join(dir, fmt.Sprintf("%s-%d", run.Stamp(), i))
	}
	var md, svg bytes.Buffer
	run.Markdown(&md, true)
	js, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		return nil, err
	}
	files := []struct {
		ext  string
		data []byte
	}{{".json", append(js, '\n')}, {".md", md.Bytes()}}
	if run.SVG(&svg) {
		files = append(files, struct {
			ext  string
			data []byte
		}{".svg", svg.Bytes()})
	}
	var paths []string
	for _, f := range files {
		if err := os.WriteFile(base+f.ext, f.data, 0o644); err != nil {
			return paths, err
		}
		paths = append(paths, base+f.ext)
	}
	return paths, nil
}

// Num formats a figure with about three significant digits.
func Num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case a >= 0.001:
		return strconv.FormatFloat(v, 'g', 3, 64)
	default:
		return strconv.FormatFloat(v, 'e', 2, 64)
	}
}

// Markdown writes the common table; with sections, the benchmarks' detail
// tables follow it.
func (run *Run) Markdown(w io.Writer, sections bool) {
	fmt.Fprintf(w, "\n## nsx-ujo benchmarks, %s\n\n", run.Start.UTC().Format("2006-01-02 15:04:05 UTC"))
	m := run.Machine
	commit := m.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if commit == "" {
		commit = "unknown commit"
	} else if m.Dirty {
		commit += " (modified)"
	}
	cpu := fmt.Sprintf("%d CPUs", m.NProc)
	if m.CPU != "" {
		cpu += " (" + m.CPU + ")"
	}
	fmt.Fprintf(w, "%s; %s; %s; %s", commit, cpu, m.Kernel, m.GoVersion)
	var env []string
	for k, v := range run.Settings {
		if strings.HasPrefix(k, "NSX_BENCH_") {
			env = append(env, k+"="+v)
		}
	}
	sort.Strings(env)
	if len(env) > 0 {
		fmt.Fprintf(w, "; %s", strings.Join(env, " "))
	}
	if run.Failed {
		fmt.Fprint(w, "; **the run failed: figures may be missing**")
	}
	fmt.Fprint(w, "\n\n")
	writeTable(w, run.Figures)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "ratio = subject median / baseline median, both measured in this run; units marked ↑ are better higher (ratio > 1 favours the subject), the others better lower (ratio < 1 favours the subject). runs = repetitions (subject / baseline when they differ).")
	for _, n := range run.Notes {
		fmt.Fprintf(w, "\n- %s", n)
	}
	if len(run.Notes) > 0 {
		fmt.Fprintln(w)
	}
	if sections {
		for _, s := range run.Sections {
			fmt.Fprintf(w, "\n### %s\n\n%s\n", s.Title, strings.TrimSpace(s.Text))
		}
	}
	fmt.Fprintln(w)
}

func writeTable(w io.Writer, figs []Figure) {
	fmt.Fprintln(w, "| bench | case | unit | subject | min | median | max | baseline | min | median | max | ratio | runs |")
	fmt.Fprintln(w, "|---|---|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|")
	for _, f := range figs {
		s, b := Summarize(f.Values), Summarize(f.BaselineValues)
		ratio := "–"
		if r, ok := f.Ratio(); ok {
			ratio = Num(r)
		}
		runs := strconv.Itoa(s.Runs)
		if b.Runs != s.Runs {
			runs = fmt.Sprintf("%d / %d", s.Runs, b.Runs)
		}
		unit := f.Unit
		if f.HigherIsBetter {
			unit += " ↑"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f.Bench, f.Case, unit,
			f.Subject, Num(s.Min), Num(s.Median), Num(s.Max), f.Baseline, Num(b.Min), Num(b.Median), Num(b.Max), ratio, runs)
	}
}

// Table prints the figures of one bench recorded so far (a benchmark's own
// output, before the common table at the end).
func (r *Report) Table(w io.Writer, bench string) {
	r.mu.Lock()
	var figs []Figure
	for _, f := range r.figures {
		if f.Bench == bench {
			figs = append(figs, f)
		}
	}
	r.mu.Unlock()
	fmt.Fprintln(w)
	writeTable(w, figs)
	fmt.Fprintln(w)
}

// Panel is one plot of the scaling SVG: the figures of Bench whose case is
// "N=<n> <Metric>", against N.
type Panel struct {
	Bench, Metric, Title string
}

// ScalingPanels are what Run.SVG plots.
var ScalingPanels = []Panel{
	{"programming", "program all", "Program N services × 10 endpoints from empty"},
	{"programming", "change p99", "One endpoint change with N installed, p99"},
}

type point struct{ x, min, med, max float64 }

type series struct {
	name     string
	baseline bool
	pts      []point
}

// metric returns the case without its "N=<n> " prefix, or "" if it has none.
func (f Figure) metric() string {
	p := fmt.Sprintf("N=%d ", f.N)
	if f.N <= 0 || !strings.HasPrefix(f.Case, p) {
		return ""
	}
	return strings.TrimPrefix(f.Case, p)
}

func (run *Run) panelSeries(p Panel) (ss []*series, unit string) {
	byName := map[string]*series{}
	get := func(name string, baseline bool) *series {
		s := byName[name]
		if s == nil {
			s = &series{name: name, baseline: baseline}
			byName[name] = s
			ss = append(ss, s)
		}
		return s
	}
	add := func(s *series, x float64, v []float64) {
		for _, q := range s.pts {
			if q.x == x {
				return // the baseline is shared by the figures of one N
			}
		}
		st := Summarize(v)
		if st.Runs > 0 {
			s.pts = append(s.pts, point{x, st.Min, st.Median, st.Max})
		}
	}
	for _, f := range run.Figures {
		if f.Bench != p.Bench || f.metric() != p.Metric {
			continue
		}
		unit = f.Unit
		add(get(f.Subject, false), float64(f.N), f.Values)
		add(get(f.Baseline, true), float64(f.N), f.BaselineValues)
	}
	// Subjects first, baselines last, each in order of appearance.
	sort.SliceStable(ss, func(i, j int) bool { return !ss[i].baseline && ss[j].baseline })
	for _, s := range ss {
		sort.Slice(s.pts, func(i, j int) bool { return s.pts[i].x < s.pts[j].x })
	}
	return ss, unit
}

var palette = []string{"#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"}

const baselineColor = "#d62728"

// SVG writes the scaling plot (ScalingPanels side by side, log-log, median
// with min–max bars) and reports whether there was anything to plot.
func (run *Run) SVG(w io.Writer) bool {
	const (
		pw, ph                   = 480, 340 // panel
		ml, mr, mt, mb           = 72, 16, 34, 46
		titleH, legendH, legendW = 44, 30, 250
	)
	type panelData struct {
		p    Panel
		ss   []*series
		unit string
	}
	var panels []panelData
	colors := map[string]string{}
	var names []string
	for _, p := range ScalingPanels {
		ss, unit := run.panelSeries(p)
		n := 0
		for _, s := range ss {
			n += len(s.pts)
		}
		if n == 0 {
			continue
		}
		panels = append(panels, panelData{p, ss, unit})
		for _, s := range ss {
			if _, ok := colors[s.name]; ok {
				continue
			}
			names = append(names, s.name)
			if s.baseline {
				colors[s.name] = baselineColor
			} else {
				colors[s.name] = palette[(len(colors))%len(palette)]
			}
		}
	}
	if len(panels) == 0 {
		return false
	}
	width := pw * len(panels)
	perRow := max(1, width/legendW)
	height := titleH + ph + legendH*((len(names)+perRow-1)/perRow) + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" text-anchor="middle" font-size="15" font-weight="bold">%s</text>`+"\n", width/2,
		esc("Service programming scaling, "+run.Start.UTC().Format("2006-01-02 15:04 UTC")))
	fmt.Fprintf(&b, `<text x="%d" y="36" text-anchor="middle" fill="#555">%s</text>`+"\n", width/2,
		esc("median of the repetitions, bars min–max; log–log; dashed: baseline measured in the same run"))

	for i, pd := range panels {
		ox, oy := i*pw, titleH
		x0, x1 := float64(ox+ml), float64(ox+pw-mr)
		y0, y1 := float64(oy+ph-mb), float64(oy+mt) // y0 bottom
		// Ranges in decades.
		xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
		for _, s := range pd.ss {
			for _, q := range s.pts {
				if q.x > 0 {
					xlo, xhi = math.Min(xlo, q.x), math.Max(xhi, q.x)
				}
				for _, v := range []float64{q.min, q.med, q.max} {
					if v > 0 {
						ylo, yhi = math.Min(ylo, v), math.Max(yhi, v)
					}
				}
			}
		}
		if math.IsInf(xlo, 0) || math.IsInf(ylo, 0) {
			continue
		}
		dxlo, dxhi := math.Floor(math.Log10(xlo)), math.Ceil(math.Log10(xhi))
		if dxlo == dxhi {
			dxlo, dxhi = dxlo-1, dxhi+1
		}
		dylo, dyhi := math.Floor(math.Log10(ylo)), math.Ceil(math.Log10(yhi))
		if dylo == dyhi {
			dyhi++
		}
		const pad = 0.12 // decades of room left and right of the outer points
		px := func(x float64) float64 {
			return x0 + (math.Log10(x)-(dxlo-pad))/((dxhi+pad)-(dxlo-pad))*(x1-x0)
		}
		py := func(y float64) float64 { return y0 - (math.Log10(y)-dylo)/(dyhi-dylo)*(y0-y1) }

		fmt.Fprintf(&b, `<g id="panel-%d">`+"\n", i)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="13" font-weight="bold">%s</text>`+"\n",
			(x0+x1)/2, oy+mt-12, esc(pd.p.Title))
		// Grid and y ticks: decades, with 2 and 5 as minor lines.
		for d := dylo; d <= dyhi; d++ {
			for _, k := range []float64{1, 2, 5} {
				v := k * math.Pow(10, d)
				if d == dyhi && k > 1 {
					break
				}
				y := py(v)
				if k == 1 {
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ccc"/>`+"\n", x0, y, x1, y)
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", x0-5, y, x0, y)
					fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n",
						x0-8, y, esc(tickLabel(v)))
				} else {
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x0, y, x1, y)
				}
			}
		}
		// x ticks: decades.
		for d := dxlo; d <= dxhi; d++ {
			v := math.Pow(10, d)
			x := px(v)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ccc"/>`+"\n", x, y0, x, y1)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", x, y0, x, y0+5)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y0+18, esc(tickLabel(v)))
		}
		// Axes.
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="black"/>`+"\n", x0, y1, x1-x0, y0-y1)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">services (N, log scale)</text>`+"\n", (x0+x1)/2, y0+36)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="middle" transform="rotate(-90 %d %.1f)">%s</text>`+"\n",
			ox+18, (y0+y1)/2, ox+18, (y0+y1)/2, esc(pd.unit+" (log scale)"))
		// Series.
		for _, s := range pd.ss {
			c := colors[s.name]
			dash := ""
			if s.baseline {
				dash = ` stroke-dasharray="7 4"`
			}
			var pts []string
			for _, q := range s.pts {
				if q.x > 0 && q.med > 0 {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(q.x), py(q.med)))
				}
			}
			fmt.Fprintf(&b, `<g><title>%s</title>`+"\n", esc(s.name))
			if len(pts) > 1 {
				fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), c, dash)
			}
			for _, q := range s.pts {
				if q.x <= 0 || q.med <= 0 {
					continue
				}
				x := px(q.x)
				if q.min > 0 && q.max > q.min {
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`+"\n", x, py(q.min), x, py(q.max), c)
					for _, v := range []float64{q.min, q.max} {
						fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`+"\n", x-4, py(v), x+4, py(v), c)
					}
				}
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s N=%s: median %s %s (min %s, max %s)</title></circle>`+"\n",
					x, py(q.med), c, esc(s.name), Num(q.x), Num(q.med), esc(pd.unit), Num(q.min), Num(q.max))
			}
			fmt.Fprintln(&b, `</g>`)
		}
		fmt.Fprintln(&b, `</g>`)
	}
	// Legend below the panels.
	for i, name := range names {
		x := 20 + (i%perRow)*legendW
		y := titleH + ph + legendH*(i/perRow) + 10
		dash := ""
		label := name
		if colors[name] == baselineColor {
			dash = ` stroke-dasharray="7 4"`
			label += " (baseline)"
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", x, y, x+30, y, colors[name], dash)
		fmt.Fprintf(&b, `<circle cx="%d" cy="%d" r="3.5" fill="%s"/>`+"\n", x+15, y, colors[name])
		fmt.Fprintf(&b, `<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", x+38, y, esc(label))
	}
	fmt.Fprintln(&b, `</svg>`)
	io.WriteString(w, b.String())
	return true
}

func tickLabel(v float64) string {
	if v >= 1 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func esc(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
