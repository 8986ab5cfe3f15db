package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are kube-proxy's, under the same names, so dashboards and alerts
// written for kube-proxy keep working. One sync covers both IP families, so
// there is no ip_family label. They live in a registry of the Proxier's own.
type metrics struct {
	reg *prometheus.Registry

	syncDuration        prometheus.Histogram
	fullSyncDuration    prometheus.Histogram
	partialSyncDuration prometheus.Histogram
	networkProgramming  prometheus.Histogram
	lastSyncTimestamp   prometheus.Gauge
	endpointChanges     prometheus.Counter
	serviceChanges      prometheus.Counter
	endpointPending     prometheus.Gauge
	servicePending      prometheus.Gauge
	syncFailures        prometheus.Counter
	frontendRefused     *prometheus.CounterVec
	healthzTotal        *prometheus.CounterVec
	livezTotal          *prometheus.CounterVec
}

func mergeBuckets(bs ...[]float64) []float64 {
	var out []float64
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func newMetrics() *metrics {
	const ns = "kubeproxy"
	syncBuckets := prometheus.ExponentialBuckets(0.001, 2, 15)
	m := &metrics{
		reg: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "sync_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds", Buckets: syncBuckets,
		}),
		fullSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "sync_full_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for full resyncs", Buckets: syncBuckets,
		}),
		partialSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "sync_partial_proxy_rules_duration_seconds",
			Help: "SyncProxyRules latency in seconds for partial resyncs", Buckets: syncBuckets,
		}),
		networkProgramming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "network_programming_duration_seconds",
			Help: "In Cluster Network Programming Latency in seconds",
			Buckets: mergeBuckets(
				prometheus.LinearBuckets(0.25, 0.25, 2), // 0.25s, 0.5s
				prometheus.LinearBuckets(1, 1, 59),      // 1s .. 59s
				prometheus.LinearBuckets(60, 5, 12),     // 60s .. 115s
				prometheus.LinearBuckets(120, 30, 7),    // 2min .. 5min
			),
		}),
		lastSyncTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "The last time proxy rules were successfully synced",
		}),
		endpointChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "sync_proxy_rules_endpoint_changes_total",
			Help: "Cumulative proxy rules Endpoint changes",
		}),
		serviceChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "sync_proxy_rules_service_changes_total",
			Help: "Cumulative proxy rules Service changes",
		}),
		endpointPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "sync_proxy_rules_endpoint_changes_pending",
			Help: "Pending proxy rules Endpoint changes",
		}),
		servicePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "sync_proxy_rules_service_changes_pending",
			Help: "Pending proxy rules Service changes",
		}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "sync_proxy_rules_backend_failures_total",
			Help: "Cumulative failed dataplane syncs (nsx-kube-proxy only)",
		}),
		frontendRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "sync_proxy_rules_frontend_refused_total",
			Help: "Cumulative Service frontends the dataplane refused while the others were applied (nsx-kube-proxy only)",
		}, []string{"namespace", "service"}),
		healthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status",
		}, []string{"code"}),
		livezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status",
		}, []string{"code"}),
	}
	m.reg.MustRegister(m.syncDuration, m.fullSyncDuration, m.partialSyncDuration, m.networkProgramming,
		m.lastSyncTimestamp, m.endpointChanges, m.serviceChanges, m.endpointPending, m.servicePending,
		m.syncFailures, m.frontendRefused, m.healthzTotal, m.livezTotal,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
