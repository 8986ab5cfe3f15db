// Package chaos is the fault-injection suite: a steady load on the local
// multi-node cluster (real binaries, real kube-apiserver, OVS and eBPF),
// and while it runs one fault at a time, at a seeded random point, on each
// dataplane. Each fault's figures (established connections broken, new
// connections failed and the longest gap, the UDP loss window, the time
// until the node converges) go into one table. make test runs a short
// version (one of each fault, a 5 s API outage); make chaos the long one.
package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

var (
	seed    = flag.Uint64("chaos.seed", 1, "seed of the fault order and injection points")
	repeats = flag.Int("chaos.repeats", 1, "each fault this many times per dataplane")
	apiDown = flag.Duration("chaos.api-down", 5*time.Second, "how long kube-apiserver is down")
	busy    = flag.Bool("chaos.busy", false, "keep one core busy (a spinning process) for the whole run")
)

// held is the long-lived connections of the load.
const held = 8

var (
	api    *harness.APIServer
	binDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if code, ok := harness.MainRequiresRoot("tests/chaos"); !ok {
		os.Exit(code)
	}
	dir, cleanup, err := cluster.BinariesForMain("tests/chaos", "netns, OVS, eBPF")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	s, stop, err := harness.StartAPIServerMain()
	if err != nil {
		cleanup()
		fmt.Fprintln(os.Stderr, "kube-apiserver:", err)
		os.Exit(1)
	}
	api = s
	code := m.Run()
	stop()
	cleanup()
	os.Exit(code)
}

// fault is one thing that goes wrong on node-1; inject returns once it was
// repaired (the daemon restarted, the API back).
type fault struct {
	name string
	// daemon: an nsx-ujo daemon's restart, which must break no
	// established connection; api: the dataplane must keep forwarding,
	// new connections included.
	daemon, api bool
	inject      func(r *faultRun)
	// causes are the log entries that tell an operator what happened
	// (one is enough); unseen, when set, is why the daemons may not
	// notice the fault at all, so that a missing entry is reported and
	// not failed.
	causes []cause
	unseen string
}

// faultRun is what a fault's injection acts on.
type faultRun struct {
	t     *testing.T
	c     *cluster.Cluster
	dp    string
	churn *churn
	rng   *rand.Rand
}

// clientGo is what the daemons' client-go loggers say of an API failure.
var clientGo = []cause{{daemon: "nsx-kube-proxy", clientGo: true}, {daemon: "nsx-node-agent", clientGo: true}}

// pluginKills is how many pod starts the plugin-killed fault interrupts.
const pluginKills = 20

func faults(apiDown time.Duration) []fault {
	return []fault{
		{name: "nsx-kube-proxy killed (-9), restarted", daemon: true, inject: func(r *faultRun) {
			n := r.c.Nodes[0]
			n.Proxy.Kill()
			n.StartProxy(r.t, r.dp)
		}, causes: []cause{{daemon: "nsx-kube-proxy", msg: "found the services of an earlier nsx-kube-proxy"}}},
		// The churn's ADDs and DELs in flight die with the agent (the
		// plugin gets no answer); kubelet's DEL is retried until the
		// agent is back.
		{name: "nsx-node-agent killed (-9), restarted", daemon: true, inject: func(r *faultRun) {
			n := r.c.Nodes[0]
			n.Agent.Kill()
			n.StartAgent(r.t)
		}, causes: []cause{{daemon: "nsx-node-agent", msg: "found the pod ports of an earlier nsx-node-agent"}}},
		// On the userspace datapath ovs-vswitchd holds conntrack: its
		// restart loses it (the kernel datapath keeps it in the kernel).
		// Measured, no target here.
		{name: "nsx-ovs restarted (SIGTERM: flows saved and restored)", inject: func(r *faultRun) {
			r.c.Nodes[0].RestartOVS(r.t, false)
		}, causes: []cause{{daemon: "nsx-ovs", msg: "restored saved flows"}}},
		{name: "nsx-ovs killed (-9), restarted", inject: func(r *faultRun) {
			r.c.Nodes[0].RestartOVS(r.t, true)
		}, causes: []cause{{daemon: "nsx-ovs", msg: "the previous nsx-ovs saved no flows"}}},
		// nsx-ovs exits when one of its OVS daemons dies and is
		// restarted (kubelet's job; the test's here).
		{name: "ovs-vswitchd killed (-9), nsx-ovs restarted", inject: func(r *faultRun) {
			r.c.Nodes[0].KillOVSDaemon(r.t, "ovs-vswitchd")
		}, causes: []cause{{daemon: "nsx-ovs", msg: "failed", err: "ovs-vswitchd exited"}}},
		{name: "ovsdb-server killed (-9), nsx-ovs restarted", inject: func(r *faultRun) {
			r.c.Nodes[0].KillOVSDaemon(r.t, "ovsdb-server")
		}, causes: []cause{{daemon: "nsx-ovs", msg: "failed", err: "ovsdb-server exited"}}},
		// kubelet restarting the node DaemonSet's pod: ovs-vswitchd
		// restarts with the rest, so no target on the userspace
		// datapath (as for nsx-ovs alone).
		{name: "node pod restarted (every container SIGTERM, then started)", inject: func(r *faultRun) {
			r.c.Nodes[0].RestartPod(r.t)
		}, causes: []cause{{daemon: "nsx-ovs", msg: "restored saved flows"}}},
		// state_dir full: the stop cannot save the flows (said in the
		// log), and the restart must not need to write there.
		{name: "state_dir full, nsx-ovs restarted (SIGTERM)", inject: func(r *faultRun) {
			n := r.c.Nodes[0]
			free := n.FillStateDir(r.t)
			defer free()
			n.RestartOVS(r.t, false)
		}, causes: []cause{{daemon: "nsx-ovs", msg: "stopping Open vSwitch", err: "no space left on device"}}},
		{name: fmt.Sprintf("kube-apiserver down %s", apiDown), api: true, inject: func(r *faultRun) {
			r.c.API.Freeze(r.t)
			time.Sleep(apiDown)
			r.c.API.Thaw(r.t)
		}, causes: clientGo, unseen: "a frozen API server cuts nothing: idle watches wait, and client-go's HTTP/2 health check needs 45 s"},
		// Every request answered with a 500, watches cut.
		{name: fmt.Sprintf("kube-apiserver answering 500s %s", apiDown), api: true, inject: func(r *faultRun) {
			r.c.Front.SetMode(harness.FrontErrors)
			time.Sleep(apiDown)
			r.c.Front.SetMode(harness.FrontPass)
		}, causes: clientGo},
		// The API server stays up and answers errors until etcd is back.
		{name: "etcd killed (-9), restarted", api: true, inject: func(r *faultRun) {
			r.c.API.RestartEtcd(r.t)
		}, causes: clientGo, unseen: "kube-apiserver keeps the watches open while etcd is away"},
		// A runtime's timeout kills the plugin at a random point of the
		// ADD; the runtime then tears the sandbox down with a DEL.
		{name: fmt.Sprintf("CNI plugin killed (-9) mid-ADD, %d pods", pluginKills), daemon: true, inject: func(r *faultRun) {
			r.churn.killPluginsMidAdd(r.rng, pluginKills)
		}, causes: []cause{{daemon: "nsx-node-agent", msg: "the CNI plugin hung up before its answer"}}},
	}
}

// row is one fault's figures.
type row struct {
	dataplane, fault string
	load             conformance.LoadResult
	churn            churnResult
	converge         time.Duration
	cause            string // the log entry naming the cause, or why none
}

func TestChaos(t *testing.T) {
	rng := rand.New(rand.NewPCG(*seed, 0xc4a05))
	var rows []row
	if *busy {
		// A compile or another pod on the node, as in the benchmarks.
		spin := exec.Command("sh", "-c", "while :; do :; done")
		if err := spin.Start(); err != nil {
			t.Fatalf("busy loop: %v", err)
		}
		t.Cleanup(func() { _ = spin.Process.Kill(); _ = spin.Wait() })
	}
	for _, dp := range []string{"ovs", "ebpf"} {
		t.Run(dp, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: dp, BinDir: binDir, API: api, APIFront: true, StateDirSize: "16m"})
			n1, n2 := c.Nodes[0], c.Nodes[1]
			ns := "chaos-" + dp
			if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			web := map[string]string{"app": "web"}
			webPod := c.RunPod(t, ns, "web-1", n1, cluster.PodOptions{Labels: web, Serve: 8080})
			c.RunPod(t, ns, "web-2", n2, cluster.PodOptions{Labels: web, Serve: 8080})
			clientPod, proberPod := c.RunPod(t, ns, "client", n1, cluster.PodOptions{}), c.RunPod(t, ns, "prober", n1, cluster.PodOptions{})
			client, prober := loadPod(clientPod), loadPod(proberPod)
			svc, err := c.Client.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
				Spec: corev1.ServiceSpec{Selector: web, Ports: []corev1.ServicePort{
					{Name: "tcp", Port: 80, TargetPort: intstr.FromString("serve"), Protocol: corev1.ProtocolTCP},
					{Name: "udp", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolUDP}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			vip := svc.Spec.ClusterIP + ":80"
			converged(t, n1, time.Minute)
			var plan []fault
			for r := 0; r < *repeats; r++ {
				plan = append(plan, faults(*apiDown)...)
			}
			rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
			live := []*cluster.Pod{webPod, clientPod, proberPod}
			churned := 0
			for _, f := range plan {
				// A seeded point in the load's first second.
				before := 300*time.Millisecond + time.Duration(rng.IntN(700))*time.Millisecond
				var conv time.Duration
				ch := startChurn(c, n1, ns, &churned)
				t.Cleanup(ch.halt)
				mark, procs := markLogs(n1), daemons(n1)
				res, err := conformance.MeasureUnderLoad(client, prober, vip, conformance.LoadOptions{Held: held, UDP: true, Before: before, NewEvery: 10 * time.Millisecond},
					func() {
						f.inject(&faultRun{t: t, c: c, dp: dp, churn: ch, rng: rng})
						conv = converged(t, n1, 2*time.Minute)
					})
				pods, churnErrs, lerr := ch.finish(live)
				if err != nil {
					t.Fatalf("%s: %v", f.name, err)
				}
				if lerr != nil {
					t.Fatalf("%s: %v", f.name, lerr)
				}
				entries, err := mark.since(n1, procs)
				if err != nil {
					t.Fatalf("%s: the daemons' logs: %v", f.name, err)
				}
				said := found(entries, f.causes)
				switch {
				case said != "":
					t.Logf("%s: the cause is in the log: %s", f.name, said)
				case f.unseen != "":
					said = "not seen by the daemons: " + f.unseen
				default:
					said = "**none**"
					t.Errorf("%s on %s: no daemon logged the cause (want one of %+v)", f.name, dp, f.causes)
				}
				rows = append(rows, row{dataplane: dp, fault: f.name, load: res, churn: pods, converge: conv, cause: said})
				t.Logf("%s: pod churn: %d of %d ADDs failed (%d plugins killed mid-ADD), left behind: %v", f.name, pods.Failed, pods.Adds, pods.Killed, pods.Leftovers)
				for _, e := range churnErrs {
					t.Logf("  pod churn: %s", e)
				}
				if len(pods.Leftovers) > 0 {
					t.Errorf("%s on %s left pods half-configured (the target is none): %v", f.name, dp, pods.Leftovers)
				}
				t.Logf("%s: %d/%d established broken, %d/%d new failed (longest gap %s), UDP %d/%d lost (window %s), converged %s after",
					f.name, res.Broken, held, res.Failed, res.Tried, res.LongestGap.Round(time.Millisecond), res.UDPLost, res.UDPAsked,
					res.UDPLossWindow.Round(time.Millisecond), conv.Round(time.Millisecond))
				for i, fl := range res.Failures {
					if i == 20 {
						t.Logf("  ... %d more", len(res.Failures)-i)
						break
					}
					t.Logf("  new connection failed at %s", fl)
				}
				// The targets.
				if f.daemon && res.Broken > 0 {
					t.Errorf("%s on %s broke %d of %d established connections; the target is 0", f.name, dp, res.Broken, held)
				}
				if f.api && (res.Broken > 0 || res.Failed > 0) {
					t.Errorf("with %s the %s dataplane broke %d established and failed %d new connections; it must keep forwarding", f.name, dp, res.Broken, res.Failed)
				}
			}
		})
	}
	fmt.Print(table(rows))
}

// loadPod is a cluster pod as the load drives it.
func loadPod(p *cluster.Pod) *conformance.Pod {
	return &conformance.Pod{Name: p.Name, NS: p.NS, IP: p.IP}
}

// converged waits until nsxctl on n finds the dataplane equal to the API's
// model and no stale pod attachment, and returns how long that took.
func converged(t *testing.T, n *cluster.Node, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		svcOut, svcCode := n.Nsxctl(t, "--timeout", "5s", "services")
		podOut, podCode := n.Nsxctl(t, "--timeout", "5s", "pods")
		if svcCode == 0 && podCode == 0 {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s did not converge in %s:\n$ nsxctl services (exit %d)\n%s\n$ nsxctl pods (exit %d)\n%s", n.Name, limit, svcCode, svcOut, podCode, podOut)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func table(rows []row) string {
	var b strings.Builder
	machine := "at rest"
	if *busy {
		machine = "one core busy"
	}
	fmt.Fprintf(&b, "\nFaults under load (%d established TCP connections, a new one every 10 ms, UDP every 50 ms, pod churn on the node; %s; seed %d)\n\n", held, machine, *seed)
	fmt.Fprintln(&b, "| dataplane | fault | established broken | new conns failed / tried | longest gap | UDP lost / asked | UDP loss window | pod ADDs failed / tried | pods left half-configured | converged after | cause logged |")
	fmt.Fprintln(&b, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %d | %d / %d | %d ms | %d / %d | %d ms | %d / %d | %d | %d ms | %s |\n", r.dataplane, r.fault, r.load.Broken,
			r.load.Failed, r.load.Tried, r.load.LongestGap.Milliseconds(), r.load.UDPLost, r.load.UDPAsked,
			r.load.UDPLossWindow.Milliseconds(), r.churn.Failed, r.churn.Adds, len(r.churn.Leftovers), r.converge.Milliseconds(), r.cause)
	}
	if *repeats > 1 {
		b.WriteString(summary(rows))
	}
	return b.String()
}

// summary folds the repeats of each fault on each dataplane into one row:
// counts summed, durations as min-max, the causes logged counted.
func summary(rows []row) string {
	type agg struct {
		n, broken, failed, tried, udpLost, udpAsked, addsFailed, adds, left, logged int
		gap, window, conv                                                           [2]time.Duration
		cause                                                                       string
	}
	span := func(s *[2]time.Duration, d time.Duration, first bool) {
		if first || d < s[0] {
			s[0] = d
		}
		if first || d > s[1] {
			s[1] = d
		}
	}
	var order []string
	by := map[string]*agg{}
	for _, r := range rows {
		k := r.fault + "\x00" + r.dataplane
		a := by[k]
		if a == nil {
			a = &agg{}
			by[k] = a
			order = append(order, k)
		}
		first := a.n == 0
		a.n++
		a.broken += r.load.Broken
		a.failed += r.load.Failed
		a.tried += r.load.Tried
		a.udpLost += r.load.UDPLost
		a.udpAsked += r.load.UDPAsked
		a.addsFailed += r.churn.Failed
		a.adds += r.churn.Adds
		a.left += len(r.churn.Leftovers)
		span(&a.gap, r.load.LongestGap, first)
		span(&a.window, r.load.UDPLossWindow, first)
		span(&a.conv, r.converge, first)
		if !strings.HasPrefix(r.cause, "not seen") && r.cause != "**none**" {
			a.logged++
			if a.cause == "" {
				a.cause = r.cause
			}
		} else if a.cause == "" && strings.HasPrefix(r.cause, "not seen") {
			a.cause = r.cause
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i] < order[j] })
	ms := func(s [2]time.Duration) string {
		if s[0].Round(time.Millisecond) == s[1].Round(time.Millisecond) {
			return fmt.Sprintf("%d ms", s[0].Milliseconds())
		}
		return fmt.Sprintf("%d-%d ms", s[0].Milliseconds(), s[1].Milliseconds())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nBy fault, %d repeats: sums, and min-max of the durations\n\n", *repeats)
	fmt.Fprintln(&b, "| fault | dataplane | established broken | new conns failed / tried | longest gap | UDP lost / asked | UDP loss window | pod ADDs failed / tried | pods left half-configured | converged after | cause logged |")
	fmt.Fprintln(&b, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, k := range order {
		a := by[k]
		fault, dp, _ := strings.Cut(k, "\x00")
		fmt.Fprintf(&b, "| %s | %s | %d of %d | %d / %d | %s | %d / %d | %s | %d / %d | %d | %s | %d of %d: %s |\n", fault, dp, a.broken, held*a.n,
			a.failed, a.tried, ms(a.gap), a.udpLost, a.udpAsked, ms(a.window), a.addsFailed, a.adds, a.left, ms(a.conv), a.logged, a.n, a.cause)
	}
	return b.String()
}
