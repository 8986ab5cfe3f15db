package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podnet"
	"github.com/nsx-ujo/nsx-ujo/pkg/hyperbus"
	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

func createPod(t *testing.T, cs kubernetes.Interface, ns, name, node string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/pause:1"}}},
	}
	p, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func annotate(t *testing.T, cs kubernetes.Interface, p *corev1.Pod, uid, ip string, vlan int) {
	t.Helper()
	v := fmt.Sprintf(`{"version":1,"pod_uid":%q,"ip_address":"%s/24","mac_address":"02:50:56:00:02:%s","gateway_ip":"10.0.2.1","vlan_id":%d}`,
		uid, ip, ip[strings.LastIndex(ip, ".")+1:], vlan)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{podconfig.AnnotationKey: v}}})
	if _, err := cs.CoreV1().Pods(p.Namespace).Patch(context.Background(), p.Name, "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func newNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func TestAgentWiresPodFromAPIAnnotationThroughLibcni(t *testing.T) {
	cs := api.Client(t)
	nd := cluster.StartAgentNode(t, api, "node-a", cluster.AgentOptions{BinDir: binDir})
	ns := newNamespace(t, cs)
	p := createPod(t, cs, ns, "web-0", nd.Name)
	podNS := harness.NewNetNS(t)
	rt := cluster.RuntimeConf(p, podNS, "cid-web-0")

	// The controller writes the annotation a moment after the ADD started:
	// the agent must be woken by the watch, not fail.
	go func() {
		time.Sleep(300 * time.Millisecond)
		annotate(t, cs, p, string(p.UID), "10.0.2.10", 301)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := nd.CNI.AddNetworkList(ctx, nd.List, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	res, err := types100.GetResult(r)
	if err != nil {
		t.Fatal(err)
	}
	if res.CNIVersion != "1.1.0" || len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.0.2.10/24" {
		t.Fatalf("result: %+v", res)
	}
	if out := podNS.Run(t, "ip", "-o", "addr"); !strings.Contains(out, "10.0.2.10/24") || !strings.Contains(out, "lo ") {
		t.Fatalf("pod addresses:\n%s", out)
	}
	host := podnet.HostIfName("cid-web-0", "eth0")
	if tag := strings.TrimSpace(nd.OVS.Vsctl(t, "get", "Port", host, "tag")); tag != "301" {
		t.Fatalf("tag %s", tag)
	}
	if uid := strings.Trim(strings.TrimSpace(nd.OVS.Vsctl(t, "get", "Port", host, "external_ids:pod-uid")), `"`); uid != string(p.UID) {
		t.Fatalf("pod-uid %s, want %s", uid, p.UID)
	}
	if err := nd.CNI.CheckNetworkList(ctx, nd.List, rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := nd.CNI.DelNetworkList(ctx, nd.List, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if out := strings.TrimSpace(nd.OVS.Vsctl(t, "list-ports", "br-int")); out != "" {
		t.Fatalf("ports after DEL: %s", out)
	}
	// DEL again, as runtimes do, succeeds.
	if err := nd.CNI.DelNetworkList(ctx, nd.List, rt); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
}

// The real nsx-node-agent with enable_hyperbus = True: its pod configs
// come from a HyperBus session on its internal port (VLAN 4094), not from
// the annotation (the pod has none); STATUS is healthy while a session is
// up or was lost less than connect_retry_timeout ago.
func TestAgentInHyperBusMode(t *testing.T) {
	cs := api.Client(t)
	nd := cluster.StartAgentNode(t, api, "node-hb", cluster.AgentOptions{BinDir: binDir,
		ExtraINI: "enable_hyperbus = True\nnsxrpc_cip = 169.254.1.0/31\nconnect_retry_timeout = 60"})
	hv := nd.OVS.AccessPeer(t, nd.NS, "br-int", "hv0", 4094, "169.254.1.1/31")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var c *hyperbus.Client
	if err := hv.Do(func() (err error) { c, err = hyperbus.Dial(ctx, "169.254.1.0:2345", nd.Name, time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ns := newNamespace(t, cs)
	p := createPod(t, cs, ns, "web-0", nd.Name)
	cfg := fmt.Sprintf(`{"version":1,"pod_uid":%q,"ip_address":"10.0.2.30/24","mac_address":"02:50:56:00:02:30","gateway_ip":"10.0.2.1","vlan_id":304}`, p.UID)
	if err := c.Snapshot(ctx, []hyperbus.ContainerConfig{{Node: nd.Name, Pod: hyperbus.PodRef{Namespace: ns, Name: p.Name, UID: string(p.UID)},
		Config: json.RawMessage(cfg)}}); err != nil {
		t.Fatal(err)
	}
	podNS := harness.NewNetNS(t)
	rt := cluster.RuntimeConf(p, podNS, "cid-hb-0")
	r, err := nd.CNI.AddNetworkList(ctx, nd.List, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if res, err := types100.GetResult(r); err != nil || res.IPs[0].Address.String() != "10.0.2.30/24" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if tag := strings.TrimSpace(nd.OVS.Vsctl(t, "get", "Port", podnet.HostIfName("cid-hb-0", "eth0"), "tag")); tag != "304" {
		t.Fatalf("tag %s, want 304 from HyperBus", tag)
	}
	if err := nd.CNI.DelNetworkList(ctx, nd.List, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestRecreatedPodNeverGetsPredecessorsConfig(t *testing.T) {
	cs := api.Client(t)
	nd := cluster.StartAgentNode(t, api, "node-b", cluster.AgentOptions{BinDir: binDir})
	ns := newNamespace(t, cs)
	old := createPod(t, cs, ns, "db-0", nd.Name)
	annotate(t, cs, old, string(old.UID), "10.0.2.20", 302)
	if err := cs.CoreV1().Pods(ns).Delete(context.Background(), old.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	// Same name, new UID, carrying the old annotation (as a stale copy
	// would): the agent must wait for the controller's new config.
	p := createPod(t, cs, ns, "db-0", nd.Name)
	annotate(t, cs, p, string(old.UID), "10.0.2.20", 302)
	podNS := harness.NewNetNS(t)
	rt := cluster.RuntimeConf(p, podNS, "cid-db-0-new")
	go func() {
		time.Sleep(time.Second)
		annotate(t, cs, p, string(p.UID), "10.0.2.21", 303)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := nd.CNI.AddNetworkList(ctx, nd.List, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	res, _ := types100.GetResult(r)
	if res.IPs[0].Address.String() != "10.0.2.21/24" {
		t.Fatalf("recreated pod got %s, want its own 10.0.2.21/24", res.IPs[0].Address.String())
	}
	t.Cleanup(func() { _ = nd.CNI.DelNetworkList(context.Background(), nd.List, rt) })
}

func TestPluginErrorsAreCNIErrors(t *testing.T) {
	cs := api.Client(t)
	nd := cluster.StartAgentNode(t, api, "node-c", cluster.AgentOptions{BinDir: binDir})
	ns := newNamespace(t, cs)
	p := createPod(t, cs, ns, "bad-0", nd.Name)
	annotate(t, cs, p, string(p.UID), "10.0.2.30", 5000) // vlan out of range
	podNS := harness.NewNetNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := nd.CNI.AddNetworkList(ctx, nd.List, cluster.RuntimeConf(p, podNS, "cid-bad-0"))
	var ce *types.Error
	if !asCNIError(err, &ce) || !strings.Contains(ce.Details, "vlan_id") {
		t.Fatalf("ADD with vlan 5000: %v, want a CNI error naming vlan_id", err)
	}
	if out := strings.TrimSpace(nd.OVS.Vsctl(t, "list-ports", "br-int")); out != "" {
		t.Fatalf("ports after failed ADD: %s", out)
	}

	// Agent socket absent: code 11 (try again later) naming the socket; DEL succeeds.
	missing := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"nsx","plugins":[{"type":"nsx","socket":"/nonexistent/cni.sock"}]}`)
	list, err := libcni.ConfListFromBytes([]byte(missing))
	if err != nil {
		t.Fatal(err)
	}
	_, err = nd.CNI.AddNetworkList(ctx, list, cluster.RuntimeConf(p, podNS, "cid-bad-1"))
	if !asCNIError(err, &ce) || ce.Code != types.ErrTryAgainLater || !strings.Contains(ce.Details, "/nonexistent/cni.sock") {
		t.Fatalf("ADD without agent: %v", err)
	}
	if err := nd.CNI.DelNetworkList(ctx, list, cluster.RuntimeConf(p, podNS, "cid-bad-1")); err != nil {
		t.Fatalf("DEL without agent: %v", err)
	}
	if err := nd.CNI.GetStatusNetworkList(ctx, list); !asCNIError(err, &ce) || ce.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without agent: %v", err)
	}
}

func TestAuditRemovesPortOfVanishedPod(t *testing.T) {
	cs := api.Client(t)
	nd := cluster.StartAgentNode(t, api, "node-d", cluster.AgentOptions{BinDir: binDir, ExtraINI: "audit_interval = 1"})
	ns := newNamespace(t, cs)
	p := createPod(t, cs, ns, "gone-0", nd.Name)
	annotate(t, cs, p, string(p.UID), "10.0.2.40", 304)
	podNS := harness.NewNetNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := nd.CNI.AddNetworkList(ctx, nd.List, cluster.RuntimeConf(p, podNS, "cid-gone-0")); err != nil {
		t.Fatal(err)
	}
	keep := createPod(t, cs, ns, "keep-0", nd.Name)
	annotate(t, cs, keep, string(keep.UID), "10.0.2.41", 304)
	keepNS := harness.NewNetNS(t)
	if _, err := nd.CNI.AddNetworkList(ctx, nd.List, cluster.RuntimeConf(keep, keepNS, "cid-keep-0")); err != nil {
		t.Fatal(err)
	}
	// The pod disappears with no DEL: object deleted, sandbox netns gone.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if out, err := runOut("ip", "netns", "del", podNS.Name); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	gone, kept := podnet.HostIfName("cid-gone-0", "eth0"), podnet.HostIfName("cid-keep-0", "eth0")
	deadline := time.Now().Add(20 * time.Second)
	for {
		ports := strings.Fields(nd.OVS.Vsctl(t, "list-ports", "br-int"))
		if len(ports) == 1 && ports[0] == kept {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ports %v, want only %s (stale %s not audited away)", ports, kept, gone)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The port goes before the line is logged: wait for it too.
	eventually(t, "the agent logs the removal", func() error {
		if b, _ := os.ReadFile(nd.LogFile); !strings.Contains(string(b), "audit: removed stale pod port") {
			return fmt.Errorf("no removal logged")
		}
		return nil
	})
}
