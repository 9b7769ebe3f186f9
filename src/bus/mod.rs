//! Cross-node fan-out. A node publishes every event to the bus (never straight to its own
//! sockets) and delivers what the bus hands back, so each subscriber receives each event once.
//! The bus also carries control messages (app changes) to every node.

mod local;
mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
use crate::domain::history::{Keep, Page, Position, Read};
use crate::presence::TopicChange;

pub use local::LocalBus;
pub use redis::{RedisBus, RedisBusConfig, announce};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The transport is down or refused the command; nothing was published.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The transport is back, but other nodes may not have re-subscribed yet.
    #[error("bus reconnected {0} ms ago; waiting for every node to re-subscribe")]
    Settling(u128),
    /// A startup misconfiguration, such as a URL the client cannot use.
    #[error("bus configuration: {0}")]
    Config(String),
}

/// A message for every node, not for sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// An app was updated, rotated, deactivated or deleted: drop cached copies, and when
    /// `close` is set, close its channels.
    AppChanged { slug: String, close: bool },
    /// The app's server ended a user's connections (Pusher `terminate_connections`).
    TerminateUser { slug: String, user_id: String },
    /// A console viewer of the app's debug stream on `node` began (or, `on: false`, the last
    /// one ended); renewed while it lasts (see [`crate::debug`]).
    DebugWatch {
        slug: String,
        node: String,
        on: bool,
    },
    /// One debug stream record of the app, for the nodes with a viewer of it.
    DebugRecord {
        slug: String,
        record: crate::debug::Record,
    },
}

/// Where a bus hands what it receives.
pub trait BusSink: Send + Sync + 'static {
    /// An event for a topic this node subscribed.
    fn deliver(&self, event: Event);
    /// A control message from any node, this one included.
    fn control(&self, control: Control);
    /// A presence change of a topic this node subscribed.
    fn presence(&self, change: TopicChange);
}

/// The fan-out seam, at the topic level (topics are `channel:app_slug`), and the history of the
/// topics that keep one.
///
/// Contract, for every implementation:
/// - `publish` returns `Ok` only once the transport has accepted the event; every node
///   subscribed to the topic at that moment will then hand it to its sink exactly once;
/// - with `keep`, publishing also stores the event in the topic's history, in one atomic step:
///   the event is given the next offset of the topic (under the topic's epoch, made anew when
///   its history was lost), the history is trimmed to `keep.size` events and lives
///   `keep.ttl_secs` after this event, and what the sinks receive carries that position. Events
///   of one topic are stored and delivered in offset order, whichever node publishes them. The
///   returned position is the stored one. Without `keep`, nothing is stored anywhere;
/// - `history` reads a topic's history atomically (the events and the position of the latest
///   one are of the same moment); reading a topic that has none starts its epoch, at offset 0
///   and for `keep.ttl_secs`, so that a later recovery can tell that nothing was missed;
/// - events of one topic published by one node reach each sink in publish order;
/// - `subscribe` returns once events for those topics are being received; `unsubscribe` stops
///   them. Both take batches and are idempotent. Callers serialize them (the hub's subscription
///   task does), so the last call for a topic wins;
/// - a node receives nothing for topics it has not subscribed;
/// - `publish_control` reaches every node's sink, this node's included;
/// - `ready` says whether `publish` can currently succeed with that guarantee;
/// - `take` adds `count` to a counter shared by every node for the current second of the
///   wall clock, unless the total would pass `max`; it says whether it did. What rate limits
///   across the cluster count with: a refused request costs nothing.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(
        &self,
        event: &Event,
        keep: Option<Keep>,
    ) -> Result<Option<Position>, BusError>;
    async fn history(&self, topic: &str, keep: Keep, read: Read<'_>) -> Result<Page, BusError>;
    async fn publish_control(&self, control: &Control) -> Result<(), BusError>;
    async fn subscribe(&self, topics: &[String]) -> Result<(), BusError>;
    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BusError>;
    async fn take(&self, key: &str, count: u64, max: u64) -> Result<bool, BusError>;
    /// # Errors
    /// Why the bus cannot publish with its guarantee right now.
    fn ready(&self) -> Result<(), BusError>;
}
