package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// healthCheck is one Service's health check as the sync loop computes it:
// the port to serve and how many of the Service's endpoints are ready on
// this node.
type healthCheck struct {
	port           int32
	localEndpoints int
}

// serviceHealthCheck returns the health check kube-proxy serves for svc:
// a LoadBalancer Service with externalTrafficPolicy Local has a
// healthCheckNodePort, which the cloud load balancer probes on every node
// to send traffic only to nodes with a local endpoint. The count is of
// distinct ready endpoint addresses on nodeName (kube-proxy's
// LocalReadyEndpoints: a pod serving two ports counts once), of the
// Service's primary family.
func serviceHealthCheck(svc *v1.Service, slices []*discovery.EndpointSlice, nodeName string) (healthCheck, bool) {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer || svc.Spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal ||
		svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 {
		return healthCheck{}, false
	}
	family := discovery.AddressTypeIPv4
	if len(svc.Spec.IPFamilies) > 0 && svc.Spec.IPFamilies[0] == v1.IPv6Protocol {
		family = discovery.AddressTypeIPv6
	}
	local := map[string]bool{}
	for _, s := range slices {
		if s.AddressType != family {
			continue
		}
		for _, e := range s.Endpoints {
			if len(e.Addresses) > 0 && e.NodeName != nil && *e.NodeName == nodeName &&
				(e.Conditions.Ready == nil || *e.Conditions.Ready) {
				local[e.Addresses[0]] = true
			}
		}
	}
	return healthCheck{port: svc.Spec.HealthCheckNodePort, localEndpoints: len(local)}, true
}

// serviceHealth serves the per-Service health checks, each on its own
// port, answering as kube-proxy does (pkg/proxy/healthcheck): 200 when the
// Service has a ready endpoint on this node and the proxy is healthy,
// else 503, with the same JSON body and X-Load-Balancing-Endpoint-Weight.
//
// sync is called by the proxier's sync loop only (one goroutine); the
// handlers read the counts under mu, so a probe never waits for a sync.
type serviceHealth struct {
	host    string      // listen address; "" listens on every address
	healthy func() bool // the proxy's own health (serviceProxyHealthy)
	log     *zap.Logger
	// failed reports a health check that could not listen (port taken);
	// the next sync tries again.
	failed func(svc types.NamespacedName, port int32, err error)

	mu     sync.RWMutex
	counts map[types.NamespacedName]int

	servers map[types.NamespacedName]*hcServer // owned by the sync loop
}

type hcServer struct {
	port int32
	srv  *http.Server
	done chan struct{}
}

func newServiceHealth(host string, healthy func() bool, log *zap.Logger, failed func(types.NamespacedName, int32, error)) *serviceHealth {
	return &serviceHealth{host: host, healthy: healthy, log: log, failed: failed,
		counts: map[types.NamespacedName]int{}, servers: map[types.NamespacedName]*hcServer{}}
}

// sync makes the served health checks equal to want: new counts at once,
// servers closed for Services gone or moved to another port, opened for
// new ones. Idempotent. A server that cannot listen is reported through
// failed and left out; the other Services are served regardless.
func (h *serviceHealth) sync(want map[types.NamespacedName]healthCheck) {
	h.mu.Lock()
	clear(h.counts)
	for name, hc := range want {
		h.counts[name] = hc.localEndpoints
	}
	h.mu.Unlock()
	for name, s := range h.servers {
		if hc, ok := want[name]; !ok || hc.port != s.port {
			h.stop(name, s)
		}
	}
	for name, hc := range want {
		if _, ok := h.servers[name]; ok {
			continue
		}
		if err := h.start(name, hc.port); err != nil {
			h.failed(name, hc.port, err)
		}
	}
}

func (h *serviceHealth) start(name types.NamespacedName, port int32) error {
	addr := net.JoinHostPort(h.host, strconv.Itoa(int(port)))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health check of %s on %s: %w", name, addr, err)
	}
	s := &hcServer{port: port, done: make(chan struct{}),
		srv: &http.Server{Handler: h.handler(name), ReadHeaderTimeout: 10 * time.Second}}
	h.servers[name] = s
	h.log.Info("serving a Service health check", zap.Stringer("service", name), zap.String("address", ln.Addr().String()))
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("Service health check server stopped", zap.Stringer("service", name), zap.Error(err))
		}
	}()
	return nil
}

// stop closes a server and waits for it: its port is free on return.
func (h *serviceHealth) stop(name types.NamespacedName, s *hcServer) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
	delete(h.servers, name)
	h.log.Info("stopped a Service health check", zap.Stringer("service", name), zap.Int32("port", s.port))
}

// close stops every server.
func (h *serviceHealth) close() {
	for name, s := range h.servers {
		h.stop(name, s)
	}
}

func (h *serviceHealth) handler(name types.NamespacedName) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h.mu.RLock()
		count := h.counts[name]
		h.mu.RUnlock()
		healthy := h.healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
		if count != 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		// kube-proxy's exact text (load balancers and tests compare it).
		fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
			name.Namespace, name.Name, count, healthy)
	})
}
