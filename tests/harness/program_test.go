package harness

import (
	"os"
	"slices"
	"testing"
)

// A Program runs its cleanups last first, once, removes its temp dirs, and
// a cleanup that fails ends there (as FailNow) and marks the program failed
// without stopping the others.
func TestProgramCleanups(t *testing.T) {
	p := NewProgram("harness-test")
	dir := p.TempDir()
	var order []int
	p.Cleanup(func() { order = append(order, 1) })
	p.Cleanup(func() { p.Fatal("a cleanup failed"); order = append(order, 2) })
	p.Cleanup(func() { order = append(order, 3) })
	p.Close()
	p.Close()
	if !slices.Equal(order, []int{3, 1}) {
		t.Errorf("cleanups ran %v, want [3 1] once (2 ends at its Fatal)", order)
	}
	if !p.Failed() {
		t.Error("a cleanup's Fatal did not mark the program failed")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s after Close: %v", dir, err)
	}
}
