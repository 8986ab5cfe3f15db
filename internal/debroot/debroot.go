// Package debroot makes a Debian root file system from .deb packages
// without debootstrap, a chroot or a container engine: apt resolves the
// packages' dependencies as if nothing were installed, `apt-get download`
// fetches them into a cache directory, and each package's data tar (from
// `dpkg-deb --fsys-tarfile`) becomes image entries in a merged-/usr layout.
// Maintainer scripts do not run: the image only carries programs that the
// containers start themselves. The one thing of theirs a program needs,
// the update-alternatives links of a postinst (ovs-vswitchd is one), is
// made from the script's --install lines, the highest priority winning.
package debroot

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/internal/ociimage"
)

// Package is one resolved Debian package.
type Package struct {
	Name    string
	Version string
	Arch    string
}

// File is the name `apt-get download` gives the package's .deb (an epoch's
// colon is escaped).
func (p Package) File() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Name, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}

var instLine = regexp.MustCompile(`^Inst (\S+) \((\S+) .*\[(\S+)\]\)`)

// Resolve lists the packages (and all they depend on, recommends left
// out) that apt would install on an empty system, in apt's order. It
// reads the machine's package lists; `apt-get update` must have run.
func Resolve(names []string) ([]Package, error) {
	args := append([]string{"-s", "-o", "Dir::State::Status=/dev/null", "-o", "Debug::NoLocking=1",
		"install", "--no-install-recommends"}, names...)
	out, err := exec.Command("apt-get", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	var pkgs []Package
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := instLine.FindStringSubmatch(sc.Text()); m != nil {
			pkgs = append(pkgs, Package{Name: m[1], Version: m[2], Arch: m[3]})
		}
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("apt-get resolved no packages for %v:\n%s", names, out)
	}
	return pkgs, nil
}

// Download puts each package's .deb into dir unless it is there already.
// A download goes to a temporary directory first, so an interrupted one
// leaves no partial file behind.
func Download(pkgs []Package, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var missing []string
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, p.File())); err != nil {
			missing = append(missing, p.Name+"="+p.Version)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// apt's sandbox user must be able to write there.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return err
	}
	cmd := exec.Command("apt-get", append([]string{"download", "-q"}, missing...)...)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %w\n%s", strings.Join(missing, " "), err, out)
	}
	files, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := os.Rename(filepath.Join(tmp, f.Name()), filepath.Join(dir, f.Name())); err != nil {
			return err
		}
	}
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, p.File())); err != nil {
			return fmt.Errorf("package %s %s: apt-get download left no %s", p.Name, p.Version, p.File())
		}
	}
	return nil
}

// mergedUsr are the top-level directories that are links into /usr on a
// merged-/usr system (Debian 12's default).
var mergedUsr = []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// usrPath moves a path under one of mergedUsr to /usr.
func usrPath(p string) string {
	for _, d := range mergedUsr {
		if p == "/"+d || strings.HasPrefix(p, "/"+d+"/") {
			return "/usr" + p
		}
	}
	return p
}

// Entries are the files of the packages' .debs in dir, merged-/usr,
// with /var/lib/dpkg/status listing them (for image scanners and dpkg -l),
// the top-level links into /usr, and the directories every root has.
// Packages are unpacked in the order given; a later package's file
// replaces an earlier one's.
func Entries(pkgs []Package, dir string) ([]ociimage.Entry, error) {
	var es []ociimage.Entry
	for _, d := range mergedUsr {
		es = append(es, ociimage.Symlink("/"+d, "usr/"+d))
	}
	es = append(es, ociimage.Dir("/etc"), ociimage.Dir("/root"), ociimage.Dir("/run"), ociimage.Dir("/proc"),
		ociimage.Dir("/sys"), ociimage.Dir("/dev"), ociimage.Symlink("/var/run", "/run"), ociimage.Symlink("/var/lock", "/run/lock"))
	tmpDir := ociimage.Dir("/tmp")
	tmpDir.Mode = 0o1777
	es = append(es, tmpDir)
	var status bytes.Buffer
	sorted := append([]Package(nil), pkgs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	controls := map[string][]byte{}
	for _, p := range pkgs {
		deb := filepath.Join(dir, p.File())
		files, err := debFiles(deb)
		if err != nil {
			return nil, fmt.Errorf("package %s (%s): %w", p.Name, deb, err)
		}
		es = append(es, files...)
		ctl, err := exec.Command("dpkg-deb", "--field", deb).Output()
		if err != nil {
			return nil, fmt.Errorf("package %s (%s): dpkg-deb --field: %w", p.Name, deb, err)
		}
		controls[p.Name] = ctl
	}
	for _, p := range sorted {
		status.Write(statusParagraph(controls[p.Name]))
		status.WriteString("\n")
	}
	alts, err := alternatives(sorted, dir)
	if err != nil {
		return nil, err
	}
	es = append(es, alts...)
	es = append(es, ociimage.Data("/var/lib/dpkg/status", status.Bytes(), 0o644))
	return es, nil
}

// statusParagraph is a package's control paragraph as dpkg records an
// installed package.
func statusParagraph(ctl []byte) []byte {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(strings.TrimRight(string(ctl), "\n")+"\n", "\n") {
		if line == "" {
			continue
		}
		out.WriteString(line)
		if strings.HasPrefix(line, "Package: ") {
			out.WriteString("Status: install ok installed\n")
		}
	}
	return out.Bytes()
}

// debFiles reads a .deb's data tar into entries. Hard links become copies
// (a layer of the same bytes either way to a runtime); owners are root.
func debFiles(deb string) ([]ociimage.Entry, error) {
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	r, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	es, readErr := readDataTar(r)
	if readErr != nil {
		_, _ = io.Copy(io.Discard, r)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile: %w: %s", err, stderr.String())
	}
	return es, readErr
}

func readDataTar(r io.Reader) ([]ociimage.Entry, error) {
	var es []ociimage.Entry
	regular := map[string]ociimage.Entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return es, nil
		}
		if err != nil {
			return nil, err
		}
		orig := path.Clean("/" + h.Name)
		if orig == "/" {
			continue
		}
		p := usrPath(orig)
		mode := h.Mode & 0o7777
		switch h.Typeflag {
		case tar.TypeDir:
			if p == orig || !isMergedTop(orig) {
				e := ociimage.Dir(p)
				e.Mode = mode
				es = append(es, e)
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			e := ociimage.Data(p, b, mode)
			regular[orig] = e
			es = append(es, e)
		case tar.TypeSymlink:
			target := h.Linkname
			// A relative link moved into /usr would climb one level
			// short: make it absolute, resolved where it was.
			if p != orig && !path.IsAbs(target) && strings.Contains(target, "..") {
				target = path.Join(path.Dir(orig), target)
			}
			es = append(es, ociimage.Symlink(p, target))
		case tar.TypeLink:
			src, ok := regular[path.Clean("/"+h.Linkname)]
			if !ok {
				return nil, fmt.Errorf("hard link %s to %s: target not seen before it", h.Name, h.Linkname)
			}
			e := ociimage.Data(p, src.Data, mode)
			regular[orig] = e
			es = append(es, e)
		default:
			return nil, fmt.Errorf("%s: unsupported tar type %q", h.Name, h.Typeflag)
		}
	}
}

// isMergedTop says whether p is one of the top-level directories that are
// links into /usr: a package's entry for the directory itself is dropped.
func isMergedTop(p string) bool {
	for _, d := range mergedUsr {
		if p == "/"+d {
			return true
		}
	}
	return false
}

// alternative is one `update-alternatives --install` of a postinst.
type alternative struct {
	link, path string
	priority   int
}

var installAlternative = regexp.MustCompile(`update-alternatives\s+(?:--\S+\s+)*--install\s+(/\S+)\s+([\w.+-]+)\s+(/\S+)\s+(\d+)`)

// alternatives are the links update-alternatives would make for the
// packages' postinst scripts: link -> /etc/alternatives/<name> -> path.
func alternatives(pkgs []Package, dir string) ([]ociimage.Entry, error) {
	best := map[string]alternative{}
	for _, p := range pkgs {
		script, err := postinst(filepath.Join(dir, p.File()))
		if err != nil {
			return nil, fmt.Errorf("package %s: postinst: %w", p.Name, err)
		}
		for _, m := range installAlternative.FindAllStringSubmatch(joinContinuations(script), -1) {
			prio, _ := strconv.Atoi(m[4])
			if cur, ok := best[m[2]]; !ok || prio > cur.priority {
				best[m[2]] = alternative{link: m[1], path: m[3], priority: prio}
			}
		}
	}
	var es []ociimage.Entry
	for name, a := range best {
		es = append(es, ociimage.Symlink(usrPath(a.link), "/etc/alternatives/"+name), ociimage.Symlink("/etc/alternatives/"+name, a.path))
	}
	return es, nil
}

// postinst is a .deb's postinst script, "" when it has none.
func postinst(deb string) (string, error) {
	out, err := exec.Command("dpkg-deb", "--ctrl-tarfile", deb).Output()
	if err != nil {
		return "", fmt.Errorf("dpkg-deb --ctrl-tarfile %s: %w", deb, err)
	}
	tr := tar.NewReader(bytes.NewReader(out))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		if path.Clean("/"+h.Name) == "/postinst" {
			b, err := io.ReadAll(tr)
			return string(b), err
		}
	}
}

// joinContinuations joins a shell script's backslash-continued lines.
func joinContinuations(script string) string { return strings.ReplaceAll(script, "\\\n", " ") }
