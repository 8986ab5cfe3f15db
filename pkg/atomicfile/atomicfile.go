// Package atomicfile replaces files so that a reader (kubelet, containerd,
// apparmor_parser, a restarted nsx-ovs) sees the old content or the new,
// never half, and a crash or power cut leaves one of the two.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with the content of r and mode: a temp file in the
// same directory (created if needed), fsync, rename, fsync of the
// directory. Renaming gives the file a new inode, so replacing a binary
// while it runs is safe (writing in place fails with ETXTBSY). On failure
// the temp file is removed and path is untouched.
//
// The temp name starts with a dot and ends in ".tmp-<random>": libcni loads
// only *.conf, *.conflist and *.json, so a runtime never parses it.
func Write(path string, r io.Reader, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory for %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := fillAndClose(tmp, r, mode); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The rename is durable only once the directory entry is on disk.
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteFile is Write of a byte slice.
func WriteFile(path string, data []byte, mode fs.FileMode) error {
	return Write(path, bytes.NewReader(data), mode)
}

// fillAndClose copies r into f, sets mode (CreateTemp makes 0600), fsyncs
// and closes f; f is closed whatever happens.
func fillAndClose(f *os.File, r io.Reader, mode fs.FileMode) error {
	_, err := io.Copy(f, r)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// SyncDir fsyncs a directory, making renames and removals in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
