//! One connection: the protocol-neutral core (outbound queue, batched writes, timers, hub
//! membership, presence entries, per-app counting, the close handshake) and one thin module per
//! protocol that turns client frames into joins, leaves and publishes. The transport is a
//! WebSocket, or a LongPoll session's pair of queues ([`crate::http::longpoll`]).

pub mod longpoll;
pub(crate) mod phoenix;
pub(crate) mod pusher;
mod small;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sync_wrapper::SyncWrapper;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::bus::BusError;
use crate::debug::{Kind, Record};
use crate::domain::app::App;
use crate::domain::event::Event;
use crate::domain::history::{Keep, Page, Position, Read};
use crate::domain::topic::{Topic, app_of, channel_of};
use crate::hub::{ConnId, Outbound, Stamp, Subscriber};
use crate::limits::Limit;
use crate::metrics::CloseReason;
use crate::node::{self, NodeState};
use crate::presence::{Member, PresenceError, Snapshot, TopicChange, TopicSnapshot};
use crate::protocol::Wire;
use crate::queue::{self, Alarm, Bell};
use small::SmallMap;

pub use phoenix::Connect as PhoenixConnect;
pub use pusher::Connect as PusherConnect;

/// How long the server waits to hand a close frame to a client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames written per flush when the queue has backed up.
const FLUSH_BATCH: usize = 64;

/// Why the server ends a connection. Each protocol maps it once to a close code.
#[derive(Debug)]
pub(crate) enum Close {
    /// The client closed or the transport failed: nothing more to send.
    Gone,
    Idle,
    /// A Pusher client did not answer the server's `pusher:ping`.
    PongTimeout,
    /// The queue overflowed, or a write blocked past the write timeout.
    SlowConsumer,
    TooBig,
    Unsupported(String),
    /// A text frame that is not UTF-8 (RFC 6455 §8.1: close with 1007).
    BadUtf8,
    /// A frame that breaks RFC 6455 (unmasked, RSV bits, reserved opcode).
    Violation(String),
    RateLimited,
    /// The node is shutting down: the client should reconnect to another node.
    Shutdown,
    /// The app's server ended this user's connections.
    Terminated,
    /// The app changed under a connection bound to it (Pusher): reconnect and re-authorize.
    Reconnect,
    /// A Pusher connection refused at its start: the close code and why.
    Refused(u16, &'static str),
}

impl Close {
    fn reason(&self) -> CloseReason {
        match self {
            Close::Gone => CloseReason::Client,
            Close::Idle => CloseReason::Idle,
            Close::PongTimeout => CloseReason::PongTimeout,
            Close::SlowConsumer => CloseReason::SlowConsumer,
            Close::TooBig => CloseReason::TooBig,
            Close::Unsupported(_) | Close::BadUtf8 | Close::Violation(_) | Close::Refused(..) => {
                CloseReason::Protocol
            }
            Close::RateLimited => CloseReason::RateLimited,
            Close::Shutdown => CloseReason::Shutdown,
            Close::Terminated => CloseReason::Terminated,
            Close::Reconnect => CloseReason::AppClosed,
        }
    }
}

/// Why a join or subscription is refused, whatever the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a topic (or channel) this server routes.
    Unmatched,
    /// No active app with this slug.
    NotFound,
    Origin,
    /// No valid token or auth signature for a channel that needs one.
    Unauthorized,
    /// Too many channels on this connection.
    Limit,
    /// The presence channel holds its app's `max_presence_members` users already.
    Full,
    /// The app holds its `max_connections` across the cluster already.
    Quota,
    /// The registry or the bus is down.
    Unavailable,
}

impl Refusal {
    /// The `pushlite_joins_total` result label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unmatched => "unmatched",
            Refusal::NotFound => "not_found",
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Limit => "limit",
            Refusal::Full => "full",
            Refusal::Quota => "quota",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// Why, in words: the refusal reasons Phoenix clients have always been sent, and what the
    /// console's debug stream shows.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unmatched => "unmatched topic",
            Refusal::NotFound => "app not found",
            Refusal::Origin => "origin not allowed",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Limit => "too many channels joined",
            Refusal::Full => "presence channel is full",
            Refusal::Quota => "over connection quota",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// Whether the registry had found the app (only then may the app take a metric label).
    fn app_known(self) -> bool {
        matches!(
            self,
            Refusal::Origin | Refusal::Unauthorized | Refusal::Full | Refusal::Quota
        )
    }
}

/// A token bucket for client events: `per_sec` a second, bursts of `per_sec`.
pub(crate) struct RateLimit {
    per_sec: f64,
    tokens: f64,
    refilled: Instant,
    /// Events refused in a row; past `per_sec` of them the socket is closed.
    strikes: u32,
}

impl RateLimit {
    fn new(per_sec: u32) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec),
            tokens: f64::from(per_sec),
            refilled: Instant::now(),
            strikes: 0,
        }
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.per_sec);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes = self.strikes.saturating_add(1);
            false
        }
    }

    pub fn persistent(&self) -> bool {
        f64::from(self.strikes) > self.per_sec
    }
}

/// The transport failed or the other side went away.
#[derive(Debug)]
pub(crate) struct Gone;

/// A session's transport: a WebSocket, or a LongPoll session's pair of queues.
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every session is a WebSocket; boxing it would add an allocation to each"
)]
pub(crate) enum Transport {
    Socket(SyncWrapper<WebSocket>),
    Poll {
        /// Frames for the client, which its polls drain.
        outbound: mpsc::Sender<Message>,
        /// The frames of its POSTs, and a ping per poll to show the client is there.
        inbound: mpsc::Receiver<Message>,
    },
}

impl Transport {
    async fn feed(&mut self, message: Message) -> Result<(), Gone> {
        match self {
            Transport::Socket(socket) => socket.get_mut().feed(message).await.map_err(|_| Gone),
            // Boxed: tokio's send future would make up most of every connection's task, for
            // the sake of the LongPoll sessions only.
            Transport::Poll { outbound, .. } => {
                Box::pin(outbound.send(message)).await.map_err(|_| Gone)
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        match self {
            Transport::Socket(socket) => socket.get_mut().flush().await.map_err(|_| Gone),
            Transport::Poll { .. } => Ok(()),
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        self.feed(message).await?;
        self.flush().await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        match self {
            Transport::Socket(socket) => socket.get_mut().poll_next_unpin(cx),
            Transport::Poll { inbound, .. } => inbound.poll_recv(cx).map(|m| m.map(Ok)),
        }
    }

    async fn next(&mut self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// What every protocol's session shares: the transport's write half, its hub registrations, its
/// presence entries and its per-app counts.
pub(crate) struct Core {
    pub id: ConnId,
    pub state: NodeState,
    pub origin: Option<String>,
    pub client_events: RateLimit,
    subscriber: Subscriber,
    /// The `protocol` label of the connection metrics.
    label: &'static str,
    transport: Transport,
    /// How long one write (or one batch of queued frames) may block.
    write_timeout: Duration,
    /// References per app slug (joined topics; a Pusher connection also holds one for its
    /// app while it is open), for the per-app connection metrics.
    apps: SmallMap<usize>,
    /// Topics this connection is registered for in the hub, joined or still joining: all of
    /// them are left when the connection ends, whatever step of a join it ended in.
    in_hub: SmallMap<()>,
    /// This connection's presence entries: topic → entry.
    presence: SmallMap<String>,
    /// Makes each presence entry of this connection unique, even on a channel it re-joins.
    presence_seq: u32,
    /// Per topic whose history this connection was sent, the newest position it holds:
    /// broadcasts at or before it, queued while the history was read, are not sent again.
    floors: SmallMap<Position>,
}

impl Core {
    pub async fn send(&mut self, text: String) -> Result<(), Close> {
        match tokio::time::timeout(
            self.write_timeout,
            self.transport.send(Message::Text(text.into())),
        )
        .await
        {
            Ok(sent) => sent.map_err(|_| Close::Gone),
            Err(_) => Err(Close::SlowConsumer),
        }
    }

    /// Registers for a topic's events; returns once the bus delivers the topic to this node.
    pub async fn enter(&mut self, topic: &str) -> Result<(), BusError> {
        self.in_hub.insert(topic.to_owned(), ());
        let entered = self
            .state
            .hub
            .join(topic, self.id, self.subscriber.clone())
            .await;
        if entered.is_err() {
            // The hub has already removed the subscriber again.
            self.in_hub.remove(topic);
        }
        entered
    }

    pub fn exit(&mut self, topic: &str) {
        self.state.hub.leave(topic, self.id);
        self.in_hub.remove(topic);
        self.floors.remove(topic);
        self.untrack(topic);
    }

    /// Reads a topic's history; only after [`Core::enter`], so that every later event reaches
    /// this connection live.
    pub async fn history(&self, topic: &str, keep: Keep, read: Read<'_>) -> Result<Page, BusError> {
        self.state.bus.history(topic, keep, read).await
    }

    /// This connection now holds `topic` up to `position` (a history it was sent).
    pub fn hold_from(&mut self, topic: &str, position: Position) {
        self.floors.insert(topic.to_owned(), position);
    }

    /// Where a broadcast of a topic with history stands against what this connection holds.
    fn sequence(&mut self, stamp: &Stamp) -> Sequence {
        // A channel this connection has left (or that is waiting to be rejoined) gets nothing:
        // a client must not move its position past events it has not been sent.
        if !self.in_hub.contains_key(&stamp.topic) {
            return Sequence::Seen;
        }
        let Some(floor) = self.floors.get_mut(&stamp.topic) else {
            return Sequence::Next;
        };
        let position = &stamp.position;
        if floor.epoch != position.epoch {
            return Sequence::Broken;
        }
        if position.offset <= floor.offset {
            return Sequence::Seen;
        }
        if position.offset > floor.offset.saturating_add(1) {
            return Sequence::Broken;
        }
        floor.offset = position.offset;
        Sequence::Next
    }

    /// Sends several frames with one flush.
    pub async fn send_all(&mut self, frames: Vec<String>) -> Result<(), Close> {
        let transport = &mut self.transport;
        let sending = async {
            for frame in frames {
                transport.feed(Message::Text(frame.into())).await?;
            }
            transport.flush().await
        };
        match tokio::time::timeout(self.write_timeout, sending).await {
            Ok(sent) => sent.map_err(|_| Close::Gone),
            Err(_) => Err(Close::SlowConsumer),
        }
    }

    /// Fetches a presence channel's membership in the background and hands it to this session
    /// as a notice: after a gap in its changes, or when a client asks again.
    pub fn resync(&self, topic: &str) {
        let (presence, tx, topic) = (
            self.state.presence.clone(),
            self.subscriber.tx.clone(),
            topic.to_owned(),
        );
        tokio::spawn(async move {
            match presence.snapshot(&topic).await {
                Ok(snapshot) => {
                    let _ = tx.try_send(Outbound::PresenceSync(Box::new(TopicSnapshot {
                        topic,
                        snapshot,
                    })));
                }
                Err(error) => tracing::warn!(%error, %topic, "presence resync failed"),
            }
        });
    }

    /// Takes this connection's entry out of a presence channel, if it has one.
    pub fn untrack(&mut self, topic: &str) {
        if let Some(entry) = self.presence.remove(topic) {
            self.state.presence.leave(topic, &entry);
        }
    }

    /// This connection's Pusher socket id.
    pub fn socket_id(&self) -> String {
        self.state.hub.socket_id(self.id)
    }

    /// Adds this connection to a presence channel it has entered; returns the membership.
    pub async fn track(
        &mut self,
        topic: &Topic,
        user_id: String,
        user_info: Option<Box<serde_json::value::RawValue>>,
        max_users: usize,
    ) -> Result<Snapshot, Refusal> {
        self.presence_seq += 1;
        let member = Member {
            entry: format!("{}.{}", self.socket_id(), self.presence_seq),
            user_id,
            user_info,
        };
        match self
            .state
            .presence
            .join(topic.as_str(), &member, max_users)
            .await
        {
            Ok(snapshot) => {
                self.presence
                    .insert(topic.as_str().to_owned(), member.entry);
                Ok(snapshot)
            }
            Err(PresenceError::Full) => Err(Refusal::Full),
            Err(e) => {
                tracing::warn!(error = %e, %topic, "presence join failed");
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Leaves a joined topic: out of the hub, and one reference fewer to its app.
    pub fn leave(&mut self, topic: &str, reason: CloseReason) {
        self.exit(topic);
        if let Some(slug) = app_of(topic) {
            self.debug_leave(slug, channel_of(topic).unwrap_or(topic), reason);
            self.release_app(slug, reason);
        }
    }

    /// A leave in the debug stream, when someone watches `slug`.
    pub fn debug_leave(&self, slug: &str, channel: &str, reason: CloseReason) {
        self.debug(slug, || {
            Record::new(Kind::Leave)
                .channel(channel)
                .reason(reason.as_str())
        });
    }

    /// Whether this connection may start counting for `app`: it does already, or the app's
    /// connection quota has room. A refusal is counted.
    pub fn connection_fits(&self, app: &App) -> bool {
        if self.apps.contains_key(&app.slug) {
            return true;
        }
        let local = self.state.metrics.app_connections(&app.slug);
        let fits = self.state.limits.connection_fits(app, local);
        if !fits {
            self.state.metrics.limit_refused(Limit::Connections);
        }
        fits
    }

    /// Counts one more reference of this connection to `slug`.
    pub fn hold_app(&mut self, slug: &str) {
        let count = self.apps.get_or_insert_with(slug, || 0);
        *count += 1;
        if *count == 1 {
            self.state.metrics.connection_opened(slug, self.label);
            self.debug(slug, || Record::new(Kind::Connect));
        }
    }

    pub fn release_app(&mut self, slug: &str, reason: CloseReason) {
        if let Some(count) = self.apps.get_mut(slug) {
            *count -= 1;
            if *count == 0 {
                self.apps.remove(slug);
                self.disconnected(slug, reason);
            }
        }
    }

    /// This connection no longer counts for `slug`.
    fn disconnected(&self, slug: &str, reason: CloseReason) {
        self.state
            .metrics
            .connection_closed(slug, self.label, reason);
        self.debug(slug, || {
            Record::new(Kind::Disconnect).reason(reason.as_str())
        });
    }

    /// A debug stream record about this connection, when someone watches `slug`.
    pub fn debug(&self, slug: &str, make: impl FnOnce() -> Record) {
        self.state.debug.record(slug, || {
            make().socket(self.socket_id()).protocol(self.label)
        });
    }

    /// Counts a join or subscription. A topic no app routes counts under kind `none`.
    pub fn count_join(&self, topic: Option<&Topic>, result: Result<(), Refusal>) {
        if let Some(topic) = topic {
            self.debug(topic.app(), || {
                let record = Record::new(if result.is_ok() {
                    Kind::Join
                } else {
                    Kind::Refused
                })
                .channel(topic.channel());
                match result {
                    Ok(()) => record,
                    Err(refusal) => record.reason(refusal.reason()),
                }
            });
        }
        if result == Err(Refusal::Full) {
            self.state.metrics.limit_refused(Limit::PresenceMembers);
        }
        let topic = topic.filter(|_| result != Err(Refusal::Unmatched));
        let (app, kind) = topic.map_or((None, "none"), |t| (Some(t.app()), t.kind().label()));
        let (registered, label) = match result {
            Ok(()) => (true, "ok"),
            Err(refusal) => (refusal.app_known(), refusal.label()),
        };
        self.state
            .metrics
            .join(app.filter(|_| registered), kind, label);
    }

    /// Looks up the active app of a topic.
    pub async fn active_app(&self, slug: &str) -> Result<Arc<App>, Refusal> {
        match self.state.registry.by_slug(slug).await {
            Ok(Some(app)) if app.active => Ok(app),
            Ok(_) => Err(Refusal::NotFound),
            Err(e) => {
                tracing::warn!(error = %e, "join failed: registry unavailable");
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Publishes a client event, counts it, and queues its webhook when the app has one.
    pub async fn publish_client_event(&self, event: &Event) -> Result<(), BusError> {
        let slug = app_of(&event.topic).unwrap_or_default();
        // The cached registry: no database round trip per event.
        let app = match self.state.registry.by_slug(slug).await {
            Ok(Some(app)) => app,
            Ok(None) => return Err(BusError::Unavailable(format!("no app {slug}"))),
            Err(e) => return Err(BusError::Unavailable(e.to_string())),
        };
        self.state
            .publish(&app, event, node::Source::Client)
            .await?;
        self.state
            .webhooks
            .client_event(&app, event, &self.socket_id());
        Ok(())
    }
}

/// A broadcast of a topic with history, against the newest position the connection holds.
enum Sequence {
    /// The next one: send it.
    Next,
    /// Already sent (from the history), or for a channel this connection no longer holds.
    Seen,
    /// Events are missing before it (this node missed them), or the topic's history started a
    /// new epoch: the connection's position no longer leads to it.
    Broken,
}

/// A server-side change to one of the connection's topics, for its protocol to act on.
pub(crate) enum Notice {
    /// A broadcast that does not follow what the connection holds ([`Sequence::Broken`]).
    Gap(Arc<Stamp>, Utf8Bytes),
    /// The topic's app was deactivated, renamed or deleted.
    Closed(String),
    /// The topic's app changed: check the channel's rights against it.
    Recheck(String, Arc<App>),
    /// A presence channel's membership changed.
    Presence(Arc<TopicChange>),
    /// The membership now, as [`Core::resync`] asked for it.
    PresenceSync(Box<TopicSnapshot>),
}

/// What a protocol adds to the core.
pub(crate) trait Protocol: Send {
    /// Runs once the socket is open: the greeting, or a refusal.
    fn start(&mut self, core: &mut Core) -> impl Future<Output = Result<(), Close>> + Send;
    fn on_text(
        &mut self,
        core: &mut Core,
        text: &str,
    ) -> impl Future<Output = Result<(), Close>> + Send;
    /// A change the hub announced; returns the frame to send, if any.
    fn on_notice(&mut self, core: &mut Core, notice: Notice) -> Result<Option<String>, Close>;
    /// The client sent nothing for the idle period: end, or send a frame and wait this long.
    fn on_idle(&mut self) -> Result<(String, Duration), Close>;
    /// The client sent a frame.
    fn on_activity(&mut self) {}
    /// How long the client may stay silent before `on_idle`.
    fn idle_after(&self) -> Duration;
    /// A protocol timer (a token's expiry), if one is armed.
    fn deadline(&self) -> Option<i64> {
        None
    }
    fn on_deadline(&mut self, _core: &mut Core) -> impl Future<Output = Result<(), Close>> + Send {
        async { Ok(()) }
    }
    /// What to send before closing: a last frame and the close frame.
    fn farewell(&self, close: &Close) -> (Option<String>, Option<CloseFrame>);
}

pin_project_lite::pin_project! {
    /// Runs `work` unless the connection must end first: its queue overflowed or the node is
    /// closing sockets. Whatever `work` is blocked on (a write to a client that does not read,
    /// a registry lookup) never holds the socket open past either. A hand-written future: an
    /// `async fn` would store `work` twice, and this sits in every connection's task.
    struct Guarded<'a, F> {
        #[pin]
        work: F,
        bell: &'a Bell,
    }
}

fn guarded<F: Future>(work: F, bell: &Bell) -> Guarded<'_, F> {
    Guarded { work, bell }
}

impl<F: Future<Output: Outcome>> Future for Guarded<'_, F> {
    type Output = Result<(), Close>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(alarm) = this.bell.poll_alarm(cx) {
            return Poll::Ready(Err(Close::from(alarm)));
        }
        this.work.poll(cx).map(Outcome::outcome)
    }
}

/// What guarded work ends in.
trait Outcome {
    fn outcome(self) -> Result<(), Close>;
}

impl Outcome for Result<(), Close> {
    fn outcome(self) -> Result<(), Close> {
        self
    }
}

/// Work under the write timeout: running out of it makes the client a slow consumer.
impl Outcome for Result<Result<(), Close>, tokio::time::error::Elapsed> {
    fn outcome(self) -> Result<(), Close> {
        self.unwrap_or(Err(Close::SlowConsumer))
    }
}

impl From<Alarm> for Close {
    fn from(alarm: Alarm) -> Close {
        match alarm {
            Alarm::Overflow => Close::SlowConsumer,
            Alarm::Shutdown => Close::Shutdown,
        }
    }
}

/// What woke a session.
enum Wake {
    Alarm(Alarm),
    Outbound(Outbound),
    Client(Option<Result<Message, axum::Error>>),
    Idle,
    Deadline,
}

/// What the session waits on, all polled in place: no future is built per wake-up, and an idle
/// session holds only its timers and its queue. Client frames and outbound messages take turns
/// at going first (`inbound_first`), so neither a busy channel nor a chatty client starves the
/// other.
fn poll_wake(
    cx: &mut Context<'_>,
    (bell, rx, transport): (&Bell, &mut queue::Receiver<Outbound>, &mut Transport),
    idle: Pin<&mut Sleep>,
    deadline: Option<Pin<&mut Sleep>>,
    inbound_first: bool,
) -> Poll<Wake> {
    if let Poll::Ready(alarm) = bell.poll_alarm(cx) {
        return Poll::Ready(Wake::Alarm(alarm));
    }
    if inbound_first && let Poll::Ready(frame) = transport.poll_next(cx) {
        return Poll::Ready(Wake::Client(frame));
    }
    if let Poll::Ready(outbound) = rx.poll_recv(cx) {
        return Poll::Ready(Wake::Outbound(outbound));
    }
    if !inbound_first && let Poll::Ready(frame) = transport.poll_next(cx) {
        return Poll::Ready(Wake::Client(frame));
    }
    if idle.poll(cx).is_ready() {
        return Poll::Ready(Wake::Idle);
    }
    if let Some(deadline) = deadline
        && deadline.poll(cx).is_ready()
    {
        return Poll::Ready(Wake::Deadline);
    }
    Poll::Pending
}

/// The instant a Unix timestamp (seconds) falls on.
fn instant_at(unix_secs: i64) -> Instant {
    let left = unix_secs
        .saturating_sub(chrono::Utc::now().timestamp())
        .max(0);
    Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

fn read_error(error: &axum::Error) -> Close {
    let source = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>());
    match source {
        Some(tungstenite::Error::Capacity(_)) => Close::TooBig,
        Some(tungstenite::Error::Utf8(_)) => Close::BadUtf8,
        // The peer went away without a close frame: an ordinary disconnect, not a violation.
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => Close::Gone,
        Some(tungstenite::Error::Protocol(e)) => Close::Violation(e.to_string()),
        _ => Close::Gone,
    }
}

/// Runs a Phoenix Channels connection until it closes.
///
/// These are plain functions returning the session's future, not `async fn`s: an async fn keeps
/// its arguments in its state for its whole life, so each layer would carry the socket and the
/// node state a second time, in every idle connection's task.
pub fn run_phoenix(
    socket: WebSocket,
    connect: PhoenixConnect,
    state: NodeState,
) -> impl Future<Output = ()> + Send {
    let wire = Wire::Phoenix(connect.vsn);
    let origin = connect.origin.clone();
    let protocol = phoenix::Phoenix::new(connect, &state, None);
    let transport = (Transport::Socket(SyncWrapper::new(socket)), wire.label());
    run(transport, wire, origin, protocol, state)
}

/// Runs a Phoenix Channels session over LongPoll: frames go to `outbound` (which polls drain)
/// and come from `inbound` (POSTed frames, and a ping per poll to show the client is there).
pub fn run_phoenix_poll(
    outbound: mpsc::Sender<Message>,
    inbound: mpsc::Receiver<Message>,
    connect: PhoenixConnect,
    state: NodeState,
) -> impl Future<Output = ()> + Send {
    let wire = Wire::Phoenix(connect.vsn);
    let origin = connect.origin.clone();
    // No heartbeats over LongPoll: a session without polls ends after the session timeout.
    let idle = Duration::from_millis(state.config.longpoll.session_timeout_ms);
    let protocol = phoenix::Phoenix::new(connect, &state, Some(idle));
    let transport = (Transport::Poll { outbound, inbound }, LONGPOLL_LABEL);
    run(transport, wire, origin, protocol, state)
}

/// The `protocol` label of LongPoll sessions.
pub const LONGPOLL_LABEL: &str = "longpoll";

/// Runs a Pusher protocol 7 connection until it closes.
pub fn run_pusher(
    socket: WebSocket,
    connect: PusherConnect,
    state: NodeState,
) -> impl Future<Output = ()> + Send {
    let origin = connect.origin.clone();
    let protocol = pusher::Pusher::new(connect, &state);
    let transport = (
        Transport::Socket(SyncWrapper::new(socket)),
        Wire::Pusher.label(),
    );
    run(transport, Wire::Pusher, origin, protocol, state)
}

/// Builds the connection's state, then returns the future that owns it (see [`run_phoenix`]
/// for why this is not an `async fn`).
fn run<P: Protocol>(
    (transport, label): (Transport, &'static str),
    wire: Wire,
    origin: Option<String>,
    protocol: P,
    state: NodeState,
) -> impl Future<Output = ()> + Send {
    let id = state.next_conn_id();
    let (tx, rx) = queue::bounded(state.config.limits.outbound_queue);
    let core = Core {
        id,
        subscriber: Subscriber { wire, tx },
        label,
        origin,
        write_timeout: Duration::from_secs(state.config.limits.write_timeout_secs),
        client_events: RateLimit::new(state.config.limits.client_events_per_sec),
        state,
        apps: SmallMap::new(),
        in_hub: SmallMap::new(),
        presence: SmallMap::new(),
        presence_seq: 0,
        floors: SmallMap::new(),
        transport,
    };
    serve(core, protocol, rx)
}

/// The connection's loop, over the state [`run`] built. An `async move` block rather than an
/// `async fn`: it owns its captures in place instead of moving arguments into new locals.
/// Work that is rare (the greeting, a heartbeat of the server's, a token's expiry, the close
/// handshake) is boxed, so that every idle connection's task carries only what its hot path
/// needs.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store its arguments twice (rust-lang/rust#62958)"
)]
fn serve<P: Protocol>(
    mut core: Core,
    mut protocol: P,
    mut rx: queue::Receiver<Outbound>,
) -> impl Future<Output = ()> + Send {
    async move {
        let id = core.id;
        let bell = rx.bell();
        let shutdown = core.state.shutdown.clone();
        let _live = shutdown.session_started(id, bell.clone());
        // Lives as long as the loop: re-creating it per message would register and deregister
        // a timer for every frame.
        let idle_timer = sleep_until(Instant::now() + protocol.idle_after());
        tokio::pin!(idle_timer);
        // Boxed and only while armed: most sockets never use a token.
        let mut deadline_timer: Option<Pin<Box<Sleep>>> = None;
        let mut armed: Option<i64> = None;
        let started = guarded(Box::pin(protocol.start(&mut core)), &bell).await;
        let mut inbound_first = false;
        let outcome = match started {
            Err(close) => close,
            Ok(()) => loop {
                if protocol.deadline() != armed {
                    armed = protocol.deadline();
                    deadline_timer = armed.map(|at| Box::pin(sleep_until(instant_at(at))));
                }
                inbound_first = !inbound_first;
                let wake = std::future::poll_fn(|cx| {
                    poll_wake(
                        cx,
                        (&bell, &mut rx, &mut core.transport),
                        idle_timer.as_mut(),
                        deadline_timer.as_mut().map(Pin::as_mut),
                        inbound_first,
                    )
                })
                .await;
                let result = match wake {
                    Wake::Alarm(alarm) => Err(Close::from(alarm)),
                    Wake::Idle => match protocol.on_idle() {
                        Err(close) => Err(close),
                        Ok((frame, wait)) => {
                            idle_timer.as_mut().reset(Instant::now() + wait);
                            guarded(Box::pin(core.send(frame)), &bell).await
                        }
                    },
                    Wake::Deadline => {
                        armed = None;
                        deadline_timer = None;
                        guarded(Box::pin(protocol.on_deadline(&mut core)), &bell).await
                    }
                    Wake::Outbound(outbound) => {
                        let batch = tokio::time::timeout(
                            core.write_timeout,
                            write_batch(&mut protocol, &mut core, outbound, &mut rx),
                        );
                        guarded(batch, &bell).await
                    }
                    Wake::Client(frame) => {
                        idle_timer
                            .as_mut()
                            .reset(Instant::now() + protocol.idle_after());
                        protocol.on_activity();
                        match frame {
                            None => Err(Close::Gone),
                            Some(Err(e)) => Err(read_error(&e)),
                            Some(Ok(Message::Text(text))) => {
                                // Boxed: handling a client frame (a join waits on the registry
                                // and the bus) is the largest state of this future, which every
                                // idle socket would otherwise carry inline.
                                guarded(Box::pin(protocol.on_text(&mut core, &text)), &bell).await
                            }
                            Some(Ok(Message::Binary(_))) => Err(Close::Unsupported(
                                "binary frames are not supported".to_owned(),
                            )),
                            Some(Ok(Message::Close(_))) => Err(Close::Gone),
                            // tungstenite answers pings itself; both count as activity.
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        }
                    }
                };
                if let Err(close) = result {
                    break close;
                }
            },
        };
        match &outcome {
            Close::Unsupported(why) | Close::Violation(why) => {
                tracing::info!(conn = id, reason = %why, "closing socket: protocol error");
            }
            Close::SlowConsumer => tracing::info!(conn = id, "closing socket: slow consumer"),
            Close::RateLimited => {
                tracing::info!(conn = id, "closing socket: client event rate limit")
            }
            _ => {}
        }
        let (last, frame) = protocol.farewell(&outcome);
        if let Some(frame) = frame {
            Box::pin(say_goodbye(&mut core.transport, last, frame)).await;
        }
        for topic in core.in_hub.keys() {
            core.state.hub.leave(topic, id);
        }
        for (topic, entry) in &core.presence {
            core.state.presence.leave(topic, entry);
        }
        let reason = outcome.reason();
        for app in core.apps.keys() {
            core.disconnected(app, reason);
        }
    }
}

/// Sends the last frame and the close frame. A stalled client may never take the close frame;
/// do not wait for it for long. Then reads (and drops) what the client still sends until its
/// close reply: closing with unread bytes makes the kernel reset the connection, and the client
/// would lose the close frame, and with it the reason.
async fn say_goodbye(transport: &mut Transport, last: Option<String>, frame: CloseFrame) {
    let closing = async {
        if let Some(last) = last {
            transport.send(Message::Text(last.into())).await.ok()?;
        }
        transport.send(Message::Close(Some(frame))).await.ok()?;
        if let Transport::Poll { .. } = transport {
            return Some(());
        }
        while let Some(Ok(message)) = transport.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
        Some(())
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

/// Writes this outbound message and whatever else is queued (up to a batch), then flushes
/// once.
async fn write_batch<P: Protocol>(
    protocol: &mut P,
    core: &mut Core,
    first: Outbound,
    rx: &mut queue::Receiver<Outbound>,
) -> Result<(), Close> {
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(outbound) = next.take() {
        let frame = match outbound {
            Outbound::Frame(frame) => Some(frame),
            Outbound::Stamped(frame, stamp) => match core.sequence(&stamp) {
                Sequence::Next => Some(frame),
                Sequence::Seen => None,
                Sequence::Broken => protocol
                    .on_notice(core, Notice::Gap(stamp, frame))?
                    .map(Utf8Bytes::from),
            },
            Outbound::Close { topic } => protocol
                .on_notice(core, Notice::Closed(topic))?
                .map(Utf8Bytes::from),
            Outbound::Recheck { topic, app } => protocol
                .on_notice(core, Notice::Recheck(topic, app))?
                .map(Utf8Bytes::from),
            Outbound::Presence(change) => protocol
                .on_notice(core, Notice::Presence(change))?
                .map(Utf8Bytes::from),
            Outbound::PresenceSync(snapshot) => protocol
                .on_notice(core, Notice::PresenceSync(snapshot))?
                .map(Utf8Bytes::from),
            Outbound::Terminate => return Err(Close::Terminated),
        };
        if let Some(frame) = frame {
            core.transport
                .feed(Message::Text(frame))
                .await
                .map_err(|_| Close::Gone)?;
        }
        taken += 1;
        if taken < FLUSH_BATCH {
            next = rx.try_recv();
        }
    }
    core.transport.flush().await.map_err(|_| Close::Gone)
}
