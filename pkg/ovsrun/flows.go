package ovsrun

import (
	"github.com/nsx-ujo/nsx-ujo/pkg/atomicfile"

	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"
)

// ofVersion is the OpenFlow version used to dump and restore: the newest
// OVS enables by default, and the one nsx-kube-proxy programs with, so
// nothing it installs is lost in translation.
const ofVersion = "OpenFlow15"

// savedFlows is one bridge's OpenFlow state between a stop and a start,
// in ovs-ofctl's own text syntax.
type savedFlows struct {
	Bridge  string    `json:"bridge"`
	SavedAt time.Time `json:"saved_at"`
	TLVMap  string    `json:"tlv_map,omitempty"` // add-tlv-map argument
	Groups  []string  `json:"groups"`
	Flows   []string  `json:"flows"`
}

func savedDir(stateDir string) string { return filepath.Join(stateDir, "ovs-flows") }

// MgmtSocket is the OpenFlow management socket ovs-vswitchd opens for bridge.
func MgmtSocket(runDir, bridge string) string {
	return filepath.Join(runDir, bridge+".mgmt")
}

// ofctl runs ovs-ofctl cmd against bridge's management socket; extra args
// follow the socket. stdin, when set, is passed as the file "-".
func ofctl(ctx context.Context, runDir, bridge string, stdin []byte, opts []string, cmd string, args ...string) ([]byte, error) {
	argv := append(append([]string{"-O", ofVersion}, opts...), cmd, "unix:"+MgmtSocket(runDir, bridge))
	c := exec.CommandContext(ctx, "ovs-ofctl", append(argv, args...)...)
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return nil, fmt.Errorf("ovs-ofctl %s %s: %w: %s", cmd, bridge, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Lines that are not flows or groups: reply headers.
var reHeader = regexp.MustCompile(`^(NXST|OFPST)_`)

// dumpLines returns the non-header, non-empty lines of an ovs-ofctl dump.
func dumpLines(out []byte) []string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && !reHeader.MatchString(l) {
			lines = append(lines, l)
		}
	}
	return lines
}

// The rewrites ovs-save applies so that dumped flows parse again.
var flowFixups = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`(idle|hard)_age=[^,]*, *`), ""},
	{regexp.MustCompile(`igmp_type`), "tp_src"},
	{regexp.MustCompile(`igmp_code`), "tp_dst"},
	{regexp.MustCompile(`igmp`), "ip,nw_proto=2"},
}

// reTLV matches a mapping line of dump-tlv-map: class, type, length, field.
var reTLV = regexp.MustCompile(`^(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\d+)\s+(\S+)$`)

func (o *OVS) dumpBridge(ctx context.Context, bridge string) (*savedFlows, error) {
	s := &savedFlows{Bridge: bridge, SavedAt: time.Now().UTC()}
	out, err := ofctl(ctx, o.opts.RunDir, bridge, nil, nil, "dump-tlv-map")
	if err != nil {
		return nil, err
	}
	s.TLVMap = parseTLVMap(out)
	if out, err = ofctl(ctx, o.opts.RunDir, bridge, nil, nil, "dump-groups"); err != nil {
		return nil, err
	}
	s.Groups = dumpLines(out)
	if out, err = ofctl(ctx, o.opts.RunDir, bridge, nil, []string{"--no-names", "--no-stats"}, "dump-flows"); err != nil {
		return nil, err
	}
	s.Flows = parseFlows(out)
	return s, nil
}

// parseTLVMap turns dump-tlv-map output into add-tlv-map's argument.
func parseTLVMap(out []byte) string {
	var tlv []string
	for _, l := range dumpLines(out) {
		if m := reTLV.FindStringSubmatch(l); m != nil {
			tlv = append(tlv, fmt.Sprintf("{class=%s,type=%s,len=%s}->%s", m[1], m[2], m[3], m[4]))
		}
	}
	return strings.Join(tlv, ",")
}

// parseFlows turns dump-flows output into lines replace-flows reads back.
func parseFlows(out []byte) []string {
	var flows []string
	for _, l := range dumpLines(out) {
		for _, f := range flowFixups {
			l = f.re.ReplaceAllString(l, f.with)
		}
		flows = append(flows, l)
	}
	return flows
}

// saveFlows writes every bridge's flows, groups and TLV map to StateDir,
// as ovs-save does before OVS stops. Each bridge is written atomically;
// files of bridges that no longer exist are removed afterwards, so a crash
// half way leaves each file either old or new.
func (o *OVS) saveFlows(ctx context.Context) error {
	bridges, err := o.db.ListBridges(ctx)
	if err != nil {
		return fmt.Errorf("save flows: %w", err)
	}
	dir := savedDir(o.opts.StateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save flows: %w", err)
	}
	var errs []error
	keep := map[string]bool{}
	for _, br := range bridges {
		path := filepath.Join(dir, br+".json")
		keep[path] = true
		s, err := o.dumpBridge(ctx, br)
		if err == nil {
			var data []byte
			if data, err = json.Marshal(s); err == nil {
				err = atomicfile.WriteFile(path, data, 0o644)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("save flows of bridge %s: %w", br, err))
			continue
		}
		o.opts.Log.Info("saved flows", zap.String("bridge", br), zap.Int("flows", len(s.Flows)), zap.Int("groups", len(s.Groups)))
	}
	old, _ := listSaved(o.opts.StateDir)
	for _, f := range old {
		if !keep[f] {
			os.Remove(f)
		}
	}
	return errors.Join(errs...)
}

func listSaved(stateDir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(savedDir(stateDir), "*.json"))
	if err != nil {
		return nil, err
	}
	return files, nil
}

// restoreFlows puts saved flows back while flow-restore-wait holds the
// datapath, then removes the files: they describe this start only. A file
// that fails to restore is logged and dropped rather than failing the
// start, because nsx-kube-proxy and the agent reprogram their flows
// anyway; a node that cannot start OVS has no network at all.
func (o *OVS) restoreFlows(ctx context.Context, files []string) {
	for _, f := range files {
		if err := o.restoreFile(ctx, f); err != nil {
			o.opts.Log.Error("restoring saved flows failed; the bridge starts with its default flows", zap.String("file", f), zap.Error(err))
		}
		if err := os.Remove(f); err != nil {
			o.opts.Log.Warn("removing restored flows file", zap.String("file", f), zap.Error(err))
		}
	}
}

func (o *OVS) restoreFile(ctx context.Context, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var s savedFlows
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if _, err := o.db.GetBridge(ctx, s.Bridge); err != nil {
		return err // deleted while OVS was down
	}
	if err := o.waitMgmt(ctx, s.Bridge); err != nil {
		return err
	}
	if s.TLVMap != "" {
		if _, err := ofctl(ctx, o.opts.RunDir, s.Bridge, nil, nil, "add-tlv-map", s.TLVMap); err != nil {
			return err
		}
	}
	// Groups first: flows may point to them. Each is one atomic bundle.
	if len(s.Groups) > 0 {
		if _, err := ofctl(ctx, o.opts.RunDir, s.Bridge, []byte(strings.Join(s.Groups, "\n")+"\n"), []string{"--bundle"}, "add-groups", "-"); err != nil {
			return err
		}
	}
	if _, err := ofctl(ctx, o.opts.RunDir, s.Bridge, []byte(strings.Join(s.Flows, "\n")+"\n"), []string{"--bundle"}, "replace-flows", "-"); err != nil {
		return err
	}
	o.opts.Log.Info("restored saved flows", zap.String("bridge", s.Bridge), zap.Int("flows", len(s.Flows)),
		zap.Int("groups", len(s.Groups)), zap.Time("savedAt", s.SavedAt))
	return nil
}

// waitMgmt waits until ovs-vswitchd has created the bridge's management
// socket (it binds and listens at once). Not a test connection: vswitchd
// logs a warning for each one dropped.
func (o *OVS) waitMgmt(ctx context.Context, bridge string) error {
	return o.waitReady(ctx, o.vsProc, func() error {
		_, err := os.Stat(MgmtSocket(o.opts.RunDir, bridge))
		return err
	})
}

// reNormal matches the dump of table 0's catch-all NORMAL flow: priority 0,
// no match field, NORMAL as its only action.
var reNormal = regexp.MustCompile(`(^|[ ,])priority=0 actions=NORMAL$`)

// EnsureNormalFlow keeps the bridge's table 0 catch-all `priority=0
// actions=NORMAL`, the flow a standalone bridge starts with:
// nsx-kube-proxy's flows fall through to it, so a bridge whose flows were
// flushed would otherwise drop every packet that is not a service's. It
// adds the flow (replacing a catch-all with other actions) only when it is
// missing, and reports whether it did.
func EnsureNormalFlow(ctx context.Context, runDir, bridge string) (bool, error) {
	out, err := ofctl(ctx, runDir, bridge, nil, []string{"--no-stats"}, "dump-flows", "table=0")
	if err != nil {
		return false, err
	}
	for _, l := range dumpLines(out) {
		if reNormal.MatchString(l) {
			return false, nil
		}
	}
	if _, err := ofctl(ctx, runDir, bridge, nil, nil, "add-flow", "table=0,priority=0,actions=NORMAL"); err != nil {
		return false, err
	}
	return true, nil
}
