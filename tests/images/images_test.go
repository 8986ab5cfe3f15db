package images

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/internal/ociimage"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// build builds the images from this machine's binaries into dir.
func build(t *testing.T, dir string) string {
	t.Helper()
	agnhost, err := harness.ToolBinary("agnhost")
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (hack/install-deps.sh): %v", err)
	}
	pause := filepath.Join(dir, "pause")
	if out, err := exec.Command("go", "build", "-o", pause, "./pause").CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "images.tar")
	if err := Build(out, Options{Pause: pause, Agnhost: agnhost, BusyBox: busybox}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBuildReproducible: the same inputs give the same bytes.
func TestBuildReproducible(t *testing.T) {
	dir := t.TempDir()
	a := build(t, dir)
	first, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	b := build(t, dir)
	second, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		diff, err := ociimage.FirstDifference(first, second)
		t.Fatalf("two builds differ (%d and %d bytes) at %s %v", len(first), len(second), diff, err)
	}
}

// TestAgnhostShellFindsHostTools runs what e2e tests run through
// `kubectl exec -- /bin/sh -c` in the agnhost image's root (chroot): nc,
// curl and ss must be the host tools with the options e2e uses, not
// busybox applets of the same name.
func TestAgnhostShellFindsHostTools(t *testing.T) {
	harness.RequireRoot(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	extract(t, build(t, dir), Agnhost, root)
	for _, tc := range []struct{ script, want string }{
		{"command -v nc", "/usr/bin/nc"},
		{"nc -h 2>&1", "OpenBSD netcat"},
		{"curl --version", "curl "},
		{"ss -V", "iproute2"},
		{"readlink /bin/sh", "bash"},
	} {
		out, err := exec.Command("chroot", root, "/bin/sh", "-c", tc.script).CombinedOutput()
		// nc -h exits 1 after printing its usage.
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("%s: %v", tc.script, err)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("sh -c %q in the agnhost image printed %q, want it to contain %q", tc.script, out, tc.want)
		}
	}
}

// extract unpacks the flattened file system of image ref from tarball
// path into root.
func extract(t *testing.T, path, ref, root string) {
	t.Helper()
	if err := ociimage.Extract(path, ref, root); err != nil {
		t.Fatal(err)
	}
}
