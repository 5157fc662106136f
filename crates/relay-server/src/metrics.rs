//! Prometheus metrics (`GET /metrics`), through the Prometheus project's `prometheus-client`.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use relay_core::Hub;
use relay_proto::{CloseCode, ErrorCode};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: &'static str,
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    code: u16,
}

/// The server's metrics. Hub-side figures (connections, subscriptions, deliveries, WebSocket
/// errors) are read from the hub at scrape time; transport figures are counted as they happen.
pub struct Metrics {
    registry: Registry,
    scrape: Mutex<()>,
    connections: Gauge,
    subscriptions: Gauge,
    channels: Gauge,
    presence: Gauge,
    replay_bytes: Gauge,
    held_signals: Gauge,
    replays_refused: Counter,
    deliveries: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) frames_out: Counter,
    errors: Family<ErrorLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
    publish_latency: Histogram,
    pub(crate) handshakes_refused: Counter,
    refused: Family<RefusalLabels, Counter>,
    node: Family<NodeLabels, Gauge>,
    cluster_degraded: Gauge,
    cluster_routed_channels: Gauge,
    cluster_events: Counter,
    cluster_transport_messages: Counter,
    cluster_transport_bytes: Counter,
    cluster_dropped: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let metrics = Self {
            scrape: Mutex::new(()),
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            presence: Gauge::default(),
            replay_bytes: Gauge::default(),
            held_signals: Gauge::default(),
            replays_refused: Counter::default(),
            deliveries: Counter::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            errors: Family::default(),
            closes: Family::default(),
            // 50 µs .. ~1.6 s
            publish_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            handshakes_refused: Counter::default(),
            refused: Family::default(),
            node: Family::default(),
            cluster_degraded: Gauge::default(),
            cluster_routed_channels: Gauge::default(),
            cluster_events: Counter::default(),
            cluster_transport_messages: Counter::default(),
            cluster_transport_bytes: Counter::default(),
            cluster_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "subscriptions",
            "Channel subscriptions",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "channels",
            "Channels with local subscribers",
            metrics.channels.clone(),
        );
        registry.register(
            "presence_entries",
            "Online (user, channel) pairs",
            metrics.presence.clone(),
        );
        registry.register(
            "replay_bytes",
            "Bytes of replayed history held (read for recoveries or queued, not yet written)",
            metrics.replay_bytes.clone(),
        );
        registry.register(
            "held_signals",
            "Signals held for targets not connected (or awaiting another node's delivered)",
            metrics.held_signals.clone(),
        );
        registry.register(
            "replays_refused",
            "Recoveries answered recovered:false for the replay byte limits",
            metrics.replays_refused.clone(),
        );
        registry.register(
            "deliveries",
            "Messages handed to subscribers",
            metrics.deliveries.clone(),
        );
        registry.register(
            "frames_in",
            "WebSocket frames received",
            metrics.frames_in.clone(),
        );
        registry.register(
            "frames_out",
            "WebSocket frames sent",
            metrics.frames_out.clone(),
        );
        registry.register(
            "errors",
            "Error replies by code and transport",
            metrics.errors.clone(),
        );
        registry.register(
            "closes",
            "WebSocket closes sent, by close code",
            metrics.closes.clone(),
        );
        registry.register(
            "publish_latency_seconds",
            "Time from receiving a publish to its ack (store commit and fan-out)",
            metrics.publish_latency.clone(),
        );
        registry.register(
            "auth_failures",
            "Connections and requests refused for their token",
            metrics.handshakes_refused.clone(),
        );
        registry.register(
            "refusals",
            "Connections and requests refused by a limit or origin check, by reason",
            metrics.refused.clone(),
        );
        registry.register(
            "node",
            "This node of a cluster (value 1, labelled with its node id)",
            metrics.node.clone(),
        );
        registry.register(
            "cluster_degraded",
            "1 while the cluster backplane is degraded (NATS unreachable, say; /readyz says why)",
            metrics.cluster_degraded.clone(),
        );
        registry.register(
            "cluster_routed_channels",
            "Channels this node receives cluster traffic for (NATS interest routing)",
            metrics.cluster_routed_channels.clone(),
        );
        registry.register(
            "cluster_events",
            "Channel traffic other nodes sent this one (messages, commit pointers, signals; presence and evictions aside)",
            metrics.cluster_events.clone(),
        );
        registry.register(
            "cluster_transport_messages",
            "Messages the cluster transport received for this node (NATS; presence and heartbeats included)",
            metrics.cluster_transport_messages.clone(),
        );
        registry.register(
            "cluster_transport_bytes",
            "Bytes the cluster transport received for this node (NATS)",
            metrics.cluster_transport_bytes.clone(),
        );
        registry.register(
            "cluster_dropped_events",
            "Cluster events not sent (queue full or transport unreachable); commits among them are announced later",
            metrics.cluster_dropped.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Exports this node's id (cluster nodes).
    pub(crate) fn node_id(&self, node_id: &str) {
        self.node
            .get_or_create(&NodeLabels {
                node_id: node_id.to_owned(),
            })
            .set(1);
    }

    /// Counts a REST error reply.
    pub(crate) fn rest_error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&ErrorLabels {
                code: code.as_str(),
                transport: "rest",
            })
            .inc();
    }

    /// Counts a connection or request refused by a limit (`max_connections_per_ip`, …).
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts a close frame sent.
    pub(crate) fn close(&self, code: CloseCode) {
        self.closes
            .get_or_create(&CloseLabels { code: code.code() })
            .inc();
    }

    /// Records one publish's latency.
    pub(crate) fn publish_latency(&self, seconds: f64) {
        self.publish_latency.observe(seconds);
    }

    /// The text exposition, with hub figures read now.
    pub fn render(&self, hub: &Hub) -> String {
        let _one_scrape_at_a_time = self.scrape.lock();
        let stats = hub.stats();
        self.connections.set(stats.connections as i64);
        self.subscriptions.set(stats.subscriptions as i64);
        self.channels.set(stats.channels as i64);
        self.presence.set(stats.presence_entries as i64);
        self.replay_bytes.set(stats.replay_bytes as i64);
        self.held_signals.set(stats.held_signals as i64);
        let counters = hub.counters();
        catch_up(&self.cluster_events, counters.cluster_received);
        if let Some(status) = hub.backplane_status() {
            self.cluster_degraded
                .set(i64::from(status.degraded.is_some()));
            self.cluster_routed_channels
                .set(status.routed_channels.unwrap_or(0) as i64);
            catch_up(&self.cluster_transport_messages, status.received_messages);
            catch_up(&self.cluster_transport_bytes, status.received_bytes);
            catch_up(&self.cluster_dropped, status.dropped_events);
        }
        catch_up(&self.deliveries, counters.delivered);
        catch_up(&self.replays_refused, counters.replays_refused);
        for (code, total) in counters.errors {
            if total > 0 {
                let labels = ErrorLabels {
                    code: code.as_str(),
                    transport: "ws",
                };
                catch_up(&self.errors.get_or_create(&labels), total);
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Advances a counter to a running total kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
