package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "f.conflist")
	if err := Write(path, strings.NewReader("new"), 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode() != 0o640 {
		t.Fatalf("stat = %v, %v", fi, err)
	}
	// A write that fails half way leaves the old file and no temp file.
	failing := io.MultiReader(strings.NewReader("half of the new"), iotest.ErrReader(errors.New("disk on fire")))
	err := Write(path, failing, 0o644)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("failed write returned %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "new" {
		t.Errorf("old file damaged: %q", data)
	}
	if err := WriteFile(path, []byte("newer"), 0o600); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != "newer" {
		t.Errorf("WriteFile: %q", data)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temp files left: %v", entries)
	}
}
