package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// healthResponse is kube-proxy's /healthz and /livez body. Times marshal
// as RFC 3339 with nanoseconds.
type healthResponse struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	Healthy      bool      `json:"healthy"`
}

// health is the sync loop's health at now: unhealthy when a change was
// queued (or a sync failed) at least 2 x SyncPeriod ago and is still not
// applied.
func (p *Proxier) health(now time.Time) healthResponse {
	p.mu.Lock()
	defer p.mu.Unlock()
	oldest := p.queuedSince
	if !p.inflightSince.IsZero() && (oldest.IsZero() || p.inflightSince.Before(oldest)) {
		oldest = p.inflightSince
	}
	return healthResponse{
		LastUpdated: p.lastSynced,
		CurrentTime: now,
		Healthy:     oldest.IsZero() || now.Sub(oldest) < 2*p.o.SyncPeriod,
	}
}

// nodeEligible is false while our Node is being deleted or is tainted for
// deletion by the cluster autoscaler. A Node the cache does not hold (not
// registered, cache not started) counts as eligible: nsx-kube-proxy may
// run before kubelet registered the node.
func (p *Proxier) nodeEligible() bool {
	p.mu.Lock()
	lister := p.nodeLister
	p.mu.Unlock()
	if lister == nil {
		return true
	}
	node, err := lister.Get(p.o.NodeName)
	if err != nil {
		if !apierrors.IsNotFound(err) {
			p.log.Debug("reading our Node from the cache", zap.String("node", p.o.NodeName), zap.Error(err))
		}
		return true
	}
	if node.DeletionTimestamp != nil {
		return false
	}
	for _, t := range node.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

func (p *Proxier) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	h := p.health(time.Now())
	eligible := p.nodeEligible()
	h.NodeEligible = &eligible
	h.Healthy = h.Healthy && eligible
	p.writeHealth(w, h, p.m.healthzTotal)
}

func (p *Proxier) serveLivez(w http.ResponseWriter, _ *http.Request) {
	p.writeHealth(w, p.health(time.Now()), p.m.livezTotal)
}

func (p *Proxier) writeHealth(w http.ResponseWriter, h healthResponse, counter *prometheus.CounterVec) {
	code := http.StatusOK
	if !h.Healthy {
		code = http.StatusServiceUnavailable
	} else {
		// kube-proxy reports "now" as lastUpdated while healthy, for
		// clients of older releases; the metrics carry the real time.
		h.LastUpdated = h.CurrentTime
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()
	body, _ := json.Marshal(h)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

func (p *Proxier) metricsMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(p.m.reg, promhttp.HandlerOpts{}))
	// kube-proxy answers its mode here; ours is the dataplane.
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprint(w, p.backend.Name())
	})
	return mux
}

// serve listens on addr and serves h until ctx ends; wg tracks the server
// goroutines. It returns the bound address.
func serve(ctx context.Context, wg *sync.WaitGroup, log *zap.Logger, name, addr string, h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("%s server on %s: %w", name, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.Info("serving "+name, zap.String("address", ln.Addr().String()))
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(name+" server stopped", zap.Error(err))
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), nil
}
