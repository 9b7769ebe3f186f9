//! Webhooks: the apps' servers hear when a channel becomes occupied or vacated, when a presence
//! member is added or removed, and what clients send, as Pusher's webhooks.
//!
//! Three parts:
//! - a node's [`Webhooks`] turns what this node sees (its first or last local subscriber of a
//!   channel, a member edge its presence store decided, a client event) into calls on the
//!   store, in order, and only for apps that have a webhook wanting them;
//! - the [`WebhookStore`] decides the cluster-wide facts and keeps the queue: a channel is
//!   occupied when its first node reports it and vacated when the last one leaves (or dies),
//!   and leaves wait out `webhooks.leave_delay_ms` so a reload sends nothing;
//! - [`deliver::run`] takes queued events, posts them signed, retries with backoff, and tells
//!   the store when each is done.

pub mod deliver;
mod local;
mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::domain::app::App;
use crate::domain::event::Event;
use crate::domain::topic::{ChannelKind, Topic, app_of, channel_of};
use crate::domain::webhook::{Kind, any_wants};
use crate::metrics::Metrics;
use crate::presence::{MemberEdge, Observer};
use crate::registry::AppRegistry;

pub use local::LocalWebhookStore;
pub use redis::{RedisWebhookStore, RedisWebhookStoreConfig};

/// Reports a node may hold while the store is unreachable; past it they are dropped (and
/// counted).
const REPORT_BACKLOG: usize = 10_000;
/// How soon a report the store could not take is tried again.
const REPORT_RETRY: Duration = Duration::from_millis(500);

/// One queued event, fresh or waiting for another attempt.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique in the queue; the store's handle to mark it done.
    pub id: String,
    pub app: String,
    /// The event object as the webhook body lists it (`{"name": …, "channel": …, …}`).
    pub event: Box<serde_json::value::RawValue>,
    /// When the event was first queued (Unix ms): the retry window and the delivery latency
    /// start here.
    pub queued_at_ms: i64,
    /// The id the event was first queued with: the same on every retry, for the idempotency
    /// header.
    pub origin: String,
    /// A retry targets the one webhook that failed; a fresh event every webhook wanting it.
    pub url: Option<String>,
    /// Attempts made so far.
    pub attempt: u32,
}

impl Job {
    /// The event's `name`, to match it against a webhook's events.
    #[must_use]
    pub fn kind(&self) -> Option<Kind> {
        #[derive(Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            name: &'a str,
        }
        serde_json::from_str::<Named<'_>>(self.event.get())
            .ok()
            .and_then(|named| Kind::parse(named.name))
    }

    /// The job's fields as stored with its next attempt: `app`, `event`, and for a retry
    /// `url`, `first`, `attempt`, `origin`.
    #[must_use]
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("app", self.app.clone()),
            ("event", self.event.get().to_owned()),
            ("first", self.queued_at_ms.to_string()),
            ("attempt", self.attempt.to_string()),
            ("origin", self.origin.clone()),
        ];
        if let Some(url) = &self.url {
            fields.push(("url", url.clone()));
        }
        fields
    }

    /// A job from stored fields (see [`Job::fields`]); `None` for an entry no version of
    /// pushlite wrote. A fresh entry's id (`ms-seq`) tells when it was queued.
    #[must_use]
    pub fn from_fields(id: String, fields: &[(String, String)]) -> Option<Job> {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let event = RawValue::from_string(field("event")?.to_owned()).ok()?;
        let queued_at_ms = match field("first") {
            Some(first) => first.parse().ok()?,
            None => id.split('-').next()?.parse().ok()?,
        };
        Some(Job {
            app: field("app")?.to_owned(),
            event,
            queued_at_ms,
            origin: field("origin").unwrap_or(&id).to_owned(),
            url: field("url").map(str::to_owned),
            attempt: field("attempt").map_or(Some(0), |a| a.parse().ok())?,
            id,
        })
    }
}

/// An event to try again at `due_ms` (Unix ms).
#[derive(Debug, Clone)]
pub struct Retry {
    pub job: Job,
    pub due_ms: i64,
}

/// The apps whose events a call could not queue because the queue was full.
pub type Dropped = Vec<String>;

/// The last delivery attempt of one webhook, for the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// When (RFC 3339).
    pub at: String,
    /// The HTTP status the receiver answered, if it answered.
    pub status: Option<u16>,
    /// What went wrong, when the attempt failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook store unavailable: {0}")]
    Unavailable(String),
}

/// The cluster-wide side of webhooks: occupancy, pending leaves, the queue and its retries.
///
/// Contract, for every implementation:
/// - `occupy` and `vacate` are this node's first and last local subscriber of a topic,
///   reported for every app; the store queues `channel_occupied` when the topic had no node
///   before, and `channel_vacated` when its last node leaves (or is swept as dead) and no node
///   comes back within the leave delay, each only if `wants`. A topic back within the delay
///   queues nothing;
/// - `member` is a user's first entry (joined) or last one leaving, cluster-wide, with the
///   presence change's `epoch/ver`: an edge older than the last one applied for the member is
///   ignored, and a join after a join (or a leave after a leave) changes nothing. A removal
///   waits out the leave delay, and a join meanwhile cancels both;
/// - each of these is queued once per transition, whichever node reports it, and atomically
///   with the decision;
/// - the queue holds at most `max_queue` events (queued and waiting to retry), and at most its
///   quota ([`WebhookStore::set_quota`]) of one app's; past either, new events are refused and
///   their apps returned as [`Dropped`];
/// - `take` hands out queued events; one taken and not marked `done` is handed out again (to
///   another node when its taker stops touching it with `keep` for `claim_idle`). `done`
///   schedules the retries and removes the events in one step; `fire_due` moves retries whose
///   time has come back into the queue.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// `announce` false restores the report silently (Redis forgot it).
    async fn occupy(
        &self,
        topic: &str,
        wants: bool,
        announce: bool,
    ) -> Result<Dropped, WebhookError>;
    async fn vacate(&self, topic: &str, wants: bool) -> Result<(), WebhookError>;
    /// Reported for every app, so the member's state is whole; the event is queued only if
    /// `wants`.
    async fn member(&self, edge: &MemberEdge, wants: bool) -> Result<Dropped, WebhookError>;
    /// Queues an event of `app` as is (a client event).
    async fn enqueue(&self, app: &str, event: &str) -> Result<Dropped, WebhookError>;
    /// How many events of `app` may be queued or wait to retry at once, from now on (0: no
    /// quota of its own). Nodes set it from the app's settings before they report for it.
    async fn set_quota(&self, app: &str, max: u64) -> Result<(), WebhookError>;
    /// Queues the leaves whose delay has passed and the retries whose time has come.
    async fn fire_due(&self) -> Result<Dropped, WebhookError>;
    /// Up to `max` events, waiting at most `wait` for the first.
    async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Job>, WebhookError>;
    async fn done(&self, ids: &[String], retries: &[Retry]) -> Result<(), WebhookError>;
    /// Marks this node's events as still being worked on.
    async fn keep(&self, ids: &[String]) -> Result<(), WebhookError>;
    /// Events queued or waiting to retry, cluster-wide.
    async fn depth(&self) -> Result<u64, WebhookError>;
    /// Undoes the occupancy a dead node reported.
    async fn sweep_node(&self, node: &str) -> Result<(), WebhookError>;
    async fn set_status(&self, app: &str, url: &str, status: &Status) -> Result<(), WebhookError>;
    /// The last status of each of `urls` of `app`.
    async fn statuses(
        &self,
        app: &str,
        urls: &[String],
    ) -> Result<Vec<Option<Status>>, WebhookError>;
}

/// What a node saw, on its way to the store. Occupancy is not queued but coalesced (see
/// [`Webhooks::occupancy`]): it can never be dropped, and a flap between two reads is no change.
enum Report {
    Member(MemberEdge),
    /// An event queued as it is (a client event, a cache miss), with the app's own
    /// `webhook_max_queue`.
    Client {
        app: String,
        event: String,
        own_quota: Option<i32>,
    },
    Reassert {
        announce: bool,
    },
    /// The node is stopping and every session has ended: vacate what it reported.
    Drain {
        done: oneshot::Sender<()>,
    },
}

/// A node's webhook reporting: cheap, never blocking the caller.
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    reports: mpsc::Sender<Report>,
    /// Topic → whether this node now has local subscribers, not yet handed to the store.
    occupancy: Arc<Mutex<HashMap<String, bool>>>,
    occupancy_changed: Arc<Notify>,
    metrics: Metrics,
}

impl Webhooks {
    /// Starts the task that hands reports to the store in order.
    #[must_use]
    /// `max_queue_per_app` is the quota of apps that do not set `webhook_max_queue`.
    pub fn start(
        store: Arc<dyn WebhookStore>,
        registry: Arc<dyn AppRegistry>,
        metrics: Metrics,
        max_queue_per_app: u64,
    ) -> Arc<Webhooks> {
        let (reports, rx) = mpsc::channel(REPORT_BACKLOG);
        let webhooks = Arc::new(Webhooks {
            store: store.clone(),
            reports,
            occupancy: Arc::default(),
            occupancy_changed: Arc::default(),
            metrics: metrics.clone(),
        });
        let reporter = Reporter {
            store,
            registry,
            metrics,
            occupancy: webhooks.occupancy.clone(),
            reported: HashSet::new(),
            max_queue_per_app,
            quotas: HashMap::new(),
        };
        tokio::spawn(reporter.run(rx, webhooks.occupancy_changed.clone()));
        webhooks
    }

    #[must_use]
    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.store
    }

    fn send(&self, report: Report) {
        if let Err(mpsc::error::TrySendError::Full(report)) = self.reports.try_send(report) {
            let app = match &report {
                Report::Member(edge) => app_of(&edge.topic).unwrap_or("none").to_owned(),
                Report::Client { app, .. } => app.clone(),
                Report::Reassert { .. } | Report::Drain { .. } => "none".to_owned(),
            };
            tracing::warn!(%app, "webhook report dropped: the store has been unreachable too long");
            self.metrics.webhook_sent(&app, "dropped");
        }
    }

    /// This node's first (`occupied`) or last local subscriber of `topic`, for every app: the
    /// store keeps the state even for apps without webhooks, so one added later sees true
    /// transitions.
    pub fn occupancy(&self, topic: &str, occupied: bool) {
        // A user's own channel is internal to the Pusher protocol.
        if Topic::parse(topic).is_some_and(|t| t.kind() == ChannelKind::User) {
            return;
        }
        self.occupancy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned(), occupied);
        self.occupancy_changed.notify_one();
    }

    /// At shutdown, once every session has ended and its presence leaves are applied: vacates
    /// the channels this node reported occupied, after the reports queued before. A node that
    /// stops cleanly is never swept as dead, so otherwise its channels would stay occupied.
    /// Returns whether it finished within `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let (done, finished) = oneshot::channel();
        let drained = async {
            self.reports.send(Report::Drain { done }).await.is_ok() && finished.await.is_ok()
        };
        let finished = tokio::time::timeout(timeout, drained)
            .await
            .unwrap_or(false);
        if !finished {
            tracing::warn!(
                "webhooks: this node's channels not vacated before exit; the others vacate them once it is found dead"
            );
        }
        finished
    }

    /// Queues a `client_event` webhook if the app has one that wants it.
    pub fn client_event(&self, app: &App, event: &Event, socket_id: &str) {
        if !any_wants(&app.webhooks, &[Kind::ClientEvent]) {
            return;
        }
        let mut body = json!({
            "name": Kind::ClientEvent.as_str(),
            "channel": channel_of(&event.topic).unwrap_or(&event.topic),
            "event": event.event,
            "data": client_data(event),
            "socket_id": socket_id,
        });
        if let (Some(user_id), Value::Object(fields)) = (&event.user_id, &mut body) {
            fields.insert("user_id".to_owned(), Value::String(user_id.clone()));
        }
        self.send(Report::Client {
            app: app.slug.clone(),
            event: body.to_string(),
            own_quota: app.webhook_max_queue,
        });
    }
}

impl Webhooks {
    /// Queues a `cache_miss` webhook (a subscriber of a cache channel found no event to
    /// replay) if the app has one that wants it.
    pub fn cache_miss(&self, app: &App, topic: &str) {
        if !any_wants(&app.webhooks, &[Kind::CacheMiss]) {
            return;
        }
        let body = json!({
            "name": Kind::CacheMiss.as_str(),
            "channel": channel_of(topic).unwrap_or(topic),
        });
        self.send(Report::Client {
            app: app.slug.clone(),
            event: body.to_string(),
            own_quota: app.webhook_max_queue,
        });
    }
}

/// Pusher sends a client event's data as a string: the text a client sent as a string, any
/// other JSON as its text.
fn client_data(event: &Event) -> String {
    let data = event.data.pusher_data();
    match serde_json::from_str::<Value>(&data) {
        Ok(Value::String(text)) => text,
        _ => data.into_owned(),
    }
}

#[async_trait]
impl Observer for Webhooks {
    fn member(&self, edge: MemberEdge) {
        self.send(Report::Member(edge));
    }

    async fn node_dead(&self, node: &str) -> Result<(), String> {
        self.store.sweep_node(node).await.map_err(|e| e.to_string())
    }

    fn returned(&self, announce: bool) {
        self.send(Report::Reassert { announce });
    }

    async fn drain(&self, timeout: Duration) -> bool {
        Webhooks::drain(self, timeout).await
    }
}

const OCCUPANCY: [Kind; 2] = [Kind::ChannelOccupied, Kind::ChannelVacated];
const MEMBERS: [Kind; 2] = [Kind::MemberAdded, Kind::MemberRemoved];

/// The task that hands reports to the store, one at a time and in order, retrying each until
/// the store takes it.
struct Reporter {
    store: Arc<dyn WebhookStore>,
    registry: Arc<dyn AppRegistry>,
    metrics: Metrics,
    occupancy: Arc<Mutex<HashMap<String, bool>>>,
    /// The topics this node told the store it holds.
    reported: HashSet<String>,
    max_queue_per_app: u64,
    /// The quota this node last handed to the store, per app.
    quotas: HashMap<String, u64>,
}

impl Reporter {
    async fn run(mut self, mut rx: mpsc::Receiver<Report>, occupancy_changed: Arc<Notify>) {
        loop {
            tokio::select! {
                biased;
                () = occupancy_changed.notified() => self.flush_occupancy().await,
                report = rx.recv() => match report {
                    Some(report) => self.handle(report).await,
                    None => return,
                },
            }
        }
    }

    async fn handle(&mut self, report: Report) {
        match report {
            Report::Member(edge) => {
                let Some(slug) = app_of(&edge.topic) else {
                    return;
                };
                let wants = self.wants(slug, &MEMBERS).await;
                let store = &self.store;
                let dropped = retry(|| store.member(&edge, wants)).await;
                self.count(&dropped);
            }
            Report::Client {
                app,
                event,
                own_quota,
            } => {
                self.set_quota(&app, own_quota).await;
                let store = &self.store;
                let dropped = retry(|| store.enqueue(&app, &event)).await;
                self.count(&dropped);
            }
            Report::Reassert { announce } => {
                // Redis forgot the quotas too.
                self.quotas.clear();
                self.flush_occupancy().await;
                for topic in self.reported.clone() {
                    let wants = announce && self.topic_wants(&topic).await;
                    let store = &self.store;
                    let dropped = retry(|| store.occupy(&topic, wants, announce)).await;
                    self.count(&dropped);
                }
            }
            Report::Drain { done } => {
                self.flush_occupancy().await;
                for topic in std::mem::take(&mut self.reported) {
                    let wants = self.topic_wants(&topic).await;
                    let store = &self.store;
                    retry(|| store.vacate(&topic, wants)).await;
                }
                let _ = done.send(());
            }
        }
    }

    /// Hands every pending occupancy change to the store.
    async fn flush_occupancy(&mut self) {
        let pending = std::mem::take(
            &mut *self
                .occupancy
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (topic, occupied) in pending {
            if occupied == self.reported.contains(&topic) {
                continue;
            }
            let wants = self.topic_wants(&topic).await;
            let store = &self.store;
            if occupied {
                let dropped = retry(|| store.occupy(&topic, wants, true)).await;
                self.count(&dropped);
                self.reported.insert(topic);
            } else {
                retry(|| store.vacate(&topic, wants)).await;
                self.reported.remove(&topic);
            }
        }
    }

    async fn topic_wants(&mut self, topic: &str) -> bool {
        match app_of(topic) {
            Some(slug) => self.wants(slug, &OCCUPANCY).await,
            None => false,
        }
    }

    /// Whether `slug`'s app has a webhook wanting one of `kinds`. An app the registry cannot
    /// answer for is taken as wanting them: an event too many is filtered at delivery, one too
    /// few is lost.
    async fn wants(&mut self, slug: &str, kinds: &[Kind]) -> bool {
        match self.registry.by_slug(slug).await {
            Ok(Some(app)) => {
                self.set_quota(&app.slug, app.webhook_max_queue).await;
                app.active && any_wants(&app.webhooks, kinds)
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, %slug, "webhooks: registry unavailable; reporting anyway");
                true
            }
        }
    }

    /// Hands an app's webhook quota (its own `webhook_max_queue`, else the global one; 0 is
    /// none) to the store when it is not what this node last handed it.
    async fn set_quota(&mut self, slug: &str, own: Option<i32>) {
        let max = own.map_or(self.max_queue_per_app, |v| u64::try_from(v).unwrap_or(0));
        if self.quotas.get(slug) == Some(&max) {
            return;
        }
        let store = &self.store;
        retry(|| store.set_quota(slug, max)).await;
        self.quotas.insert(slug.to_owned(), max);
    }

    fn count(&self, dropped: &Dropped) {
        for app in dropped {
            tracing::warn!(%app, "webhook event dropped: the queue is full (webhooks.max_queue, or the app's webhook_max_queue)");
            self.metrics.webhook_sent(app, "dropped");
            self.metrics
                .limit_refused(crate::limits::Limit::WebhookQueue);
        }
    }
}

async fn retry<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WebhookError>>,
{
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::warn!(%error, "webhook report not stored; retrying");
                tokio::time::sleep(REPORT_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_stored_fields() {
        let fresh = Job::from_fields(
            "1764450000123-0".to_owned(),
            &[
                ("app".to_owned(), "shop".to_owned()),
                (
                    "event".to_owned(),
                    r#"{"name":"channel_occupied","channel":"a"}"#.to_owned(),
                ),
            ],
        )
        .expect("a fresh entry");
        assert_eq!(fresh.queued_at_ms, 1_764_450_000_123);
        assert_eq!(fresh.origin, "1764450000123-0");
        assert_eq!((fresh.url.as_deref(), fresh.attempt), (None, 0));
        assert_eq!(fresh.kind(), Some(Kind::ChannelOccupied));
        let retry = Job {
            url: Some("https://a.example/hook".to_owned()),
            attempt: 3,
            ..fresh.clone()
        };
        let stored: Vec<(String, String)> = retry
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let back = Job::from_fields("1764450099999-7".to_owned(), &stored).expect("a retry");
        assert_eq!(
            back.queued_at_ms, fresh.queued_at_ms,
            "the window starts at the first"
        );
        assert_eq!(
            back.origin, fresh.origin,
            "the idempotency id follows the event"
        );
        assert_eq!(back.url.as_deref(), Some("https://a.example/hook"));
        assert_eq!(back.attempt, 3);
        assert!(Job::from_fields("x".to_owned(), &[]).is_none());
        let bad_event = [
            ("app".to_owned(), "shop".to_owned()),
            ("event".to_owned(), "{".to_owned()),
        ];
        assert!(Job::from_fields("1-0".to_owned(), &bad_event).is_none());
    }
}
