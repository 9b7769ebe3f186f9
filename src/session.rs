//! One WebSocket connection speaking Phoenix Channels: its joined channels, its outbound queue
//! and its timers.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use chrono::{DateTime, Utc};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::domain::app::App;
use crate::domain::event::{Event, Scope, check_name, is_reserved, parse_topic};
use crate::http::AppState;
use crate::hub::{ConnId, Outbound, Subscriber};
use crate::metrics::CloseReason;
use crate::protocol::phoenix::{self, DecodeError, Inbound, Status, Vsn};
use crate::token;

/// What the upgrade request told us about the client.
pub struct Connect {
    pub vsn: Vsn,
    /// `token` (or the article's `guardian_token`) from the connect params.
    pub token: Option<String>,
    pub origin: Option<String>,
}

struct Channel {
    join_ref: Option<String>,
    scope: Scope,
    publish: Publish,
    /// The `updated_at` of the app row the channel's rights were last checked against: a
    /// recheck with an older row (reloads of back-to-back changes can finish out of order) is
    /// ignored.
    checked: DateTime<Utc>,
}

/// Whether a channel may push client events, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    Allowed,
    /// The join token grants no publishing on this topic.
    Unauthorized,
    /// The app switched client events off.
    Disabled,
}

/// How long the server waits to hand a close frame to a client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames written per flush when the queue has backed up.
const FLUSH_BATCH: usize = 64;

/// A token bucket for client events: `per_sec` a second, bursts of `per_sec`.
struct RateLimit {
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

    fn take(&mut self) -> bool {
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

    fn persistent(&self) -> bool {
        f64::from(self.strikes) > self.per_sec
    }
}

struct Session {
    id: ConnId,
    connect: Connect,
    state: AppState,
    channels: HashMap<String, Channel>,
    /// Joined topics per app slug, for the per-app connection metrics.
    apps: HashMap<String, usize>,
    /// Topics this connection is registered for in the hub, joined or still joining: all of
    /// them are left when the connection ends, whatever step of a join it ended in.
    in_hub: HashSet<String>,
    subscriber: Subscriber,
    sink: SplitSink<WebSocket, Message>,
    /// How long one write (or one batch of queued frames) may block.
    write_timeout: Duration,
    /// The connect token's `exp`, once a private channel has been joined with it: the private
    /// channels close when it passes.
    token_expiry: Option<i64>,
    client_events: RateLimit,
}

/// Why the server ends a connection, mapped once to a close code.
enum Close {
    /// The client closed or the transport failed: nothing more to send.
    Gone,
    Idle,
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
}

impl Close {
    fn reason(&self) -> CloseReason {
        match self {
            Close::Gone => CloseReason::Client,
            Close::Idle => CloseReason::Idle,
            Close::SlowConsumer => CloseReason::SlowConsumer,
            Close::TooBig => CloseReason::TooBig,
            Close::Unsupported(_) | Close::BadUtf8 | Close::Violation(_) => CloseReason::Protocol,
            Close::RateLimited => CloseReason::RateLimited,
            Close::Shutdown => CloseReason::Shutdown,
        }
    }

    fn frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Close::Gone => return None,
            Close::Idle => (close_code::AWAY, "idle timeout"),
            Close::SlowConsumer => (close_code::POLICY, "slow consumer"),
            Close::TooBig => (close_code::SIZE, "message too big"),
            Close::Unsupported(_) => (close_code::UNSUPPORTED, "unsupported message"),
            Close::BadUtf8 => (close_code::INVALID, "text frame is not UTF-8"),
            Close::Violation(_) => (close_code::PROTOCOL, "protocol error"),
            Close::RateLimited => (close_code::POLICY, "client event rate limit exceeded"),
            Close::Shutdown => (close_code::RESTART, "server shutting down"),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

/// Runs `work` unless the connection must end first: its queue overflowed (`killed`) or the
/// node is closing sockets. Whatever `work` is blocked on (a write to a client that does not
/// read, a registry lookup) never holds the socket open past either.
async fn guarded(
    work: impl Future<Output = Result<(), Close>>,
    killed: Pin<&mut impl Future<Output = ()>>,
    shutting_down: Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Close> {
    tokio::select! {
        done = work => done,
        () = killed => Err(Close::SlowConsumer),
        () = shutting_down => Err(Close::Shutdown),
    }
}

/// Completes when `timer` does; never when there is none.
async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The instant a Unix timestamp (seconds) falls on.
fn instant_at(unix_secs: i64) -> Instant {
    let left = unix_secs
        .saturating_sub(chrono::Utc::now().timestamp())
        .max(0);
    Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

/// Runs one connection until it closes.
pub async fn run(socket: WebSocket, connect: Connect, state: AppState) {
    let id = state.next_conn_id();
    let (tx, mut rx) = mpsc::channel(state.config.limits.outbound_queue);
    let kill = Arc::new(Notify::new());
    let idle = Duration::from_secs(state.config.limits.idle_timeout_secs);
    let (sink, mut stream) = socket.split();
    let mut session = Session {
        id,
        subscriber: Subscriber {
            vsn: connect.vsn,
            tx,
            kill: kill.clone(),
        },
        connect,
        write_timeout: Duration::from_secs(state.config.limits.write_timeout_secs),
        client_events: RateLimit::new(state.config.limits.client_events_per_sec),
        state,
        channels: HashMap::new(),
        apps: HashMap::new(),
        in_hub: HashSet::new(),
        sink,
        token_expiry: None,
    };
    let shutdown = session.state.shutdown.clone();
    let _live = shutdown.session_started();
    let mut closing = shutdown.closing();
    // These futures live as long as the loop: re-creating them per message would register
    // and deregister a timer, and a waiter on the watch channel every session shares, for
    // every frame sent.
    let idle_timer = sleep_until(Instant::now() + idle);
    // Boxed and only while a token is in use: most sockets never join a private topic.
    let mut expiry_timer: Option<Pin<Box<Sleep>>> = None;
    let mut armed_expiry: Option<i64> = None;
    let killed = kill.notified();
    let shutting_down = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    tokio::pin!(idle_timer, killed, shutting_down);
    let outcome = loop {
        if session.token_expiry != armed_expiry {
            armed_expiry = session.token_expiry;
            expiry_timer = armed_expiry.map(|exp| Box::pin(sleep_until(instant_at(exp))));
        }
        let result = tokio::select! {
            () = &mut killed => Err(Close::SlowConsumer),
            () = &mut idle_timer => Err(Close::Idle),
            () = &mut shutting_down => Err(Close::Shutdown),
            () = fire(&mut expiry_timer) => {
                guarded(Box::pin(session.token_expired()), killed.as_mut(), shutting_down.as_mut()).await
            }
            outbound = rx.recv() => match outbound {
                // The session holds a sender itself, so the queue never closes first.
                None => Err(Close::Gone),
                Some(outbound) => {
                    let batch = session.send_queued(outbound, &mut rx);
                    guarded(batch, killed.as_mut(), shutting_down.as_mut()).await
                }
            },
            frame = stream.next() => {
                idle_timer.as_mut().reset(Instant::now() + idle);
                match frame {
                    None => Err(Close::Gone),
                    Some(Err(e)) => Err(read_error(&e)),
                    Some(Ok(Message::Text(text))) => {
                        // Boxed: handling a client frame (a join waits on the registry and the
                        // bus) is the largest state of this future, which every idle socket
                        // would otherwise carry inline.
                        guarded(Box::pin(session.on_text(&text)), killed.as_mut(), shutting_down.as_mut()).await
                    }
                    Some(Ok(Message::Binary(_))) => Err(Close::Unsupported("binary frames are not supported".to_owned())),
                    Some(Ok(Message::Close(_))) => Err(Close::Gone),
                    // tungstenite answers pings itself; both count as activity.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                }
            }
        };
        if let Err(close) = result {
            break close;
        }
    };
    match &outcome {
        Close::Unsupported(why) | Close::Violation(why) => {
            tracing::info!(conn = id, reason = %why, "closing socket: protocol error");
        }
        Close::SlowConsumer => tracing::info!(conn = id, "closing socket: slow consumer"),
        Close::RateLimited => tracing::info!(conn = id, "closing socket: client event rate limit"),
        _ => {}
    }
    if let Some(frame) = outcome.frame() {
        // A stalled client may never take the close frame; do not wait for it for long. Then
        // read (and drop) what the client still sends until its close reply: closing with
        // unread bytes makes the kernel reset the connection, and the client would lose the
        // close frame, and with it the reason.
        let closing = async {
            session.sink.send(Message::Close(Some(frame))).await.ok()?;
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
            Some(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
    for topic in &session.in_hub {
        session.state.hub.leave(topic, id);
    }
    for app in session.apps.keys() {
        session
            .state
            .metrics
            .connection_closed(app, outcome.reason());
    }
}

/// A bounded label for a join refusal.
fn join_result_label(reason: &str) -> &'static str {
    match reason {
        "unmatched topic" => "unmatched",
        "app not found" => "not_found",
        "origin not allowed" => "origin",
        "unauthorized" => "unauthorized",
        "too many channels joined" => "limit",
        _ => "unavailable",
    }
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

impl Session {
    async fn send(&mut self, text: String) -> Result<(), Close> {
        match tokio::time::timeout(
            self.write_timeout,
            self.sink.send(Message::Text(text.into())),
        )
        .await
        {
            Ok(sent) => sent.map_err(|_| Close::Gone),
            Err(_) => Err(Close::SlowConsumer),
        }
    }

    /// Writes this frame and whatever else is queued, then flushes once; the whole batch must
    /// be written within the write timeout.
    async fn send_queued(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), Close> {
        let write_timeout = self.write_timeout;
        tokio::time::timeout(write_timeout, self.write_batch(first, rx))
            .await
            .unwrap_or(Err(Close::SlowConsumer))
    }

    async fn write_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), Close> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(outbound) = next.take() {
            let frame = match outbound {
                Outbound::Frame(frame) => Some(frame),
                Outbound::Close { topic } => self
                    .close_channel(&topic, CloseReason::AppClosed)
                    .map(Utf8Bytes::from),
                Outbound::Recheck { topic, app } => self.recheck(&topic, &app).map(Utf8Bytes::from),
            };
            if let Some(frame) = frame {
                self.sink
                    .feed(Message::Text(frame))
                    .await
                    .map_err(|_| Close::Gone)?;
            }
            written += 1;
            if written < FLUSH_BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.sink.flush().await.map_err(|_| Close::Gone)
    }

    /// Drops a channel the server ends; returns the `phx_close` frame to send, if it was joined.
    fn close_channel(&mut self, topic: &str, reason: CloseReason) -> Option<String> {
        let channel = self.channels.remove(topic)?;
        self.leave_hub(topic);
        self.topic_left(topic, reason);
        Some(phoenix::close(
            self.connect.vsn,
            channel.join_ref.as_deref(),
            topic,
        ))
    }

    /// Checks a joined channel against its app as it is now; closes it when the rights it
    /// was joined with no longer hold.
    fn recheck(&mut self, topic: &str, app: &App) -> Option<String> {
        let channel = self.channels.get(topic)?;
        if app.updated_at < channel.checked {
            return None;
        }
        let scope = channel.scope;
        match self.rights(app, scope, topic) {
            Ok(publish) => {
                if let Some(channel) = self.channels.get_mut(topic) {
                    channel.publish = publish;
                    channel.checked = app.updated_at;
                }
                None
            }
            Err(reason) => {
                tracing::info!(conn = self.id, %topic, reason, "closing channel: rights revoked");
                self.close_channel(topic, CloseReason::Revoked)
            }
        }
    }

    /// The connect token expired: every private channel joined with it closes.
    async fn token_expired(&mut self) -> Result<(), Close> {
        self.token_expiry = None;
        let private: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, channel)| channel.scope == Scope::Private)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in private {
            if let Some(close) = self.close_channel(&topic, CloseReason::Revoked) {
                self.send(close).await?;
            }
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let message = match phoenix::decode(self.connect.vsn, text) {
            Ok(message) => message,
            Err(e @ (DecodeError::Json(_) | DecodeError::Shape(_))) => {
                return Err(Close::Unsupported(e.to_string()));
            }
        };
        match (message.topic.as_str(), message.event.as_str()) {
            ("phoenix", "heartbeat") => {
                let reply = self.reply(&message, None, Status::Ok, &json!({}));
                self.send(reply).await
            }
            (_, "phx_join") => self.join(message).await,
            (_, "phx_leave") => self.leave(&message).await,
            _ => self.client_event(message).await,
        }
    }

    fn reply(
        &self,
        message: &Inbound,
        join_ref: Option<&str>,
        status: Status,
        response: &Value,
    ) -> String {
        phoenix::reply(
            self.connect.vsn,
            join_ref,
            message.msg_ref.as_deref(),
            &message.topic,
            status,
            response,
        )
    }

    fn error(&self, message: &Inbound, join_ref: Option<&str>, reason: &str) -> String {
        self.reply(
            message,
            join_ref,
            Status::Error,
            &json!({ "reason": reason }),
        )
    }

    async fn join(&mut self, message: Inbound) -> Result<(), Close> {
        // V1 joins may omit join_ref; Phoenix then uses the join's ref.
        let join_ref = message.join_ref.clone().or_else(|| message.msg_ref.clone());
        let topic = message.topic.clone();
        let rejoin = self.channels.remove(&topic);
        if let Some(old) = &rejoin {
            let close = phoenix::close(self.connect.vsn, old.join_ref.as_deref(), &topic);
            self.send(close).await?;
        }
        let mut decision = self.authorize_join(&message).await;
        // These outcomes are reached only once the registry has found the app.
        let registered = matches!(decision, Ok(_) | Err("origin not allowed" | "unauthorized"));
        if decision.is_ok() && rejoin.is_none() {
            self.in_hub.insert(topic.clone());
            let subscribed = self
                .state
                .hub
                .join(&topic, self.id, self.subscriber.clone())
                .await;
            if let Err(e) = subscribed {
                // The hub has already removed the subscriber again.
                self.in_hub.remove(&topic);
                tracing::warn!(error = %e, %topic, "join failed: bus unavailable");
                decision = Err("unavailable");
            }
        }
        let (slug, scope) =
            parse_topic(&topic).map_or(("none", "none"), |(scope, slug)| (slug, scope.as_str()));
        let result = match &decision {
            Ok(_) => "ok",
            Err(reason) => join_result_label(reason),
        };
        self.state
            .metrics
            .join(registered.then_some(slug), scope, result);
        match decision {
            Ok((scope, publish, checked)) => {
                if rejoin.is_none() {
                    self.topic_joined(&topic);
                }
                self.channels.insert(
                    topic,
                    Channel {
                        join_ref: join_ref.clone(),
                        scope,
                        publish,
                        checked,
                    },
                );
                let reply = self.reply(&message, join_ref.as_deref(), Status::Ok, &json!({}));
                self.send(reply).await
            }
            Err(reason) => {
                if rejoin.is_some() {
                    self.leave_hub(&topic);
                    self.topic_left(&topic, CloseReason::Left);
                }
                // Phoenix answers an unrouted topic without a join_ref.
                let reply_join_ref = if reason == "unmatched topic" {
                    None
                } else {
                    join_ref.as_deref()
                };
                let reply = self.error(&message, reply_join_ref, reason);
                self.send(reply).await
            }
        }
    }

    fn leave_hub(&mut self, topic: &str) {
        self.state.hub.leave(topic, self.id);
        self.in_hub.remove(topic);
    }

    fn topic_joined(&mut self, topic: &str) {
        if let Some((_, slug)) = parse_topic(topic) {
            let count = self.apps.entry(slug.to_owned()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.state.metrics.connection_opened(slug);
            }
        }
    }

    fn topic_left(&mut self, topic: &str, reason: CloseReason) {
        let Some((_, slug)) = parse_topic(topic) else {
            return;
        };
        if let Some(count) = self.apps.get_mut(slug) {
            *count -= 1;
            if *count == 0 {
                self.apps.remove(slug);
                self.state.metrics.connection_closed(slug, reason);
            }
        }
    }

    /// Decides a join: the topic's scope, its publishing right and the `updated_at` of the app
    /// row it was decided on; or the refusal reason.
    async fn authorize_join(
        &mut self,
        message: &Inbound,
    ) -> Result<(Scope, Publish, DateTime<Utc>), &'static str> {
        let Some((scope, slug)) = parse_topic(&message.topic) else {
            return Err("unmatched topic");
        };
        if self.channels.len() >= self.state.config.limits.channels_per_socket {
            return Err("too many channels joined");
        }
        let app = match self.state.registry.by_slug(slug).await {
            Ok(Some(app)) if app.active => app,
            Ok(_) => return Err("app not found"),
            Err(e) => {
                tracing::warn!(error = %e, "join failed: registry unavailable");
                return Err("unavailable");
            }
        };
        let publish = self.rights(&app, scope, &message.topic)?;
        Ok((scope, publish, app.updated_at))
    }

    /// What this socket may do on `topic` of `app` now: at a join, and again whenever the app
    /// changes. Arms the token expiry for private topics.
    fn rights(&mut self, app: &App, scope: Scope, topic: &str) -> Result<Publish, &'static str> {
        if !app.active {
            return Err("app not found");
        }
        if !app.origin_allowed(self.connect.origin.as_deref()) {
            return Err("origin not allowed");
        }
        let granted = match scope {
            Scope::Public => true,
            Scope::Private => {
                let token = self.connect.token.as_deref().ok_or("unauthorized")?;
                let claims = token::verify(&app.secret, token, chrono::Utc::now().timestamp())
                    .map_err(|_| "unauthorized")?;
                if !claims.may_subscribe(topic) {
                    return Err("unauthorized");
                }
                self.token_expiry = Some(claims.exp);
                claims.may_publish(topic)
            }
        };
        Ok(if !granted {
            Publish::Unauthorized
        } else if !app.client_events {
            Publish::Disabled
        } else {
            Publish::Allowed
        })
    }

    async fn leave(&mut self, message: &Inbound) -> Result<(), Close> {
        let topic = &message.topic;
        let Some(channel) = self.channels.get(topic) else {
            let reply = self.reply(message, message.join_ref.as_deref(), Status::Ok, &json!({}));
            return self.send(reply).await;
        };
        if message.join_ref.is_some() && message.join_ref != channel.join_ref {
            // A leave for an earlier instance of this channel: the client raced a close.
            return Ok(());
        }
        let join_ref = channel.join_ref.clone();
        self.channels.remove(topic);
        self.leave_hub(topic);
        self.topic_left(topic, CloseReason::Left);
        let reply = self.reply(message, join_ref.as_deref(), Status::Ok, &json!({}));
        self.send(reply).await?;
        let close = phoenix::close(self.connect.vsn, join_ref.as_deref(), topic);
        self.send(close).await
    }

    async fn client_event(&mut self, message: Inbound) -> Result<(), Close> {
        let Some(channel) = self.channels.get(&message.topic) else {
            let reply = self.error(&message, None, "unmatched topic");
            return self.send(reply).await;
        };
        if message.join_ref.is_some() && message.join_ref != channel.join_ref {
            return Ok(()); // stale: meant for an earlier instance of this channel
        }
        let join_ref = channel.join_ref.clone();
        let refusal = match channel.publish {
            Publish::Unauthorized => Some("unauthorized".to_owned()),
            Publish::Disabled => Some("client events are disabled for this app".to_owned()),
            Publish::Allowed if !self.client_events.take() => {
                if self.client_events.persistent() {
                    return Err(Close::RateLimited);
                }
                Some(format!(
                    "rate limit exceeded: at most {} client events per second",
                    self.state.config.limits.client_events_per_sec
                ))
            }
            Publish::Allowed => {
                if let Err(e) = check_name("event", &message.event) {
                    Some(e)
                } else if is_reserved(&message.event) {
                    Some("event names starting with phx_ are reserved".to_owned())
                } else if !message.payload.is_object() {
                    Some("payload must be a JSON object".to_owned())
                } else {
                    None
                }
            }
        };
        if let Some(reason) = refusal {
            let reply = self.error(&message, join_ref.as_deref(), &reason);
            return self.send(reply).await;
        }
        let payload = message.payload.to_string();
        if payload.len() > self.state.config.limits.event_payload_bytes {
            let reply = self.error(&message, join_ref.as_deref(), "payload too large");
            return self.send(reply).await;
        }
        let event = match RawValue::from_string(payload) {
            Ok(raw) => Event {
                topic: message.topic.clone(),
                event: message.event.clone(),
                payload: raw,
            },
            Err(_) => {
                let reply = self.error(
                    &message,
                    join_ref.as_deref(),
                    "payload must be a JSON object",
                );
                return self.send(reply).await;
            }
        };
        let reply = match self.state.bus.publish(&event).await {
            Ok(()) => {
                if let Some((_, slug)) = parse_topic(&event.topic) {
                    self.state.metrics.published(slug, "client");
                }
                self.reply(&message, join_ref.as_deref(), Status::Ok, &json!({}))
            }
            Err(e) => {
                tracing::warn!(error = %e, "client event not published");
                self.error(&message, join_ref.as_deref(), "unavailable")
            }
        };
        self.send(reply).await
    }
}
