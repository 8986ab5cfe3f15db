package harness

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestOwnHostPaths: a node's host path is its own directory for what it
// runs, the machine's stays as it was, a bpffs is a fresh instance, and
// the mount point this test created is gone after the cleanup.
func TestOwnHostPaths(t *testing.T) {
	RequireRoot(t)
	hostPath := "/run/" + namePrefix + "hostpath-test/etc/cni/net.d"
	if _, err := os.Stat(hostPath); err == nil {
		t.Fatalf("%s exists before the test", hostPath)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10-nsx.conflist"), []byte("node-1"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("node", func(t *testing.T) {
		n := NewNetNS(t)
		n.OwnHostPaths(t, []HostPath{{Path: hostPath, Dir: dir}, {Path: "/sys/fs/bpf", FSType: "bpf"}})
		out, err := n.Exec(context.Background(), "cat", filepath.Join(hostPath, "10-nsx.conflist")).CombinedOutput()
		if err != nil || string(out) != "node-1" {
			t.Fatalf("the node reads %q, %v at %s; want its own directory's file", out, err, hostPath)
		}
		if entries, err := os.ReadDir(hostPath); err != nil || len(entries) != 0 {
			t.Errorf("the machine sees %v, %v at %s: want the empty mount point", entries, err, hostPath)
		}
		pin := filepath.Join("/sys/fs/bpf", n.Name)
		if out, err := n.Exec(context.Background(), "mkdir", pin).CombinedOutput(); err != nil {
			t.Errorf("mkdir %s in the node's bpffs: %v: %s", pin, err, out)
		}
		if _, err := os.Stat(pin); !os.IsNotExist(err) {
			t.Errorf("the machine sees the node's %s (%v): want a bpffs of the node's own", pin, err)
		}
		if !isMountPoint(filepath.Join(mountNSDir)) {
			t.Errorf("%s is not a mount", mountNSDir)
		}
	})
	if _, err := os.Stat("/run/" + namePrefix + "hostpath-test"); !os.IsNotExist(err) {
		t.Errorf("the mount points the test created stay after its cleanup: %v", err)
	}
}
