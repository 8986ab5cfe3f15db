package nsximage

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/internal/ociimage"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const testVersion = "0.9.1-test"

// TestImage builds the image twice from this checkout (same bytes), then
// runs every tool the containers start from the image's own root.
func TestImage(t *testing.T) {
	harness.RequireRoot(t) // chroot; apt-get download as root
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	o := Options{Version: testVersion, Source: root, DebCache: filepath.Join(root, "_output/image/debs")}
	var tarballs [][]byte
	for _, n := range []string{"a.tar", "b.tar"} {
		o.Out = filepath.Join(dir, n)
		if err := Build(o); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(o.Out)
		if err != nil {
			t.Fatal(err)
		}
		tarballs = append(tarballs, b)
	}
	if !bytes.Equal(tarballs[0], tarballs[1]) {
		diff, err := ociimage.FirstDifference(tarballs[0], tarballs[1])
		t.Fatalf("two builds of one commit differ (%d and %d bytes), first at %s %v", len(tarballs[0]), len(tarballs[1]), diff, err)
	}

	rootfs := filepath.Join(dir, "root")
	for _, ref := range Refs(testVersion) {
		if err := os.RemoveAll(rootfs); err != nil {
			t.Fatal(err)
		}
		if err := ociimage.Extract(o.Out, ref, rootfs); err != nil {
			t.Fatalf("image %s: %v", ref, err)
		}
	}
	cniVersion := []string{"CNI_COMMAND=VERSION"}
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{args: []string{"nsx-ncp-bootstrap", "version"}, want: testVersion},
		{args: []string{"nsx"}, env: cniVersion, want: `"supportedVersions"`},
		{args: []string{"loopback"}, env: cniVersion, want: `"supportedVersions"`},
		{args: []string{"nsx-node-agent", "--help"}, want: "config-file"},
		{args: []string{"nsx-kube-proxy", "--help"}, want: "config-file"},
		{args: []string{"nsx-ovs", "--help"}, want: "config-file"},
		{args: []string{"nsxctl", "--help"}, want: "services"},
		{args: []string{"ovsdb-server", "--version"}, want: "Open vSwitch"},
		{args: []string{"ovs-vswitchd", "--version"}, want: "Open vSwitch"},
		{args: []string{"ovsdb-tool", "--version"}, want: "Open vSwitch"},
		{args: []string{"ovs-vsctl", "--version"}, want: "Open vSwitch"},
		{args: []string{"ovs-ofctl", "--version"}, want: "Open vSwitch"},
		{args: []string{"ovs-appctl", "--version"}, want: "Open vSwitch"},
		{args: []string{"ip", "-V"}, want: "iproute2"},
		{args: []string{"ethtool", "--version"}, want: "ethtool"},
		{args: []string{"bpftool", "version"}, want: "bpftool"},
		{args: []string{"apparmor_parser", "--version"}, want: "AppArmor"},
		{args: []string{"sleep", "--version"}, want: "coreutils"},
		// deploy/'s probes: a shell piping into the plugin.
		{args: []string{"sh", "-c", `echo '{"cniVersion":"1.1.0"}' | CNI_COMMAND=VERSION nsx`}, want: `"supportedVersions"`},
	} {
		// The image's PATH (no env binary in it: nothing runs one).
		cmd := exec.Command("chroot", append([]string{rootfs}, tc.args...)...)
		cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, tc.env...)
		out, err := cmd.CombinedOutput()
		// --help of a Go flag set exits 0 or 2 after printing the usage.
		if ee, ok := err.(*exec.ExitError); err != nil && !(ok && ee.ExitCode() == 2 && tc.args[len(tc.args)-1] == "--help") {
			t.Errorf("%s in the image: %v\n%s", strings.Join(tc.args, " "), err, out)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s in the image printed %q, want %q in it", strings.Join(tc.args, " "), out, tc.want)
		}
	}
}

func TestBadVersion(t *testing.T) {
	err := Build(Options{Version: "latest", Out: filepath.Join(t.TempDir(), "x.tar")})
	if err == nil || !strings.Contains(err.Error(), `VERSION "latest"`) {
		t.Fatalf("Build with version latest: %v, want an error naming VERSION", err)
	}
}
