package chaos

import (
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

// TestSummary: repeats of a fault fold into one row per dataplane.
func TestSummary(t *testing.T) {
	r := func(dp string, broken int, gap time.Duration, cause string) row {
		return row{dataplane: dp, fault: "f", load: conformance.LoadResult{Broken: broken, Tried: 10, LongestGap: gap},
			churn: churnResult{Adds: 3}, converge: gap, cause: cause}
	}
	got := summary([]row{r("ovs", 0, 20*time.Millisecond, "nsx-ovs: x"), r("ovs", 1, 40*time.Millisecond, "**none**"),
		r("ebpf", 0, 30*time.Millisecond, "not seen by the daemons: y")})
	for _, want := range []string{
		"| f | ebpf | 0 of 8 | 0 / 10 | 30 ms | 0 / 0 | 0 ms | 0 / 3 | 0 | 30 ms | 0 of 1: not seen by the daemons: y |",
		"| f | ovs | 1 of 16 | 0 / 20 | 20-40 ms | 0 / 0 | 0 ms | 0 / 6 | 0 | 20-40 ms | 1 of 2: nsx-ovs: x |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks\n%s\nin\n%s", want, got)
		}
	}
}
