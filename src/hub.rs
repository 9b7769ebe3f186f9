//! This node's index of topic → local subscribers, and the one task that turns joins and leaves
//! into ordered, batched bus subscriptions.
//!
//! An event is encoded at most once per wire format and the same bytes are shared by every
//! subscriber. Each connection has a bounded queue; a subscriber whose queue is full is told to
//! disconnect (a slow consumer) and never slows the others down.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

// The shared frame type is axum's so the bytes go to the socket without a copy or a second
// UTF-8 check.
use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{Bus, BusError};
use crate::domain::app::App;
use crate::domain::event::Event;
use crate::domain::history::{Position, message_ref};
use crate::domain::topic::{app_of, channel_of};
use crate::metrics::Metrics;
use crate::presence::{TopicChange, TopicSnapshot};
use crate::protocol::{Wire, phoenix, pusher};
use crate::queue::{self, TrySendError};
use crate::webhooks::Webhooks;

/// Identifies one WebSocket connection on this node.
pub type ConnId = u64;

/// What the hub sends to a connection's session task.
#[derive(Debug)]
pub enum Outbound {
    /// A ready-to-send broadcast frame.
    Frame(Utf8Bytes),
    /// A broadcast frame of a topic with history, and its position there: a session that has
    /// just replayed the history drops what it already sent.
    Stamped(Utf8Bytes, Arc<Stamp>),
    /// The topic's app was deactivated or deleted: send `phx_close` and drop the channel.
    Close { topic: String },
    /// The topic's app changed (secret, origins, switches): check the channel's rights
    /// against it, and close the channel when they no longer hold.
    Recheck { topic: String, app: Arc<App> },
    /// The app's server ended the connections of the user whose channel this is.
    Terminate,
    /// A presence channel's membership changed.
    Presence(Arc<TopicChange>),
    /// A fresh membership of a presence channel, fetched by the session itself.
    PresenceSync(Box<TopicSnapshot>),
}

/// Where a broadcast stands in its topic's history.
#[derive(Debug)]
pub struct Stamp {
    pub topic: String,
    pub position: Position,
}

/// The hub's handle on one connection. A queue that overflows raises its session's alarm: the
/// connection is a slow consumer and goes.
#[derive(Clone)]
pub struct Subscriber {
    pub wire: Wire,
    pub tx: queue::Sender<Outbound>,
}

enum SubOp {
    Ensure {
        topic: String,
        ack: oneshot::Sender<Result<(), BusError>>,
    },
    Release {
        topic: String,
    },
}

pub struct Hub {
    topics: Mutex<HashMap<String, HashMap<ConnId, Subscriber>>>,
    ops: mpsc::UnboundedSender<SubOp>,
    metrics: Metrics,
    /// The first half of this node's Pusher socket ids (`prefix.conn`), to recognise its own
    /// sockets in an event's `socket_id` exclusion.
    socket_prefix: u32,
}

/// The receiving end of the hub's subscription operations; see [`run_subscriptions`].
pub struct SubscriptionOps(mpsc::UnboundedReceiver<SubOp>);

impl Hub {
    #[must_use]
    pub fn new(metrics: Metrics, socket_prefix: u32) -> (Arc<Hub>, SubscriptionOps) {
        let (ops, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            topics: Mutex::new(HashMap::new()),
            ops,
            metrics,
            socket_prefix,
        });
        (hub, SubscriptionOps(rx))
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<ConnId, Subscriber>>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a subscriber and returns once the bus delivers the topic to this node, so an event
    /// triggered after a successful join reaches the new subscriber.
    ///
    /// # Errors
    /// The bus could not subscribe; the subscriber has been removed again.
    pub async fn join(
        &self,
        topic: &str,
        conn: ConnId,
        subscriber: Subscriber,
    ) -> Result<(), BusError> {
        self.topics()
            .entry(topic.to_owned())
            .or_default()
            .insert(conn, subscriber);
        let (ack, done) = oneshot::channel();
        let sent = self.ops.send(SubOp::Ensure {
            topic: topic.to_owned(),
            ack,
        });
        let result = match (sent, done.await) {
            (Ok(()), Ok(result)) => result,
            _ => Err(BusError::Unavailable(
                "subscription task stopped".to_owned(),
            )),
        };
        if result.is_err() {
            self.leave(topic, conn);
        }
        result
    }

    /// Removes a subscriber; the last one out releases the bus subscription.
    pub fn leave(&self, topic: &str, conn: ConnId) {
        let mut topics = self.topics();
        let Some(subscribers) = topics.get_mut(topic) else {
            return;
        };
        subscribers.remove(&conn);
        if subscribers.is_empty() {
            topics.remove(topic);
            // The subscription task only stops with the hub, so a failed send has no one to tell.
            let _ = self.ops.send(SubOp::Release {
                topic: topic.to_owned(),
            });
        }
    }

    #[must_use]
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics().contains_key(topic)
    }

    #[must_use]
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics().get(topic).map_or(0, HashMap::len)
    }

    /// Local subscribers of every topic that has any, for the cluster-wide channel figures.
    #[must_use]
    pub fn topic_counts(&self) -> Vec<(String, usize)> {
        self.topics()
            .iter()
            .map(|(topic, subscribers)| (topic.clone(), subscribers.len()))
            .collect()
    }

    /// The topics of app `slug` that have subscribers on this node.
    #[must_use]
    pub fn topics_of(&self, slug: &str) -> Vec<String> {
        self.topics()
            .keys()
            .filter(|topic| app_of(topic) == Some(slug))
            .cloned()
            .collect()
    }

    /// This node's Pusher socket id for a connection.
    #[must_use]
    pub fn socket_id(&self, conn: ConnId) -> String {
        format!("{}.{conn}", self.socket_prefix)
    }

    /// The connection on this node that a socket id names, if it is one of this node's.
    fn local_conn(&self, socket_id: &str) -> Option<ConnId> {
        let (prefix, conn) = socket_id.split_once('.')?;
        (prefix.parse::<u32>().ok()? == self.socket_prefix)
            .then(|| conn.parse().ok())
            .flatten()
    }

    /// Ends every connection subscribed to `topic` (a user's channel).
    pub fn terminate_topic(&self, topic: &str) {
        self.tell_all(topic, || Outbound::Terminate);
    }

    /// Tells every subscriber of `topic` that its channel is closed by the server.
    pub fn close_topic(&self, topic: &str) {
        self.tell_all(topic, || Outbound::Close {
            topic: topic.to_owned(),
        });
    }

    /// Asks every subscriber of `topic` to check its rights against the app as it is now.
    pub fn recheck_topic(&self, topic: &str, app: &Arc<App>) {
        self.tell_all(topic, || Outbound::Recheck {
            topic: topic.to_owned(),
            app: app.clone(),
        });
    }

    /// Hands a presence change to every subscriber of its topic; each session renders it for
    /// its protocol and drops what it already holds.
    pub fn presence(&self, change: TopicChange) {
        let change = Arc::new(change);
        self.tell_all(&change.topic, || Outbound::Presence(change.clone()));
    }

    fn tell_all(&self, topic: &str, message: impl Fn() -> Outbound) {
        let topics = self.topics();
        for subscriber in topics.get(topic).into_iter().flat_map(HashMap::values) {
            // A full queue has raised its session's alarm; a closed one is leaving.
            let _ = subscriber.tx.try_send(message());
        }
    }
}

impl Hub {
    /// Hands an event to every local subscriber of its topic without waiting for any of them.
    pub fn deliver(&self, event: &Event) {
        let topics = self.topics();
        let Some(subscribers) = topics.get(&event.topic) else {
            return;
        };
        let excluded = event.exclude.as_deref().and_then(|id| self.local_conn(id));
        let stamp = event.position.as_ref().map(|position| {
            Arc::new(Stamp {
                topic: event.topic.clone(),
                position: position.clone(),
            })
        });
        let mut frames: [Option<Utf8Bytes>; Wire::COUNT] = [None, None, None];
        let (mut delivered, mut slow, mut closed) = (0, 0, 0);
        for (conn, subscriber) in subscribers {
            if excluded == Some(*conn) {
                continue;
            }
            let frame = frames[subscriber.wire.index()]
                .get_or_insert_with(|| Utf8Bytes::from(encode(subscriber.wire, event)))
                .clone();
            let outbound = match &stamp {
                None => Outbound::Frame(frame),
                Some(stamp) => Outbound::Stamped(frame, stamp.clone()),
            };
            match subscriber.tx.try_send(outbound) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full) => slow += 1,
                // The session is ending and will leave on its own.
                Err(TrySendError::Closed) => closed += 1,
            }
        }
        drop(topics);
        let slug = app_of(&event.topic).unwrap_or("none");
        self.metrics.delivered(slug, delivered);
        if slow > 0 {
            self.metrics.dropped(slug, "slow_consumer", slow);
        }
        if closed > 0 {
            self.metrics.dropped(slug, "closed", closed);
        }
    }
}

/// An event as one wire format's frame. On Phoenix, an event with a history position carries
/// its offset as the message ref.
#[must_use]
pub fn encode(wire: Wire, event: &Event) -> String {
    match wire {
        Wire::Phoenix(vsn) => phoenix::encode_raw(
            vsn,
            None,
            event
                .position
                .as_ref()
                .map(|p| message_ref(p.offset))
                .as_deref(),
            &event.topic,
            &event.event,
            &event.data.phoenix_payload(),
        ),
        Wire::Pusher => {
            let channel = channel_of(&event.topic).unwrap_or(&event.topic);
            pusher::event(
                channel,
                &event.event,
                &event.data.pusher_data(),
                event.user_id.as_deref(),
            )
        }
    }
}

/// Applies joins and leaves to the bus in order, batching what has queued up meanwhile. The
/// wanted state of a topic is read from the hub when the batch is applied, so a leave racing a
/// join can never unsubscribe a topic that has subscribers. The same reading tells the webhooks
/// of this node's first and last subscriber of each topic (a leave and a join in one batch, a
/// reload, cancel out).
pub async fn run_subscriptions(
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    webhooks: Arc<Webhooks>,
    ops: SubscriptionOps,
) {
    const BATCH: usize = 1024;
    const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    let mut rx = ops.0;
    let mut active: HashSet<String> = HashSet::new();
    // Topics with local subscribers, as last told to the webhooks.
    let mut occupied: HashSet<String> = HashSet::new();
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => op,
                None => break,
            },
            _ = reconcile.tick() => {
                // Unsubscribes that failed (Redis down) are retried here.
                let stale: Vec<String> = active
                    .iter()
                    .filter(|topic| !hub.has_subscribers(topic))
                    .cloned()
                    .collect();
                if !stale.is_empty() && bus.unsubscribe(&stale).await.is_ok() {
                    for topic in &stale {
                        active.remove(topic);
                    }
                    hub.metrics.bus_subscriptions(active.len());
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut touched = HashSet::new();
        let mut acks = Vec::new();
        for op in batch {
            match op {
                SubOp::Ensure { topic, ack } => {
                    touched.insert(topic);
                    acks.push(ack);
                }
                SubOp::Release { topic } => {
                    touched.insert(topic);
                }
            }
        }
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for topic in touched {
            let wanted = hub.has_subscribers(&topic);
            if wanted != occupied.contains(&topic) {
                webhooks.occupancy(&topic, wanted);
                if wanted {
                    occupied.insert(topic.clone());
                } else {
                    occupied.remove(&topic);
                }
            }
            match (wanted, active.contains(&topic)) {
                (true, false) => subscribe.push(topic),
                (false, true) => unsubscribe.push(topic),
                _ => {}
            }
        }
        let result = if subscribe.is_empty() {
            // Already subscribed: a join is still acknowledged only while the bus answers, or
            // a node cut off from Redis would accept joins for events it cannot receive.
            match bus.ready() {
                Err(e @ BusError::Unavailable(_)) => Err(e),
                _ => Ok(()),
            }
        } else {
            bus.subscribe(&subscribe).await
        };
        if result.is_ok() {
            active.extend(subscribe);
        }
        if !unsubscribe.is_empty() {
            match bus.unsubscribe(&unsubscribe).await {
                Ok(()) => {
                    for topic in &unsubscribe {
                        active.remove(topic);
                    }
                }
                // Still subscribed: unwanted traffic is dropped by the hub, and the
                // reconcile tick retries.
                Err(e) => tracing::warn!(error = %e, "bus unsubscribe failed"),
            }
        }
        hub.metrics.bus_subscriptions(active.len());
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}
