// Package perf holds nsx-ujo's benchmarks. Every figure is printed beside a
// baseline measured in the same run, because these machines are noisy.
package perf

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
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
// Linux bridge + file-based IPAM) on the same node in the same run.
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
	baseRT := &cniRuntime{name: "bridge + host-local (baseline)", cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, b.TempDir(), nil),
		list: baseList, node: nd.NS}

	ns := "perf"
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	podObjs := createAnnotatedPods(b, cs, ns, nd.Name, 2*pods)

	results := map[string]*sample{}
	for i := 0; i < b.N; i++ {
		for _, r := range []*cniRuntime{baseRT, nsxRT} {
			s := &sample{}
			results[r.name] = s
			run(b, r, podObjs, fmt.Sprintf("%s-%d", r.list.Name, i), s)
		}
	}
	report(b, results, []string{baseRT.name, nsxRT.name})
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
	rts := make([]*libcni.RuntimeConf, len(podObjs))
	for i, p := range podObjs {
		rts[i] = cluster.RuntimeConf(p, harness.NewNetNS(b), fmt.Sprintf("%s-%03d", idPrefix, i))
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

func report(b *testing.B, res map[string]*sample, order []string) {
	base := res[order[0]]
	w := os.Stdout
	fmt.Fprintf(w, "\nCNI ADD/DEL latency, %d pods sequential + %d in parallel, one node (ms)\n\n", pods, pods)
	fmt.Fprintln(w, "| plugin | ADD p50 | ADD p99 | parallel ADD p50 | parallel ADD p99 | pods/s (parallel) | DEL p50 | DEL p99 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, name := range order {
		s := res[name]
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %.0f | %s | %s |\n", name, ms(pct(s.seqAdd, .5)), ms(pct(s.seqAdd, .99)),
			ms(pct(s.parAdd, .5)), ms(pct(s.parAdd, .99)), float64(pods)/s.parWall.Seconds(), ms(pct(s.del, .5)), ms(pct(s.del, .99)))
	}
	nsx := res[order[1]]
	fmt.Fprintf(w, "\nratio nsx/baseline: ADD p50 %.2f, ADD p99 %.2f, parallel ADD p99 %.2f\n\n",
		ratio(pct(nsx.seqAdd, .5), pct(base.seqAdd, .5)), ratio(pct(nsx.seqAdd, .99), pct(base.seqAdd, .99)),
		ratio(pct(nsx.parAdd, .99), pct(base.parAdd, .99)))
	b.ReportMetric(float64(pct(nsx.seqAdd, .5).Microseconds())/1000, "nsx-add-p50-ms")
	b.ReportMetric(float64(pct(nsx.seqAdd, .99).Microseconds())/1000, "nsx-add-p99-ms")
	b.ReportMetric(float64(pct(nsx.parAdd, .99).Microseconds())/1000, "nsx-par-add-p99-ms")
	b.ReportMetric(float64(pct(base.seqAdd, .5).Microseconds())/1000, "base-add-p50-ms")
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
