package perf

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// record collects every benchmark's figures; TestMain writes them.
var record = &Report{}

// TestMain runs the benchmarks, then, if any recorded a figure, prints the
// common table and writes results/<UTC timestamp>.{md,json,svg}
// (NSX_BENCH_RESULTS overrides the directory).
func TestMain(m *testing.M) {
	start := time.Now()
	code := m.Run()
	if !record.Empty() {
		run := record.Snapshot(start, code != 0)
		run.Markdown(os.Stdout, false)
		dir := os.Getenv("NSX_BENCH_RESULTS")
		if dir == "" {
			dir = "results" // go test runs in the package directory: tests/perf/results
		}
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
		paths, err := run.Write(dir)
		for _, p := range paths {
			fmt.Println("perf: wrote", p)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "perf: writing results:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// repeats is how many times each benchmark repeats its measurement, from
// NSX_BENCH_REPEAT (default 3), so that min/median/max mean something.
func repeats(b *testing.B) int {
	v := os.Getenv("NSX_BENCH_REPEAT")
	if v == "" {
		return 3
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("NSX_BENCH_REPEAT=%q: not a positive integer", v)
	}
	return n
}

// scope is a testing.TB whose cleanups run when close is called (or, if
// the benchmark stops first, at its end): what the harness starts for one
// repetition (OVS, netns, pin dirs) is gone before the next one starts.
type scope struct {
	testing.TB
	mu  sync.Mutex
	fns []func()
}

func newScope(tb testing.TB) *scope {
	s := &scope{TB: tb}
	tb.Cleanup(s.close)
	return s
}

func (s *scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, f)
}

func (s *scope) close() {
	s.mu.Lock()
	fns := s.fns
	s.fns = nil
	s.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

// millis and micros convert durations to figure values without rounding.
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
