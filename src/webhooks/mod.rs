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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::domain::app::App;
use crate::domain::event::Event;
use crate::domain::topic::{ChannelKind, Topic, app_of, channel_of};
use crate::domain::webhook::{Kind, any_wants};
use crate::metrics::Metrics;
use crate::presence::Observer;
use crate::registry::AppRegistry;

pub use local::LocalWebhookStore;
pub use redis::{RedisWebhookStore, RedisWebhookStoreConfig};

/// Reports a node may hold while the store is unreachable; past it they are dropped (and
/// counted).
const REPORT_BACKLOG: usize = 10_000;
/// How soon a report the store could not take is tried again.
const REPORT_RETRY: Duration = Duration::from_millis(500);

/// One queued event.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique in the queue; the store's handle to mark it done.
    pub id: String,
    pub app: String,
    /// The event object as the webhook body lists it (`{"name": …, "channel": …, …}`).
    pub event: Box<serde_json::value::RawValue>,
    /// When it was queued (Unix ms): the retry window and the delivery latency start here.
    pub queued_at_ms: i64,
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
}

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

/// The cluster-wide side of webhooks: occupancy, pending leaves and the delivery queue.
///
/// Contract, for every implementation:
/// - `occupy` and `vacate` are this node's first and last local subscriber of a topic; the
///   store queues `channel_occupied` when the topic had no node before, and a
///   `channel_vacated` when its last node leaves (or is swept as dead) and no node comes back
///   within the leave delay. A topic that comes back within the delay queues nothing;
/// - `member` is a user's first entry (joined) or last one leaving, cluster-wide; a removal
///   waits out the leave delay, and a join meanwhile cancels both;
/// - each of these is queued once per transition, whichever node reports it;
/// - `take` hands out queued events; an event taken and not marked `done` is handed out again
///   (to another node when its taker stops touching it with `keep` for `claim_idle`);
/// - every change is atomic: a node dying between two calls loses at most a report it had not
///   made yet.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// `announce` false restores the report silently (Redis forgot it).
    async fn occupy(&self, topic: &str, announce: bool) -> Result<(), WebhookError>;
    async fn vacate(&self, topic: &str) -> Result<(), WebhookError>;
    async fn member(&self, topic: &str, user_id: &str, joined: bool) -> Result<(), WebhookError>;
    /// Queues an event of `app` as is (a client event).
    async fn enqueue(&self, app: &str, event: &str) -> Result<(), WebhookError>;
    /// Queues the leaves whose delay has passed.
    async fn fire_due(&self) -> Result<(), WebhookError>;
    /// Up to `max` events, waiting at most `wait` for the first.
    async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Job>, WebhookError>;
    async fn done(&self, ids: &[String]) -> Result<(), WebhookError>;
    /// Marks this node's events as still being worked on.
    async fn keep(&self, ids: &[String]) -> Result<(), WebhookError>;
    /// Events queued and not done, cluster-wide.
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

/// What a node saw, on its way to the store.
enum Report {
    Occupancy {
        topic: String,
        occupied: bool,
    },
    Member {
        topic: String,
        user_id: String,
        joined: bool,
    },
    Client {
        app: String,
        event: String,
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
    metrics: Metrics,
}

impl Webhooks {
    /// Starts the task that hands reports to the store in order.
    #[must_use]
    pub fn start(
        store: Arc<dyn WebhookStore>,
        registry: Arc<dyn AppRegistry>,
        metrics: Metrics,
    ) -> Arc<Webhooks> {
        let (reports, rx) = mpsc::channel(REPORT_BACKLOG);
        tokio::spawn(report(store.clone(), registry, rx));
        Arc::new(Webhooks {
            store,
            reports,
            metrics,
        })
    }

    #[must_use]
    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.store
    }

    fn send(&self, report: Report) {
        if let Err(mpsc::error::TrySendError::Full(report)) = self.reports.try_send(report) {
            let app = match &report {
                Report::Occupancy { topic, .. } | Report::Member { topic, .. } => {
                    app_of(topic).unwrap_or("none").to_owned()
                }
                Report::Client { app, .. } => app.clone(),
                Report::Reassert { .. } | Report::Drain { .. } => "none".to_owned(),
            };
            tracing::warn!(%app, "webhook report dropped: the store has been unreachable too long");
            self.metrics.webhook_sent(&app, "dropped");
        }
    }

    /// This node's first (`occupied`) or last local subscriber of `topic`.
    pub fn occupancy(&self, topic: &str, occupied: bool) {
        // A user's own channel is internal to the Pusher protocol.
        if Topic::parse(topic).is_some_and(|t| t.kind() == ChannelKind::User) {
            return;
        }
        self.send(Report::Occupancy {
            topic: topic.to_owned(),
            occupied,
        });
    }

    /// At shutdown, once every session has ended: vacates the channels this node reported
    /// occupied, after the reports queued before. Otherwise a node that stops cleanly (and is
    /// therefore never swept as dead) would leave its channels occupied for good.
    pub async fn drain(&self, timeout: Duration) {
        let (done, finished) = oneshot::channel();
        let drained = async {
            if self.reports.send(Report::Drain { done }).await.is_ok() {
                let _ = finished.await;
            }
        };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            tracing::warn!(
                "webhooks: this node's channels not vacated before exit; the others vacate them once it is found dead"
            );
        }
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
    fn member(&self, topic: &str, user_id: &str, joined: bool) {
        self.send(Report::Member {
            topic: topic.to_owned(),
            user_id: user_id.to_owned(),
            joined,
        });
    }

    async fn node_dead(&self, node: &str) -> Result<(), String> {
        self.store.sweep_node(node).await.map_err(|e| e.to_string())
    }

    fn returned(&self, announce: bool) {
        self.send(Report::Reassert { announce });
    }
}

/// Whether `slug`'s app has a webhook wanting one of `kinds`. An app the registry cannot
/// answer for is taken as wanting them: a report too many is filtered at delivery, one too few
/// is an event lost.
async fn wants(registry: &dyn AppRegistry, slug: &str, kinds: &[Kind]) -> bool {
    match registry.by_slug(slug).await {
        Ok(app) => app.is_some_and(|app| app.active && any_wants(&app.webhooks, kinds)),
        Err(error) => {
            tracing::warn!(%error, %slug, "webhooks: registry unavailable; reporting anyway");
            true
        }
    }
}

/// Hands reports to the store one at a time, in order, retrying each until the store takes it.
async fn report(
    store: Arc<dyn WebhookStore>,
    registry: Arc<dyn AppRegistry>,
    mut rx: mpsc::Receiver<Report>,
) {
    const OCCUPANCY: [Kind; 2] = [Kind::ChannelOccupied, Kind::ChannelVacated];
    const MEMBERS: [Kind; 2] = [Kind::MemberAdded, Kind::MemberRemoved];
    // The topics this node reported occupied: only those are reported vacated, so an app that
    // gains or loses webhooks meanwhile never sees a vacated without its occupied.
    let mut reported: HashSet<String> = HashSet::new();
    while let Some(report) = rx.recv().await {
        match report {
            Report::Occupancy {
                topic,
                occupied: true,
            } => {
                let Some(slug) = app_of(&topic) else { continue };
                if wants(registry.as_ref(), slug, &OCCUPANCY).await {
                    retry(|| store.occupy(&topic, true)).await;
                    reported.insert(topic);
                }
            }
            Report::Occupancy {
                topic,
                occupied: false,
            } => {
                if reported.remove(&topic) {
                    retry(|| store.vacate(&topic)).await;
                }
            }
            Report::Member {
                topic,
                user_id,
                joined,
            } => {
                let Some(slug) = app_of(&topic) else { continue };
                if wants(registry.as_ref(), slug, &MEMBERS).await {
                    retry(|| store.member(&topic, &user_id, joined)).await;
                }
            }
            Report::Client { app, event } => retry(|| store.enqueue(&app, &event)).await,
            Report::Reassert { announce } => {
                for topic in &reported {
                    retry(|| store.occupy(topic, announce)).await;
                }
            }
            Report::Drain { done } => {
                for topic in std::mem::take(&mut reported) {
                    retry(|| store.vacate(&topic)).await;
                }
                let _ = done.send(());
            }
        }
    }
}

async fn retry<F, Fut>(mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), WebhookError>>,
{
    loop {
        match call().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "webhook report not stored; retrying");
                tokio::time::sleep(REPORT_RETRY).await;
            }
        }
    }
}
