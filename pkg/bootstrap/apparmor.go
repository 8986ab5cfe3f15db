package bootstrap

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Profile is the AppArmor profile the node DaemonSet's pods run under
// (profile node-agent-apparmor). deploy/apparmor/ncp-apparmor is the same
// file.
//
//go:embed assets/ncp-apparmor
var Profile []byte

// ProfileName is the name declared in Profile, which the pods reference as
// appArmorProfile.localhostProfile.
const ProfileName = "node-agent-apparmor"

// AppArmorParser is the command that loads (-r) and unloads (-R) profiles.
const AppArmorParser = "apparmor_parser"

// Runner runs a command on behalf of the bootstrap. It is an interface so
// tests can record apparmor_parser calls on machines without AppArmor.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) error
}

// ExecRunner runs commands with os/exec.
type ExecRunner struct{}

// Run runs name with args; the error carries the combined output, where
// apparmor_parser explains a rejected profile.
func (ExecRunner) Run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// hostOS is what the host's os-release says.
type hostOS struct {
	id     string // ID, e.g. ubuntu
	idLike []string
	file   string // the os-release read, for logs; "" when none exists
}

// ubuntu reports whether the profile belongs on this host: Ubuntu, or a
// derivative that says ID_LIKE=ubuntu and ships its AppArmor setup.
func (h hostOS) ubuntu() bool {
	return h.id == "ubuntu" || slices.Contains(h.idLike, "ubuntu")
}

// readOSRelease reads <root>/etc/os-release, falling back to
// <root>/usr/lib/os-release as os-release(5) specifies. Neither existing is
// not an error: the host is then simply not Ubuntu.
func readOSRelease(root string) (hostOS, error) {
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		path := filepath.Join(root, p)
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return hostOS{}, fmt.Errorf("read %s: %w", path, err)
		}
		h := hostOS{file: path}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			if !ok || strings.HasPrefix(k, "#") {
				continue
			}
			v = strings.ToLower(strings.Trim(v, `"'`))
			switch k {
			case "ID":
				h.id = v
			case "ID_LIKE":
				h.idLike = strings.Fields(v)
			}
		}
		return h, nil
	}
	return hostOS{}, nil
}

// appArmorEnabled reports whether the host kernel enforces AppArmor, as
// <root>/sys/module/apparmor/parameters/enabled says (absent: the module is
// not built in or not loaded).
func appArmorEnabled(root string) (bool, error) {
	path := filepath.Join(root, "/sys/module/apparmor/parameters/enabled")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(data)) == "Y", nil
}
