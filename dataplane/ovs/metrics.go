package ovs

import "github.com/prometheus/client_golang/prometheus"

// Collectors are the OVS dataplane's own metrics, served by nsx-kube-proxy
// on /metrics (see proxy.MetricsCollector).
func (b *Backend) Collectors() []prometheus.Collector {
	stat := func(f func(Stats) float64) func() float64 { return func() float64 { return f(b.Stats()) } }
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "nsx_ovs", Name: "openflow_reconnects_total",
			Help: "Reconnections of the OpenFlow connection to ovs-vswitchd (restarts, dropped connections)"},
			func() float64 { return float64(b.reconnects()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "nsx_ovs", Name: "replays_total",
			Help: "Reinstalls of every Service after a reconnection to ovs-vswitchd"},
			stat(func(s Stats) float64 { return float64(s.Replays) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "nsx_ovs", Name: "last_replay_seconds",
			Help: "How long the last reinstall after a reconnection took"},
			stat(func(s Stats) float64 { return s.LastReplay.Seconds() })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "nsx_ovs", Name: "bundles_total",
			Help: "OpenFlow bundles committed"}, stat(func(s Stats) float64 { return float64(s.Bundles) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "nsx_ovs", Name: "openflow_round_trips_total",
			Help: "OpenFlow requests that waited for the switch's reply"}, func() float64 { return float64(b.of.RoundTrips()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "nsx_ovs", Name: "frontends_refused_total",
			Help: "Frontends the switch refused (see sync_proxy_rules_frontend_refused_total per Service)"},
			stat(func(s Stats) float64 { return float64(s.Refused) })),
	}
}

// reconnects is the connection's count when it has one.
func (b *Backend) reconnects() uint64 {
	if r, ok := b.of.(interface{ Reconnects() uint64 }); ok {
		return r.Reconnects()
	}
	return 0
}
