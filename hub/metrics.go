package hub

import "github.com/prometheus/client_golang/prometheus"

// metrics are the hub's Prometheus series, registered by the caller
// (Collectors) next to the HTTP ones on /metrics.
type metrics struct {
	subscriptions prometheus.Gauge
	slow          prometheus.Counter
	gapReads      prometheus.Counter
	resyncs       prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "runhub_hub_subscriptions", Help: "Run subscriptions (SSE, WebSocket and /ws) on this node.",
		}),
		slow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "runhub_hub_slow_consumers_total", Help: "Connections closed because their outbound queue overflowed.",
		}),
		gapReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "runhub_hub_gap_reads_total", Help: "Gaps in the broker's messages filled by one store read for the whole run.",
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "runhub_hub_resyncs_total", Help: "Runs whose subscribers were sent back to the store (broker reconnect, position check).",
		}),
	}
}

// Collectors returns the hub's metrics for a Prometheus registry.
func (h *Hub) Collectors() []prometheus.Collector {
	return []prometheus.Collector{h.m.subscriptions, h.m.slow, h.m.gapReads, h.m.resyncs}
}
