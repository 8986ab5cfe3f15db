package perf

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Stats
	}{
		{nil, Stats{}},
		{[]float64{3}, Stats{3, 3, 3, 1}},
		{[]float64{5, 1, 3}, Stats{1, 3, 5, 3}},
		{[]float64{4, 1, 3, 2}, Stats{1, 2.5, 4, 4}},
	} {
		if got := Summarize(tc.in); got != tc.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// TestReportFiles writes a report of made-up figures and reads it back: the
// table, the JSON and a well-formed SVG with a line per dataplane.
func TestReportFiles(t *testing.T) {
	r := &Report{}
	for _, n := range []int{100, 1000, 10000} {
		ipt := []float64{float64(n) * 0.7, float64(n) * 0.8, float64(n) * 0.75}
		for i, dp := range []string{"nsx ovs", "nsx ebpf"} {
			k := float64(i + 1)
			r.Add(Figure{Bench: "programming", Case: "N=" + strconv.Itoa(n) + " program all", N: n, Subject: dp, Baseline: "iptables", Unit: "ms",
				Values: []float64{float64(n) / k, float64(n) / k * 1.1, float64(n) / k * 0.9}, BaselineValues: ipt})
			r.Add(Figure{Bench: "programming", Case: "N=" + strconv.Itoa(n) + " change p99", N: n, Subject: dp, Baseline: "iptables", Unit: "ms",
				Values: []float64{0.01 * k, 0.02 * k}, BaselineValues: []float64{float64(n) / 10, float64(n) / 9}})
		}
	}
	r.Add(Figure{Bench: "datapath", Case: "N=1 RR/s", N: 1, Subject: "nsx ovs ClusterIP", Baseline: "nsx ovs direct pod IP", Unit: "RR/s",
		HigherIsBetter: true, Values: []float64{900, 1000, 1100}, BaselineValues: []float64{1000, 1000, 1000}})
	// Same key again: replaces, does not duplicate.
	r.Add(Figure{Bench: "cni", Case: "ADD p50", Subject: "nsx", Baseline: "bridge", Unit: "ms", Values: []float64{1}, BaselineValues: []float64{2}})
	r.Add(Figure{Bench: "cni", Case: "ADD p50", Subject: "nsx", Baseline: "bridge", Unit: "ms", Values: []float64{1, 2, 3}, BaselineValues: []float64{0, 0}})
	r.Note("a note")
	r.Note("a note")
	r.Section("Details", "| a |\n|---|\n| 1 |")

	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	dir := t.TempDir()
	paths, err := r.Snapshot(start, false).Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(dir, "20260102T030405Z")
	if want := []string{stamp + ".json", stamp + ".md", stamp + ".svg"}; strings.Join(paths, " ") != strings.Join(want, " ") {
		t.Fatalf("wrote %v, want %v", paths, want)
	}

	run, err := ReadRun(stamp + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Figures) != 14 || run.Machine.NProc == 0 || run.Machine.GoVersion == "" || len(run.Notes) != 1 {
		t.Errorf("read back %d figures, machine %+v, notes %q", len(run.Figures), run.Machine, run.Notes)
	}
	if f := run.Figures[len(run.Figures)-1]; f.Summary == nil || f.Summary.Ratio != nil || f.Summary.Subject.Median != 2 {
		t.Errorf("last figure %+v, summary %+v: want median 2 and no ratio (baseline 0)", f, f.Summary)
	}

	md := read(t, stamp+".md")
	for _, want := range []string{
		"| bench | case | unit | subject | min | median | max | baseline | min | median | max | ratio | runs |",
		"| programming | N=10000 program all | ms | nsx ovs | 9000 | 10000 | 11000 | iptables | 7000 | 7500 | 8000 | 1.33 | 3 |",
		"| programming | N=100 change p99 | ms | nsx ebpf | 0.02 | 0.03 | 0.04 | iptables | 10.0 | 10.6 | 11.1 | 0.00284 | 2 |",
		"| datapath | N=1 RR/s | RR/s ↑ | nsx ovs ClusterIP | 900 | 1000 | 1100 | nsx ovs direct pod IP | 1000 | 1000 | 1000 | 1.00 | 3 |",
		"| cni | ADD p50 | ms | nsx | 1.00 | 2.00 | 3.00 | bridge | 0 | 0 | 0 | – | 3 / 2 |",
		"\n- a note\n",
		"### Details\n\n| a |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}

	svg := read(t, stamp+".svg")
	d := xml.NewDecoder(strings.NewReader(svg))
	lines := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("svg not well-formed: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 6 { // 2 panels x (ovs, ebpf, iptables)
		t.Errorf("%d polylines, want 6", lines)
	}
	for _, want := range []string{"iptables (baseline)", "nsx ebpf", "10000", "One endpoint change"} {
		if !strings.Contains(svg, want) {
			t.Errorf("svg lacks %q", want)
		}
	}

	// Nothing to plot: no SVG.
	r2 := &Report{}
	r2.Add(Figure{Bench: "cni", Case: "ADD p50", Subject: "nsx", Baseline: "bridge", Unit: "ms", Values: []float64{1}, BaselineValues: []float64{2}})
	var buf bytes.Buffer
	if r2.Snapshot(start, false).SVG(&buf) {
		t.Error("SVG without programming figures")
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
