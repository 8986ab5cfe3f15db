package ovs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/big"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// ofctl drives ovs-ofctl against the bridge's management socket. Every
// write is one `bundle`: one process start and one atomic OpenFlow bundle
// per Sync, whatever the number of flows and groups it changes. (Not
// go-openvswitch's ovs.OpenFlowService: it has no group mods, so flows and
// the groups they point to could not change in one atomic bundle.)
type ofctl struct {
	target string // unix:<run dir>/<bridge>.mgmt
}

func (o *ofctl) run(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ovs-ofctl", append([]string{"-O", "OpenFlow15"}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ovs-ofctl %s %s: %w: %s", args[0], o.target, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// bundle applies lines ("flow add ...", "group mod ...") atomically.
func (o *ofctl) bundle(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, err := o.run(ctx, b.Bytes(), "bundle", o.target, "-")
	return err
}

// dumpedFlow is a flow as ovs-ofctl prints it.
type dumpedFlow struct {
	Cookie  uint64
	Table   int
	Rest    string // priority, match and actions as printed
	Actions string
}

var (
	reCookie = regexp.MustCompile(`cookie=0x([0-9a-f]+)`)
	reTable  = regexp.MustCompile(`table=(\d+)`)
)

// dumpFlows returns every flow whose cookie's top byte is one of ours.
func (o *ofctl) dumpFlows(ctx context.Context) ([]dumpedFlow, error) {
	out, err := o.run(ctx, nil, "dump-flows", "--no-stats", o.target, "cookie=0x5a00000000000000/0xfe00000000000000")
	if err != nil {
		return nil, err
	}
	var flows []dumpedFlow
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		m := reCookie.FindStringSubmatch(line)
		if m == nil {
			continue // reply header
		}
		c, err := strconv.ParseUint(m[1], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("dump-flows: cookie in %q: %w", line, err)
		}
		f := dumpedFlow{Cookie: c}
		if t := reTable.FindStringSubmatch(line); t != nil {
			f.Table, _ = strconv.Atoi(t[1])
		}
		if i := strings.Index(line, " actions="); i >= 0 {
			f.Rest = line[:i]
			f.Actions = line[i+len(" actions="):]
		}
		flows = append(flows, f)
	}
	return flows, sc.Err()
}

var reGroupID = regexp.MustCompile(`^group_id=(\d+),`)

// dumpGroups returns the text of every group in our id range.
func (o *ofctl) dumpGroups(ctx context.Context) (map[uint32]string, error) {
	out, err := o.run(ctx, nil, "dump-groups", o.target)
	if err != nil {
		return nil, err
	}
	groups := map[uint32]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		m := reGroupID.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		id, err := strconv.ParseUint(m[1], 10, 32)
		if err != nil || id&0xff000000 != groupBase {
			continue
		}
		groups[uint32(id)] = line
	}
	return groups, sc.Err()
}

var (
	reBucket = regexp.MustCompile(`bucket=`)
	reEPv4   = regexp.MustCompile(`(?:load:0x([0-9a-f]+)->NXM_NX_REG3\[\]|set_field:0x([0-9a-f]+)->reg3)`)
	reEPv6   = regexp.MustCompile(`(?:load:0x([0-9a-f]+)->NXM_NX_XXREG1\[\]|set_field:0x([0-9a-f]+)->xxreg1)`)
	rePort   = regexp.MustCompile(`(?:load:0x([0-9a-f]+)->NXM_NX_REG2\[0\.\.15\]|set_field:0x([0-9a-f]+)/0xffff->reg2)`)
	reNext   = regexp.MustCompile(`resubmit\(,(\d+)\)`)
)

// groupSignature reduces a group (as we write it, or as ovs-ofctl prints
// it) to what matters: per bucket, the endpoint address, port and the next
// table (affinity or not). Two groups with the same signature forward the same way.
func groupSignature(text string) string {
	parts := reBucket.Split(text, -1)
	var sig []string
	for _, b := range parts[1:] {
		ip := firstHex(reEPv4, b) + "/" + firstHex(reEPv6, b)
		port := firstHex(rePort, b)
		next := ""
		if m := reNext.FindStringSubmatch(b); m != nil {
			next = m[1]
		}
		sig = append(sig, ip+"|"+port+"|"+next)
	}
	return strings.Join(sig, ";")
}

func firstHex(re *regexp.Regexp, s string) string {
	m := re.FindStringSubmatch(s)
	if m == nil {
		return ""
	}
	h := m[1]
	if h == "" {
		h = m[2]
	}
	n, ok := new(big.Int).SetString(h, 16)
	if !ok {
		return h
	}
	return n.Text(16)
}
