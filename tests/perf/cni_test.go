package perf

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const pods = 50

// cniRuntime is one CNI network as a runtime drives it.
type cniRuntime struct {
	name string
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	node *harness.NetNS // plugins run with this netns as their "host"
}

func (r *cniRuntime) add(ctx context.Context, rt *libcni.RuntimeConf) (time.Duration, error) {
	var d time.Duration
	err := r.node.Do(func() error {
		start := time.Now()
		_, err := r.cni.AddNetworkList(ctx, r.list, rt)
		d = time.Since(start)
		return err
	})
	return d, err
}

func (r *cniRuntime) del(ctx context.Context, rt *libcni.RuntimeConf) (time.Duration, error) {
	var d time.Duration
	err := r.node.Do(func() error {
		start := time.Now()
		err := r.cni.DelNetworkList(ctx, r.list, rt)
		d = time.Since(start)
		return err
	})
	return d, err
}

type sample struct {
	seqAdd, parAdd, del []time.Duration
	parWall             time.Duration
}

// BenchmarkCNIAdd measures ADD and DEL of the nsx plugin (real plugin
// binary -> agent socket -> veth + OVSDB port, config from a real
// kube-apiserver) next to the reference bridge + host-local plugins (veth +
// Linux bridge + file-based IPAM) on the same node in the same run, and
// next to its own chain with the reference portmap plugin chained for
// hostPorts, as before the agent served them (what that exec costs).
// Run with -benchtime=1x: one iteration is 50 sequential pods, then 50 in
// parallel, then 100 DELs, per plugin.
func BenchmarkCNIAdd(b *testing.B) {
	harness.RequireRoot(b)
	binDir := b.TempDir()
	if err := cluster.BuildBinaries(binDir); err != nil {
		b.Fatal(err)
	}
	api := harness.StartAPIServer(b)
	cs := api.Client(b)
	nd := cluster.StartAgentNode(b, api, "perf-node", cluster.AgentOptions{BinDir: binDir})
	nsxRT := &cniRuntime{name: "nsx (agent + OVS)", cni: nd.CNI, list: nd.List, node: nd.NS}

	ipamDir := b.TempDir()
	baseConf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"baseline","plugins":[
		{"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.99.0.0/16","dataDir":%q}},
		{"type":"loopback"}]}`, ipamDir)
	baseList, err := libcni.ConfListFromBytes([]byte(baseConf))
	if err != nil {
		b.Fatal(err)
	}
	baseRT := &cniRuntime{name: "bridge + host-local", cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, b.TempDir(), nil),
		list: baseList, node: nd.NS}

	// The same chain with the reference portmap plugin after nsx: what
	// chaining it for hostPorts costs a pod (one more plugin exec).
	pmList, err := withPlugin(nd.List, 1, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true},
		"snat": true, "masqAll": true}, "nsx-portmap")
	if err != nil {
		b.Fatal(err)
	}
	pmRT := &cniRuntime{name: "nsx chain with portmap chained", list: pmList, node: nd.NS,
		cni: libcni.NewCNIConfigWithCacheDir([]string{nd.CNIBinDir(), binDir}, b.TempDir(), nil)}

	ns := "perf"
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	podObjs := createAnnotatedPods(b, cs, ns, nd.Name, 2*pods)

	// Each repetition runs both plugins, the first one alternating.
	runs := map[string][]*sample{}
	for i, reps := 0, repeats(b); i < reps; i++ {
		order := []*cniRuntime{baseRT, nsxRT, pmRT}
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, r := range order {
			s := &sample{}
			run(b, r, podObjs, fmt.Sprintf("%s-%d", r.list.Name, i), s)
			runs[r.name] = append(runs[r.name], s)
		}
	}
	recordCNI(b, runs[nsxRT.name], runs[baseRT.name], nsxRT.name, baseRT.name)
	recordCNI(b, runs[nsxRT.name], runs[pmRT.name], "nsx chain (hostPorts served by the agent)", pmRT.name)
}

// withPlugin returns list with plugin inserted at index at, named name.
func withPlugin(list *libcni.NetworkConfigList, at int, plugin map[string]any, name string) (*libcni.NetworkConfigList, error) {
	var raw map[string]any
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		return nil, err
	}
	plugins, _ := raw["plugins"].([]any)
	raw["plugins"] = slices.Insert(plugins, at, any(plugin))
	raw["name"] = name
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(b)
}

func createAnnotatedPods(b *testing.B, cs kubernetes.Interface, ns, node string, n int) []*corev1.Pod {
	out := make([]*corev1.Pod, n)
	for i := range out {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%03d", i), Namespace: ns},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/pause:1"}}},
		}
		p, err := cs.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ann := fmt.Sprintf(`{"version":1,"pod_uid":%q,"ip_address":"10.1.%d.%d/16","mac_address":"02:50:56:01:%02x:%02x","gateway_ip":"10.1.0.1","vlan_id":100}`,
			p.UID, 1+i/200, 1+i%200, i/256, i%256)
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{podconfig.AnnotationKey: ann}}})
		if p, err = cs.CoreV1().Pods(ns).Patch(context.Background(), p.Name, "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		out[i] = p
	}
	return out
}

func run(b *testing.B, r *cniRuntime, podObjs []*corev1.Pod, idPrefix string, s *sample) {
	ctx := context.Background()
	sc := newScope(b) // the pods' netns live for this run only
	defer sc.close()
	rts := make([]*libcni.RuntimeConf, len(podObjs))
	for i, p := range podObjs {
		rts[i] = cluster.RuntimeConf(p, harness.NewNetNS(sc), fmt.Sprintf("%s-%03d", idPrefix, i))
	}
	b.ResetTimer()
	for i := 0; i < pods; i++ { // sequential
		d, err := r.add(ctx, rts[i])
		if err != nil {
			b.Fatalf("%s ADD %d: %v", r.name, i, err)
		}
		s.seqAdd = append(s.seqAdd, d)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := pods; i < 2*pods; i++ { // parallel
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := r.add(ctx, rts[i])
			if err != nil {
				b.Errorf("%s parallel ADD %d: %v", r.name, i, err)
				return
			}
			mu.Lock()
			s.parAdd = append(s.parAdd, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.parWall = time.Since(start)
	for _, rt := range rts {
		d, err := r.del(ctx, rt)
		if err != nil {
			b.Fatalf("%s DEL: %v", r.name, err)
		}
		s.del = append(s.del, d)
	}
	b.StopTimer()
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := int(float64(len(s)-1)*p + 0.5)
	return s[idx]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

// recordCNI adds the CNI figures, one value per repetition, nsx beside the
// baseline plugins.
func recordCNI(b *testing.B, nsx, base []*sample, nsxName, baseName string) {
	fig := func(c, unit string, higher bool, v func(*sample) float64) Figure {
		f := Figure{Bench: "cni", Case: c, Subject: nsxName, Baseline: baseName, Unit: unit, HigherIsBetter: higher}
		for _, s := range nsx {
			f.Values = append(f.Values, v(s))
		}
		for _, s := range base {
			f.BaselineValues = append(f.BaselineValues, v(s))
		}
		record.Add(f)
		return f
	}
	p := func(ds func(*sample) []time.Duration, q float64) func(*sample) float64 {
		return func(s *sample) float64 { return millis(pct(ds(s), q)) }
	}
	seq := func(s *sample) []time.Duration { return s.seqAdd }
	par := func(s *sample) []time.Duration { return s.parAdd }
	del := func(s *sample) []time.Duration { return s.del }
	metric := func(f Figure, base bool, unit string) {
		v := f.Values
		if base {
			v = f.BaselineValues
		}
		b.ReportMetric(Summarize(v).Median, unit)
	}
	f := fig(fmt.Sprintf("ADD p50, %d sequential", pods), "ms", false, p(seq, .5))
	metric(f, false, "nsx-add-p50-ms")
	metric(f, true, "base-add-p50-ms")
	metric(fig(fmt.Sprintf("ADD p99, %d sequential", pods), "ms", false, p(seq, .99)), false, "nsx-add-p99-ms")
	fig(fmt.Sprintf("ADD p50, %d in parallel", pods), "ms", false, p(par, .5))
	metric(fig(fmt.Sprintf("ADD p99, %d in parallel", pods), "ms", false, p(par, .99)), false, "nsx-par-add-p99-ms")
	fig(fmt.Sprintf("pods/s, %d ADDs in parallel", pods), "pods/s", true, func(s *sample) float64 { return float64(pods) / s.parWall.Seconds() })
	fig(fmt.Sprintf("DEL p50, %d pods", 2*pods), "ms", false, p(del, .5))
	fig(fmt.Sprintf("DEL p99, %d pods", 2*pods), "ms", false, p(del, .99))
	record.Note("cni: one node, real plugin binaries; nsx = nsx plugin -> agent socket -> veth + OVSDB port, config from a kube-apiserver; "+
		"baseline = bridge + host-local + loopback. p99 of %d samples is their maximum.", pods)
	record.Table(os.Stdout, "cni")
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
