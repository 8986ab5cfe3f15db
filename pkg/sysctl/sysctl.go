// Package sysctl reads and writes the kernel's parameters of the caller's
// network namespace as files under /proc/sys, or under the host's /proc
// mounted elsewhere: in a container /proc/sys is read-only, so deploy/
// mounts the host's /proc/sys/net read-write under proc_mount_path_prefix.
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Dir is the directory the kernel's /proc/sys is at; "" is /proc/sys.
type Dir string

// FromPrefix is the Dir under a proc_mount_path_prefix ("" or "/": the
// process's own /proc/sys).
func FromPrefix(prefix string) Dir {
	if prefix == "" || prefix == "/" {
		return ""
	}
	return Dir(filepath.Join(prefix, "proc/sys"))
}

func (d Dir) path(key string) string {
	root := string(d)
	if root == "" {
		root = "/proc/sys"
	}
	return filepath.Join(root, key)
}

// Read returns the value of key (e.g. net/ipv4/conf/eth0/rp_filter), or
// ok=false when the kernel has no such key (IPv6 disabled, say).
func (d Dir) Read(key string) (value string, ok bool, err error) {
	b, err := os.ReadFile(d.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), true, nil
}

// Write sets key; a key the kernel does not have is not an error. A
// read-only file system names what to mount.
func (d Dir) Write(key, value string) error {
	err := os.WriteFile(d.path(key), []byte(value), 0o644)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, os.ErrPermission), strings.Contains(err.Error(), "read-only file system"):
		return fmt.Errorf("sysctl %s=%s: %w (in a container, mount the host's /proc/sys/net read-write at %s, as deploy/ does, and set proc_mount_path_prefix)",
			key, value, err, d.path("net"))
	default:
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
}
