package nsxctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/nsx-ujo/nsx-ujo/dataplane/ebpf"
	"github.com/nsx-ujo/nsx-ujo/pkg/ovsrun"
)

// Component is the health of one part of the node's network.
type Component struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	Detail  string `json:"detail,omitempty"`
}

// StatusReport is `nsxctl status`.
type StatusReport struct {
	Node string `json:"node"`
	// Dataplane is the one ncp.ini selects; Holding are those that hold
	// Service state on the node now (both, for a while, after a switch).
	Dataplane    string      `json:"dataplane"`
	Holding      []string    `json:"holding"`
	ConfigSource string      `json:"configSource"` // annotation or hyperbus
	Components   []Component `json:"components"`
	// From nsx-kube-proxy's /healthz: when it last applied the model.
	LastSync *time.Time `json:"lastSync,omitempty"`
}

// Healthy says whether every component is.
func (r *StatusReport) Healthy() bool {
	return !slices.ContainsFunc(r.Components, func(c Component) bool { return !c.Healthy })
}

// Table prints one row per component, after the node's summary.
func (r *StatusReport) Table() ([]string, [][]string) {
	rows := [][]string{}
	for _, c := range r.Components {
		rows = append(rows, []string{c.Name, map[bool]string{true: "healthy", false: "UNHEALTHY"}[c.Healthy], c.Detail})
	}
	last := "never"
	if r.LastSync != nil {
		last = r.LastSync.Format(time.RFC3339)
	}
	rows = append(rows,
		[]string{"dataplane", r.Dataplane, fmt.Sprintf("holding state: %v", r.Holding)},
		[]string{"config source", r.ConfigSource, ""},
		[]string{"last sync", last, ""})
	return []string{"COMPONENT", "STATE", "DETAIL"}, rows
}

// Status is `nsxctl status`: each daemon checked where it answers, without
// a process started.
func (n *Node) Status(ctx context.Context) *StatusReport {
	na, kp := n.Config.NodeAgent, n.Config.KubeProxy
	r := &StatusReport{Node: n.Name, Dataplane: kp.Dataplane, ConfigSource: "annotation", Holding: []string{}}
	if na.EnableHyperbus {
		r.ConfigSource = "hyperbus"
	}
	add := func(name string, err error, ok string) {
		c := Component{Name: name, Healthy: err == nil, Detail: ok}
		if err != nil {
			c.Detail = err.Error()
		}
		r.Components = append(r.Components, c)
	}
	timeout := na.OVSOperationTimeout
	add("ovs", ovsrun.Probe(ctx, na.OVSRunDir, timeout), "ovsdb-server and ovs-vswitchd answer in "+na.OVSRunDir)
	add("nsx-ovs", n.bridgeReady(ctx), "bridge "+na.OVSBridge+" ready")
	add("nsx-node-agent", dialUnix(na.CNISocket, timeout), "CNI server answers on "+na.CNISocket)
	last, err := proxyHealth(ctx, kp.HealthzBindAddr, timeout)
	if err == nil {
		r.LastSync = &last
	}
	add("nsx-kube-proxy", err, "healthy at "+kp.HealthzBindAddr)

	if held, err := n.Held(ctx, OVS); err == nil && len(held) > 0 {
		r.Holding = append(r.Holding, OVS)
	}
	if ebpf.Pinned(kp.BPFPinDir) {
		r.Holding = append(r.Holding, EBPF)
	}
	return r
}

// bridgeReady is nsx-ovs's work: the bridge exists and holds the uplink.
func (n *Node) bridgeReady(ctx context.Context) error {
	na := n.Config.NodeAgent
	db, err := n.ovsdb()
	if err != nil {
		return err
	}
	defer db.Close()
	ports, err := db.ListPorts(ctx, na.OVSBridge)
	if err != nil {
		return err
	}
	if na.OVSUplinkPort == "" {
		return nil
	}
	for _, p := range ports {
		if p.Name == na.OVSUplinkPort {
			if p.OFPort <= 0 {
				return fmt.Errorf("uplink %s on %s has no OpenFlow port: %s", p.Name, na.OVSBridge, p.Error)
			}
			return nil
		}
	}
	return fmt.Errorf("uplink %s is not on bridge %s (node-if not migrated)", na.OVSUplinkPort, na.OVSBridge)
}

func dialUnix(path string, timeout time.Duration) error {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// proxyHealth asks nsx-kube-proxy's /healthz (kube-proxy's body) on this
// node; a wildcard bind address is asked on loopback.
func proxyHealth(ctx context.Context, bind string, timeout time.Duration) (time.Time, error) {
	if bind == "" {
		return time.Time{}, errors.New("healthz_bind_address is empty: cannot ask nsx-kube-proxy")
	}
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return time.Time{}, fmt.Errorf("healthz_bind_address %q: %w", bind, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return time.Time{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	var body struct {
		LastUpdated time.Time `json:"lastUpdated"`
		Healthy     *bool     `json:"healthy"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return time.Time{}, fmt.Errorf("/healthz: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return body.LastUpdated, fmt.Errorf("/healthz: %s (last sync %s)", resp.Status, body.LastUpdated.Format(time.RFC3339))
	}
	return body.LastUpdated, nil
}
