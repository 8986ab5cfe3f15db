package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// KubeProxyOptions place a real nsx-kube-proxy on a test node.
type KubeProxyOptions struct {
	BinDir     string // from BuildBinaries
	Kubeconfig string
	Node       *harness.NetNS // runs there; the API server must be exposed in it
	NodeName   string
	OVSRunDir  string
	Uplink     string // ovs_uplink_port
	PinDir     string // bpf_pin_dir
	Dataplane  string
	// ExtraINI is appended to [nsx_kube_proxy] (e.g. "switch_drain_period = 15").
	ExtraINI string
}

// StartKubeProxy runs nsx-kube-proxy from o and waits for its /healthz to
// answer on 127.0.0.1:10256 in the node; Stop it (or let t's cleanup).
func StartKubeProxy(t testing.TB, o KubeProxyOptions) *Process {
	t.Helper()
	dir := t.TempDir()
	ini := fmt.Sprintf(`[k8s]
kubeconfig = %s
[nsx_node_agent]
ovs_bridge = br-int
ovs_uplink_port = %s
ovs_run_dir = %s
[nsx_kube_proxy]
dataplane = %s
bpf_pin_dir = %s
sync_period = 5
healthz_bind_address = 127.0.0.1:10256
metrics_bind_address = 127.0.0.1:10249
%s
`, o.Kubeconfig, o.Uplink, o.OVSRunDir, o.Dataplane, o.PinDir, o.ExtraINI)
	iniPath := filepath.Join(dir, "ncp.ini")
	if err := os.WriteFile(iniPath, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
	p := StartProcess(t, o.Node, filepath.Join(dir, "kube-proxy.log"), filepath.Join(o.BinDir, "nsx-kube-proxy"),
		"--config-file", iniPath, "--node-name", o.NodeName)
	p.WaitReady(t, 30*time.Second, func() error {
		_, err := HTTPGetIn(o.Node, "http://127.0.0.1:10256/healthz")
		return err
	})
	return p
}

// HTTPGetIn does a GET from inside n (the socket is created there).
func HTTPGetIn(n *harness.NetNS, url string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}
