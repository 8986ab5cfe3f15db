package perf

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
	"github.com/nsx-ujo/nsx-ujo/tests/images"
)

const startupPods = 20

// BenchmarkRealNode measures, on a two-node real-node cluster (kubelet +
// containerd; cluster.Options.RealNodes) per dataplane:
//   - pod startup: create -> Ready of 20 pods on one node, created at once
//     beside 20 hostNetwork pods (no CNI) created in the same batch, at rest
//     and with the other core busy;
//   - Service create -> first successful connection through its ClusterIP
//     from a pod on the other node, beside the same loop to the backend's
//     pod IP.
//
// Run with -benchtime=1x; NSX_BENCH_REPEAT repetitions of each.
func BenchmarkRealNode(b *testing.B) {
	harness.RequireRoot(b)
	binDir := b.TempDir()
	if err := cluster.BuildBinaries(binDir); err != nil {
		b.Fatal(err)
	}
	for _, dp := range []string{"ovs", "ebpf"} {
		b.Run(dp, func(b *testing.B) {
			sc := newScope(b) // one cluster at a time
			defer sc.close()
			c := cluster.Start(sc, cluster.Options{Nodes: 2, Dataplane: dp, BinDir: binDir, RealNodes: true})
			subject := "nsx " + dp
			for _, busy := range []bool{false, true} {
				cs := "20 pods create->Ready"
				if busy {
					cs += ", other core busy"
				}
				var p50, p90, bp50, bp90 []float64
				for i := 0; i < repeats(b); i++ {
					var stop func()
					if busy {
						stop = busyCore(b)
					}
					pod, host := podStartup(b, c, fmt.Sprintf("s%d%v", i, busy))
					if stop != nil {
						stop()
					}
					p50, p90 = append(p50, millis(pct(pod, .5))), append(p90, millis(pct(pod, .9)))
					bp50, bp90 = append(bp50, millis(pct(host, .5))), append(bp90, millis(pct(host, .9)))
				}
				record.Add(Figure{Bench: "real node", Case: cs + " p50", Subject: subject, Baseline: "hostNetwork pods", Unit: "ms", Values: p50, BaselineValues: bp50})
				record.Add(Figure{Bench: "real node", Case: cs + " p90", Subject: subject, Baseline: "hostNetwork pods", Unit: "ms", Values: p90, BaselineValues: bp90})
			}
			svc, direct := serviceFirstConnection(b, c)
			record.Add(Figure{Bench: "real node", Case: "Service create->first connection", Subject: subject + " ClusterIP", Baseline: "pod IP (same loop)", Unit: "ms", Values: svc, BaselineValues: direct})
		})
	}
}

// podStartup creates startupPods pods on node-1 and as many hostNetwork
// pods in one batch, and returns each pod's create -> Ready time (seen
// by a 20 ms poll), then deletes them and waits until they are gone.
func podStartup(b *testing.B, c *cluster.Cluster, tag string) (pod, host []time.Duration) {
	ctx := context.Background()
	node := c.Nodes[0].Name
	type started struct {
		name    string
		host    bool
		created time.Time
	}
	var all []started
	for i := 0; i < startupPods; i++ {
		for _, hostNet := range []bool{false, true} {
			name := fmt.Sprintf("startup-%s-%d", tag, i)
			if hostNet {
				name += "-host"
			}
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": "startup"}},
				Spec: corev1.PodSpec{
					NodeName:                      node,
					HostNetwork:                   hostNet,
					TerminationGracePeriodSeconds: new(int64),
					Containers:                    []corev1.Container{{Name: "c", Image: images.Pause}},
				},
			}
			t0 := time.Now()
			if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			all = append(all, started{name, hostNet, t0})
		}
	}
	ready := map[string]time.Duration{}
	deadline := time.Now().Add(3 * time.Minute)
	for len(ready) < len(all) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d startup pods Ready after 3m", len(ready), len(all))
		}
		list, err := c.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "bench=startup"})
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		for i := range list.Items {
			p := &list.Items[i]
			if _, ok := ready[p.Name]; !ok && cluster.PodReady(p) {
				for _, s := range all {
					if s.name == p.Name {
						ready[p.Name] = now.Sub(s.created)
					}
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range all {
		if s.host {
			host = append(host, ready[s.name])
		} else {
			pod = append(pod, ready[s.name])
		}
	}
	if err := c.Client.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)},
		metav1.ListOptions{LabelSelector: "bench=startup"}); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		list, err := c.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "bench=startup"})
		if err == nil && len(list.Items) == 0 {
			return pod, host
		}
		if time.Now().After(deadline) {
			b.Fatalf("startup pods not gone after 2m: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// serviceFirstConnection starts a backend (agnhost netexec) on node-2 and
// a client pod on node-1, then, per repetition, creates a Service and
// dials its ClusterIP from the client's netns every 5 ms until a
// connection succeeds; the baseline is the same loop to the backend's pod
// IP. The client dials from its netns directly: an exec through the API
// would cost more than what is measured.
func serviceFirstConnection(b *testing.B, c *cluster.Cluster) (svc, direct []float64) {
	ctx := context.Background()
	backend := startPod(b, c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "first-conn-backend", Labels: map[string]string{"app": "first-conn"}},
		Spec: corev1.PodSpec{NodeName: c.Nodes[1].Name, Containers: []corev1.Container{{Name: "c", Image: images.Agnhost,
			Args: []string{"netexec", "--http-port=8080"}}}},
	})
	client := startPod(b, c, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "first-conn-client"},
		Spec:       corev1.PodSpec{NodeName: c.Nodes[0].Name, Containers: []corev1.Container{{Name: "c", Image: images.Pause}}},
	})
	clientNS := podNetNS(b, c.Nodes[0], client)
	for i := 0; i < repeats(b); i++ {
		name := fmt.Sprintf("first-conn-%d", i)
		t0 := time.Now()
		s, err := c.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "first-conn"},
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		svc = append(svc, millis(dialUntil(b, clientNS, net.JoinHostPort(s.Spec.ClusterIP, "80"), t0)))
		direct = append(direct, millis(dialUntil(b, clientNS, net.JoinHostPort(backend.Status.PodIP, "8080"), time.Now())))
		if err := c.Client.CoreV1().Services("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	return svc, direct
}

func startPod(b *testing.B, c *cluster.Cluster, p *corev1.Pod) *corev1.Pod {
	ctx := context.Background()
	zero := int64(0)
	p.Spec.TerminationGracePeriodSeconds = &zero
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		got, err := c.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err == nil && cluster.PodReady(got) {
			return got
		}
		if time.Now().After(deadline) {
			b.Fatalf("pod %s not Ready after 2m: %v", p.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// podNetNS is the pod's network namespace, as nsx-node-agent recorded it
// on the pod's OVS interface.
func podNetNS(b *testing.B, n *cluster.Node, p *corev1.Pod) *harness.NetNS {
	iface := strings.TrimSpace(n.Vsctl(b, "--bare", "--columns=name", "find", "Interface", "external_ids:pod-uid="+string(p.UID)))
	if iface == "" {
		b.Fatalf("pod %s: no OVS interface with its pod-uid", p.Name)
	}
	path := strings.Trim(strings.TrimSpace(n.Vsctl(b, "get", "Interface", iface, "external_ids:netns")), `"`)
	return &harness.NetNS{Name: p.Name, Path: path}
}

// dialUntil dials addr from ns every 5 ms until a connection succeeds and
// returns the time since t0.
func dialUntil(b *testing.B, ns *harness.NetNS, addr string, t0 time.Time) time.Duration {
	deadline := t0.Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		conn, err := ns.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			d := time.Since(t0)
			conn.Close()
			return d
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s from %s: no connection within 1m: %v", addr, ns.Name, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
