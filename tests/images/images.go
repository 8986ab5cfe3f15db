// Package images builds the container images the real-node cluster needs
// (no registry is reachable and no Docker engine runs here): the pod
// sandbox, and the two images the upstream e2e tests run, tagged exactly
// as the e2e framework of KubeVersion names them, so kubelet finds them
// already present and never pulls.
//
// The images are assembled from files on this machine with
// go-containerregistry: our pause, agnhost built from k8s.io/kubernetes, and
// Debian's busybox-static, bash, curl, netcat-openbsd and ss with the shared
// libraries ldd lists for them, through internal/ociimage (the same inputs
// give the same bytes).
package images

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nsx-ujo/nsx-ujo/internal/ociimage"
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
	pause, err := image(Pause, []ociimage.Entry{ociimage.File("/pause", o.Pause, 0o755)}, v1.Config{Entrypoint: []string{"/pause"}})
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
	ag := append([]ociimage.Entry{}, bb...)
	tools, err := hostTools()
	if err != nil {
		return err
	}
	ag = append(ag, tools...)
	ag = append(ag,
		ociimage.Symlink("/bin/sh", "bash"),
		ociimage.File("/agnhost", o.Agnhost, 0o755),
		// entrypoint-tester tests override the entrypoint with agnhost-2.
		ociimage.Symlink("/agnhost-2", "agnhost"),
		ociimage.Dir("/uploads"), // netexec's upload directory
		// The upstream image's user and group (SupplementalGroups tests).
		ociimage.Data("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"), 0o644),
		ociimage.Data("/etc/group", []byte("root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n"), 0o644),
	)
	agnhost, err := image(Agnhost, ag, v1.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}})
	if err != nil {
		return err
	}
	return ociimage.WriteTarball(out, map[string]v1.Image{Pause: pause, BusyBox: busybox, Agnhost: agnhost})
}

// busyboxEntries is a busybox root: the binary and a link per applet,
// where `busybox --list-full` puts it.
func busyboxEntries(bin string) ([]ociimage.Entry, error) {
	out, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox %s --list-full: %w", bin, err)
	}
	es := []ociimage.Entry{ociimage.File("/bin/busybox", bin, 0o755), ociimage.Dir("/tmp"), ociimage.Dir("/root"), ociimage.Dir("/etc"),
		ociimage.Data("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644), ociimage.Data("/etc/group", []byte("root:x:0:\n"), 0o644)}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		es = append(es, ociimage.Symlink("/"+applet, "/bin/busybox"))
	}
	es[1].Mode = 0o1777
	return es, nil
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// hostTools are HostTools with the shared libraries each needs, at the
// paths the dynamic loader looks for them.
func hostTools() ([]ociimage.Entry, error) {
	var es []ociimage.Entry
	srcs := make([]string, 0, len(HostTools))
	for src := range HostTools {
		srcs = append(srcs, src)
	}
	sort.Strings(srcs)
	libs := map[string]bool{}
	for _, src := range srcs {
		es = append(es, ociimage.File(HostTools[src], src, 0o755))
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
		es = append(es, ociimage.File(lib, real, 0o755))
	}
	return es, nil
}

// image is a one-layer linux/amd64 image of entries with config cfg.
func image(ref string, entries []ociimage.Entry, cfg v1.Config) (v1.Image, error) {
	layerTar, err := ociimage.Layer(entries)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	img, err := ociimage.Image([][]byte{layerTar}, cfg)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}
