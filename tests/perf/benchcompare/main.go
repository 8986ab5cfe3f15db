// Command benchcompare prints the ratios between two results files of the
// perf benchmarks (tests/perf/results/<timestamp>.json):
//
//	go run ./tests/perf/benchcompare [-threshold 0.1] OLD.json NEW.json
//
// For every figure present in both (same bench, case and subject) it prints
// the old and new median, new/old, and the same for the figure's ratio to
// its baseline (measured in the same run, so the steadier of the two on a
// noisy machine). Changes beyond ±threshold are flagged "✗ worse" or
// "✓ better". It is a report, not a gate: the exit status is 0 whatever the
// figures say, 2 when an input cannot be read or the usage is wrong.
package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/tests/perf"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("benchcompare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	threshold := fs.Float64("threshold", 0.10, "flag changes beyond ±`fraction` (0.10 = 10%)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: benchcompare [-threshold 0.1] OLD.json NEW.json")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	var runs [2]*perf.Run
	for i, path := range fs.Args() {
		r, err := perf.ReadRun(path)
		if err != nil {
			fmt.Fprintf(stderr, "benchcompare: cannot read %v\n", err)
			return 2
		}
		runs[i] = r
	}
	compare(stdout, fs.Arg(0), fs.Arg(1), runs[0], runs[1], *threshold)
	return 0
}

func describe(path string, r *perf.Run) string {
	commit := r.Machine.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if commit == "" {
		commit = "unknown commit"
	}
	if r.Machine.Dirty {
		commit += " (modified)"
	}
	s := fmt.Sprintf("%s: %s, %s, %d CPUs, %s", path, r.Start.UTC().Format("2006-01-02 15:04 UTC"), commit, r.Machine.NProc, r.Machine.Kernel)
	if r.Failed {
		s += ", run failed"
	}
	return s
}

func compare(w io.Writer, oldPath, newPath string, old, cur *perf.Run, threshold float64) {
	fmt.Fprintf(w, "OLD %s\nNEW %s\n", describe(oldPath, old), describe(newPath, cur))
	if old.Machine.NProc != cur.Machine.NProc || old.Machine.CPU != cur.Machine.CPU {
		fmt.Fprintln(w, "note: measured on different machines; the ratios to baseline are the comparable figures")
	}
	fmt.Fprintln(w)
	byKey := map[string]perf.Figure{}
	for _, f := range old.Figures {
		byKey[f.Key()] = f
	}
	seen := map[string]bool{}
	var onlyNew []string
	flagged, worse, compared := 0, 0, 0
	fmt.Fprintln(w, "| bench | case | subject | unit | old median | new median | new/old | flag | old ratio | new ratio | new/old | flag |")
	fmt.Fprintln(w, "|---|---|---|---|--:|--:|--:|---|--:|--:|--:|---|")
	for _, f := range cur.Figures {
		o, ok := byKey[f.Key()]
		if !ok {
			onlyNew = append(onlyNew, name(f))
			continue
		}
		seen[f.Key()] = true
		compared++
		om, nm := perf.Summarize(o.Values).Median, perf.Summarize(f.Values).Median
		ch, chFlag := change(om, nm, f.HigherIsBetter, threshold)
		or, ook := o.Ratio()
		nr, nok := f.Ratio()
		ors, nrs, rch, rFlag := "–", "–", "–", ""
		if ook {
			ors = perf.Num(or)
		}
		if nok {
			nrs = perf.Num(nr)
		}
		if ook && nok {
			rch, rFlag = change(or, nr, f.HigherIsBetter, threshold)
		}
		if chFlag != "" || rFlag != "" {
			flagged++
			if strings.Contains(chFlag+rFlag, "worse") {
				worse++
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f.Bench, f.Case, f.Subject, f.Unit,
			perf.Num(om), perf.Num(nm), ch, chFlag, ors, nrs, rch, rFlag)
	}
	var onlyOld []string
	for _, f := range old.Figures {
		if !seen[f.Key()] {
			onlyOld = append(onlyOld, name(f))
		}
	}
	fmt.Fprintf(w, "\n%d figures compared, %d beyond ±%.0f%% (%d of them worse). new/old > 1 is worse for times, better for rates; "+
		"ratio = subject median / baseline median within one run.\n", compared, flagged, threshold*100, worse)
	for _, l := range []struct {
		what  string
		names []string
	}{{"only in OLD", onlyOld}, {"only in NEW", onlyNew}} {
		if len(l.names) > 0 {
			fmt.Fprintf(w, "%s: %s\n", l.what, strings.Join(l.names, "; "))
		}
	}
}

func name(f perf.Figure) string { return f.Bench + " / " + f.Case + " / " + f.Subject }

// change formats new/old and flags it beyond ±threshold.
func change(old, cur float64, higherIsBetter bool, threshold float64) (string, string) {
	if old == 0 || math.IsNaN(old) || math.IsNaN(cur) {
		return "–", ""
	}
	r := cur / old
	s := fmt.Sprintf("%.3f", r)
	if math.Abs(r-1) <= threshold {
		return s, ""
	}
	if (r > 1) == higherIsBetter {
		return s, "✓ better"
	}
	return s, "✗ worse"
}
