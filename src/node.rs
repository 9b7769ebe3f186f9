//! The node's shared state: what every handler and every session of this process uses. It
//! belongs to neither the HTTP layer nor the sessions, so neither depends on the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bus::{Bus, BusError, BusSink, Control};
use crate::config::Config;
use crate::control::NodeSink;
use crate::debug::{Debug, Kind, Record};
use crate::directory::NodeDirectory;
use crate::domain::app::App;
use crate::domain::event::Event;
use crate::domain::history::{Keep, Position};
use crate::domain::topic::{Topic, channel_of};
use crate::hub::{ConnId, Hub};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence::PresenceStore;
use crate::registry::AppRegistry;
use crate::session::longpoll::LongPolls;
use crate::shutdown::Shutdown;
use crate::webhooks::Webhooks;

/// Shared by every handler and every session: one reference count to clone, one pointer to
/// keep (every connection's task holds one).
#[derive(Clone)]
pub struct NodeState(Arc<Parts>);

impl NodeState {
    #[must_use]
    pub fn new(parts: Parts) -> NodeState {
        NodeState(Arc::new(parts))
    }
}

impl std::ops::Deref for NodeState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// What a node's handlers and sessions share.
pub struct Parts {
    pub config: Arc<Config>,
    /// The cached registry, for the hot lookups (joins, triggers).
    pub registry: Arc<dyn AppRegistry>,
    /// The same registry without the cache: the admin API always shows the stored row.
    pub database: Arc<dyn AppRegistry>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    /// Applies control messages locally when the bus cannot announce them.
    pub sink: Arc<NodeSink>,
    pub conn_ids: Arc<AtomicU64>,
    pub metrics: Metrics,
    pub shutdown: Arc<Shutdown>,
    pub directory: Arc<dyn NodeDirectory>,
    pub presence: Arc<dyn PresenceStore>,
    pub webhooks: Arc<Webhooks>,
    pub longpolls: Arc<LongPolls>,
    pub node: Arc<NodeInfo>,
    /// The console's debug stream.
    pub debug: Arc<Debug>,
    /// Rate limits and quotas.
    pub limits: Arc<Limits>,
}

/// Where an event came from, for the metrics and the debug stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The events API or the Pusher HTTP API.
    Http,
    /// A client on its socket.
    Client,
    /// A test event from the web console.
    Console,
}

impl Source {
    /// The `source` label of `pushlite_events_published_total`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Client => "client",
            Source::Console => "console",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Source::Http => Kind::Event,
            Source::Client => Kind::ClientEvent,
            Source::Console => Kind::ConsoleEvent,
        }
    }
}

/// Who this node is, for the cluster directory.
pub struct NodeInfo {
    /// `$HOSTNAME` (the pod name on Kubernetes) plus a random suffix, unique per process.
    pub id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The first half of this node's Pusher socket ids (`prefix.conn`): random, so socket ids
    /// are unique across the cluster with no coordination.
    pub socket_prefix: u32,
}

impl Default for NodeInfo {
    fn default() -> NodeInfo {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "pushlite".to_owned());
        let random = uuid::Uuid::new_v4();
        let suffix = random.simple().to_string();
        let bytes = random.as_bytes();
        let word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        NodeInfo {
            id: format!("{host}-{}", &suffix[..8]),
            started_at: chrono::Utc::now(),
            socket_prefix: 1 + word % 999_999_999,
        }
    }
}

impl NodeState {
    #[must_use]
    pub fn next_conn_id(&self) -> ConnId {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// What `topic` of `app` keeps in its history, if anything.
    #[must_use]
    pub fn keep(&self, app: &App, topic: &Topic) -> Option<Keep> {
        Keep::of(app, topic.as_str(), self.config.history.bounds())
    }

    /// Publishes an event of `app`, stored in its topic's history when the topic keeps one,
    /// and counts it; returns its position there.
    ///
    /// # Errors
    /// The bus could not publish it; nothing was stored or counted.
    pub async fn publish(
        &self,
        app: &App,
        event: &Event,
        source: Source,
    ) -> Result<Option<Position>, BusError> {
        let keep = Keep::of(app, &event.topic, self.config.history.bounds());
        let position = self.bus.publish(event, keep).await?;
        self.metrics.published(&app.slug, source.label());
        self.debug.record(&app.slug, || {
            let mut record = Record::new(source.kind())
                .channel(channel_of(&event.topic).unwrap_or(&event.topic))
                .event(&event.event)
                .data(event.data.text());
            if let Some(socket) = &event.exclude {
                record = record.socket(socket.clone());
            }
            record
        });
        Ok(position)
    }

    /// After an admin write, tells every node to drop its cached copy of the app, and to close
    /// its channels when the app is gone, inactive or renamed.
    pub async fn app_changed(&self, old_slug: &str, now: Option<&App>) {
        let still_open = now.is_some_and(|app| app.active && app.slug == old_slug);
        let control = Control::AppChanged {
            slug: old_slug.to_owned(),
            close: !still_open,
        };
        if let Err(e) = self.bus.publish_control(&control).await {
            tracing::warn!(
                error = %e,
                slug = %old_slug,
                "app change not announced: other nodes keep their cached copy until cache.ttl_secs"
            );
            self.sink.control(control);
        }
    }
}
