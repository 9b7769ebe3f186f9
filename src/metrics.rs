//! Prometheus metrics. The names and label sets are a contract (dashboards and alerts rely
//! on them); see the README's Operations section.
//!
//! The `app` label is the app's slug, for at most `metrics.max_app_labels` distinct apps; later
//! apps share the label `other`, so a node with many apps cannot blow up the series count.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::usage::Usage;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `method` label of an HTTP request: the standard methods by name, any extension method
/// (hyper accepts tokens of any length) as `other`.
#[must_use]
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

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
    /// The socket kept pushing client events past its rate limit.
    RateLimited,
    /// The rights the channel was joined with lapsed: token expired, secret rotated, origin
    /// no longer allowed.
    Revoked,
    /// The app's server ended the user's connections (Pusher `terminate_connections`).
    Terminated,
    /// A Pusher client did not answer the server's ping.
    PongTimeout,
    /// Events of a channel with history went missing on the way to this node, or its history
    /// was lost: the channel is errored so that the client rejoins and recovers.
    Resync,
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
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Revoked => "revoked",
            CloseReason::Terminated => "terminated",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::Resync => "resync",
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
    accept_errors: IntCounter,
    bus_publish_duration: Histogram,
    bus_subscriptions: IntGauge,
    bus_reconnects: IntCounter,
    bus_messages_received: IntCounter,
    bus_bytes_received: IntCounter,
    webhooks_sent: IntCounterVec,
    webhook_delivery: Histogram,
    webhook_queue_depth: IntGauge,
    console_logins: IntCounterVec,
    limit_refusals: IntCounterVec,
    debug_records: IntCounterVec,
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
        // The standard process_* metrics, read from /proc with the kernel's page size and
        // clock tick rate.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .unwrap_or_else(|e| unreachable!("process metrics registered once: {e}"));
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let inner = Inner {
            connections: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "pushlite_connections",
                        "Sockets joined to at least one topic of the app, by protocol.",
                    ),
                    &["app", "protocol"],
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            connections_opened: counter(
                &r,
                "pushlite_connections_opened_total",
                "Sockets that joined their first topic of the app, by protocol.",
                &["app", "protocol"],
            ),
            connections_closed: counter(
                &r,
                "pushlite_connections_closed_total",
                "Sockets that stopped counting for the app, by protocol and reason.",
                &["app", "protocol", "reason"],
            ),
            joins: counter(
                &r,
                "pushlite_joins_total",
                "Joins (phx_join) and subscriptions (pusher:subscribe) by channel kind and result.",
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
            accept_errors: register(
                &r,
                IntCounter::new(
                    "pushlite_http_accept_errors_total",
                    "Failed accepts on the HTTP listeners (such as running out of file descriptors).",
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
            bus_bytes_received: register(
                &r,
                IntCounter::new(
                    "pushlite_bus_bytes_received_total",
                    "Bytes (channel name and payload) of the Redis pub/sub messages this node received.",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            webhooks_sent: counter(
                &r,
                "pushlite_webhooks_sent_total",
                "Webhook requests by result: ok (2xx), error (retried), dropped (given up).",
                &["app", "result"],
            ),
            webhook_delivery: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pushlite_webhook_delivery_seconds",
                        "From an event queued to its webhook answered 2xx.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        300.0,
                    ]),
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            webhook_queue_depth: register(
                &r,
                IntGauge::new(
                    "pushlite_webhook_queue_depth",
                    "Webhook events queued and not yet delivered (cluster-wide with Redis).",
                )
                .unwrap_or_else(|e| unreachable!("{e}")),
            ),
            console_logins: counter(
                &r,
                "pushlite_console_logins_total",
                "Web console login attempts by result (ok or failed).",
                &["result"],
            ),
            limit_refusals: counter(
                &r,
                "pushlite_limit_refusals_total",
                "Requests, connections, joins and events refused by a limit or quota, by limit.",
                &["limit"],
            ),
            debug_records: counter(
                &r,
                "pushlite_console_debug_records_total",
                "Debug stream records this node sent for watched apps, or skipped over console.debug_rate.",
                &["outcome"],
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

    /// `protocol` is [`crate::protocol::Wire::label`]: `phoenix` or `pusher`.
    pub fn connection_opened(&self, slug: &str, protocol: &'static str) {
        self.0.usage.connection(slug, 1);
        let app = self.app(slug);
        self.0.connections.with_label_values(&[app, protocol]).inc();
        self.0
            .connections_opened
            .with_label_values(&[app, protocol])
            .inc();
    }

    /// This node's connections of `slug`, for the quotas.
    #[must_use]
    pub fn app_connections(&self, slug: &str) -> i64 {
        self.0.usage.connections(slug)
    }

    pub fn connection_closed(&self, slug: &str, protocol: &'static str, reason: CloseReason) {
        self.0.usage.connection(slug, -1);
        let app = self.app(slug);
        self.0.connections.with_label_values(&[app, protocol]).dec();
        self.0
            .connections_closed
            .with_label_values(&[app, protocol, reason.as_str()])
            .inc();
    }

    /// `app` is the slug of a registered app, or `None` when the topic names no app the
    /// registry knows: only registered apps may take one of the `max_app_labels` slots.
    /// `scope` is `none` for topics that name no scope.
    pub fn join(&self, app: Option<&str>, scope: &str, result: &str) {
        let app = app.map_or("none", |slug| self.app(slug));
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

    /// `route` is a matched route pattern (or `unmatched`) and `method` one of
    /// [`method_label`]'s values: both come from closed sets, whatever a client sends.
    pub fn http_request(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        self.0
            .http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.0
            .http_duration
            .with_label_values(&[route])
            .observe(seconds);
    }

    pub fn accept_error(&self) {
        self.0.accept_errors.inc();
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

    pub fn bus_bytes_received(&self, bytes: usize) {
        self.0.bus_bytes_received.inc_by(bytes as u64);
    }

    /// `result` is `ok`, `error` or `dropped`.
    pub fn webhook_sent(&self, slug: &str, result: &'static str) {
        let app = self.app(slug);
        self.0.webhooks_sent.with_label_values(&[app, result]).inc();
    }

    pub fn webhook_delivered(&self, seconds: f64) {
        self.0.webhook_delivery.observe(seconds);
    }

    pub fn webhook_queue_depth(&self, depth: u64) {
        self.0
            .webhook_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// `result` is `ok` or `failed`.
    pub fn console_login(&self, result: &'static str) {
        self.0.console_logins.with_label_values(&[result]).inc();
    }

    pub fn limit_refused(&self, limit: crate::limits::Limit) {
        self.0
            .limit_refusals
            .with_label_values(&[limit.label()])
            .inc();
    }

    /// `outcome` is `sent` or `skipped`.
    pub fn debug_record(&self, outcome: &'static str) {
        self.0.debug_records.with_label_values(&[outcome]).inc();
    }

    /// The text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let families = self.0.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
