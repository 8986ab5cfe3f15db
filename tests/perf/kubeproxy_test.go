package perf

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

const e2eChanges = 30

type proxyResult struct {
	name      string
	n         int
	program   time.Duration // from start until the first sync holding all services
	change    []time.Duration
	rssKB     int
	dataplane string
}

// BenchmarkEndpointChangeLatency measures, end to end, the time from an
// EndpointSlice write to the API until the proxy has applied it to its
// dataplane, for nsx-kube-proxy (ovs, ebpf) and, as the baseline in the same
// run against the same kube-apiserver and objects, the real kube-proxy
// v1.37 in iptables and nftables mode (each with its default settings, so
// its 1 s minimum sync period counts as it would on a node). "Applied" is
// read the same way for all four: the proxy's own
// kubeproxy_sync_proxy_rules_last_timestamp_seconds passing the write time.
// Also the RSS of each proxy with N services.
func BenchmarkEndpointChangeLatency(b *testing.B) {
	harness.RequireRoot(b)
	kp, err := harness.KubeProxyBinary()
	if err != nil {
		b.Fatal(err)
	}
	bin := harness.TempDir(b)
	if err := cluster.BuildBinaries(bin); err != nil {
		b.Fatal(err)
	}
	var res []proxyResult
	// 1k by default: the real kube-proxy in iptables mode uses iptables-nft
	// on this distribution, whose restore of a 10k-service ruleset runs for
	// over 20 minutes on 2 cores (NSX_BENCH_E2E_SERVICES=1000,10000 to try).
	for _, n := range benchSizes(b, "NSX_BENCH_E2E_SERVICES", []int{1000}) {
		api := harness.StartAPIServer(b)
		rc, err := api.RESTConfig()
		if err != nil {
			b.Fatal(err)
		}
		rc.QPS, rc.Burst = 2000, 4000
		cs := kubernetes.NewForConfigOrDie(rc)
		createServices(b, cs, n)
		for _, p := range []struct{ name, dataplane string }{
			{"nsx-kube-proxy ovs", "ovs"}, {"nsx-kube-proxy ebpf", "ebpf"},
			{"kube-proxy iptables", "iptables"}, {"kube-proxy nftables", "nftables"},
		} {
			res = append(res, runProxy(b, api, cs, bin, kp, p.name, p.dataplane, n))
		}
	}
	w := os.Stdout
	fmt.Fprintf(w, "\nEndpointSlice write -> dataplane applied (end to end, real kube-apiserver), N services x %d endpoints, %d single-endpoint changes\n\n", endpointsPerService, e2eChanges)
	fmt.Fprintln(w, "| proxy | N | first full sync after start | change p50 | change p90 | change max | RSS |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range res {
		fmt.Fprintf(w, "| %s | %d | %s ms | %s ms | %s ms | %s ms | %d MiB |\n", r.name, r.n, ms(r.program),
			ms(pct(r.change, .5)), ms(pct(r.change, .9)), ms(pct(r.change, 1)), r.rssKB/1024)
	}
	// Into the run's report: each nsx dataplane against each kube-proxy
	// mode, one value per change (the repetitions of this benchmark).
	for i := 0; i+3 < len(res); i += 4 {
		for _, base := range res[i+2 : i+4] {
			for _, r := range res[i : i+2] {
				record.Add(Figure{Bench: "API write -> dataplane", Case: fmt.Sprintf("N=%d one endpoint change", r.n),
					Subject: r.name, Baseline: base.name, Unit: "ms", N: r.n, Values: msValues(r.change), BaselineValues: msValues(base.change)})
			}
		}
	}
	for i := 0; i+3 < len(res); i += 4 {
		ipt := res[i+2]
		for _, r := range res[i : i+2] {
			fmt.Fprintf(w, "\nN=%d: %s vs kube-proxy iptables: change p50 %.1fx faster, p90 %.1fx faster", r.n, r.name,
				ratio(pct(ipt.change, .5), pct(r.change, .5)), ratio(pct(ipt.change, .9), pct(r.change, .9)))
			b.ReportMetric(float64(pct(r.change, .5).Microseconds())/1000, fmt.Sprintf("%s-p50-ms-%d", r.dataplane, r.n))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

func createServices(b *testing.B, cs kubernetes.Interface, n int) {
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	// kube-proxy looks its Node up at start and waits up to 30 s for it to
	// have an address: give it one, as a kubelet would.
	node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bench-node"}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.30.0.10"}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := createService(ctx, cs, i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

func createService(ctx context.Context, cs kubernetes.Interface, i int) error {
	name := fmt.Sprintf("svc-%d", i)
	_, err := cs.CoreV1().Services("bench").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	_, err = cs.DiscoveryV1().EndpointSlices("bench").Create(ctx, benchSlice(i, 0), metav1.CreateOptions{})
	return err
}

func benchSlice(i, round int) *discoveryv1.EndpointSlice {
	pname, port, proto, ready, node := "http", int32(8080), corev1.ProtocolTCP, true, "bench-node"
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d-1", i), Namespace: "bench",
			Labels:      map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)},
			Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
	}
	for j := 0; j < endpointsPerService; j++ {
		ip := epOf(i, j)
		if j == 0 && round > 0 {
			ip = netip.AddrFrom4([4]byte{10, 200 + byte(round>>8), byte(round), byte(i)})
		}
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node})
	}
	return s
}

// runProxy starts one proxy in a fresh node namespace, waits for its first
// sync of all services, then times endpoint changes.
func runProxy(b *testing.B, api *harness.APIServer, cs kubernetes.Interface, bin, kubeProxy, name, dataplane string, n int) proxyResult {
	node := harness.NewNetNS(b)
	api.ExposeIn(b, node)
	dir := harness.TempDir(b)
	r := proxyResult{name: name, n: n, dataplane: dataplane}
	var args []string
	exe := filepath.Join(bin, "nsx-kube-proxy")
	switch dataplane {
	case "ovs", "ebpf":
		o := harness.StartOVS(b, harness.OVSOptions{NetNS: node, Bridges: []string{"br-int"}})
		ini := filepath.Join(dir, "ncp.ini")
		text := fmt.Sprintf("[k8s]\nkubeconfig = %s\n[nsx_node_agent]\novs_run_dir = %s\novs_operation_timeout = 60\n[nsx_kube_proxy]\ndataplane = %s\nbpf_pin_dir = %s\nhealthz_bind_address = 127.0.0.1:10256\nmetrics_bind_address = 127.0.0.1:10249\nbpf_services_map_size = %d\nbpf_backends_map_size = %d\n",
			api.Kubeconfig, o.RunDir, dataplane, filepath.Join(dir, "bpf"), 2*n+64, 2*n*endpointsPerService+64)
		if err := os.WriteFile(ini, []byte(text), 0o600); err != nil {
			b.Fatal(err)
		}
		args = []string{"--config-file", ini, "--node-name", "bench-node"}
	default:
		exe = kubeProxy
		args = []string{"--kubeconfig", api.Kubeconfig, "--proxy-mode", dataplane, "--hostname-override", "bench-node",
			"--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256",
			"--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0", "--conntrack-tcp-timeout-close-wait", "0"}
	}
	start := time.Now()
	p := cluster.StartProcess(b, node, filepath.Join(dir, "proxy.log"), exe, args...)
	defer p.Stop()
	// Programmed: the first sync, which both proxies run only once their
	// informers have listed every service.
	var first float64
	p.WaitReady(b, 10*time.Minute, func() error {
		ts, err := lastSync(node)
		if err != nil || ts == 0 {
			return fmt.Errorf("no sync yet: %v", err)
		}
		if first == 0 {
			first = ts
		}
		return nil
	})
	r.program = time.Unix(0, int64(first*1e9)).Sub(start)
	settle(b, node)
	for c := 1; c <= e2eChanges; c++ {
		i := (c * 7919) % n
		cur, err := cs.DiscoveryV1().EndpointSlices("bench").Get(context.Background(), fmt.Sprintf("svc-%d-1", i), metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		next := benchSlice(i, c+1000*len(dataplane))
		cur.Endpoints, cur.Annotations = next.Endpoints, next.Annotations
		write := time.Now()
		if _, err := cs.DiscoveryV1().EndpointSlices("bench").Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		for {
			ts, err := lastSync(node)
			if err == nil && ts > float64(write.UnixNano())/1e9 {
				r.change = append(r.change, time.Unix(0, int64(ts*1e9)).Sub(write))
				break
			}
			if time.Since(write) > time.Minute {
				b.Fatalf("%s: change %d not applied after a minute", name, c)
			}
			time.Sleep(2 * time.Millisecond)
		}
		settle(b, node)
	}
	r.rssKB = rss(p)
	return r
}

// settle waits until the proxy has been idle for 300 ms, so the next write
// does not land in a sync already running.
func settle(b *testing.B, node *harness.NetNS) {
	prev, _ := lastSync(node)
	quiet := time.Now()
	for time.Since(quiet) < 300*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
		ts, _ := lastSync(node)
		if ts != prev {
			prev, quiet = ts, time.Now()
		}
	}
}

var metricsClients sync.Map // netns path -> *http.Client

// lastSync scrapes kubeproxy_sync_proxy_rules_last_timestamp_seconds from
// the proxy's metrics endpoint inside node.
func lastSync(node *harness.NetNS) (float64, error) {
	c, _ := metricsClients.LoadOrStore(node.Path, &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: node.DialContext}})
	resp, err := c.(*http.Client).Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") {
			f := strings.Fields(line)
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return 0, sc.Err()
}

// rss reads the process's resident set size (kB) from /proc.
func rss(p *cluster.Process) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var kb int
			fmt.Sscanf(strings.TrimPrefix(l, "VmRSS:"), "%d", &kb)
			return kb
		}
	}
	return 0
}

func msValues(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d.Microseconds()) / 1000
	}
	return out
}
