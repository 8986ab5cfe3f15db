package clusterbench

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	servers   = 3
	rounds    = 3 // interleaved rounds per path
	probeWait = 2 * time.Minute
)

// BenchmarkClusterService puts a client pod on the first worker and three
// `workload serve` pods on the last one (the same node when there is one
// worker), behind a ClusterIP Service, and measures from the client:
//
//   - new TCP connections per second (connect, read the greeting, close;
//     tests/workload get), NSX_CLUSTER_BENCH_CONNS per round, in rounds
//     alternating between the ClusterIP and, as the baseline, one server
//     pod's IP directly: the cost of the service NAT on real nodes and the
//     fabric's router;
//   - NSX_CLUSTER_BENCH_SERVICES times, from the Create call of a new
//     Service selecting the servers to the client's first connection
//     through its ClusterIP (the endpoint-slice controller, then
//     nsx-kube-proxy on the client's node): network programming latency.
//     The client polls in a loop, each attempt a new process with a 100 ms
//     timeout; its answer reaches the benchmark through kubectl exec.
func BenchmarkClusterService(b *testing.B) {
	c := connect(b)
	conns := envInt(b, "NSX_CLUSTER_BENCH_CONNS", 1000)
	nsvc := envInt(b, "NSX_CLUSTER_BENCH_SERVICES", 10)
	clientNode, serverNode := c.workers[0], c.workers[len(c.workers)-1]

	ctx := context.Background()
	names := []string{"client"}
	pods := []*corev1.Pod{c.podSpec("client", "client", clientNode, false, nil)}
	for i := range servers {
		name := fmt.Sprintf("server-%d", i)
		p := c.podSpec(name, "server", serverNode, false, []string{"workload", "serve", "--name", name, "--port", "8080"})
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "serve", ContainerPort: 8080}}
		// kubelet's probe also proves the node reaches the pod through the
		// fabric router.
		p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 1,
		}
		pods = append(pods, p)
		names = append(names, name)
	}
	for _, p := range pods {
		if _, err := c.cs.CoreV1().Pods(c.ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	ready := c.waitReady(b, names...)
	direct := net.JoinHostPort(ready["server-0"].Status.PodIP, "8080")

	svc, err := c.cs.CoreV1().Services(c.ns).Create(ctx, c.service("web", "server"), metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	// Until the endpoints are programmed: each attempt is one connection.
	c.exec(b, "client", fmt.Sprintf("end=$(($(date +%%s) + %d)); until workload get --addr %s --count 3 --timeout 1s >/dev/null 2>&1; do [ $(date +%%s) -lt $end ] || { echo 'ClusterIP %s never answered' >&2; exit 1; }; sleep 0.2; done",
		int(probeWait.Seconds()), vip, vip))

	type path struct {
		name, addr string
		total      time.Duration
	}
	paths := []*path{{name: "pod IP (baseline)", addr: direct}, {name: "ClusterIP", addr: vip}}
	for range b.N {
		for range rounds {
			for _, p := range paths {
				out := c.exec(b, "client", fmt.Sprintf("s=$(date +%%s%%N); workload get --addr %s --count %d >/dev/null || exit 1; e=$(date +%%s%%N); echo $((e - s))", p.addr, conns))
				ns, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
				if err != nil {
					b.Fatalf("timing of %s: %q", p.addr, out)
				}
				p.total += time.Duration(ns)
			}
		}
	}

	// Network programming: one long-running shell polls each VIP it reads.
	poller := c.startShell(b, "client", `while read addr; do until workload get --addr "$addr" --count 1 --timeout 100ms >/dev/null 2>&1; do :; done; echo ok; done`)
	var prog []time.Duration
	for i := range nsvc {
		t0 := time.Now()
		s, err := c.cs.CoreV1().Services(c.ns).Create(ctx, c.service(fmt.Sprintf("prog-%d", i), "server"), metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if got := poller.ask(b, net.JoinHostPort(s.Spec.ClusterIP, "80")); got != "ok" {
			b.Fatalf("poller answered %q", got)
		}
		prog = append(prog, time.Since(t0))
	}

	w := os.Stdout
	where := "another node"
	if clientNode == serverNode {
		where = "the same node (one worker)"
	}
	n := float64(b.N * rounds * conns)
	fmt.Fprintf(w, "\nService data path, dataplane %s: client pod on %s -> %d server pods on %s, %d x %d new TCP connections per path, rounds interleaved\n\n",
		c.dataplane, clientNode, servers, where, b.N*rounds, conns)
	fmt.Fprintln(w, "| dataplane | path | conn/s | vs pod IP |")
	fmt.Fprintln(w, "|---|---|---|---|")
	base := n / paths[0].total.Seconds()
	for _, p := range paths {
		rate := n / p.total.Seconds()
		fmt.Fprintf(w, "| %s | %s | %.0f | %.3f |\n", c.dataplane, p.name, rate, rate/base)
	}
	fmt.Fprintf(w, "\nNetwork programming, dataplane %s: Service Create -> first connection through its ClusterIP from a pod on %s, %d services (ms)\n\n", c.dataplane, clientNode, nsvc)
	fmt.Fprintln(w, "| dataplane | p50 | p99 | max |")
	fmt.Fprintln(w, "|---|---|---|---|")
	fmt.Fprintf(w, "| %s | %s | %s | %s |\n\n", c.dataplane, ms(pct(prog, .5)), ms(pct(prog, .99)), ms(pct(prog, 1)))
	b.ReportMetric(n/paths[1].total.Seconds()/base, c.dataplane+"-clusterip-conn-ratio")
	b.ReportMetric(float64(pct(prog, .5).Milliseconds()), c.dataplane+"-programming-p50-ms")
}
