//! Prometheus metrics. The names and label sets are a contract (dashboards and alerts rely
//! on them); see the README's Operations section.
//!
//! The `app` label is the app's slug, for at most `metrics.max_app_labels` distinct apps; later
//! apps share the label `other`, so a node with many apps cannot blow up the series count.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::usage::Usage;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a connection stopped counting for an app.
#[derive(Debug, Clone, Copy)]
pub enum CloseReason {
    /// The client left the app's last topic.
    Left,
    /// The client closed the socket or the transport failed.
    Client,
    Idle,
    SlowConsumer,
    /// A frame over the size limit.
    TooBig,
    /// Malformed or unsupported frames.
    Protocol,
    /// The app was deactivated, renamed or deleted.
    AppClosed,
    /// The node is shutting down.
    Shutdown,
}

impl CloseReason {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Left => "left",
            CloseReason::Client => "client",
            CloseReason::Idle => "idle",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooBig => "too_big",
            CloseReason::Protocol => "protocol",
            CloseReason::AppClosed => "app_closed",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

struct Inner {
    registry: Registry,
    connections: IntGaugeVec,
    connections_opened: IntCounterVec,
    connections_closed: IntCounterVec,
    joins: IntCounterVec,
    events_published: IntCounterVec,
    messages_delivered: IntCounterVec,
    messages_dropped: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    bus_publish_duration: Histogram,
    bus_subscriptions: IntGauge,
    bus_reconnects: IntCounter,
    bus_messages_received: IntCounter,
    process_resident: IntGauge,
    process_fds: IntGauge,
    process_cpu: Gauge,
    max_app_labels: usize,
    labelled_apps: Mutex<HashSet<String>>,
    usage: Usage,
}

/// Cheap to clone; always present (never optional).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} registered once: {e}"));
    metric
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| unreachable!("metric registered once: {e}"));
    metric
}

impl Metrics {
    #[must_use]
    pub fn new(max_app_labels: usize) -> Metrics {
        let r = Registry::new();
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new("pushlite_build_info", "Build information; always 1."),
                &["version"],
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let inner = Inner {
            connections: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "pushlite_connections",
                        "Sockets joined to at least one topic of the app.",
                    ),
                    &["app"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            connections_opened: counter(
                &r,
                "pushlite_connections_opened_total",
                "Sockets that joined their first topic of the app.",
                &["app"],
            ),
            connections_closed: counter(
                &r,
                "pushlite_connections_closed_total",
                "Sockets that stopped counting for the app, by reason.",
                &["app", "reason"],
            ),
            joins: counter(
                &r,
                "pushlite_joins_total",
                "phx_join requests by result.",
                &["app", "scope", "result"],
            ),
            events_published: counter(
                &r,
                "pushlite_events_published_total",
                "Events accepted by this node, by source (http or client).",
                &["app", "source"],
            ),
            messages_delivered: counter(
                &r,
                "pushlite_messages_delivered_total",
                "Frames queued to local subscribers.",
                &["app"],
            ),
            messages_dropped: counter(
                &r,
                "pushlite_messages_dropped_total",
                "Frames not delivered to a local subscriber, by reason.",
                &["app", "reason"],
            ),
            http_requests: counter(
                &r,
                "pushlite_http_requests_total",
                "HTTP requests by matched route pattern, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pushlite_http_request_duration_seconds",
                        "HTTP request duration by matched route pattern.",
                    )
                    .buckets(latency_buckets.clone()),
                    &["route"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            bus_publish_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pushlite_bus_publish_duration_seconds",
                        "Time to publish one message on the bus.",
                    )
                    .buckets(latency_buckets),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            bus_subscriptions: register(
                &r,
                IntGauge::new(
                    "pushlite_bus_subscriptions",
                    "Topics this node subscribes on the bus.",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            bus_reconnects: register(
                &r,
                IntCounter::new("pushlite_bus_reconnects_total", "Reconnects to Redis.")
                    .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            bus_messages_received: register(
                &r,
                IntCounter::new(
                    "pushlite_bus_messages_received_total",
                    "Messages this node's bus subscriber received.",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            process_resident: register(
                &r,
                IntGauge::new(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            process_fds: register(
                &r,
                IntGauge::new("process_open_fds", "Number of open file descriptors.")
                    .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            process_cpu: register(
                &r,
                Gauge::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            registry: r,
            max_app_labels,
            labelled_apps: Mutex::new(HashSet::new()),
            usage: Usage::default(),
        };
        Metrics(Arc::new(inner))
    }

    /// The label for `slug`: itself for the first `max_app_labels` apps seen, else `other`.
    fn app<'a>(&self, slug: &'a str) -> &'a str {
        let mut seen = self
            .0
            .labelled_apps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen.contains(slug) {
            return slug;
        }
        if seen.len() < self.0.max_app_labels {
            seen.insert(slug.to_owned());
            return slug;
        }
        "other"
    }

    /// Per-app usage for the admin stats API, counted at the same points as the metrics.
    #[must_use]
    pub fn usage(&self) -> &Usage {
        &self.0.usage
    }

    pub fn connection_opened(&self, slug: &str) {
        self.0.usage.connection(slug, 1);
        let app = self.app(slug);
        self.0.connections.with_label_values(&[app]).inc();
        self.0.connections_opened.with_label_values(&[app]).inc();
    }

    pub fn connection_closed(&self, slug: &str, reason: CloseReason) {
        self.0.usage.connection(slug, -1);
        let app = self.app(slug);
        self.0.connections.with_label_values(&[app]).dec();
        self.0
            .connections_closed
            .with_label_values(&[app, reason.as_str()])
            .inc();
    }

    /// `slug` and `scope` are `none` for topics that name no app.
    pub fn join(&self, slug: &str, scope: &str, result: &str) {
        let app = self.app(slug);
        self.0.joins.with_label_values(&[app, scope, result]).inc();
    }

    pub fn published(&self, slug: &str, source: &str) {
        self.0.usage.published(slug);
        let app = self.app(slug);
        self.0
            .events_published
            .with_label_values(&[app, source])
            .inc();
    }

    pub fn delivered(&self, slug: &str, count: u64) {
        self.0.usage.delivered(slug, count);
        let app = self.app(slug);
        self.0
            .messages_delivered
            .with_label_values(&[app])
            .inc_by(count);
    }

    pub fn dropped(&self, slug: &str, reason: &str, count: u64) {
        let app = self.app(slug);
        self.0
            .messages_dropped
            .with_label_values(&[app, reason])
            .inc_by(count);
    }

    pub fn http_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.0
            .http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.0
            .http_duration
            .with_label_values(&[route])
            .observe(seconds);
    }

    pub fn bus_published(&self, seconds: f64) {
        self.0.bus_publish_duration.observe(seconds);
    }

    pub fn bus_subscriptions(&self, count: usize) {
        self.0
            .bus_subscriptions
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn bus_reconnected(&self) {
        self.0.bus_reconnects.inc();
    }

    pub fn bus_received(&self) {
        self.0.bus_messages_received.inc();
    }

    /// The text exposition, with process metrics read now.
    #[must_use]
    pub fn render(&self) -> String {
        self.sample_process();
        let mut buffer = Vec::new();
        let families = self.0.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Reads /proc/self; on systems without it the process metrics stay at zero.
    fn sample_process(&self) {
        const PAGE_SIZE: i64 = 4096;
        const TICKS_PER_SECOND: f64 = 100.0;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, after)) = stat.rsplit_once(')')
        {
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            self.0
                .process_cpu
                .set((ticks(11) + ticks(12)) / TICKS_PER_SECOND);
            let pages = fields
                .get(21)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            self.0.process_resident.set(pages * PAGE_SIZE);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.0
                .process_fds
                .set(i64::try_from(entries.count()).unwrap_or(i64::MAX));
        }
    }
}
