package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"k8s.io/apimachinery/pkg/util/version"
)

// NetworkName is the CNI network name of the conflist.
const NetworkName = "nsx"

// conflist is /etc/cni/net.d/10-nsx.conflist. Field order is the file's.
type conflist struct {
	CNIVersion string `json:"cniVersion"`
	// CNIVersions lets a CNI 1.1 runtime pick the highest version it and
	// the plugins share; older runtimes read cniVersion.
	CNIVersions     []string `json:"cniVersions"`
	Name            string   `json:"name"`
	NSXBuildVersion string   `json:"nsxBuildVersion"`
	Plugins         []any    `json:"plugins"`
}

type nsxPlugin struct {
	Type   string `json:"type"`
	Socket string `json:"socket"`
	MTU    int    `json:"mtu"`
}

type plainPlugin struct {
	Type string `json:"type"`
}

// Conflist returns the content of 10-nsx.conflist: the nsx plugin, which
// sets up the pod's interface through the agent on socket, then loopback,
// chained so that one ADD also brings up the pod's lo (the loopback plugin
// passes the nsx result through).
func Conflist(buildVersion, socket string, mtu int) []byte {
	c := conflist{
		CNIVersion:      "1.1.0",
		CNIVersions:     []string{"1.0.0", "1.1.0"},
		Name:            NetworkName,
		NSXBuildVersion: buildVersion,
		Plugins: []any{
			nsxPlugin{Type: "nsx", Socket: socket, MTU: mtu},
			plainPlugin{Type: "loopback"},
		},
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		panic(err) // plain structs of strings and ints always marshal
	}
	return append(data, '\n')
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
