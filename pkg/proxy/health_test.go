package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

func TestHealthz(t *testing.T) {
	const period = 30 * time.Second
	now := time.Now()
	deleted := metav1.NewTime(now)
	for _, tc := range []struct {
		name             string
		queued, inflight time.Duration // how long ago; 0: none
		node             *v1.Node
		healthz, livez   int
		eligible         bool
	}{
		{name: "idle", healthz: 200, livez: 200, eligible: true},
		{name: "change queued recently", queued: period, healthz: 200, livez: 200, eligible: true},
		{name: "change queued 2 x sync period ago", queued: 2*period + time.Second, healthz: 503, livez: 503, eligible: true},
		{name: "sync running for 2 x sync period", inflight: 3 * period, healthz: 503, livez: 503, eligible: true},
		{name: "node ok", node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}}, healthz: 200, livez: 200, eligible: true},
		{name: "node being deleted", healthz: 503, livez: 200, eligible: false,
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, DeletionTimestamp: &deleted, Finalizers: []string{"x"}}}},
		{name: "node tainted by the autoscaler", healthz: 503, livez: 200, eligible: false,
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode},
				Spec: v1.NodeSpec{Taints: []v1.Taint{{Key: ToBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}}}},
		{name: "another node being deleted", healthz: 200, livez: 200, eligible: true,
			node: &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b", DeletionTimestamp: &deleted, Finalizers: []string{"x"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(nil, &fakeBackend{}, Options{NodeName: testNode, SyncPeriod: period})
			idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
			if tc.node != nil {
				if err := idx.Add(tc.node); err != nil {
					t.Fatal(err)
				}
			}
			p.nodeLister = corelisters.NewNodeLister(idx)
			p.lastSynced = now.Add(-time.Hour)
			if tc.queued > 0 {
				p.queuedSince = now.Add(-tc.queued)
			}
			if tc.inflight > 0 {
				p.inflightSince = now.Add(-tc.inflight)
			}

			for _, ep := range []struct {
				path    string
				handler http.HandlerFunc
				code    int
			}{{"/healthz", p.serveHealthz, tc.healthz}, {"/livez", p.serveLivez, tc.livez}} {
				rec := httptest.NewRecorder()
				ep.handler(rec, httptest.NewRequest(http.MethodGet, ep.path, nil))
				if rec.Code != ep.code {
					t.Errorf("%s: status %d, want %d; body %s", ep.path, rec.Code, ep.code, rec.Body)
				}
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("%s: Content-Type %q", ep.path, ct)
				}
				var body map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatalf("%s: %v: %s", ep.path, err, rec.Body)
				}
				for _, k := range []string{"lastUpdated", "currentTime"} {
					s, _ := body[k].(string)
					if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
						t.Errorf("%s: %s = %q: %v", ep.path, k, s, err)
					}
				}
				if ep.path == "/healthz" {
					if got, ok := body["nodeEligible"].(bool); !ok || got != tc.eligible {
						t.Errorf("/healthz nodeEligible = %v, want %v", body["nodeEligible"], tc.eligible)
					}
				} else if _, ok := body["nodeEligible"]; ok {
					t.Errorf("/livez has nodeEligible, kube-proxy's has not")
				}
				// While unhealthy lastUpdated is the real last sync.
				if ep.code == 503 {
					if got, _ := time.Parse(time.RFC3339Nano, body["lastUpdated"].(string)); !got.Equal(p.lastSynced) {
						t.Errorf("%s: lastUpdated %v, want the last sync %v", ep.path, got, p.lastSynced)
					}
				}
			}
		})
	}
}

// scrape fetches url and returns the sample values by full name (with
// labels, as written).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The real listeners on 127.0.0.1:0: healthz answers, and the metrics
// carry kube-proxy's names and count what happened.
func TestServersAndMetrics(t *testing.T) {
	fb := &fakeBackend{}
	p, client := start(t, fb, Options{HealthzBindAddr: "127.0.0.1:0", MetricsBindAddr: "127.0.0.1:0"}, mkService("ns", "web"))
	waitModel(t, fb, "initial model", hasKeys(fk("10.96.0.10", 80, dataplane.TCP)))
	p.mu.Lock()
	healthz, metricsAddr := p.healthzAddr, p.metricsAddr
	p.mu.Unlock()

	resp, err := http.Get("http://" + healthz + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz: %s", resp.Status)
	}

	// An EndpointSlice change with a trigger time feeds the network
	// programming latency once its sync succeeded.
	s := mkSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.1", "", readyC))
	s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(bg, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitModel(t, fb, "the endpoint", func(m *dataplane.Model) bool {
		f := m.Frontends[fk("10.96.0.10", 80, dataplane.TCP)]
		return f != nil && len(f.Endpoints) == 1
	})

	var got map[string]float64
	waitFor(t, "network programming latency observed", func() bool {
		got = scrape(t, "http://"+metricsAddr+"/metrics")
		return got["kubeproxy_network_programming_duration_seconds_count"] >= 1
	})
	for name, min := range map[string]float64{
		"kubeproxy_sync_proxy_rules_duration_seconds_count":              2,
		"kubeproxy_sync_full_proxy_rules_duration_seconds_count":         1,
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_count":      1,
		"kubeproxy_network_programming_duration_seconds_count":           1,
		"kubeproxy_sync_proxy_rules_endpoint_changes_total":              1,
		"kubeproxy_sync_proxy_rules_service_changes_total":               1,
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds":              float64(time.Now().Add(-time.Hour).Unix()),
		`kubeproxy_proxy_healthz_total{code="200"}`:                      1,
		`kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"}`:  2,
		`kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"}`: 0,
	} {
		v, ok := got[name]
		if !ok {
			t.Errorf("metric %s missing", name)
		} else if v < min {
			t.Errorf("%s = %v, want >= %v", name, v, min)
		}
	}
	if _, ok := got["kubeproxy_sync_proxy_rules_endpoint_changes_pending"]; !ok {
		t.Error("kubeproxy_sync_proxy_rules_endpoint_changes_pending missing")
	}

	resp, err = http.Get("http://" + metricsAddr + "/proxyMode")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "fake" {
		t.Errorf("/proxyMode = %q, want the backend name", b)
	}
}

// Both servers stop when the context ends; the ports are free again.
func TestServersStopWithContext(t *testing.T) {
	fb := &fakeBackend{}
	var addr string
	func() {
		// A sub-test so its cleanup (cancel + wait for Run) runs here.
		t.Run("run", func(t *testing.T) {
			p, _ := start(t, fb, Options{HealthzBindAddr: "127.0.0.1:0"})
			waitFor(t, "initial sync", func() bool { return len(fb.snapshot()) >= 1 })
			p.mu.Lock()
			addr = p.healthzAddr
			p.mu.Unlock()
		})
	}()
	if addr == "" {
		t.Fatal("no healthz address")
	}
	c := &http.Client{Timeout: 5 * time.Second}
	if resp, err := c.Get("http://" + addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Errorf("healthz still answers after Run returned: %s", resp.Status)
	}
}
