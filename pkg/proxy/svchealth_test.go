package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nsx-ujo/nsx-ujo/dataplane"
)

// freePort returns a TCP port nothing listens on at the moment.
func freePort(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return int32(ln.Addr().(*net.TCPAddr).Port)
}

func probe(port int32) (int, string, string, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Load-Balancing-Endpoint-Weight"), err
}

func hcBody(ns, name string, n int, healthy bool) string {
	return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}", ns, name, n, healthy)
}

// A LoadBalancer Service with externalTrafficPolicy Local gets kube-proxy's
// health check on its healthCheckNodePort: 503 without a ready endpoint on
// this node, 200 with the count of local ready addresses (a pod serving two
// ports counts once) as endpoints move; the port closes when the policy
// goes back to Cluster.
func TestServiceHealthCheck(t *testing.T) {
	port := freePort(t)
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = port
		s.Spec.Ports = []v1.ServicePort{sport("http", v1.ProtocolTCP, 80), sport("https", v1.ProtocolTCP, 443)}
	}
	fb := &fakeBackend{}
	_, client := start(t, fb, Options{ServiceHealthHost: "127.0.0.1"}, mkService("ns", "web", lb))

	want := func(what string, code, n int) {
		t.Helper()
		waitFor(t, what, func() bool {
			got, body, weight, err := probe(port)
			return err == nil && got == code && body == hcBody("ns", "web", n, true) && weight == fmt.Sprint(n)
		})
	}
	want("503 without endpoints", http.StatusServiceUnavailable, 0)

	ports := []discovery.EndpointPort{eport("http", v1.ProtocolTCP, 8080), eport("https", v1.ProtocolTCP, 8443)}
	s := mkSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, ports,
		endpoint("10.1.0.1", testNode, readyC), endpoint("10.1.0.2", testNode, readyC),
		endpoint("10.1.0.3", testNode, notReadyC), endpoint("10.1.0.4", "node-b", readyC))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(bg, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("200 with the two local ready endpoints", http.StatusOK, 2)

	s.Endpoints = []discovery.Endpoint{endpoint("10.1.0.4", "node-b", readyC)}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(bg, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("503 once the local endpoints left", http.StatusServiceUnavailable, 0)

	svc, err := client.CoreV1().Services("ns").Get(bg, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	if _, err := client.CoreV1().Services("ns").Update(bg, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the port closed with policy Cluster", func() bool {
		_, _, _, err := probe(port)
		return err != nil
	})
}

// A health check port already taken does not stop the others, and is
// served once it is free.
func TestServiceHealthCheckPortTaken(t *testing.T) {
	taken, free := freePort(t), freePort(t)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", taken))
	if err != nil {
		t.Fatal(err)
	}
	lb := func(port int32) func(*v1.Service) {
		return func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.HealthCheckNodePort = port
		}
	}
	fb := &fakeBackend{}
	_, client := start(t, fb, Options{ServiceHealthHost: "127.0.0.1", SyncPeriod: 200 * time.Millisecond},
		mkService("ns", "a", lb(taken), withIPs("10.96.0.11")), mkService("ns", "b", lb(free), withIPs("10.96.0.12")))
	waitFor(t, "b served", func() bool {
		code, body, _, err := probe(free)
		return err == nil && code == http.StatusServiceUnavailable && body == hcBody("ns", "b", 0, true)
	})
	waitFor(t, "a Warning Event on a", func() bool {
		evs, err := client.CoreV1().Events("ns").List(bg, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedToStartServiceHealthcheck" && e.InvolvedObject.Name == "a" {
				return true
			}
		}
		return false
	})
	ln.Close()
	waitFor(t, "a served after its port was freed (next resync)", func() bool {
		_, body, _, err := probe(taken)
		return err == nil && body == hcBody("ns", "a", 0, true)
	})
}

// A frontend the dataplane keeps refusing (another Service's) does not
// hold back the health checks: they follow every sync that applied the
// rest.
func TestServiceHealthCheckDespiteRefusedFrontend(t *testing.T) {
	port := freePort(t)
	fb := &fakeBackend{}
	fb.setHook(func(context.Context, int) error {
		return &dataplane.FrontendErrors{Failed: []dataplane.FrontendError{{Key: fk("10.96.0.99", 80, dataplane.TCP),
			Name: dataplane.ServicePortName{Namespace: "ns", Name: "bad"}, Err: errors.New("refused")}}}
	})
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = port
	}
	_, client := start(t, fb, Options{ServiceHealthHost: "127.0.0.1"}, mkService("ns", "web", lb),
		mkService("ns", "bad", withIPs("10.96.0.99")))
	s := mkSlice("ns", "web", "web-1", discovery.AddressTypeIPv4, httpEP, endpoint("10.1.0.1", testNode, readyC))
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(bg, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "200 for web while bad is refused", func() bool {
		code, body, _, err := probe(port)
		return err == nil && code == http.StatusOK && body == hcBody("ns", "web", 1, true)
	})
}
