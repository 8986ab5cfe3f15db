package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"k8s.io/apimachinery/pkg/util/version"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// NetworkName is the CNI network name of the conflist.
const NetworkName = "nsx"

// conflist is /etc/cni/net.d/10-nsx.conflist. Field order is the file's.
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	// CNIVersions lets a runtime with libcni v1.2 or later pick the highest
	// version it and the plugins share; older runtimes read only cniVersion.
	CNIVersions     []string `json:"cniVersions,omitempty"`
	Name            string   `json:"name"`
	NSXBuildVersion string   `json:"nsxBuildVersion"`
	Plugins         []any    `json:"plugins"`
}

// nsxPlugin is our plugin. The portMappings capability makes the runtime
// pass a pod's hostPorts, which the agent serves itself (nftables DNAT and
// masquerade, pkg/nftables): no further plugin to exec for them.
type nsxPlugin struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	Socket       string          `json:"socket"`
	MTU          int             `json:"mtu"`
}

type plainPlugin struct {
	Type string `json:"type"`
}

// ConflistOptions are the values written into 10-nsx.conflist.
type ConflistOptions struct {
	BuildVersion string // nsxBuildVersion, the install's version gate
	Socket       string // the agent socket
	MTU          int
	// CNIVersion is what the runtime reads first: config.CNIVersionAuto
	// writes baseCNIVersion, anything else is written as given (pinned).
	CNIVersion string
	// ChainSupports11 says every plugin of the chain on the node (ours and
	// the node's loopback) answers CNI 1.1.0: only then does auto mode
	// offer 1.1.0 (STATUS, GC) to the runtimes that can choose.
	ChainSupports11 bool
}

// baseCNIVersion is the conflist's cniVersion in auto mode: the highest
// version libcni v1.0.x and v1.1.x know. containerd 1.6 and 1.7 (Debian 12,
// Ubuntu 22.04/24.04) and CRI-O before 1.30 embed those and fail every ADD
// of a 1.1.0 list with "unsupported CNI result version".
const baseCNIVersion = "1.0.0"

// versions returns the conflist's cniVersion and cniVersions.
func (c ConflistOptions) versions() (string, []string) {
	if c.CNIVersion != "" && c.CNIVersion != config.CNIVersionAuto {
		return c.CNIVersion, nil // pinned: every runtime reads exactly this
	}
	if c.ChainSupports11 {
		// libcni v1.2+ (containerd 2.x, CRI-O 1.30+) takes the highest of
		// these it knows; older libcni ignores the key.
		return baseCNIVersion, []string{baseCNIVersion, "1.1.0"}
	}
	return baseCNIVersion, nil
}

// Conflist returns the content of 10-nsx.conflist: the nsx plugin, which
// sets up the pod's interface and its hostPorts through the agent on
// socket, then loopback, chained so that one ADD also brings up the pod's
// lo (loopback passes the nsx result through).
func Conflist(o ConflistOptions) []byte {
	v, vs := o.versions()
	c := conflist{
		CNIVersion:      v,
		CNIVersions:     vs,
		Name:            NetworkName,
		NSXBuildVersion: o.BuildVersion,
		Plugins: []any{
			nsxPlugin{Type: "nsx", Capabilities: map[string]bool{"portMappings": true}, Socket: o.Socket, MTU: o.MTU},
			plainPlugin{Type: "loopback"},
		},
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		panic(err) // plain structs of strings and ints always marshal
	}
	return append(data, '\n')
}

// supportsCNI11 asks a CNI plugin binary (CNI_COMMAND=VERSION) whether it
// answers CNI 1.1.0. Runs at install time only, never on a pod's path.
func supportsCNI11(ctx context.Context, binary string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := invoke.GetVersionInfo(ctx, binary, nil)
	if err != nil {
		return false, fmt.Errorf("CNI VERSION of %s: %w", binary, err)
	}
	return slices.Contains(info.SupportedVersions(), "1.1.0"), nil
}

// loopbackConf is 99-loopback.conf, the single-plugin fallback network some
// runtimes expect next to the real one. 1.0.0 is the highest version runtimes
// with an older libcni still accept.
const loopbackConf = `{
  "cniVersion": "1.0.0",
  "name": "lo",
  "type": "loopback"
}
`

// installedState is what the conflist on the host says about the install.
type installedState int

const (
	stateAbsent    installedState = iota // no conflist: a fresh node
	stateMalformed                       // unreadable as a conflist with a semver nsxBuildVersion
	stateOlder
	stateEqual
	stateNewer
)

func (s installedState) String() string {
	return [...]string{"absent", "malformed", "older", "equal", "newer"}[s]
}

// compareInstalled reads the nsxBuildVersion of the conflist at path and
// compares it with build. A conflist that is not JSON or has no semver
// version is reported as stateMalformed with the reason, and is replaced
// like an older one: it cannot be a newer nsx-ujo's.
func compareInstalled(path string, build *version.Version) (installedState, string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return stateAbsent, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("read %s: %w", path, err)
	}
	var c struct {
		NSXBuildVersion *string `json:"nsxBuildVersion"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return stateMalformed, fmt.Sprintf("not JSON: %v", err), nil
	}
	if c.NSXBuildVersion == nil {
		return stateMalformed, "no nsxBuildVersion", nil
	}
	v, err := version.ParseSemantic(*c.NSXBuildVersion)
	if err != nil {
		return stateMalformed, fmt.Sprintf("nsxBuildVersion %q: %v", *c.NSXBuildVersion, err), nil
	}
	switch {
	case build.GreaterThan(v):
		return stateOlder, v.String(), nil
	case build.LessThan(v):
		return stateNewer, v.String(), nil
	default:
		return stateEqual, v.String(), nil
	}
}
