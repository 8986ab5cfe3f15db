package realnode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
	"github.com/nsx-ujo/nsx-ujo/tests/images"
)

// checkHostPort: a pod's hostPort (TCP and UDP on the same port number)
// answers on its node's address from outside the node (the fabric's
// router), from the other node and from the node itself: the runtime
// passes portMappings because the conflist's nsx plugin advertises the
// capability, and the agent serves them (pkg/nftables).
func checkHostPort(t *testing.T, c *cluster.Cluster) {
	ctx := context.Background()
	const hostPort = 31080
	node := c.Nodes[0]
	_, err := c.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostport"},
		Spec: corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "c", Image: images.Agnhost,
			Args: []string{"netexec", "--http-port=8080", "--udp-port=8081"},
			Ports: []corev1.ContainerPort{
				{ContainerPort: 8080, HostPort: hostPort, Protocol: corev1.ProtocolTCP},
				{ContainerPort: 8081, HostPort: hostPort, Protocol: corev1.ProtocolUDP},
			}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPodReady(t, c, "default", "hostport")
	target := fmt.Sprintf("%s:%d", node.IP, hostPort)
	for _, from := range []struct {
		name string
		ns   *harness.NetNS
	}{{"outside the node (fabric router)", c.Fabric.Router}, {"the other node", c.Nodes[1].NS}, {"the node itself", node.NS}} {
		tcp := eventually(func() (string, error) { return httpGet(from.ns, "http://"+target+"/hostname") })
		udp := eventually(func() (string, error) { return udpAsk(from.ns, target, "hostname") })
		if tcp != "hostport" || udp != "hostport" {
			t.Errorf("hostPort %s from %s: TCP answered %q, UDP %q; want the pod's name from both", target, from.name, tcp, udp)
		}
	}
}

// eventually retries f for up to 30 s (the portmap rules and the pod's
// server come up while the pod is already Ready) and returns its last
// answer, or the error as text.
func eventually(f func() (string, error)) string {
	var out string
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if out, err = f(); err == nil {
			return out
		}
	}
	return "error: " + err.Error()
}

func httpGet(ns *harness.NetNS, url string) (string, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: ns.DialContext, DisableKeepAlives: true}}
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

func udpAsk(ns *harness.NetNS, addr, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := ns.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := conn.(*net.UDPConn).Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}
