//! One WebSocket connection speaking Phoenix Channels: its joined channels, its outbound queue
//! and its timers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};

use crate::domain::event::{Event, Scope, check_name, parse_topic};
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
    may_publish: bool,
}

/// How long the server waits to hand a close frame to a client.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames written per flush when the queue has backed up.
const FLUSH_BATCH: usize = 64;

struct Session {
    id: ConnId,
    connect: Connect,
    state: AppState,
    channels: HashMap<String, Channel>,
    /// Joined topics per app slug, for the per-app connection metrics.
    apps: HashMap<String, usize>,
    subscriber: Subscriber,
    sink: SplitSink<WebSocket, Message>,
}

/// Why the server ends a connection, mapped once to a close code.
enum Close {
    /// The client closed or the transport failed: nothing more to send.
    Gone,
    Idle,
    SlowConsumer,
    TooBig,
    Unsupported(String),
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
            Close::Unsupported(_) => CloseReason::Protocol,
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
            Close::Shutdown => (close_code::RESTART, "server shutting down"),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
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
        state,
        channels: HashMap::new(),
        apps: HashMap::new(),
        sink,
    };
    let shutdown = session.state.shutdown.clone();
    let _live = shutdown.session_started();
    let mut closing = shutdown.closing();
    // These three futures live as long as the loop: re-creating them per message would
    // register and deregister a timer, and a waiter on the watch channel every session
    // shares, for every frame sent.
    let idle_timer = sleep_until(Instant::now() + idle);
    let killed = kill.notified();
    let shutting_down = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    tokio::pin!(idle_timer, killed, shutting_down);
    let outcome = loop {
        tokio::select! {
            () = &mut killed => break Close::SlowConsumer,
            () = &mut idle_timer => break Close::Idle,
            () = &mut shutting_down => break Close::Shutdown,
            outbound = rx.recv() => {
                // The session holds a sender itself, so the queue never closes first.
                let Some(outbound) = outbound else { break Close::Gone };
                // A client that stops reading blocks the write: the kill signal must still win.
                let sent = tokio::select! {
                    sent = session.send_queued(outbound, &mut rx) => sent,
                    () = &mut killed => Err(Close::SlowConsumer),
                };
                if let Err(close) = sent {
                    break close;
                }
            }
            frame = stream.next() => {
                idle_timer.as_mut().reset(Instant::now() + idle);
                let result = match frame {
                    None => Err(Close::Gone),
                    Some(Err(e)) => Err(read_error(&e)),
                    Some(Ok(Message::Text(text))) => tokio::select! {
                        handled = session.on_text(&text) => handled,
                        () = &mut killed => Err(Close::SlowConsumer),
                    },
                    Some(Ok(Message::Binary(_))) => Err(Close::Unsupported("binary frames are not supported".to_owned())),
                    Some(Ok(Message::Close(_))) => Err(Close::Gone),
                    // tungstenite answers pings itself; both count as activity.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                };
                if let Err(close) = result {
                    break close;
                }
            }
        }
    };
    if let Close::Unsupported(why) = &outcome {
        tracing::info!(conn = id, reason = %why, "closing socket: unsupported message");
    }
    if let Close::SlowConsumer = outcome {
        tracing::info!(conn = id, "closing socket: slow consumer");
    }
    if let Some(frame) = outcome.frame() {
        // A stalled client may never take the close frame; do not wait for it for long.
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            session.sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    for topic in session.channels.keys() {
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
    let too_big = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    if too_big { Close::TooBig } else { Close::Gone }
}

impl Session {
    async fn send(&mut self, text: String) -> Result<(), Close> {
        self.sink
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| Close::Gone)
    }

    /// Writes this frame and whatever else is queued, then flushes once.
    async fn send_queued(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), Close> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(outbound) = next.take() {
            match outbound {
                Outbound::Frame(frame) => {
                    self.sink
                        .feed(Message::Text(frame))
                        .await
                        .map_err(|_| Close::Gone)?;
                }
                Outbound::Close { topic } => {
                    if let Some(channel) = self.channels.remove(&topic) {
                        self.state.hub.leave(&topic, self.id);
                        self.topic_left(&topic, CloseReason::AppClosed);
                        let close =
                            phoenix::close(self.connect.vsn, channel.join_ref.as_deref(), &topic);
                        self.sink
                            .feed(Message::Text(close.into()))
                            .await
                            .map_err(|_| Close::Gone)?;
                    }
                }
            }
            written += 1;
            if written < FLUSH_BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.sink.flush().await.map_err(|_| Close::Gone)
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
        let decision = self.authorize_join(&message).await;
        let (slug, scope) =
            parse_topic(&topic).map_or(("none", "none"), |(scope, slug)| (slug, scope.as_str()));
        let result = match &decision {
            Ok(_) => "ok",
            Err(reason) => join_result_label(reason),
        };
        self.state.metrics.join(slug, scope, result);
        match decision {
            Ok(may_publish) => {
                let subscribed = if rejoin.is_some() {
                    Ok(())
                } else {
                    self.state
                        .hub
                        .join(&topic, self.id, self.subscriber.clone())
                        .await
                };
                if let Err(e) = subscribed {
                    tracing::warn!(error = %e, %topic, "join failed: bus unavailable");
                    let reply = self.error(&message, join_ref.as_deref(), "unavailable");
                    return self.send(reply).await;
                }
                if rejoin.is_none() {
                    self.topic_joined(&topic);
                }
                self.channels.insert(
                    topic,
                    Channel {
                        join_ref: join_ref.clone(),
                        may_publish,
                    },
                );
                let reply = self.reply(&message, join_ref.as_deref(), Status::Ok, &json!({}));
                self.send(reply).await
            }
            Err(reason) => {
                if rejoin.is_some() {
                    self.state.hub.leave(&topic, self.id);
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

    /// Decides a join; `Ok(may_publish)` or the refusal reason.
    async fn authorize_join(&self, message: &Inbound) -> Result<bool, &'static str> {
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
        if !app.origin_allowed(self.connect.origin.as_deref()) {
            return Err("origin not allowed");
        }
        match scope {
            Scope::Public => Ok(true),
            Scope::Private => {
                let token = self.connect.token.as_deref().ok_or("unauthorized")?;
                let claims = token::verify(&app.secret, token, chrono::Utc::now().timestamp())
                    .map_err(|_| "unauthorized")?;
                if claims.may_subscribe(&message.topic) {
                    Ok(claims.may_publish(&message.topic))
                } else {
                    Err("unauthorized")
                }
            }
        }
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
        self.state.hub.leave(topic, self.id);
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
        let refusal = if !channel.may_publish {
            Some("unauthorized".to_owned())
        } else if let Err(e) = check_name("event", &message.event) {
            Some(e)
        } else if message.event.starts_with("phx_") {
            Some("event names starting with phx_ are reserved".to_owned())
        } else if !message.payload.is_object() {
            Some("payload must be a JSON object".to_owned())
        } else {
            None
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
