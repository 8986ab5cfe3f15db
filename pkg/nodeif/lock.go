package nodeif

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Lock takes the exclusive lock of stateDir (nsx-ovs.lock), so that one
// nsx-ovs, or its cleanup, works on the node at a time. The lock is a
// flock: it goes with the process, however that ends.
func Lock(stateDir string) (unlock func(), err error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	path := LockPath(stateDir)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is held: another nsx-ovs (or its cleanup) runs on this node; stop it first", path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// LockPath is the lock file Lock takes in stateDir.
func LockPath(stateDir string) string { return filepath.Join(stateDir, "nsx-ovs.lock") }
