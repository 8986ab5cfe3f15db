package ociimage

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestWriteTarballSameBytes: one image under several tags, written many
// times, gives one byte sequence. go-containerregistry walks a map for the
// tags, so an uncanonicalized manifest.json lists them in any order.
func TestWriteTarballSameBytes(t *testing.T) {
	layer, err := Layer([]Entry{Data("/etc/hello", []byte("hi\n"), 0o644), Symlink("/bin/sh", "dash")})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image([][]byte{layer}, v1.Config{Entrypoint: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]v1.Image{}
	for _, tag := range []string{"a:1", "a:latest", "b:2", "registry.local/c:3", "d:9"} {
		images[tag] = img
	}
	dir := t.TempDir()
	var first []byte
	for i := 0; i < 20; i++ {
		out := filepath.Join(dir, "img.tar")
		if err := WriteTarball(out, images); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = b
			continue
		}
		if !bytes.Equal(first, b) {
			diff, err := FirstDifference(first, b)
			t.Fatalf("write %d differs from the first at %s %v", i, diff, err)
		}
	}
	// What was written still loads under every tag.
	for tag := range images {
		if err := Extract(filepath.Join(dir, "img.tar"), tag, filepath.Join(dir, "root-"+filepath.Base(tag))); err != nil {
			t.Fatalf("tag %s: %v", tag, err)
		}
	}
}
