package sysctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDir(t *testing.T) {
	if FromPrefix("") != "" || FromPrefix("/") != "" || FromPrefix("/host") != "/host/proc/sys" {
		t.Fatalf("FromPrefix: %q %q %q", FromPrefix(""), FromPrefix("/"), FromPrefix("/host"))
	}
	root := t.TempDir()
	d := FromPrefix(root)
	key := "net/ipv4/conf/eth0/rp_filter"
	if err := os.MkdirAll(filepath.Dir(filepath.Join(root, "proc/sys", key)), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := d.Read(key); ok || err != nil {
		t.Fatalf("Read of a missing key: ok=%v err=%v", ok, err)
	}
	if err := d.Write("net/ipv6/conf/eth0/disable_ipv6", "1"); err != nil {
		t.Fatalf("Write of a key the kernel lacks: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "proc/sys", key), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(key, "1"); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := d.Read(key); v != "1" || !ok || err != nil {
		t.Fatalf("Read after Write: %q %v %v", v, ok, err)
	}
	if os.Geteuid() != 0 {
		if err := os.Chmod(filepath.Join(root, "proc/sys", key), 0o444); err != nil {
			t.Fatal(err)
		}
		if err := d.Write(key, "2"); err == nil || !strings.Contains(err.Error(), "proc_mount_path_prefix") {
			t.Fatalf("Write to a read-only key: %v, want the mount hint", err)
		}
	}
}
