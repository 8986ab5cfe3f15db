package bootstrap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// writeAtomic replaces path with everything read from r, with mode: a temp
// file in the same directory, fsynced, renamed over path, then the directory
// fsynced. A reader (kubelet, containerd, apparmor) therefore sees the old
// file or the new one, never half of one, and a crash leaves one of the two.
// Renaming also gives the file a new inode, so replacing /opt/cni/bin/nsx
// while a runtime executes it is safe (writing in place fails with ETXTBSY).
// On failure the temp file is removed and path is untouched.
//
// The temp name starts with a dot and ends in ".tmp-<random>": libcni loads
// only *.conf, *.conflist and *.json, so a runtime never parses it.
func writeAtomic(path string, r io.Reader, mode fs.FileMode) error {
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
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
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

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// copyFileAtomic installs a copy of src at dst with mode.
func copyFileAtomic(dst, src string, mode fs.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install %s: source: %w", dst, err)
	}
	defer f.Close()
	return writeAtomic(dst, f, mode)
}

// sameBytes reports whether path exists with exactly want as content and
// mode as permissions.
func sameBytes(path string, want []byte, mode fs.FileMode) (bool, error) {
	if ok, err := modeIs(path, mode); !ok || err != nil {
		return false, err
	}
	got, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return bytes.Equal(got, want), nil
}

// sameFile reports whether path exists with mode and the content of src.
// It streams both: the binaries are tens of MB and the monitor compares them
// every interval.
func sameFile(path, src string, mode fs.FileMode) (bool, error) {
	if ok, err := modeIs(path, mode); !ok || err != nil {
		return false, err
	}
	a, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	defer a.Close()
	b, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("read source %s: %w", src, err)
	}
	defer b.Close()
	bufA, bufB := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, errA := io.ReadFull(a, bufA)
		nb, errB := io.ReadFull(b, bufB)
		if !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		endA, endB := isEOF(errA), isEOF(errB)
		switch {
		case errA != nil && !endA:
			return false, fmt.Errorf("read %s: %w", path, errA)
		case errB != nil && !endB:
			return false, fmt.Errorf("read source %s: %w", src, errB)
		case endA || endB:
			return endA && endB, nil
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// modeIs reports whether path is a regular file with permissions mode;
// false without error when it does not exist.
func modeIs(path string, mode fs.FileMode) (bool, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	return fi.Mode().IsRegular() && fi.Mode().Perm() == mode, nil
}

// exists reports whether path exists (as anything: a dangling symlink
// counts, so a foreign loopback link is never replaced).
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	return true, nil
}

// removeIfExists removes path; a file already gone is not an error.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
