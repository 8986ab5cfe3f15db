// Package nsximage builds the nsx-ujo image tarball (`make image`) without
// a container engine: a Debian 12 root from the packages the containers
// run (internal/debroot) as the first layer, every binary of cmd/ and the
// loopback CNI plugin in /usr/local/bin as the second, assembled by
// internal/ociimage. The same commit, version and package versions give
// the same bytes. The Dockerfile produces the same layout for people with
// a Docker engine.
package nsximage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"k8s.io/apimachinery/pkg/util/version"

	"github.com/nsx-ujo/nsx-ujo/internal/debroot"
	"github.com/nsx-ujo/nsx-ujo/internal/ociimage"
)

// Packages are the Debian packages of the image (the Dockerfile's list):
// OVS for nsx-ovs, iproute2 and ethtool for the node-if and pod setup,
// bpftool for inspecting the eBPF dataplane, apparmor (apparmor_parser)
// for nsx-ncp-bootstrap, dash (deploy/'s probes run `sh -c`) and
// coreutils (deploy/cleanup's pod sleeps once done): the Dockerfile's base
// image has these two as essential packages, which apt does not resolve
// as dependencies.
var Packages = []string{"openvswitch-switch", "iproute2", "ethtool", "bpftool", "apparmor", "dash", "coreutils"}

// Name is the image's repository; deploy/ runs Name:latest.
const Name = "nsx-ujo"

// Options say what to build from where.
type Options struct {
	Version  string // semver stamped into the binaries (nsxBuildVersion); required
	Source   string // the repository's root (go build runs there)
	Out      string // the tarball to write
	DebCache string // where downloaded .debs are kept between builds
	// Revision, when set, becomes the org.opencontainers.image.revision label.
	Revision string
}

// Refs are the references the tarball holds the image under.
func Refs(v string) []string { return []string{Name + ":" + v, Name + ":latest"} }

// Binaries are the programs the image's second layer holds, by name.
func Binaries(source string) ([]string, error) {
	cmds, err := os.ReadDir(filepath.Join(source, "cmd"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, c := range cmds {
		if c.IsDir() {
			names = append(names, c.Name())
		}
	}
	return append(names, "loopback"), nil
}

// Build writes the image tarball.
func Build(o Options) error {
	if _, err := version.ParseSemantic(o.Version); err != nil {
		return fmt.Errorf("VERSION %q: not a semantic version (e.g. 1.2.3): %w", o.Version, err)
	}
	pkgs, err := debroot.Resolve(Packages)
	if err != nil {
		return err
	}
	if err := debroot.Download(pkgs, o.DebCache); err != nil {
		return err
	}
	base, err := debroot.Entries(pkgs, o.DebCache)
	if err != nil {
		return err
	}
	base = append(base,
		ociimage.Data("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644),
		ociimage.Data("/etc/group", []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644))
	baseLayer, err := ociimage.Layer(base)
	if err != nil {
		return fmt.Errorf("Debian layer: %w", err)
	}

	bin, err := os.MkdirTemp("", "nsx-image-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	if err := buildBinaries(o, bin); err != nil {
		return err
	}
	names, err := Binaries(o.Source)
	if err != nil {
		return err
	}
	var own []ociimage.Entry
	for _, n := range names {
		own = append(own, ociimage.File("/usr/local/bin/"+n, filepath.Join(bin, n), 0o755))
	}
	var manifest strings.Builder
	for _, p := range pkgs {
		fmt.Fprintf(&manifest, "%s %s %s\n", p.Name, p.Version, p.Arch)
	}
	own = append(own,
		ociimage.Data("/usr/share/nsx-ujo/version", []byte(o.Version+"\n"), 0o644),
		ociimage.Data("/usr/share/nsx-ujo/debian-packages", []byte(manifest.String()), 0o644))
	ownLayer, err := ociimage.Layer(own)
	if err != nil {
		return fmt.Errorf("nsx-ujo layer: %w", err)
	}

	labels := map[string]string{
		"org.opencontainers.image.title":   Name,
		"org.opencontainers.image.version": o.Version,
	}
	if o.Revision != "" {
		labels["org.opencontainers.image.revision"] = o.Revision
	}
	img, err := ociimage.Image([][]byte{baseLayer, ownLayer}, v1.Config{
		Env:    []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels: labels,
	})
	if err != nil {
		return err
	}
	images := map[string]v1.Image{}
	for _, r := range Refs(o.Version) {
		images[r] = img
	}
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return err
	}
	return ociimage.WriteTarball(o.Out, images)
}

// buildBinaries builds every command and the loopback plugin static, with
// the version stamped and no paths or VCS state of this checkout in them,
// so two checkouts of one commit give the same binaries.
func buildBinaries(o Options, dir string) error {
	names, err := Binaries(o.Source)
	if err != nil {
		return err
	}
	var pkgs []string
	for _, n := range names {
		if n != "loopback" {
			pkgs = append(pkgs, "./cmd/"+n)
		}
	}
	sort.Strings(pkgs)
	pkgs = append(pkgs, "github.com/containernetworking/plugins/plugins/main/loopback")
	args := append([]string{"build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-X github.com/nsx-ujo/nsx-ujo/pkg/bootstrap.Version=" + o.Version, "-o", dir + "/"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = o.Source
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
