package clusterbench

import (
	"testing"
	"time"
)

// The benchmarks need a cluster; their arithmetic does not.
func TestPct(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {.1, 1}, {.5, 5}, {.9, 9}, {.99, 10}, {1, 10}} {
		if got := pct(ds, c.p); got != c.want {
			t.Errorf("pct(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := pct(nil, .5); got != 0 {
		t.Errorf("pct of nothing = %v, want 0", got)
	}
	if got := ms(1500 * time.Microsecond); got != "1.5" {
		t.Errorf("ms(1.5ms) = %q", got)
	}
}
