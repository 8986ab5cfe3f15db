package bootstrap

import (
	"github.com/nsx-ujo/nsx-ujo/pkg/atomicfile"

	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// copyFileAtomic installs a copy of src at dst with mode.
func copyFileAtomic(dst, src string, mode fs.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install %s: source: %w", dst, err)
	}
	defer f.Close()
	return atomicfile.Write(dst, f, mode)
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
