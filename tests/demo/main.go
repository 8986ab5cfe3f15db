// Command nsx-demo is `make demo`: a two-node cluster on real parts (etcd,
// kube-apiserver, OVS, eBPF, our binaries), a ClusterIP Service with three
// backends spread over both nodes, served first by the OVS dataplane, then
// by the eBPF one. -config-source hyperbus (make demo
// CONFIG_SOURCE=hyperbus) gives the pods their configs over HyperBus.
// Ctrl-C tears everything down; `nsx-demo down` (make demo-down) removes
// what a killed run left.
//
//	nsx-demo [-nodes N] [-config-source annotation|hyperbus]
//	nsx-demo down
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

func say(format string, args ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "down" {
		harness.SweepLeftovers(func(format string, args ...any) { say(format, args...) })
		say("removed what dead demo and test runs left (netns, temp dirs, cgroups, bpffs mounts)")
		return
	}
	nodes := flag.Int("nodes", 2, "nodes of the cluster (2 or more)")
	source := flag.String("config-source", string(cluster.FromAnnotation), "where pods get their network config: annotation or hyperbus")
	flag.Parse()
	if *nodes < 2 {
		fmt.Fprintf(os.Stderr, "nsx-demo: -nodes %d: want 2 or more\n", *nodes)
		os.Exit(2)
	}
	src := cluster.ConfigSource(*source)
	if src != cluster.FromAnnotation && src != cluster.FromHyperBus {
		fmt.Fprintf(os.Stderr, "nsx-demo: -config-source %q: want %s or %s\n", *source, cluster.FromAnnotation, cluster.FromHyperBus)
		os.Exit(2)
	}
	p := harness.NewProgram("nsx-demo")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		say("interrupted: tearing down (processes, namespaces, OVS, pinned maps, temp dirs)")
		p.Interrupt()
		say("torn down")
		os.Exit(130)
	}()
	start := time.Now()
	demo(p, *nodes, src)
	say("tearing down (processes, namespaces, OVS, pinned maps, temp dirs)")
	p.Close()
	say("done in %s", time.Since(start).Round(time.Second))
	if p.Failed() {
		os.Exit(1)
	}
}

func demo(t testing.TB, nodes int, src cluster.ConfigSource) {
	bin := t.TempDir()
	say("building the binaries")
	if err := cluster.BuildBinaries(bin); err != nil {
		t.Fatal(err)
	}
	c := cluster.Start(t, cluster.Options{Nodes: nodes, Dataplane: "ovs", BinDir: bin, Progress: say, ConfigSource: src})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	say("creating pods: web-1 on %s, web-2 and web-3 on %s, client on %s", n1.Name, n2.Name, n1.Name)
	web := map[string]string{"app": "web"}
	pods := []*cluster.Pod{
		c.RunPod(t, "demo", "web-1", n1, cluster.PodOptions{Labels: web, Serve: 8080}),
		c.RunPod(t, "demo", "web-2", n2, cluster.PodOptions{Labels: web, Serve: 8080}),
		c.RunPod(t, "demo", "web-3", n2, cluster.PodOptions{Labels: web, Serve: 8080}),
	}
	client := c.RunPod(t, "demo", "client", n1, cluster.PodOptions{})
	from := "ncp/network_config from the NCP stand-in"
	if src == cluster.FromHyperBus {
		from = "config pushed by the fabric's HyperBus over VLAN 4094"
	}
	for _, p := range append(pods, client) {
		say("  %-7s %-7s %s (%s, wired by nsx-node-agent)", p.Name, p.Node.Name, p.IP, from)
	}
	if src == cluster.FromHyperBus {
		for _, p := range append(pods, client) {
			waitAttached(t, p)
		}
		say("  nsx-node-agent reported every pod attached over its HyperBus session")
	}
	svc, err := c.Client.CoreV1().Services("demo").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"},
		Spec:       corev1.ServiceSpec{Selector: web, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("serve")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP + ":80"
	say("Service demo/web: ClusterIP %s -> web-1, web-2, web-3 :8080", vip)

	for _, dp := range []string{"ovs", "ebpf"} {
		if dp != "ovs" {
			say("switching every node to the %s dataplane", dp)
			for _, n := range c.Nodes {
				n.StartProxy(t, dp)
			}
		}
		say("[%s] 30 requests from client (%s) to %s:", dp, n1.Name, vip)
		counts := waitAll(t, client, vip, []string{"web-1", "web-2", "web-3"})
		var keys []string
		for k := range counts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			say("  %s answered %d", k, counts[k])
		}
		say("[%s] what %s holds for the service (excerpt):", dp, n1.Name)
		fmt.Println(excerpt(n1.Dump(t), 14))
		say("[%s] $ nsxctl services demo/   (on %s: read back from the dataplane, checked against the API)", dp, n1.Name)
		out, code := n1.Nsxctl(t, "services", "demo/")
		fmt.Println(excerpt(out, 10))
		if code != 0 {
			t.Fatalf("nsxctl services: exit %d", code)
		}
		say("[%s] $ nsxctl trace --from demo/client --to %s", dp, vip)
		out, code = n1.Nsxctl(t, "trace", "--from", "demo/client", "--to", vip)
		fmt.Println(excerpt(out, 12))
		if code != 0 {
			t.Fatalf("nsxctl trace: exit %d", code)
		}
	}
}

// waitAttached waits for the agent's HyperBus status of p: attached.
func waitAttached(t testing.TB, p *cluster.Pod) {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		m, ok := p.Node.HyperBus.Status(p.Namespace, p.Name)
		if ok && m.State == "attached" && m.Error == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("HyperBus status of %s: %+v", p.Name, m)
		}
	}
}

// waitAll retries until all backends answered within one round of 30.
func waitAll(t testing.TB, client *cluster.Pod, vip string, want []string) map[string]int {
	deadline := time.Now().Add(60 * time.Second)
	for {
		names, err := client.Get(t, vip, 30)
		counts := map[string]int{}
		for _, n := range names {
			counts[n]++
		}
		ok := err == nil
		for _, w := range want {
			ok = ok && counts[w] > 0
		}
		if ok {
			return counts
		}
		if time.Now().After(deadline) {
			t.Fatalf("client reached %v (%v), want all of %v", counts, err, want)
		}
		time.Sleep(time.Second)
	}
}

func excerpt(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("  ... (%d more lines)", len(lines)-n))
	}
	return "  " + strings.Join(lines, "\n  ")
}
