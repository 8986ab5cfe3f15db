package realnode

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/images"
)

// TestDeploymentPodsWiredByContainerd: a Deployment's pods are started by
// kubelet, wired by /opt/cni/bin/nsx called by containerd (the OVS port's
// external_ids name the pod), and a pod on one node reaches a ClusterIP
// whose backends run on the other, through an exec that goes apiserver ->
// kubelet -> containerd.
func TestDeploymentPodsWiredByContainerd(t *testing.T) {
	for _, dp := range []string{"ovs", "ebpf"} {
		t.Run(dp, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: dp, BinDir: binDir, RealNodes: true})
			checkDeploymentPods(t, c, "web")
			t.Run("hostPort", func(t *testing.T) { checkHostPort(t, c) })
		})
	}
}

// checkDeploymentPods runs a Deployment of two agnhost replicas on the
// second node behind a ClusterIP and a client pod on the first in
// namespace ns; each pod's OVS port names it, and the client reaches both
// replicas through the ClusterIP.
func checkDeploymentPods(t *testing.T, c *cluster.Cluster, ns string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	replicas := int32(2)
	labels := map[string]string{"app": "web"}
	_, err := c.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"kubernetes.io/hostname": c.Nodes[1].Name},
					Containers: []corev1.Container{{Name: "web", Image: images.Agnhost, Args: []string{"serve-hostname"},
						Ports:          []corev1.ContainerPort{{ContainerPort: 9376}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9376)}}, PeriodSeconds: 1}}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(9376)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec: corev1.PodSpec{NodeName: c.Nodes[0].Name,
			Containers: []corev1.Container{{Name: "client", Image: images.Agnhost, Args: []string{"pause"}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, c, ns, "app=web", 2)
	client = waitPodReady(t, c, ns, client.Name)

	// Wired by our plugin through containerd: the access port on
	// node-1's br-int carries the pod's identity.
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		node := c.Nodes[0]
		if p.Spec.NodeName == c.Nodes[1].Name {
			node = c.Nodes[1]
		}
		out := node.Vsctl(t, "--format=csv", "--no-headings", "--columns=external_ids", "find", "Interface",
			fmt.Sprintf("external_ids:pod-uid=%s", p.UID))
		if !strings.Contains(out, p.Name) {
			t.Errorf("pod %s on %s: no OVS interface with its pod-uid (got %q)", p.Name, node.Name, out)
		}
	}

	addr := fmt.Sprintf("%s:80", svc.Spec.ClusterIP)
	seen := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for len(seen) < 2 && time.Now().Before(deadline) {
		out, err := execIn(c, ns, client.Name, "curl", "-sS", "--max-time", "2", "http://"+addr+"/")
		if err == nil {
			seen[strings.TrimSpace(out)] = true
		} else {
			t.Logf("curl %s from %s: %v", addr, client.Name, err)
			time.Sleep(500 * time.Millisecond)
		}
	}
	if len(seen) < 2 {
		t.Fatalf("%s from pod %s on %s: answered by %v, want both replicas", addr, client.Name, client.Spec.NodeName, seen)
	}
}

func waitPodReady(t *testing.T, c *cluster.Cluster, ns, name string) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := c.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && cluster.PodReady(p) {
			return p
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("pod %s/%s not ready: %v", ns, name, err)
			}
			t.Fatalf("pod %s/%s not ready: %v", ns, name, p.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitReady(t *testing.T, c *cluster.Cluster, ns, selector string, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := c.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		ready := 0
		if err == nil {
			for i := range pods.Items {
				if cluster.PodReady(&pods.Items[i]) {
					ready++
				}
			}
		}
		if ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s: %d of %d ready (%v)", selector, ns, ready, n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// execIn runs a command in a pod's first container through the API
// (apiserver -> kubelet -> containerd), as kubectl exec does.
func execIn(c *cluster.Cluster, ns, pod string, cmd ...string) (string, error) {
	req := c.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	cfg, err := c.API.RESTConfig()
	if err != nil {
		return "", err
	}
	ex, err := remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return stdout.String(), fmt.Errorf("exec %v in %s/%s: %w: %s", cmd, ns, pod, err, stderr.String())
	}
	return stdout.String(), nil
}
