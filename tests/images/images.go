// Package images builds the container images the real-node cluster needs
// (no registry is reachable and no Docker engine runs here): the pod
// sandbox, and the two images the upstream e2e tests run, tagged exactly
// as the e2e framework of KubeVersion names them, so kubelet finds them
// already present and never pulls.
//
// The images are assembled from files on this machine with
// go-containerregistry: our pause, agnhost built from k8s.io/kubernetes, and
// Debian's busybox-static, bash, curl, netcat-openbsd and ss with the shared
// libraries ldd lists for them. Every layer is a tar written here with
// sorted entries, zero times and root ownership, so the same inputs give
// the same bytes.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The names the e2e framework of k8s.io/kubernetes v1.37.2 uses
// (test/utils/image/manifest.go) and kubelet's default sandbox image.
const (
	Pause   = "registry.k8s.io/pause:3.10.2"
	Agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	BusyBox = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
)

// Options name the binaries that go into the images.
type Options struct {
	Pause   string // tests/images/pause, built static
	Agnhost string // k8s.io/kubernetes/test/images/agnhost, built static
	// BusyBox is a static busybox (Debian's busybox-static: /bin/busybox).
	BusyBox string
}

// HostTools are the programs of the agnhost image besides busybox's
// applets, as the upstream image has them (its Dockerfile: "curl, nc: used
// by a lot of e2e tests", "iproute2: includes ss used in NodePort tests"),
// each with the path it gets in the image.
var HostTools = map[string]string{
	// The shell too (upstream: bash, and busybox's ash built without
	// standalone applets). Debian's static busybox shell runs its own
	// applets before searching PATH, so with it "nc -u" inside e2e's
	// "sh -c" is busybox nc, which has no -u, -v or -z.
	"/bin/bash":       "/bin/bash",
	"/usr/bin/curl":   "/usr/bin/curl",
	"/bin/nc.openbsd": "/usr/bin/nc",
	"/usr/bin/ss":     "/usr/bin/ss",
}

// Build writes one docker-archive tarball (loadable by `ctr images import`
// and `docker load`) holding the three images to out.
func Build(out string, o Options) error {
	pause, err := image(Pause, []entry{fileEntry("/pause", o.Pause, 0o755)}, v1.Config{Entrypoint: []string{"/pause"}})
	if err != nil {
		return err
	}
	bb, err := busyboxEntries(o.BusyBox)
	if err != nil {
		return err
	}
	busybox, err := image(BusyBox, bb, v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}})
	if err != nil {
		return err
	}
	ag := append([]entry{}, bb...)
	tools, err := hostTools()
	if err != nil {
		return err
	}
	ag = append(ag, tools...)
	ag = append(ag,
		symlinkEntry("/bin/sh", "bash"),
		fileEntry("/agnhost", o.Agnhost, 0o755),
		// entrypoint-tester tests override the entrypoint with agnhost-2.
		symlinkEntry("/agnhost-2", "agnhost"),
		dirEntry("/uploads"), // netexec's upload directory
		// The upstream image's user and group (SupplementalGroups tests).
		dataEntry("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n", 0o644),
		dataEntry("/etc/group", "root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n", 0o644),
	)
	agnhost, err := image(Agnhost, ag, v1.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}})
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for ref, img := range map[string]v1.Image{Pause: pause, BusyBox: busybox, Agnhost: agnhost} {
		tag, err := name.NewTag(ref)
		if err != nil {
			return err
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

// sortedTar rewrites a tar with its members in name order:
// MultiRefWrite walks a map, so its member order changes run to run.
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

// entry is one file of a layer.
type entry struct {
	path   string // absolute, in the image
	mode   int64
	kind   byte // tar.TypeReg, TypeDir, TypeSymlink
	data   []byte
	src    string // TypeReg: read from this file when data is nil
	target string // TypeSymlink
}

func fileEntry(p, src string, mode int64) entry {
	return entry{path: p, mode: mode, kind: tar.TypeReg, src: src}
}
func dataEntry(p, data string, mode int64) entry {
	return entry{path: p, mode: mode, kind: tar.TypeReg, data: []byte(data)}
}
func dirEntry(p string) entry { return entry{path: p, mode: 0o755, kind: tar.TypeDir} }
func symlinkEntry(p, target string) entry {
	return entry{path: p, mode: 0o777, kind: tar.TypeSymlink, target: target}
}

// image is a one-layer linux/amd64 image of entries with config cfg.
func image(ref string, entries []entry, cfg v1.Config) (v1.Image, error) {
	layerTar, err := layer(entries)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
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

// layer writes entries as a tar: parents first, sorted, zero times, root
// owned. A later entry for a path replaces an earlier one.
func layer(entries []entry) ([]byte, error) {
	byPath := map[string]entry{}
	for _, e := range entries {
		byPath[path.Clean(e.path)] = e
		for d := path.Dir(path.Clean(e.path)); d != "/"; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = dirEntry(d)
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
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: e.mode, Typeflag: e.kind, Format: tar.FormatPAX}
		data := e.data
		switch e.kind {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink:
			h.Linkname = e.target
		case tar.TypeReg:
			if data == nil {
				b, err := os.ReadFile(e.src)
				if err != nil {
					return nil, fmt.Errorf("file %s of the image: %w", p, err)
				}
				data = b
			}
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if e.kind == tar.TypeReg {
			if _, err := tw.Write(data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// busyboxEntries is a busybox root: the binary and a link per applet,
// where `busybox --list-full` puts it.
func busyboxEntries(bin string) ([]entry, error) {
	out, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox %s --list-full: %w", bin, err)
	}
	es := []entry{fileEntry("/bin/busybox", bin, 0o755), dirEntry("/tmp"), dirEntry("/root"), dirEntry("/etc"),
		dataEntry("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644), dataEntry("/etc/group", "root:x:0:\n", 0o644)}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		es = append(es, symlinkEntry("/"+applet, "/bin/busybox"))
	}
	es[1].mode = 0o1777
	return es, nil
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// hostTools are HostTools with the shared libraries each needs, at the
// paths the dynamic loader looks for them.
func hostTools() ([]entry, error) {
	var es []entry
	srcs := make([]string, 0, len(HostTools))
	for src := range HostTools {
		srcs = append(srcs, src)
	}
	sort.Strings(srcs)
	libs := map[string]bool{}
	for _, src := range srcs {
		es = append(es, fileEntry(HostTools[src], src, 0o755))
		out, err := exec.Command("ldd", src).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s (install it: hack/install-deps.sh): %w", src, err)
		}
		for _, m := range lddLine.FindAllStringSubmatch(string(out), -1) {
			libs[m[1]] = true
		}
	}
	for lib := range libs {
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return nil, err
		}
		es = append(es, fileEntry(lib, real, 0o755))
	}
	return es, nil
}
