//! The Pusher protocol 7 side of a session: one app per connection (named by its key in the
//! URL), `pusher:subscribe` with HMAC auth, sign-in, client events and the ping/pong keepalive.

use super::small::SmallMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Utf8Bytes, close_code};
use serde_json::value::RawValue;

use super::{Close, Core, Notice, Protocol, Refusal};
use crate::debug::{Kind, Record};
use crate::domain::app::App;
use crate::domain::event::{Data, Event, check_name};
use crate::domain::history::{Read, is_cache};
use crate::domain::signature;
use crate::domain::topic::{ChannelKind, ChannelNameError, Topic, USER_CHANNEL_PREFIX, channel_of};
use crate::hub;
use crate::metrics::CloseReason;
use crate::node::NodeState;
use crate::presence::{self, Admit, Seen, TopicSnapshot};
use crate::protocol::Wire;
use crate::protocol::pusher::{self, ChannelData, Inbound, Signin, Subscribe};

/// What the upgrade request told us about the client.
pub struct Connect {
    pub key: String,
    /// The `protocol` query parameter, as sent.
    pub protocol: Option<String>,
    pub origin: Option<String>,
}

struct Subscription {
    kind: ChannelKind,
    /// The auth value the channel was subscribed with, checked again when the secret rotates.
    auth: Option<String>,
    /// A presence channel's `channel_data` (signed with `auth`), its member's user id and the
    /// newest membership change this connection holds.
    presence: Option<PresenceMember>,
}

struct PresenceMember {
    channel_data: String,
    user_id: String,
    seen: Seen,
}

/// Pusher's close codes (the protocol's 4000–4399 ranges) and WebSocket ones.
mod code {
    pub const APP_NOT_FOUND: u16 = 4001;
    pub const APP_DISABLED: u16 = 4003;
    pub const OVER_QUOTA: u16 = 4004;
    pub const INVALID_VERSION: u16 = 4006;
    pub const UNSUPPORTED_VERSION: u16 = 4007;
    pub const NO_VERSION: u16 = 4008;
    pub const UNAUTHORIZED: u16 = 4009;
    pub const OVER_CAPACITY: u16 = 4100;
    pub const RECONNECT: u16 = 4200;
    pub const PONG_TIMEOUT: u16 = 4201;
    pub const CLIENT_EVENT_RATE: u16 = 4301;
}

pub(super) struct Pusher {
    connect: Connect,
    app: Option<Arc<App>>,
    socket_id: String,
    activity: Duration,
    pong_wait: Duration,
    awaiting_pong: bool,
    channels: SmallMap<Subscription>,
    /// The id of the user this connection signed in as, once it has.
    user: Option<String>,
}

impl Pusher {
    pub(super) fn new(connect: Connect, state: &NodeState) -> Pusher {
        Pusher {
            connect,
            app: None,
            socket_id: String::new(),
            activity: Duration::from_secs(state.config.pusher.activity_timeout_secs),
            pong_wait: Duration::from_secs(state.config.pusher.pong_timeout_secs),
            awaiting_pong: false,
            channels: SmallMap::new(),
            user: None,
        }
    }

    fn app(&self) -> Result<&App, Close> {
        self.app.as_deref().ok_or(Close::Gone)
    }

    fn topic(&self, channel: &str) -> Result<Topic, ChannelNameError> {
        let slug = self.app.as_ref().map_or("", |app| app.slug.as_str());
        Topic::new(channel, slug)
    }

    async fn subscribe(&mut self, core: &mut Core, data: Option<&RawValue>) -> Result<(), Close> {
        let request: Subscribe = match pusher::data_of(data) {
            Ok(request) => request,
            Err(e) => return core.send(pusher::error(None, &e.to_string())).await,
        };
        let channel = request.channel.clone();
        if let Some(subscription) = self.channels.get(&channel) {
            if subscription.presence.is_some()
                && let Ok(topic) = self.topic(&channel)
            {
                // The members come again, as the first answer brought them.
                core.resync(topic.as_str());
                return Ok(());
            }
            return core.send(pusher::subscription_succeeded(&channel)).await;
        }
        let topic = match self.topic(&channel) {
            Ok(topic) => topic,
            Err(e) => {
                core.count_join(None, Err(Refusal::Unmatched));
                if let Some(app) = &self.app {
                    core.debug(&app.slug, || {
                        Record::new(Kind::Refused)
                            .channel(&channel)
                            .reason(&e.to_string())
                    });
                }
                let frame =
                    pusher::subscription_error(&channel, "InvalidChannel", &e.to_string(), 400);
                return core.send(frame).await;
            }
        };
        let member = match (topic.kind(), &request.channel_data) {
            (ChannelKind::Presence, Some(data)) => match parse_member(data) {
                Ok(member) => Some(member),
                Err(e) => {
                    core.count_join(Some(&topic), Err(Refusal::Unauthorized));
                    let frame = pusher::subscription_error(&channel, "InvalidChannelData", e, 400);
                    return core.send(frame).await;
                }
            },
            _ => None,
        };
        let mut decision = self.authorize(core, &topic, &request);
        if decision.is_ok()
            && let Err(e) = core.enter(topic.as_str()).await
        {
            tracing::warn!(error = %e, %topic, "subscription failed: bus unavailable");
            decision = Err(Refusal::Unavailable);
        }
        // A cache channel's last event, read once the channel's events reach this connection
        // (see `Core::hold_from`).
        let keep = self
            .app
            .as_ref()
            .and_then(|app| core.state.keep(app, &topic));
        let mut cached = None;
        if decision.is_ok()
            && is_cache(topic.channel())
            && let Some(keep) = keep
        {
            match core.history(topic.as_str(), keep, Read::Last(1)).await {
                Ok(page) => cached = Some(page),
                Err(e) => {
                    tracing::warn!(error = %e, %topic, "subscription failed: cache unavailable");
                    core.exit(topic.as_str());
                    decision = Err(Refusal::Unavailable);
                }
            }
        }
        let mut presence = None;
        if decision.is_ok()
            && let Some((user_id, user_info)) = member
        {
            let max = self.app.as_ref().map_or(0, |app| app.max_presence_members);
            let max = usize::try_from(max).unwrap_or(0);
            match core.track(&topic, user_id.clone(), user_info, max).await {
                Ok(snapshot) => presence = Some((user_id, snapshot)),
                Err(refusal) => {
                    core.exit(topic.as_str());
                    decision = Err(refusal);
                }
            }
        }
        core.count_join(Some(&topic), decision);
        match decision {
            Ok(()) => {
                core.hold_app(topic.app());
                let (frame, presence) = match presence {
                    Some((user_id, snapshot)) => (
                        pusher::presence_succeeded(&channel, &snapshot.pusher_data()),
                        Some(PresenceMember {
                            channel_data: request.channel_data.clone().unwrap_or_default(),
                            user_id,
                            seen: snapshot.seen(),
                        }),
                    ),
                    None => (pusher::subscription_succeeded(&channel), None),
                };
                self.channels.insert(
                    channel.clone(),
                    Subscription {
                        kind: topic.kind(),
                        auth: request.auth,
                        presence,
                    },
                );
                let Some(page) = cached else {
                    return core.send(frame).await;
                };
                let last = match page.events.last() {
                    Some(event) => hub::encode(Wire::Pusher, event),
                    None => {
                        if let Some(app) = &self.app {
                            core.state.webhooks.cache_miss(app, topic.as_str());
                        }
                        pusher::cache_miss(&channel)
                    }
                };
                core.hold_from(topic.as_str(), page.top);
                core.send_all(vec![frame, last]).await
            }
            Err(refusal) => {
                let (kind, message, status) = match refusal {
                    Refusal::Unauthorized => {
                        ("AuthError", "invalid or missing auth signature", 401)
                    }
                    Refusal::Limit => (
                        "LimitReached",
                        "too many channels subscribed on this connection",
                        400,
                    ),
                    Refusal::Full => (
                        "LimitReached",
                        "the maximum members per presence channel limit was reached",
                        403,
                    ),
                    Refusal::Quota => (
                        "LimitReached",
                        "the application is over its connection quota",
                        403,
                    ),
                    Refusal::Unavailable => {
                        ("ServiceUnavailable", "service unavailable, try again", 503)
                    }
                    Refusal::Unmatched | Refusal::NotFound | Refusal::Origin => {
                        ("AuthError", "not allowed", 403)
                    }
                };
                core.send(pusher::subscription_error(&channel, kind, message, status))
                    .await
            }
        }
    }

    fn authorize(&self, core: &Core, topic: &Topic, request: &Subscribe) -> Result<(), Refusal> {
        let app = self.app.as_ref().ok_or(Refusal::NotFound)?;
        if self.channels.len() >= core.state.config.limits.channels_per_socket {
            return Err(Refusal::Limit);
        }
        if topic.kind() == ChannelKind::Presence && request.channel_data.is_none() {
            return Err(Refusal::Unauthorized);
        }
        match topic.kind() {
            ChannelKind::Public => Ok(()),
            ChannelKind::User => {
                let id = topic.channel().strip_prefix(USER_CHANNEL_PREFIX);
                if id.is_some() && id == self.user.as_deref() {
                    Ok(())
                } else {
                    Err(Refusal::Unauthorized)
                }
            }
            ChannelKind::Private | ChannelKind::Encrypted | ChannelKind::Presence => {
                let message = signature::channel_string(
                    &self.socket_id,
                    topic.channel(),
                    request.channel_data.as_deref(),
                );
                match &request.auth {
                    Some(auth) if signature::check_auth(&app.key, &app.secret, auth, &message) => {
                        Ok(())
                    }
                    _ => Err(Refusal::Unauthorized),
                }
            }
        }
    }

    fn unsubscribe(&mut self, core: &mut Core, data: Option<&RawValue>) {
        #[derive(serde::Deserialize)]
        struct Unsubscribe {
            channel: String,
        }
        let Ok(request) = pusher::data_of::<Unsubscribe>(data) else {
            return;
        };
        if self.channels.remove(&request.channel).is_some()
            && let Ok(topic) = self.topic(&request.channel)
        {
            // The user channel stays entered while signed in: the app's server reaches the
            // user there.
            if !(topic.kind() == ChannelKind::User && self.user.is_some()) {
                core.exit(topic.as_str());
            }
            core.debug_leave(topic.app(), topic.channel(), CloseReason::Left);
            core.release_app(topic.app(), CloseReason::Left);
        }
    }

    async fn signin(&mut self, core: &mut Core, data: Option<&RawValue>) -> Result<(), Close> {
        let request: Signin = match pusher::data_of(data) {
            Ok(request) => request,
            Err(e) => return core.send(pusher::error(None, &e.to_string())).await,
        };
        let app = self.app()?;
        let message = signature::user_string(&self.socket_id, &request.user_data);
        if !signature::check_auth(&app.key, &app.secret, &request.auth, &message) {
            let frame = pusher::error(Some(code::UNAUTHORIZED), "invalid sign-in signature");
            return core.send(frame).await;
        }
        let id = serde_json::from_str::<serde_json::Value>(&request.user_data)
            .ok()
            .and_then(|user| user.get("id").and_then(|id| id.as_str()).map(str::to_owned))
            .filter(|id| !id.is_empty() && id.len() <= 128);
        let Some(id) = id else {
            let frame = pusher::error(
                Some(code::UNAUTHORIZED),
                "user_data must be a JSON object with a string id of 1 to 128 characters",
            );
            return core.send(frame).await;
        };
        let slug = self.app()?.slug.clone();
        let Ok(topic) = Topic::user(&id, &slug) else {
            let frame = pusher::error(
                Some(code::UNAUTHORIZED),
                "user id has characters a channel name cannot hold",
            );
            return core.send(frame).await;
        };
        if self.user.as_deref() != Some(id.as_str()) {
            if let Some(old) = self.user.take()
                && let Ok(old) = Topic::user(&old, &slug)
            {
                core.exit(old.as_str());
            }
            if let Err(e) = core.enter(topic.as_str()).await {
                tracing::warn!(error = %e, "sign-in failed: bus unavailable");
                let frame = pusher::error(None, "service unavailable, try again");
                return core.send(frame).await;
            }
            self.user = Some(id);
        }
        core.send(pusher::signin_success(&request.user_data)).await
    }

    async fn client_event(&mut self, core: &mut Core, message: Inbound) -> Result<(), Close> {
        let app = self.app()?;
        let Some(channel) = message.channel.as_deref() else {
            return core
                .send(pusher::error(None, "client events need a channel"))
                .await;
        };
        let subscription = self.channels.get(channel);
        let user_id = subscription
            .and_then(|s| s.presence.as_ref())
            .map(|p| p.user_id.clone());
        let refusal = match subscription.map(|s| s.kind) {
            None => Some("not subscribed to this channel"),
            Some(ChannelKind::Private | ChannelKind::Presence) if !app.client_events => {
                Some("client events are disabled for this app")
            }
            Some(ChannelKind::Private | ChannelKind::Presence) => None,
            Some(_) => Some("client events are only allowed on private and presence channels"),
        };
        if let Some(refusal) = refusal {
            return core.send(pusher::error(None, refusal)).await;
        }
        if !core.client_events.take() {
            return Err(Close::RateLimited);
        }
        if let Err(e) = check_name("event", &message.event) {
            return core.send(pusher::error(None, &e)).await;
        }
        let data = match message.data {
            Some(data) if data.get().len() > core.state.config.limits.event_payload_bytes => {
                return core
                    .send(pusher::error(None, "client event data is too large"))
                    .await;
            }
            Some(data) => data,
            None => RawValue::from_string("null".to_owned())
                .map_err(|e| Close::Unsupported(e.to_string()))?,
        };
        let topic = self
            .topic(channel)
            .map_err(|e| Close::Unsupported(e.to_string()))?;
        let event = Event {
            topic: topic.into_string(),
            event: message.event,
            data: Data::Pusher(data),
            exclude: Some(self.socket_id.clone()),
            user_id,
            position: None,
        };
        if let Err(e) = core.publish_client_event(&event).await {
            tracing::warn!(error = %e, "client event not published");
            return core
                .send(pusher::error(None, "service unavailable, try again"))
                .await;
        }
        Ok(())
    }

    /// Whether the connection still holds under the app as it is now.
    fn recheck(&mut self, core: &Core, app: &Arc<App>) -> Result<(), Close> {
        let Some(current) = &self.app else {
            return Ok(());
        };
        if app.updated_at < current.updated_at {
            return Ok(());
        }
        if !app.active {
            return Err(Close::Reconnect);
        }
        if !app.origin_allowed(core.origin.as_deref()) {
            return Err(Close::Refused(code::UNAUTHORIZED, "origin not allowed"));
        }
        for (channel, subscription) in &self.channels {
            if let Some(auth) = &subscription.auth
                && subscription.kind != ChannelKind::User
            {
                let channel_data = subscription
                    .presence
                    .as_ref()
                    .map(|p| p.channel_data.as_str());
                let message = signature::channel_string(&self.socket_id, channel, channel_data);
                if !signature::check_auth(&app.key, &app.secret, auth, &message) {
                    // The secret rotated: reconnect, and sign again with the new one.
                    return Err(Close::Reconnect);
                }
            }
        }
        self.app = Some(app.clone());
        Ok(())
    }
}

impl Pusher {
    /// `member_added` / `member_removed` for a change this connection does not hold yet.
    fn presence_frame(&mut self, core: &Core, change: &presence::TopicChange) -> Option<String> {
        let channel = channel_of(&change.topic)?;
        let member = self.channels.get_mut(channel)?.presence.as_mut()?;
        match member.seen.admit(&change.change) {
            Admit::Old => return None,
            Admit::Gap => core.resync(&change.topic),
            Admit::New => {}
        }
        let (event, data) = change.change.pusher_member()?;
        Some(pusher::internal(channel, event, &data))
    }

    /// The whole membership again (after a gap, or a repeated subscribe): pusher-js resets its
    /// members from a new `subscription_succeeded`.
    fn presence_sync(&mut self, core: &Core, sync: &TopicSnapshot) -> Option<String> {
        let channel = channel_of(&sync.topic)?;
        let member = self.channels.get_mut(channel)?.presence.as_mut()?;
        if !member.seen.accept(&sync.snapshot) {
            core.resync(&sync.topic);
        }
        Some(pusher::presence_succeeded(
            channel,
            &sync.snapshot.pusher_data(),
        ))
    }
}

/// A presence subscription's member, from its `channel_data`.
pub(crate) fn parse_member(
    channel_data: &str,
) -> Result<(String, Option<Box<RawValue>>), &'static str> {
    let data: ChannelData = serde_json::from_str(channel_data)
        .map_err(|_| "channel_data must be a JSON object with a user_id")?;
    let user_id = data.user_id.into_string();
    presence::check_member(&user_id, data.user_info.as_deref())?;
    Ok((user_id, data.user_info))
}

/// Reads the `protocol` parameter: 7 is served (5 and 6 frame the same way).
fn check_version(protocol: Option<&str>) -> Result<(), Close> {
    let Some(protocol) = protocol else {
        return Err(Close::Refused(
            code::NO_VERSION,
            "no protocol version supplied",
        ));
    };
    match protocol.parse::<u32>() {
        Err(_) => Err(Close::Refused(
            code::INVALID_VERSION,
            "invalid version string format",
        )),
        Ok(5..=pusher::PROTOCOL) => Ok(()),
        Ok(_) => Err(Close::Refused(
            code::UNSUPPORTED_VERSION,
            "unsupported protocol version",
        )),
    }
}

impl Protocol for Pusher {
    async fn start(&mut self, core: &mut Core) -> Result<(), Close> {
        check_version(self.connect.protocol.as_deref())?;
        let app = match core.state.registry.by_key(&self.connect.key).await {
            Ok(Some(app)) => app,
            Ok(None) => {
                return Err(Close::Refused(
                    code::APP_NOT_FOUND,
                    "application does not exist",
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection refused: registry unavailable");
                return Err(Close::Refused(
                    code::OVER_CAPACITY,
                    "service unavailable, try again",
                ));
            }
        };
        let refused = if !app.active {
            Some((code::APP_DISABLED, "application is disabled"))
        } else if !app.origin_allowed(self.connect.origin.as_deref()) {
            Some((code::UNAUTHORIZED, "origin not allowed"))
        } else if !core.connection_fits(&app) {
            Some((code::OVER_QUOTA, "application is over its connection quota"))
        } else {
            None
        };
        if let Some((code, reason)) = refused {
            core.debug(&app.slug, || Record::new(Kind::Refused).reason(reason));
            return Err(Close::Refused(code, reason));
        }
        self.socket_id = core.state.hub.socket_id(core.id);
        core.hold_app(&app.slug);
        self.app = Some(app);
        let hello = pusher::connection_established(&self.socket_id, self.activity.as_secs());
        core.send(hello).await
    }

    async fn on_text(&mut self, core: &mut Core, text: &str) -> Result<(), Close> {
        let message = match pusher::decode(text) {
            Ok(message) => message,
            Err(e) => return core.send(pusher::error(None, &e.to_string())).await,
        };
        match message.event.as_str() {
            "pusher:ping" => core.send(pusher::pong()).await,
            "pusher:pong" => Ok(()),
            "pusher:subscribe" => self.subscribe(core, message.data.as_deref()).await,
            "pusher:unsubscribe" => {
                self.unsubscribe(core, message.data.as_deref());
                Ok(())
            }
            "pusher:signin" => self.signin(core, message.data.as_deref()).await,
            event if event.starts_with("client-") => self.client_event(core, message).await,
            _ => core.send(pusher::error(None, "unsupported event")).await,
        }
    }

    fn on_notice(&mut self, core: &mut Core, notice: Notice) -> Result<Option<String>, Close> {
        match notice {
            // Deactivated, renamed or deleted: a reconnect finds out which.
            Notice::Closed(_) => Err(Close::Reconnect),
            Notice::Recheck(_, app) => self.recheck(core, &app).map(|()| None),
            Notice::Presence(change) => Ok(self.presence_frame(core, &change)),
            Notice::PresenceSync(sync) => Ok(self.presence_sync(core, &sync)),
            // The Pusher protocol has no recovery: the event goes out, and is the position the
            // connection holds from now on.
            Notice::Gap(stamp, frame) => {
                core.hold_from(&stamp.topic, stamp.position.clone());
                Ok(Some(frame.to_string()))
            }
        }
    }

    fn on_idle(&mut self) -> Result<(String, Duration), Close> {
        if self.awaiting_pong {
            return Err(Close::PongTimeout);
        }
        self.awaiting_pong = true;
        Ok((pusher::ping(), self.pong_wait))
    }

    fn on_activity(&mut self) {
        self.awaiting_pong = false;
    }

    fn idle_after(&self) -> Duration {
        self.activity
    }

    fn farewell(&self, close: &Close) -> (Option<String>, Option<CloseFrame>) {
        let (code, reason): (u16, &'static str) = match close {
            Close::Gone => return (None, None),
            Close::Idle | Close::PongTimeout => (code::PONG_TIMEOUT, "pong reply not received"),
            Close::SlowConsumer => (code::OVER_CAPACITY, "slow consumer: reconnect later"),
            Close::TooBig => (close_code::SIZE, "message too big"),
            Close::Unsupported(_) => (close_code::UNSUPPORTED, "unsupported message"),
            Close::BadUtf8 => (close_code::INVALID, "text frame is not UTF-8"),
            Close::Violation(_) => (close_code::PROTOCOL, "protocol error"),
            Close::RateLimited => (
                code::CLIENT_EVENT_RATE,
                "client event rejected due to rate limit",
            ),
            Close::Shutdown => (code::RECONNECT, "server restarting: reconnect"),
            Close::Reconnect => (code::RECONNECT, "application changed: reconnect"),
            Close::Terminated => (code::UNAUTHORIZED, "connection terminated by the app"),
            Close::Refused(code, reason) => (*code, *reason),
        };
        let last = (code >= 4000).then(|| pusher::error(Some(code), reason));
        (
            last,
            Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(check_version(Some("7")).is_ok());
        assert!(check_version(Some("5")).is_ok());
        assert!(matches!(check_version(None), Err(Close::Refused(4008, _))));
        assert!(matches!(
            check_version(Some("x")),
            Err(Close::Refused(4006, _))
        ));
        assert!(matches!(
            check_version(Some("4")),
            Err(Close::Refused(4007, _))
        ));
        assert!(matches!(
            check_version(Some("8")),
            Err(Close::Refused(4007, _))
        ));
    }
}
