// Package ociimage assembles container images from files, without a
// container engine, with go-containerregistry: layers are tars written here
// with sorted entries, zero times and root ownership, and the tarball's
// members are sorted, so the same inputs give the same bytes. It serves
// `make image` (internal/nsximage) and the test images (tests/images).
package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Entry is one file of a layer.
type Entry struct {
	Path   string // absolute, in the image
	Mode   int64  // permission bits, setuid/setgid/sticky included
	Kind   byte   // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	Data   []byte // TypeReg: the content, or nil to read Src
	Src    string // TypeReg: read from this file when Data is nil
	Target string // TypeSymlink
}

// File is a regular file read from src when the layer is written.
func File(p, src string, mode int64) Entry {
	return Entry{Path: p, Mode: mode, Kind: tar.TypeReg, Src: src}
}

// Data is a regular file holding data.
func Data(p string, data []byte, mode int64) Entry {
	return Entry{Path: p, Mode: mode, Kind: tar.TypeReg, Data: data}
}

// Dir is a directory, 0755.
func Dir(p string) Entry { return Entry{Path: p, Mode: 0o755, Kind: tar.TypeDir} }

// Symlink is a symbolic link to target.
func Symlink(p, target string) Entry {
	return Entry{Path: p, Mode: 0o777, Kind: tar.TypeSymlink, Target: target}
}

// Layer writes entries as an uncompressed tar: parents first, sorted, zero
// times, root owned. A later entry for a path replaces an earlier one;
// missing parent directories are added (0755).
func Layer(entries []Entry) ([]byte, error) {
	byPath := map[string]Entry{}
	for _, e := range entries {
		p := path.Clean("/" + e.Path)
		byPath[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = Dir(d)
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := byPath[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: e.Mode, Typeflag: e.Kind, Format: tar.FormatPAX}
		data := e.Data
		switch e.Kind {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink:
			h.Linkname = e.Target
		case tar.TypeReg:
			if data == nil && e.Src != "" {
				b, err := os.ReadFile(e.Src)
				if err != nil {
					return nil, fmt.Errorf("file %s of the image: %w", p, err)
				}
				data = b
			}
			h.Size = int64(len(data))
		default:
			return nil, fmt.Errorf("file %s of the image: unsupported tar type %q", p, e.Kind)
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("file %s of the image: %w", p, err)
		}
		if e.Kind == tar.TypeReg {
			if _, err := tw.Write(data); err != nil {
				return nil, fmt.Errorf("file %s of the image: %w", p, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image is a linux/amd64 image of the given layer tars (bottom first) with
// config cfg and no creation time, so it is the same for the same layers.
func Image(layers [][]byte, cfg v1.Config) (v1.Image, error) {
	img := empty.Image
	for i, lt := range layers {
		lt := lt
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(lt)), nil })
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// WriteTarball writes one docker-archive tarball (loadable by `docker
// load` and `ctr images import`) holding each image under its references
// to out, through a temporary file renamed into place.
func WriteTarball(out string, images map[string]v1.Image) error {
	refs := map[name.Reference]v1.Image{}
	for ref, img := range images {
		tag, err := name.NewTag(ref)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", ref, err)
		}
		refs[tag] = img
	}
	var buf bytes.Buffer
	if err := tarball.MultiRefWrite(refs, &buf); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	sorted, err := sortedTar(&buf)
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, sorted, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// sortedTar rewrites a tar with its members in name order and its
// manifest.json canonical: MultiRefWrite walks maps, so its member order
// and the order of an image's tags change run to run.
func sortedTar(r io.Reader) ([]byte, error) {
	type member struct {
		h    *tar.Header
		data []byte
	}
	var ms []member
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		if h.Name == "manifest.json" {
			if b, err = canonicalManifest(b); err != nil {
				return nil, err
			}
			h.Size = int64(len(b))
		}
		ms = append(ms, member{h, b})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].h.Name < ms[j].h.Name })
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for _, m := range ms {
		if err := tw.WriteHeader(m.h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(m.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// canonicalManifest sorts each image's tags and the images by config.
func canonicalManifest(b []byte) ([]byte, error) {
	var m tarball.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	for i := range m {
		sort.Strings(m[i].RepoTags)
	}
	sort.Slice(m, func(i, j int) bool { return m[i].Config < m[j].Config })
	return json.Marshal(m)
}

// Extract unpacks the flattened file system of image ref from the tarball
// at path into root (directories, regular files with their modes,
// symlinks): for tests that run an image's programs under chroot.
func Extract(path, ref, root string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		return fmt.Errorf("image %s in %s: %w", ref, path, err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
			if err == nil {
				err = os.Chmod(p, os.FileMode(h.Mode).Perm())
			}
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				err = os.Symlink(h.Linkname, p)
			}
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
					err = os.WriteFile(p, b, os.FileMode(h.Mode).Perm())
				}
			}
		}
		if err != nil {
			return fmt.Errorf("extract %s: %w", h.Name, err)
		}
	}
}

// FirstDifference names the first member (and, for a layer, the first
// file in it) where two tarballs written by WriteTarball differ, or ""
// when they are equal: what a reproducibility test reports.
func FirstDifference(a, b []byte) (string, error) {
	ma, err := members(a)
	if err != nil {
		return "", err
	}
	mb, err := members(b)
	if err != nil {
		return "", err
	}
	for i := 0; i < len(ma) || i < len(mb); i++ {
		if i >= len(ma) || i >= len(mb) {
			return fmt.Sprintf("member count %d vs %d", len(ma), len(mb)), nil
		}
		if ma[i].name != mb[i].name {
			return fmt.Sprintf("member %d: %s vs %s", i, ma[i].name, mb[i].name), nil
		}
		if !bytes.Equal(ma[i].data, mb[i].data) {
			if inner, err := firstFileDifference(ma[i].data, mb[i].data); err == nil && inner != "" {
				return ma[i].name + ": " + inner, nil
			}
			return ma[i].name, nil
		}
	}
	return "", nil
}

type member struct {
	name string
	data []byte
	h    *tar.Header
}

func members(b []byte) ([]member, error) {
	var ms []member
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ms, nil
		}
		if err != nil {
			return nil, err
		}
		d, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		ms = append(ms, member{h.Name, d, h})
	}
}

// firstFileDifference compares two (gzipped or plain) layer tars file by
// file.
func firstFileDifference(a, b []byte) (string, error) {
	la, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(a)), nil })
	if err != nil {
		return "", err
	}
	lb, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return "", err
	}
	ra, err := la.Uncompressed()
	if err != nil {
		return "", err
	}
	rb, err := lb.Uncompressed()
	if err != nil {
		return "", err
	}
	ua, err := io.ReadAll(ra)
	if err != nil {
		return "", err
	}
	ub, err := io.ReadAll(rb)
	if err != nil {
		return "", err
	}
	fa, err := members(ua)
	if err != nil {
		return "", err
	}
	fb, err := members(ub)
	if err != nil {
		return "", err
	}
	for i := 0; i < len(fa) && i < len(fb); i++ {
		if fa[i].name != fb[i].name {
			return fmt.Sprintf("file %d: %s vs %s", i, fa[i].name, fb[i].name), nil
		}
		if !bytes.Equal(fa[i].data, fb[i].data) || fa[i].h.Mode != fb[i].h.Mode || fa[i].h.Linkname != fb[i].h.Linkname {
			return "file " + fa[i].name, nil
		}
	}
	if len(fa) != len(fb) {
		return fmt.Sprintf("file count %d vs %d", len(fa), len(fb)), nil
	}
	return "", nil
}
