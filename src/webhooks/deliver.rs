//! Delivery: takes queued events, posts them to every webhook of their app that wants them,
//! signed as Pusher signs them, and retries with exponential backoff until a 2xx or the end of
//! the retry window. An event is marked done only when every webhook had its answer, so a node
//! that dies mid-way leaves its events to be taken over (at least once, never lost).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use super::{Job, Retry, Status, WebhookStore};
use crate::config::WebhooksConfig;
use crate::domain::app::App;
use crate::domain::signature::sign;
use crate::domain::webhook::{Webhook, check_url, is_private};
use crate::metrics::Metrics;
use crate::registry::AppRegistry;

/// How long one read of the queue waits for an event.
const TAKE_WAIT: Duration = Duration::from_millis(1000);
/// After the queue could not be read (Redis down), the next try.
const TAKE_RETRY: Duration = Duration::from_millis(500);

/// The HTTP client of webhooks.
pub type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// The HTTP client for webhooks: HTTP/1.1 over TCP or TLS (Mozilla's roots), redirects never
/// followed (one could lead anywhere), and a resolver that refuses private addresses unless
/// they are allowed, so a public name that resolves inside the cluster is refused too.
///
/// # Errors
/// The TLS configuration could not be built.
pub fn client(config: &WebhooksConfig) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new_with_resolver(Resolver {
        allow_private: config.allow_private_targets,
    });
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| e.to_string())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Name resolution for webhooks, refusing private addresses unless they are allowed.
#[derive(Clone)]
pub struct Resolver {
    allow_private: bool,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let addrs: Vec<SocketAddr> = found
                .filter(|addr| allow_private || !is_private(addr.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{} resolves to no public address (webhooks.allow_private_targets is off)",
                    name.as_str()
                )));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Everything a delivery needs.
pub struct Delivery {
    pub config: WebhooksConfig,
    pub store: Arc<dyn WebhookStore>,
    pub registry: Arc<dyn AppRegistry>,
    pub metrics: Metrics,
    pub client: HttpClient,
}

/// Runs the node's delivery: the queue reader, the ticker that fires due leaves and retries and
/// samples the queue depth, and the renewal of this node's events.
pub fn start(delivery: Delivery) {
    let delivery = Arc::new(delivery);
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    tokio::spawn(tick(delivery.clone()));
    tokio::spawn(keep(delivery.clone(), held.clone()));
    tokio::spawn(read(delivery, held));
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn tick(delivery: Arc<Delivery>) {
    let every = Duration::from_millis((delivery.config.leave_delay_ms / 4).clamp(50, 1000));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        match delivery.store.fire_due().await {
            Ok(dropped) => {
                for app in dropped {
                    tracing::warn!(%app, "webhook event dropped: the queue is full or the retry unreadable");
                    delivery.metrics.webhook_sent(&app, "dropped");
                }
            }
            Err(error) => tracing::warn!(%error, "webhooks: due leaves and retries not moved"),
        }
        if sampled.elapsed() >= Duration::from_secs(1) {
            sampled = tokio::time::Instant::now();
            if let Ok(depth) = delivery.store.depth().await {
                delivery.metrics.webhook_queue_depth(depth);
            }
        }
    }
}

/// Renews this node's events every third of `claim_idle`, on its own timer: nothing else the
/// node does may delay it into looking dead.
async fn keep(delivery: Arc<Delivery>, held: Arc<Mutex<HashSet<String>>>) {
    let mut ticker =
        tokio::time::interval(Duration::from_millis(delivery.config.claim_idle_ms / 3));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ids: Vec<String> = held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        if let Err(error) = delivery.store.keep(&ids).await {
            tracing::warn!(%error, "webhooks: in-flight events not kept; another node may take them over");
        }
    }
}

async fn read(delivery: Arc<Delivery>, held: Arc<Mutex<HashSet<String>>>) {
    let config = &delivery.config;
    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    let hold = |jobs: &[Job]| {
        held.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(jobs.iter().map(|job| job.id.clone()));
    };
    loop {
        // Only this loop takes permits: whatever is free now stays free until it takes it.
        match permits.acquire().await {
            Ok(free) => drop(free),
            Err(_) => return,
        }
        let room = permits.available_permits().min(config.batch_max);
        let mut jobs = match delivery.store.take(room, TAKE_WAIT).await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "webhooks: queue not readable");
                tokio::time::sleep(TAKE_RETRY).await;
                continue;
            }
        };
        if jobs.is_empty() {
            continue;
        }
        hold(&jobs);
        if jobs.len() < room && config.batch_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.batch_delay_ms)).await;
            if let Ok(more) = delivery.store.take(room - jobs.len(), Duration::ZERO).await {
                hold(&more);
                jobs.extend(more);
            }
        }
        for (app, jobs) in by_app(jobs) {
            let count = u32::try_from(jobs.len()).unwrap_or(u32::MAX);
            let Ok(permit) = permits.clone().acquire_many_owned(count).await else {
                return;
            };
            let (delivery, held) = (delivery.clone(), held.clone());
            tokio::spawn(async move {
                let ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
                let retries = delivery.deliver_app(&app, jobs).await;
                delivery.finish(&ids, &retries).await;
                let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
                for id in &ids {
                    held.remove(id);
                }
                drop(permit);
            });
        }
    }
}

/// Groups jobs by app, keeping their order.
fn by_app(jobs: Vec<Job>) -> Vec<(String, Vec<Job>)> {
    let mut groups: Vec<(String, Vec<Job>)> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|(app, _)| *app == job.app) {
            Some((_, group)) => group.push(job),
            None => groups.push((job.app.clone(), vec![job])),
        }
    }
    groups
}

impl Delivery {
    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.config.backoff_initial_ms;
        let ms = initial.saturating_mul(1u64 << attempt.min(32));
        Duration::from_millis(ms.min(self.config.backoff_max_ms))
    }

    /// Posts one app's events, one attempt each, to each webhook that wants them (a retry to
    /// the one webhook that failed it); returns the retries to schedule.
    async fn deliver_app(&self, slug: &str, jobs: Vec<Job>) -> Vec<Retry> {
        let app = match self.registry.by_slug(slug).await {
            Ok(app) => app,
            Err(error) => {
                tracing::warn!(%error, app = %slug, "webhooks: registry unavailable; retrying later");
                return jobs
                    .into_iter()
                    .filter_map(|job| self.retry(job, None))
                    .collect();
            }
        };
        // A deleted, deactivated or renamed app's events go nowhere.
        let Some(app) = app.filter(|app| app.active) else {
            tracing::info!(app = %slug, events = jobs.len(), "webhooks dropped: the app is gone or inactive");
            for _ in &jobs {
                self.metrics.webhook_sent(slug, "dropped");
            }
            return Vec::new();
        };
        let app = &app;
        let mut posts = Vec::new();
        for hook in &app.webhooks {
            let events: Vec<&Job> = jobs
                .iter()
                .filter(|job| job.url.as_ref().is_none_or(|url| *url == hook.url))
                .filter(|job| job.kind().is_some_and(|kind| hook.wants(kind)))
                .collect();
            if events.is_empty() {
                continue;
            }
            if check_url(&hook.url, self.config.allow_private_targets).is_err() {
                // Stored when private targets were allowed, or written to the database directly.
                tracing::warn!(app = %slug, "webhook refused: its URL points at a private address");
                let error = "refused: the URL points at a private address".to_owned();
                let _ = self
                    .store
                    .set_status(slug, &hook.url, &status(None, Some(error)))
                    .await;
                for _ in &events {
                    self.metrics.webhook_sent(slug, "dropped");
                }
                continue;
            }
            posts.push(async move {
                let delivered = self.post(app, hook, &events).await;
                (hook, events, delivered)
            });
        }
        let mut retries = Vec::new();
        for (hook, events, delivered) in futures_util::future::join_all(posts).await {
            if !delivered {
                retries.extend(
                    events
                        .into_iter()
                        .filter_map(|job| self.retry(job.clone(), Some(&hook.url))),
                );
            }
        }
        retries
    }

    /// The next attempt of `job` (to `url`, or to every webhook when `None`), or `None` when it
    /// would fall outside the retry window: then it is dropped and counted.
    fn retry(&self, job: Job, url: Option<&str>) -> Option<Retry> {
        let window =
            i64::try_from(self.config.retry_for_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let wait = i64::try_from(self.backoff(job.attempt).as_millis()).unwrap_or(i64::MAX);
        let due_ms = now_ms().saturating_add(wait);
        if due_ms > job.queued_at_ms.saturating_add(window) {
            tracing::warn!(
                app = %job.app,
                attempts = job.attempt + 1,
                "webhook dropped: no 2xx within webhooks.retry_for_secs"
            );
            self.metrics.webhook_sent(&job.app, "dropped");
            return None;
        }
        Some(Retry {
            job: Job {
                url: url.map(str::to_owned).or(job.url.clone()),
                attempt: job.attempt + 1,
                ..job
            },
            due_ms,
        })
    }

    /// One webhook request; returns whether the receiver answered 2xx.
    async fn post(&self, app: &App, hook: &Webhook, events: &[&Job]) -> bool {
        let listed: Vec<&str> = events.iter().map(|job| job.event.get()).collect();
        let body = format!(
            r#"{{"time_ms":{},"events":[{}]}}"#,
            now_ms(),
            listed.join(",")
        );
        let signature = sign(&app.secret, &body);
        let origins: Vec<&str> = events.iter().map(|job| job.origin.as_str()).collect();
        // The same for every attempt of these events to this URL: receivers drop duplicates by
        // it.
        let id = sign(&hook.url, &origins.join(","))[..32].to_owned();
        let request = hyper::Request::post(hook.url.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header("X-Pusher-Key", app.key.as_str())
            .header("X-Pusher-Signature", signature.as_str())
            .header("X-Pushlite-Webhook-Id", id.as_str())
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                // A URL or key hyper cannot send: retries fail the same way until the window
                // ends, and the status shows why.
                let record = status(None, Some(format!("cannot be sent: {e}")));
                let _ = self.store.set_status(&app.slug, &hook.url, &record).await;
                self.metrics.webhook_sent(&app.slug, "error");
                return false;
            }
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let (code, error) = match tokio::time::timeout(timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) if response.status().is_success() => {
                (Some(response.status().as_u16()), None)
            }
            Ok(Ok(response)) => (
                Some(response.status().as_u16()),
                Some(format!("HTTP {}", response.status())),
            ),
            Ok(Err(e)) => (None, Some(describe(&e))),
            Err(_) => (None, Some("timed out".to_owned())),
        };
        let delivered = error.is_none();
        if let Err(e) = self
            .store
            .set_status(&app.slug, &hook.url, &status(code, error))
            .await
        {
            tracing::debug!(error = %e, "webhook status not recorded");
        }
        if delivered {
            self.metrics.webhook_sent(&app.slug, "ok");
            let now = now_ms();
            for job in events {
                let waited = now.saturating_sub(job.queued_at_ms).max(0);
                #[allow(clippy::cast_precision_loss, reason = "milliseconds of a latency")]
                self.metrics.webhook_delivered(waited as f64 / 1000.0);
            }
        } else {
            self.metrics.webhook_sent(&app.slug, "error");
        }
        delivered
    }

    /// Schedules the retries and marks the events done, retrying while the store is
    /// unreachable. Until then the events stay pending, and whichever node takes them over
    /// sends them again (at least once).
    async fn finish(&self, ids: &[String], retries: &[Retry]) {
        let mut attempt = 0;
        while let Err(error) = self.store.done(ids, retries).await {
            tracing::warn!(%error, "webhooks: events not marked done; retrying");
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
            if attempt > 10 {
                return;
            }
        }
    }
}

fn status(code: Option<u16>, error: Option<String>) -> Status {
    Status {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        status: code,
        error,
    }
}

/// A failed request with its causes ("client error (Connect): tcp connect error: …").
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
