//! The Phoenix Channels side of a session: `phx_join` / `phx_leave`, heartbeats, client events
//! and join tokens.

use super::small::SmallMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Utf8Bytes, close_code};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Close, Core, Notice, Protocol, Refusal};
use crate::bus::BusError;
use crate::domain::app::App;
use crate::domain::event::{Data, Event, RESERVED, check_name, is_reserved};
use crate::domain::history::{EPOCH_MAX_BYTES, Keep, Page, Position, Read, is_cache};
use crate::domain::topic::{ChannelKind, Topic};
use crate::hub;
use crate::metrics::CloseReason;
use crate::node::NodeState;
use crate::presence::{self, Admit, Seen, Snapshot, TopicChange, TopicSnapshot};
use crate::protocol::Wire;
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
    kind: ChannelKind,
    publish: Publish,
    /// The `updated_at` of the app row the channel's rights were last checked against: a
    /// recheck with an older row (reloads of back-to-back changes can finish out of order) is
    /// ignored.
    checked: DateTime<Utc>,
    /// On a presence channel, the newest membership change this connection holds.
    seen: Option<Seen>,
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

pub(super) struct Phoenix {
    vsn: Vsn,
    token: Option<String>,
    idle: Duration,
    channels: SmallMap<Channel>,
    /// The connect token's `exp`, once a channel needing it has been joined: those channels
    /// close when it passes.
    token_expiry: Option<i64>,
}

impl Phoenix {
    /// `idle` replaces the idle timeout (LongPoll sessions end when polls stop).
    pub(super) fn new(connect: Connect, state: &NodeState, idle: Option<Duration>) -> Phoenix {
        Phoenix {
            vsn: connect.vsn,
            token: connect.token,
            idle: idle
                .unwrap_or_else(|| Duration::from_secs(state.config.limits.idle_timeout_secs)),
            channels: SmallMap::new(),
            token_expiry: None,
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
            self.vsn,
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

    /// Errors a channel whose broadcasts no longer follow the position its client holds (a gap,
    /// a new epoch): phoenix.js rejoins it, sending that position back, and gets what it
    /// missed or `recovered: false`. Returns the `phx_error` frame, as Phoenix sends it when a
    /// channel process crashes.
    fn resync(&mut self, core: &mut Core, topic: &str) -> Option<String> {
        let channel = self.channels.remove(topic)?;
        tracing::info!(conn = core.id, %topic, "channel history out of sequence: the client rejoins to recover");
        core.leave(topic, CloseReason::Resync);
        let join_ref = channel.join_ref.as_deref();
        Some(phoenix::encode_raw(
            self.vsn,
            join_ref,
            join_ref,
            topic,
            "phx_error",
            "{}",
        ))
    }

    /// Drops a channel the server ends; returns the `phx_close` frame to send, if it was joined.
    fn close_channel(
        &mut self,
        core: &mut Core,
        topic: &str,
        reason: CloseReason,
    ) -> Option<String> {
        let channel = self.channels.remove(topic)?;
        core.leave(topic, reason);
        Some(phoenix::close(self.vsn, channel.join_ref.as_deref(), topic))
    }

    async fn join(&mut self, core: &mut Core, message: Inbound) -> Result<(), Close> {
        // V1 joins may omit join_ref; Phoenix then uses the join's ref.
        let join_ref = message.join_ref.clone().or_else(|| message.msg_ref.clone());
        let wish = match Wish::parse(&message.payload) {
            Ok(wish) => wish,
            Err(reason) => {
                let reply = self.error(&message, join_ref.as_deref(), reason);
                return core.send(reply).await;
            }
        };
        let name = message.topic.clone();
        let rejoin = self.channels.remove(&name);
        if let Some(old) = &rejoin {
            let close = phoenix::close(self.vsn, old.join_ref.as_deref(), &name);
            core.send(close).await?;
        }
        let topic = Topic::parse(&name);
        let mut decision = match &topic {
            Some(topic) => self.authorize(core, topic).await,
            None => Err(Refusal::Unmatched),
        };
        if decision.is_ok()
            && rejoin.is_none()
            && let Err(e) = core.enter(&name).await
        {
            tracing::warn!(error = %e, topic = %name, "join failed: bus unavailable");
            decision = Err(Refusal::Unavailable);
        }
        // Read only now that the topic's events reach this connection: what the history lacks
        // arrives live, and what arrived live meanwhile is dropped (see `Core::hold_from`).
        let mut replay = None;
        if let (Ok(grant), Some(topic)) = (&decision, &topic)
            && let Some(keep) = grant.keep
        {
            match Replay::read(core, topic, keep, &wish).await {
                Ok(read) => replay = Some(read),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %name, "join failed: history unavailable");
                    if rejoin.is_none() {
                        core.exit(&name);
                    }
                    decision = Err(Refusal::Unavailable);
                }
            }
        }
        let mut snapshot = None;
        let member = match &mut decision {
            Ok(grant) => grant.member.take(),
            Err(_) => None,
        };
        if let (Some((user_id, user_info, max)), Some(topic)) = (member, &topic) {
            // A rejoin is a new channel instance: its old entry leaves, a new one joins.
            core.untrack(&name);
            match core.track(topic, user_id, user_info, max).await {
                Ok(joined) => snapshot = Some(joined),
                Err(refusal) => {
                    if rejoin.is_none() {
                        core.exit(&name);
                    }
                    decision = Err(refusal);
                }
            }
        }
        core.count_join(
            topic.as_ref(),
            decision.as_ref().map(|_| ()).map_err(|r| *r),
        );
        match (decision, topic) {
            (Ok(grant), Some(topic)) => {
                if rejoin.is_none() {
                    core.hold_app(topic.app());
                }
                self.channels.insert(
                    name.clone(),
                    Channel {
                        join_ref: join_ref.clone(),
                        kind: topic.kind(),
                        publish: grant.publish,
                        checked: grant.app.updated_at,
                        seen: snapshot.as_ref().map(Snapshot::seen),
                    },
                );
                let mut response = json!({});
                let mut frames = Vec::new();
                match replay {
                    Some(replay) => {
                        if replay.cache_miss {
                            core.state.webhooks.cache_miss(&grant.app, &name);
                        }
                        response = replay.response(wish.since.is_some());
                        let wire = Wire::Phoenix(self.vsn);
                        frames.extend(replay.page.events.iter().map(|e| hub::encode(wire, e)));
                        core.hold_from(&name, replay.page.top);
                    }
                    // Nothing is kept on this channel: nothing can be recovered.
                    None if wish.since.is_some() => response = json!({ "recovered": false }),
                    None => {}
                }
                let reply = self.reply(&message, join_ref.as_deref(), Status::Ok, &response);
                core.send(reply).await?;
                if let Some(snapshot) = snapshot {
                    frames.insert(
                        0,
                        phoenix::encode_raw(
                            self.vsn,
                            join_ref.as_deref(),
                            None,
                            &name,
                            "presence_state",
                            &snapshot.phoenix_state().to_string(),
                        ),
                    );
                }
                if frames.is_empty() {
                    Ok(())
                } else {
                    core.send_all(frames).await
                }
            }
            (decision, _) => {
                let refusal = decision.err().unwrap_or(Refusal::Unmatched);
                if rejoin.is_some() {
                    core.leave(&name, CloseReason::Left);
                }
                // Phoenix answers an unrouted topic without a join_ref.
                let reply_join_ref = if refusal == Refusal::Unmatched {
                    None
                } else {
                    join_ref.as_deref()
                };
                let reply = self.error(&message, reply_join_ref, refusal.reason());
                core.send(reply).await
            }
        }
    }

    /// Decides a join: what the channel is granted, or the refusal.
    async fn authorize(&mut self, core: &Core, topic: &Topic) -> Result<Grant, Refusal> {
        if self.channels.len() >= core.state.config.limits.channels_per_socket {
            return Err(Refusal::Limit);
        }
        let app = match core.active_app(topic.app()).await {
            // Other names were never routed: a topic that names no app stays "unmatched".
            Err(Refusal::NotFound) if !topic.is_seed() => return Err(Refusal::Unmatched),
            other => other?,
        };
        let publish = self.rights(core, &app, topic.kind(), topic.as_str())?;
        if !core.connection_fits(&app) {
            return Err(Refusal::Quota);
        }
        let member = if topic.kind() == ChannelKind::Presence {
            Some(self.member(&app)?)
        } else {
            None
        };
        Ok(Grant {
            publish,
            member,
            keep: core.state.keep(&app, topic),
            app,
        })
    }

    /// The presence member the connect token names: its `sub`, and its `presence` claim as info.
    fn member(&self, app: &App) -> Result<PendingMember, Refusal> {
        let token = self.token.as_deref().ok_or(Refusal::Unauthorized)?;
        let claims = token::verify(&app.secret, token, chrono::Utc::now().timestamp())
            .map_err(|_| Refusal::Unauthorized)?;
        let user_id = claims.sub.ok_or(Refusal::Unauthorized)?;
        let user_info = match claims.presence {
            None | Some(Value::Null) => None,
            Some(info) => {
                Some(RawValue::from_string(info.to_string()).map_err(|_| Refusal::Unauthorized)?)
            }
        };
        presence::check_member(&user_id, user_info.as_deref())
            .map_err(|_| Refusal::Unauthorized)?;
        let max = usize::try_from(app.max_presence_members).unwrap_or(0);
        Ok((user_id, user_info, max))
    }

    /// What this socket may do on `topic` of `app` now: at a join, and again whenever the app
    /// changes. Arms the token expiry for channels that need a token.
    fn rights(
        &mut self,
        core: &Core,
        app: &App,
        kind: ChannelKind,
        topic: &str,
    ) -> Result<Publish, Refusal> {
        if !app.active {
            return Err(Refusal::NotFound);
        }
        if !app.origin_allowed(core.origin.as_deref()) {
            return Err(Refusal::Origin);
        }
        let granted = if kind.needs_auth() {
            let token = self.token.as_deref().ok_or(Refusal::Unauthorized)?;
            let claims = token::verify(&app.secret, token, chrono::Utc::now().timestamp())
                .map_err(|_| Refusal::Unauthorized)?;
            if !claims.may_subscribe(topic) {
                return Err(Refusal::Unauthorized);
            }
            self.token_expiry = Some(claims.exp);
            claims.may_publish(topic)
        } else {
            true
        };
        Ok(if !granted {
            Publish::Unauthorized
        } else if !app.client_events {
            Publish::Disabled
        } else {
            Publish::Allowed
        })
    }

    /// Checks a joined channel against its app as it is now; closes it when the rights it
    /// was joined with no longer hold.
    fn recheck(&mut self, core: &mut Core, topic: &str, app: &App) -> Option<String> {
        let channel = self.channels.get(topic)?;
        if app.updated_at < channel.checked {
            return None;
        }
        let kind = channel.kind;
        match self.rights(core, app, kind, topic) {
            Ok(publish) => {
                if let Some(channel) = self.channels.get_mut(topic) {
                    channel.publish = publish;
                    channel.checked = app.updated_at;
                }
                None
            }
            Err(refusal) => {
                tracing::info!(conn = core.id, %topic, reason = refusal.reason(), "closing channel: rights revoked");
                self.close_channel(core, topic, CloseReason::Revoked)
            }
        }
    }

    async fn leave(&mut self, core: &mut Core, message: &Inbound) -> Result<(), Close> {
        let topic = &message.topic;
        let Some(channel) = self.channels.get(topic) else {
            let reply = self.reply(message, message.join_ref.as_deref(), Status::Ok, &json!({}));
            return core.send(reply).await;
        };
        if message.join_ref.is_some() && message.join_ref != channel.join_ref {
            // A leave for an earlier instance of this channel: the client raced a close.
            return Ok(());
        }
        let join_ref = channel.join_ref.clone();
        self.channels.remove(topic);
        core.leave(topic, CloseReason::Left);
        let reply = self.reply(message, join_ref.as_deref(), Status::Ok, &json!({}));
        core.send(reply).await?;
        let close = phoenix::close(self.vsn, join_ref.as_deref(), topic);
        core.send(close).await
    }

    async fn client_event(&mut self, core: &mut Core, message: Inbound) -> Result<(), Close> {
        let Some(channel) = self.channels.get(&message.topic) else {
            let reply = self.error(&message, None, "unmatched topic");
            return core.send(reply).await;
        };
        if message.join_ref.is_some() && message.join_ref != channel.join_ref {
            return Ok(()); // stale: meant for an earlier instance of this channel
        }
        let join_ref = channel.join_ref.clone();
        let refusal = match channel.publish {
            Publish::Unauthorized => Some("unauthorized".to_owned()),
            Publish::Disabled => Some("client events are disabled for this app".to_owned()),
            Publish::Allowed if !core.client_events.take() => {
                if core.client_events.persistent() {
                    return Err(Close::RateLimited);
                }
                Some(format!(
                    "rate limit exceeded: at most {} client events per second",
                    core.state.config.limits.client_events_per_sec
                ))
            }
            Publish::Allowed => {
                if let Err(e) = check_name("event", &message.event) {
                    Some(e)
                } else if is_reserved(&message.event) {
                    Some(RESERVED.to_owned())
                } else if !message.payload.is_object() {
                    Some("payload must be a JSON object".to_owned())
                } else {
                    None
                }
            }
        };
        if let Some(reason) = refusal {
            let reply = self.error(&message, join_ref.as_deref(), &reason);
            return core.send(reply).await;
        }
        let payload = message.payload.to_string();
        if payload.len() > core.state.config.limits.event_payload_bytes {
            let reply = self.error(&message, join_ref.as_deref(), "payload too large");
            return core.send(reply).await;
        }
        let Ok(raw) = RawValue::from_string(payload) else {
            let reply = self.error(
                &message,
                join_ref.as_deref(),
                "payload must be a JSON object",
            );
            return core.send(reply).await;
        };
        let event = Event {
            topic: message.topic.clone(),
            event: message.event.clone(),
            data: Data::Object(raw),
            exclude: None,
            user_id: None,
            position: None,
        };
        let reply = match core.publish_client_event(&event).await {
            Ok(()) => self.reply(&message, join_ref.as_deref(), Status::Ok, &json!({})),
            Err(e) => {
                tracing::warn!(error = %e, "client event not published");
                self.error(&message, join_ref.as_deref(), "unavailable")
            }
        };
        core.send(reply).await
    }
}

impl Phoenix {
    /// `presence_diff` for a change this connection does not hold yet.
    fn presence_diff(&mut self, core: &Core, change: &TopicChange) -> Option<String> {
        let seen = self.channels.get_mut(&change.topic)?.seen.as_mut()?;
        match seen.admit(&change.change) {
            Admit::Old => return None,
            Admit::Gap => core.resync(&change.topic),
            Admit::New => {}
        }
        Some(phoenix::encode_raw(
            self.vsn,
            None,
            None,
            &change.topic,
            "presence_diff",
            &change.change.phoenix_diff().to_string(),
        ))
    }
}

impl Phoenix {
    /// A fresh `presence_state` after a gap: phoenix.js reconciles it with what it holds.
    fn presence_state(&mut self, core: &Core, sync: &TopicSnapshot) -> Option<String> {
        let channel = self.channels.get_mut(&sync.topic)?;
        if !channel.seen.as_mut()?.accept(&sync.snapshot) {
            core.resync(&sync.topic);
        }
        Some(phoenix::encode_raw(
            self.vsn,
            channel.join_ref.as_deref(),
            None,
            &sync.topic,
            "presence_state",
            &sync.snapshot.phoenix_state().to_string(),
        ))
    }
}

/// A presence member decided at a join: user id, info, and the app's user limit.
type PendingMember = (String, Option<Box<RawValue>>, usize);

/// What a join is granted.
struct Grant {
    publish: Publish,
    /// On a presence channel, the member to add.
    member: Option<PendingMember>,
    /// What the topic keeps in its history, if anything.
    keep: Option<Keep>,
    /// The app row the rights were decided on.
    app: Arc<App>,
}

/// What a join asks of the topic's history: its params `since` (recover what was missed after
/// a position) and `history` (the last N events).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Wish {
    since: Option<Position>,
    last: Option<u32>,
}

impl Wish {
    /// Reads the join params; anything else in them is the app's and is ignored.
    pub(crate) fn parse(params: &Value) -> Result<Wish, &'static str> {
        const SINCE: &str = "since must be {\"offset\": <an integer from 0>, \"epoch\": <the epoch a join reply gave>}";
        let Value::Object(params) = params else {
            return Ok(Wish::default());
        };
        let since = match params.get("since") {
            None | Some(Value::Null) => None,
            Some(Value::Object(since)) => {
                let offset = since.get("offset").and_then(Value::as_u64).ok_or(SINCE)?;
                let epoch = since.get("epoch").and_then(Value::as_str).ok_or(SINCE)?;
                if epoch.is_empty() || epoch.len() > EPOCH_MAX_BYTES {
                    return Err(SINCE);
                }
                Some(Position {
                    offset,
                    epoch: epoch.to_owned(),
                })
            }
            Some(_) => return Err(SINCE),
        };
        let last = match params.get("history") {
            None | Some(Value::Null) => None,
            Some(count) => Some(
                count
                    .as_u64()
                    .ok_or("history must be an integer from 0 (the number of last events)")?
                    .min(u64::from(u32::MAX)),
            ),
        };
        Ok(Wish {
            since,
            last: last.and_then(|n| u32::try_from(n).ok()),
        })
    }
}

/// What a join on a topic with history is owed.
struct Replay {
    /// Set when the join asked to recover: whether it did.
    recovered: Option<bool>,
    /// The events to send after the reply, and the position of the topic's latest event.
    page: Page,
    /// A cache channel owed its last event had none (Pusher's `cache_miss`).
    cache_miss: bool,
}

impl Replay {
    /// Reads the history a join is owed. Recovery is all or nothing: a join whose missed
    /// events are not all kept gets none of them, only the last ones it asked for. A cache
    /// channel sends its last event to a join that asked nothing else.
    async fn read(core: &Core, topic: &Topic, keep: Keep, wish: &Wish) -> Result<Replay, BusError> {
        let cache = is_cache(topic.channel());
        let last = wish.last.unwrap_or(u32::from(cache)).min(keep.size);
        let mut recovered = None;
        if let Some(since) = &wish.since {
            let read = Read::Recover {
                since,
                limit: keep.size,
            };
            let mut page = core.history(topic.as_str(), keep, read).await?;
            if page.recovers(since) {
                return Ok(Replay {
                    recovered: Some(true),
                    page,
                    cache_miss: false,
                });
            }
            if last == 0 {
                page.events.clear();
                return Ok(Replay {
                    recovered: Some(false),
                    page,
                    cache_miss: false,
                });
            }
            recovered = Some(false);
        }
        let read = if last == 0 {
            Read::Top
        } else {
            Read::Last(last)
        };
        let page = core.history(topic.as_str(), keep, read).await?;
        Ok(Replay {
            recovered,
            cache_miss: cache && last > 0 && page.events.is_empty(),
            page,
        })
    }

    /// The join reply: the topic's latest position, and whether recovery worked.
    fn response(&self, asked_to_recover: bool) -> Value {
        let mut response = json!({
            "offset": self.page.top.offset,
            "epoch": self.page.top.epoch,
        });
        if asked_to_recover {
            response["recovered"] = json!(self.recovered == Some(true));
        }
        response
    }
}

impl Protocol for Phoenix {
    async fn start(&mut self, _core: &mut Core) -> Result<(), Close> {
        Ok(())
    }

    async fn on_text(&mut self, core: &mut Core, text: &str) -> Result<(), Close> {
        let message = match phoenix::decode(self.vsn, text) {
            Ok(message) => message,
            Err(e @ (DecodeError::Json(_) | DecodeError::Shape(_))) => {
                return Err(Close::Unsupported(e.to_string()));
            }
        };
        match (message.topic.as_str(), message.event.as_str()) {
            ("phoenix", "heartbeat") => {
                let reply = self.reply(&message, None, Status::Ok, &json!({}));
                core.send(reply).await
            }
            (_, "phx_join") => self.join(core, message).await,
            (_, "phx_leave") => self.leave(core, &message).await,
            _ => self.client_event(core, message).await,
        }
    }

    fn on_notice(&mut self, core: &mut Core, notice: Notice) -> Result<Option<String>, Close> {
        Ok(match notice {
            Notice::Closed(topic) => self.close_channel(core, &topic, CloseReason::AppClosed),
            Notice::Recheck(topic, app) => self.recheck(core, &topic, &app),
            Notice::Presence(change) => self.presence_diff(core, &change),
            Notice::PresenceSync(sync) => self.presence_state(core, &sync),
            Notice::Gap(stamp, _) => self.resync(core, &stamp.topic),
        })
    }

    fn on_idle(&mut self) -> Result<(String, Duration), Close> {
        Err(Close::Idle)
    }

    fn idle_after(&self) -> Duration {
        self.idle
    }

    fn deadline(&self) -> Option<i64> {
        self.token_expiry
    }

    /// The connect token expired: every channel joined with it closes.
    async fn on_deadline(&mut self, core: &mut Core) -> Result<(), Close> {
        self.token_expiry = None;
        let with_token: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, channel)| channel.kind.needs_auth())
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in with_token {
            if let Some(close) = self.close_channel(core, &topic, CloseReason::Revoked) {
                core.send(close).await?;
            }
        }
        Ok(())
    }

    fn farewell(&self, close: &Close) -> (Option<String>, Option<CloseFrame>) {
        let (code, reason) = match close {
            Close::Gone => return (None, None),
            Close::Idle | Close::PongTimeout => (close_code::AWAY, "idle timeout"),
            Close::SlowConsumer => (close_code::POLICY, "slow consumer"),
            Close::TooBig => (close_code::SIZE, "message too big"),
            Close::Unsupported(_) | Close::Refused(..) => {
                (close_code::UNSUPPORTED, "unsupported message")
            }
            Close::BadUtf8 => (close_code::INVALID, "text frame is not UTF-8"),
            Close::Violation(_) => (close_code::PROTOCOL, "protocol error"),
            Close::RateLimited => (close_code::POLICY, "client event rate limit exceeded"),
            Close::Shutdown | Close::Reconnect => (close_code::RESTART, "server shutting down"),
            Close::Terminated => (close_code::POLICY, "connection terminated by the app"),
        };
        (
            None,
            Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }),
        )
    }
}
