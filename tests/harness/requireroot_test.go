package harness

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// outcomeTB records whether RequireRoot skipped or failed; both end the
// goroutine, as testing.T's do.
type outcomeTB struct {
	*testing.T
	outcome string
}

func (o *outcomeTB) Helper()           {}
func (o *outcomeTB) Skip(args ...any)  { o.outcome = "skip: " + fmt.Sprint(args...); runtime.Goexit() }
func (o *outcomeTB) Fatal(args ...any) { o.outcome = "fail: " + fmt.Sprint(args...); runtime.Goexit() }

// A privileged test runs as root, skips for a normal user or under make
// unit, and fails under CI=true when it cannot run.
func TestRequireRootRules(t *testing.T) {
	for _, tc := range []struct {
		name         string
		euid         int
		ci, unitOnly string
		want         string // "run", "skip" or "fail"
	}{
		{"root", 0, "", "", "run"},
		{"root in CI", 0, "true", "", "run"},
		{"normal user", 1000, "", "", "skip"},
		{"normal user in CI", 1000, "true", "", "fail"},
		{"make unit as root", 0, "", "1", "skip"},
		{"make unit in CI", 0, "true", "1", "skip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func(f func() int) { geteuid = f }(geteuid)
			geteuid = func() int { return tc.euid }
			t.Setenv("CI", tc.ci)
			t.Setenv(UnitOnlyEnv, tc.unitOnly)
			o := &outcomeTB{T: t, outcome: "run"}
			done := make(chan struct{})
			go func() {
				defer close(done)
				RequireRoot(o)
			}()
			<-done
			if got := o.outcome; !strings.HasPrefix(got, tc.want) {
				t.Errorf("RequireRoot: %s, want %s", got, tc.want)
			}
		})
	}
}
