// Package clusterbench holds benchmarks that run against a real multi-node
// cluster: the one the Vagrantfile brings up, where `make bench-cluster` on
// the control VM (hack/vagrant/bench-cluster.sh) runs them with KUBECONFIG
// set, once per dataplane. Unlike tests/perf, which builds its own nodes
// from network namespaces on one machine, everything here goes through the
// real path: scheduler-less pod creation on real kubelets and containerd,
// the nsx CNI plugin, nsx-node-agent, nsx-kube-proxy on each node, node-if
// trunks and the fabric VM's router.
//
//	BenchmarkClusterPodStartup  pods created in parallel over the workers, creation -> Running and
//	                            delete -> gone; baseline: the same pods with hostNetwork (no CNI)
//	BenchmarkClusterService     from a client pod on one worker to server pods on another: new
//	                            connections per second through the ClusterIP, baseline straight to
//	                            a pod IP; and Service creation -> first connection through it
//
// Knobs (environment): KUBECONFIG (required), NSX_CLUSTER_BENCH_IMAGE
// (nsx-ujo:latest, which holds tests/workload on the Vagrant nodes),
// NSX_CLUSTER_BENCH_PODS (20), NSX_CLUSTER_BENCH_CONNS (1000 per round),
// NSX_CLUSTER_BENCH_SERVICES (10). Each benchmark works in a namespace of
// its own, deleted at the end. Run with -benchtime=1x.
package clusterbench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

const (
	benchLabel   = "nsx-ujo.bench/role"
	podTimeout   = 5 * time.Minute
	execTimeout  = 5 * time.Minute
	nsxConfigMap = "nsx-node-agent-config"
	nsxNamespace = "nsx-system"
)

// cluster is what a benchmark needs of the cluster under test.
type cluster struct {
	kubeconfig string
	cs         kubernetes.Interface
	ns         string   // this benchmark's namespace
	workers    []string // Ready nodes without the control-plane role (else every Ready node)
	image      string
	dataplane  string // [nsx_kube_proxy] dataplane of the nsx-node-agent ConfigMap
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// connect fails b unless KUBECONFIG names a reachable cluster with nsx-ujo
// on it, and makes the benchmark's namespace (deleted in the cleanup).
func connect(b *testing.B) *cluster {
	b.Helper()
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		b.Fatal("KUBECONFIG is not set: these benchmarks run against a real cluster (make bench-cluster on the Vagrant control VM)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		b.Fatalf("KUBECONFIG %s: %v", kc, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	c := &cluster{kubeconfig: kc, cs: cs, image: os.Getenv("NSX_CLUSTER_BENCH_IMAGE")}
	if c.image == "" {
		c.image = "nsx-ujo:latest"
	}
	ctx := context.Background()

	cm, err := cs.CoreV1().ConfigMaps(nsxNamespace).Get(ctx, nsxConfigMap, metav1.GetOptions{})
	if err != nil {
		b.Fatalf("nsx-ujo's ConfigMap: %v", err)
	}
	ini, err := config.Parse([]byte(cm.Data["ncp.ini"]), nil)
	if err != nil {
		b.Fatalf("%s/%s ncp.ini: %v", nsxNamespace, nsxConfigMap, err)
	}
	c.dataplane = ini.KubeProxy.Dataplane

	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var all []string
	for _, n := range nodes.Items {
		if !nodeReady(&n) {
			continue
		}
		all = append(all, n.Name)
		if _, cp := n.Labels["node-role.kubernetes.io/control-plane"]; !cp {
			c.workers = append(c.workers, n.Name)
		}
	}
	if len(c.workers) == 0 {
		c.workers = all
	}
	if len(c.workers) == 0 {
		b.Fatal("no Ready node")
	}
	sort.Strings(c.workers)

	c.ns = fmt.Sprintf("nsx-bench-%06d", rand.Intn(1_000_000))
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: c.ns, Labels: map[string]string{"app.kubernetes.io/part-of": "nsx-ujo-bench"}}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.deleteNamespace(b) })
	return c
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// deleteNamespace removes the benchmark's namespace and waits until it is
// gone, so the next benchmark does not measure its teardown.
func (c *cluster) deleteNamespace(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), podTimeout)
	defer cancel()
	if err := c.cs.CoreV1().Namespaces().Delete(ctx, c.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		b.Errorf("delete namespace %s: %v", c.ns, err)
		return
	}
	for ctx.Err() == nil {
		if _, err := c.cs.CoreV1().Namespaces().Get(ctx, c.ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(time.Second)
	}
	b.Errorf("namespace %s still there after %s", c.ns, podTimeout)
}

// podSpec is a pod of the benchmark image pinned to node (no scheduler:
// the figures are the node's). args nil: a shell that waits for SIGTERM.
func (c *cluster) podSpec(name, role, node string, hostNetwork bool, args []string) *corev1.Pod {
	if args == nil {
		args = []string{"sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns, Labels: map[string]string{benchLabel: role}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			HostNetwork:                   hostNetwork,
			AutomountServiceAccountToken:  new(false),
			TerminationGracePeriodSeconds: new(int64(5)),
			Containers: []corev1.Container{{
				Name: "c", Image: c.image, ImagePullPolicy: corev1.PullIfNotPresent, Command: args,
			}},
		},
	}
}

// watchPods watches the namespace's pods of one role; the caller stops it.
func (c *cluster) watchPods(b *testing.B, role string) watch.Interface {
	b.Helper()
	w, err := c.cs.CoreV1().Pods(c.ns).Watch(context.Background(), metav1.ListOptions{LabelSelector: benchLabel + "=" + role})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// waitReady waits until every named pod is Running with all containers
// ready, failing b with the laggards' state after podTimeout.
func (c *cluster) waitReady(b *testing.B, names ...string) map[string]*corev1.Pod {
	b.Helper()
	deadline := time.Now().Add(podTimeout)
	for {
		got := map[string]*corev1.Pod{}
		var pending []string
		for _, n := range names {
			p, err := c.cs.CoreV1().Pods(c.ns).Get(context.Background(), n, metav1.GetOptions{})
			if err == nil && podReady(p) {
				got[n] = p
				continue
			}
			if err != nil {
				pending = append(pending, fmt.Sprintf("%s: %v", n, err))
			} else {
				pending = append(pending, fmt.Sprintf("%s: %s", n, podState(p)))
			}
		}
		if len(pending) == 0 {
			return got
		}
		if time.Now().After(deadline) {
			b.Fatalf("pods not ready within %s:\n%s", podTimeout, strings.Join(pending, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podState says why a pod is not running yet, for failure messages.
func podState(p *corev1.Pod) string {
	s := string(p.Status.Phase)
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			s += fmt.Sprintf(" (%s: %s)", w.Reason, w.Message)
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			s += fmt.Sprintf(" [%s: %s]", cond.Type, cond.Message)
		}
	}
	return s
}

// exec runs a shell script in a pod's container through kubectl and returns
// its stdout.
func (c *cluster) exec(b *testing.B, pod, script string) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := c.kubectl(ctx, "exec", pod, "-c", "c", "--", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("kubectl exec %s -- sh -c %q: %v\n%s%s", pod, script, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func (c *cluster) kubectl(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", c.kubeconfig, "-n", c.ns}, args...)...)
}

// shell is a long-running `sh` in a pod that runs one line of script per
// request and answers with one line.
type shell struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr bytes.Buffer
}

func (c *cluster) startShell(b *testing.B, pod, script string) *shell {
	b.Helper()
	s := &shell{cmd: c.kubectl(context.Background(), "exec", "-i", pod, "-c", "c", "--", "sh", "-c", script)}
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	s.stdout = bufio.NewReader(out)
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		s.stdin.Close()
		done := make(chan error, 1)
		go func() { done <- s.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-done
		}
	})
	return s
}

// ask sends one line and returns the answer line.
func (s *shell) ask(b *testing.B, line string) string {
	b.Helper()
	if _, err := fmt.Fprintln(s.stdin, line); err != nil {
		b.Fatalf("kubectl exec: write: %v: %s", err, s.stderr.String())
	}
	answer, err := s.stdout.ReadString('\n')
	if err != nil {
		b.Fatalf("kubectl exec: read: %v: %s", err, s.stderr.String())
	}
	return strings.TrimSpace(answer)
}

// pct is the p-th quantile (nearest rank) of ds, which it sorts.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(float64(len(ds))*p+0.999999) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
}

// service is a ClusterIP Service on port 80 selecting the role's pods' 8080.
func (c *cluster) service(name, role string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{benchLabel: role},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
}
