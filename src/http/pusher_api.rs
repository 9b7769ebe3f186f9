//! The Pusher HTTP API (`/apps/:app_id/...`), signed as Pusher signs it, on the same apps, bus
//! and hub as everything else. `:app_id` is the app's numeric `id` or its slug.
//!
//! Errors are `{"error": "..."}` with the status the Pusher server SDKs expect: 400 for bad
//! parameters, 401 for a bad signature, 403 for a disabled app, 413 for size.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::{events, stats};
use crate::bus::Control;
use crate::config::Config;
use crate::domain::app::App;
use crate::domain::event::{Data, Event, RESERVED, check_name, is_reserved};
use crate::domain::history::{Read, is_cache};
use crate::domain::signature;
use crate::domain::topic::{ChannelKind, Topic, channel_of};
use crate::node::{NodeState, Source};

/// A Pusher-shaped error.
#[derive(Debug)]
pub struct PusherError {
    status: StatusCode,
    message: String,
    /// Kept from a 429 of the shared limits.
    retry_after: Option<HeaderValue>,
}

impl PusherError {
    fn new(status: StatusCode, message: impl Into<String>) -> PusherError {
        PusherError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> PusherError {
        PusherError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized(message: impl Into<String>) -> PusherError {
        PusherError::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl From<ApiError> for PusherError {
    fn from(error: ApiError) -> PusherError {
        let response = error.into_response();
        let status = response.status();
        let message = if status.is_server_error() {
            "service unavailable, try again later".to_owned()
        } else {
            status.canonical_reason().unwrap_or("error").to_owned()
        };
        PusherError {
            status,
            message,
            retry_after: response.headers().get(header::RETRY_AFTER).cloned(),
        }
    }
}

impl IntoResponse for PusherError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(value) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

type Result<T> = std::result::Result<T, PusherError>;

/// Room for the other fields of a trigger: up to `max_trigger_channels` names and a socket id.
#[must_use]
pub fn body_limit(config: &crate::config::Config) -> usize {
    let events = config
        .pusher
        .max_batch_events
        .max(1)
        .saturating_mul(config.limits.event_payload_bytes.saturating_mul(2));
    let channels = config.pusher.max_trigger_channels.saturating_mul(170);
    events.saturating_add(channels).saturating_add(4096)
}

/// The decoded query parameters; a repeated name is refused.
pub(crate) fn query_params(uri: &Uri) -> Result<Vec<(String, String)>> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in uri.query().unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| PusherError::bad_request("query parameters must be UTF-8"))
        };
        let (key, value) = (decode(key)?, decode(value)?);
        if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
            return Err(PusherError::bad_request(format!(
                "query parameter {key} is repeated"
            )));
        }
        params.push((key, value));
    }
    Ok(params)
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Checks a request's signature and returns its app, which `app_id` must name when given.
async fn authenticate(
    state: &NodeState,
    method: &Method,
    uri: &Uri,
    app_id: Option<&str>,
    body: &[u8],
) -> Result<(Arc<App>, Vec<(String, String)>)> {
    let params = query_params(uri)?;
    let required = |name: &str| {
        param(&params, name)
            .ok_or_else(|| PusherError::unauthorized(format!("missing {name} parameter")))
    };
    let key = required("auth_key")?;
    let timestamp = required("auth_timestamp")?;
    let given = required("auth_signature")?;
    if required("auth_version")? != "1.0" {
        return Err(PusherError::unauthorized("auth_version must be 1.0"));
    }
    if !crate::domain::app::is_valid_key(key) {
        return Err(PusherError::unauthorized("unknown auth_key"));
    }
    let app = state
        .registry
        .by_key(key)
        .await
        .map_err(|e| PusherError::from(ApiError::from(e)))?
        .ok_or_else(|| PusherError::unauthorized("unknown auth_key"))?;
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| PusherError::unauthorized("auth_timestamp must be a Unix time in seconds"))?;
    let skew = i64::try_from(state.config.pusher.timestamp_skew_secs).unwrap_or(i64::MAX);
    if (chrono::Utc::now().timestamp() - timestamp).abs() > skew {
        return Err(PusherError::unauthorized(format!(
            "auth_timestamp is more than {skew} seconds from the server's time"
        )));
    }
    if !body.is_empty() {
        let md5 = required("body_md5")?;
        if !md5.eq_ignore_ascii_case(&signature::md5_hex(body)) {
            return Err(PusherError::unauthorized(
                "body_md5 does not match the body",
            ));
        }
    }
    let string = signature::request_string(method.as_str(), uri.path(), &params);
    if !signature::verify(&app.secret, &string, given) {
        return Err(PusherError::unauthorized("invalid signature"));
    }
    // Only now, to a caller holding the secret, is anything about the app revealed.
    if let Some(app_id) = app_id
        && app.id.to_string() != app_id
        && app.slug != app_id
    {
        return Err(PusherError::unauthorized(
            "auth_key does not belong to this app_id",
        ));
    }
    if !app.active {
        return Err(PusherError::new(
            StatusCode::FORBIDDEN,
            "application is disabled",
        ));
    }
    Ok((app, params))
}

/// A request whose Pusher signature checked out: its app, query parameters, path parameters
/// and body. Every handler of this module takes one, so none runs unsigned.
pub struct Signed {
    app: Arc<App>,
    params: Vec<(String, String)>,
    path: Vec<(String, String)>,
    body: Bytes,
}

impl Signed {
    fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }

    fn path(&self, name: &str) -> Result<&str> {
        self.path
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| PusherError::bad_request(format!("missing {name} in the path")))
    }
}

impl FromRequest<NodeState> for Signed {
    type Rejection = PusherError;

    async fn from_request(request: Request, state: &NodeState) -> Result<Signed> {
        let (mut parts, body) = request.into_parts();
        let path: Vec<(String, String)> = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| PusherError::bad_request(format!("bad path: {e}")))?
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (method, uri) = (parts.method.clone(), parts.uri.clone());
        let limit = body_limit(&state.config);
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|r| PusherError::from(ApiError::from_body(&r, limit)))?;
        let app_id = path
            .iter()
            .find(|(k, _)| k == "app_id")
            .map(|(_, v)| v.as_str());
        let (app, params) = authenticate(state, &method, &uri, app_id, &body).await?;
        Ok(Signed {
            app,
            params,
            path,
            body,
        })
    }
}

/// One event to trigger, as the SDKs send it.
#[derive(Debug, Deserialize)]
pub(crate) struct Trigger {
    name: Option<String>,
    data: Option<Box<RawValue>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

/// Which channel attributes a caller asked for.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Info {
    user_count: bool,
    subscription_count: bool,
    /// A cache channel's last event: one channel's info only.
    cache: bool,
}

impl Info {
    /// The attributes of several channels (a trigger's, a channel list's).
    pub(crate) fn parse(info: Option<&str>) -> Result<Info> {
        let parsed = Info::parse_one(info)?;
        if parsed.cache {
            return Err(PusherError::bad_request(
                "cache is only available for one channel: GET /apps/:app_id/channels/:channel",
            ));
        }
        Ok(parsed)
    }

    /// The attributes of one channel.
    pub(crate) fn parse_one(info: Option<&str>) -> Result<Info> {
        let mut parsed = Info::default();
        for attribute in info.unwrap_or_default().split(',').map(str::trim) {
            match attribute {
                "" => {}
                "user_count" => parsed.user_count = true,
                "subscription_count" => parsed.subscription_count = true,
                "cache" => parsed.cache = true,
                other => {
                    return Err(PusherError::bad_request(format!(
                        "unknown info attribute {other}: use user_count, subscription_count or cache"
                    )));
                }
            }
        }
        Ok(parsed)
    }

    fn any(self) -> bool {
        self.user_count || self.subscription_count
    }

    /// `user_count` is a presence attribute, as in Pusher.
    fn check(self, topic: &Topic) -> Result<()> {
        if self.user_count && topic.kind() != ChannelKind::Presence {
            return Err(PusherError::bad_request(
                "user_count is only available for presence channels",
            ));
        }
        if self.cache && !is_cache(topic.channel()) {
            return Err(PusherError::bad_request(
                "cache is only available for cache channels",
            ));
        }
        Ok(())
    }

    /// The requested attributes of a channel with `subscriptions` subscribers and `users`
    /// presence members.
    fn render(self, subscriptions: usize, users: usize) -> Map<String, Value> {
        let mut map = Map::new();
        if self.subscription_count {
            map.insert("subscription_count".into(), json!(subscriptions));
        }
        if self.user_count {
            map.insert("user_count".into(), json!(users));
        }
        map
    }
}

fn is_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|p| (1..=20).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A validated trigger: its events (one per channel) and the info it asked for.
pub(crate) struct Checked {
    events: Vec<Event>,
    info: Info,
}

pub(crate) fn check_trigger(
    config: &Config,
    app: &App,
    trigger: Trigger,
    many: bool,
) -> Result<Checked> {
    let name = trigger
        .name
        .ok_or_else(|| PusherError::bad_request("name is required"))?;
    check_name("name", &name).map_err(PusherError::bad_request)?;
    if is_reserved(&name) {
        return Err(PusherError::bad_request(RESERVED));
    }
    let data = trigger
        .data
        .ok_or_else(|| PusherError::bad_request("data is required"))?;
    let limit = config.limits.event_payload_bytes;
    let size = if data.get().starts_with('"') {
        serde_json::from_str::<String>(data.get()).map_or(data.get().len(), |s| s.len())
    } else {
        data.get().len()
    };
    if size > limit {
        return Err(PusherError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("data content of this event exceeds the allowed maximum ({limit} bytes)"),
        ));
    }
    let channels = match (trigger.channel, trigger.channels) {
        (Some(channel), None) => vec![channel],
        (None, Some(channels)) if many => channels,
        (None, Some(_)) => {
            return Err(PusherError::bad_request(
                "use channel, not channels, in a batch",
            ));
        }
        _ => {
            return Err(PusherError::bad_request(
                "give exactly one of channel and channels",
            ));
        }
    };
    let max = config.pusher.max_trigger_channels;
    if channels.is_empty() || channels.len() > max {
        return Err(PusherError::bad_request(format!(
            "between 1 and {max} channels per event"
        )));
    }
    if let Some(id) = &trigger.socket_id
        && !is_socket_id(id)
    {
        return Err(PusherError::bad_request("socket_id must look like 123.456"));
    }
    let info = Info::parse(trigger.info.as_deref())?;
    let mut events = Vec::with_capacity(channels.len());
    for channel in &channels {
        let topic = Topic::new(channel, &app.slug)
            .map_err(|e| PusherError::bad_request(format!("{channel}: {e}")))?;
        info.check(&topic)?;
        events.push(Event {
            topic: topic.into_string(),
            event: name.clone(),
            data: Data::Pusher(data.clone()),
            exclude: trigger.socket_id.clone(),
            user_id: None,
            position: None,
        });
    }
    Ok(Checked { events, info })
}

/// Subscribers per topic of `app`, summed over every live node.
async fn occupancy(state: &NodeState, app: &App) -> Result<BTreeMap<String, usize>> {
    let reports = stats::cluster(state).await.map_err(PusherError::from)?;
    let mut topics = BTreeMap::new();
    for report in reports.iter().filter_map(|node| node.apps.get(&app.slug)) {
        for (topic, subscribers) in &report.topics {
            *topics.entry(topic.clone()).or_default() += subscribers;
        }
    }
    Ok(topics)
}

/// Members of each presence topic, cluster-wide.
async fn user_counts(state: &NodeState, topics: &[String]) -> Result<HashMap<String, usize>> {
    if topics.is_empty() {
        return Ok(HashMap::new());
    }
    let counts = state
        .presence
        .user_counts(topics)
        .await
        .map_err(|e| PusherError::from(ApiError::Unavailable(e.to_string())))?;
    Ok(topics.iter().cloned().zip(counts).collect())
}

/// The presence topics among `topics`, when `info` asks for their user counts.
fn presence_topics<'a>(info: Info, topics: impl Iterator<Item = &'a String>) -> Vec<String> {
    if !info.user_count {
        return Vec::new();
    }
    topics
        .filter(|t| Topic::parse(t).is_some_and(|t| t.kind() == ChannelKind::Presence))
        .cloned()
        .collect()
}

async fn publish(state: &NodeState, app: &App, events: &[Event]) -> Result<()> {
    for event in events {
        state
            .publish(app, event, Source::Http)
            .await
            .map_err(|e| PusherError::from(ApiError::Unavailable(e.to_string())))?;
    }
    Ok(())
}

/// The `channels` object of a trigger response with `info`.
async fn channel_info(state: &NodeState, app: &App, checked: &[&Checked]) -> Result<Value> {
    let topics = occupancy(state, app).await?;
    let mut channels = Map::new();
    for c in checked.iter().filter(|c| c.info.any()) {
        let users = user_counts(
            state,
            &presence_topics(c.info, c.events.iter().map(|e| &e.topic)),
        )
        .await?;
        for event in &c.events {
            let count = topics.get(&event.topic).copied().unwrap_or(0);
            let members = users.get(&event.topic).copied().unwrap_or(0);
            let channel = channel_of(&event.topic).unwrap_or_default();
            channels.insert(
                channel.to_owned(),
                Value::Object(c.info.render(count, members)),
            );
        }
    }
    Ok(Value::Object(channels))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| PusherError::bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /apps/:app_id/events`.
pub async fn trigger(State(state): State<NodeState>, signed: Signed) -> Result<Json<Value>> {
    let app = &signed.app;
    let checked = check_trigger(&state.config, app, parse_json(&signed.body)?, true)?;
    events::admit(&state, app, checked.events.len()).await?;
    publish(&state, app, &checked.events).await?;
    if !checked.info.any() {
        return Ok(Json(json!({})));
    }
    let channels = channel_info(&state, app, &[&checked]).await?;
    Ok(Json(json!({ "channels": channels })))
}

#[derive(Deserialize)]
pub(crate) struct Batch {
    pub(crate) batch: Vec<Trigger>,
}

/// `POST /apps/:app_id/batch_events`: every event is checked before any is published.
pub async fn batch(State(state): State<NodeState>, signed: Signed) -> Result<Json<Value>> {
    let app = &signed.app;
    let Batch { batch } = parse_json(&signed.body)?;
    let max = state.config.pusher.max_batch_events;
    if batch.is_empty() || batch.len() > max {
        return Err(PusherError::bad_request(format!(
            "between 1 and {max} events per batch"
        )));
    }
    let checked = batch
        .into_iter()
        .map(|trigger| check_trigger(&state.config, app, trigger, false))
        .collect::<Result<Vec<_>>>()?;
    let count = checked.iter().map(|c| c.events.len()).sum();
    events::admit(&state, app, count).await?;
    for c in &checked {
        publish(&state, app, &c.events).await?;
    }
    if !checked.iter().any(|c| c.info.any()) {
        return Ok(Json(json!({})));
    }
    let topics = occupancy(&state, app).await?;
    let mut items = Vec::with_capacity(checked.len());
    for c in &checked {
        let first = c.events.first().map(|e| &e.topic);
        let users = user_counts(&state, &presence_topics(c.info, first.into_iter())).await?;
        let count = first.and_then(|t| topics.get(t)).copied().unwrap_or(0);
        let members = first.and_then(|t| users.get(t)).copied().unwrap_or(0);
        items.push(Value::Object(c.info.render(count, members)));
    }
    Ok(Json(json!({ "batch": items })))
}

/// `GET /apps/:app_id/channels`: the occupied channels, cluster-wide.
pub async fn channels(State(state): State<NodeState>, signed: Signed) -> Result<Json<Value>> {
    let prefix = signed.param("filter_by_prefix").unwrap_or_default();
    let info = Info::parse(signed.param("info"))?;
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(PusherError::bad_request(
            "user_count needs filter_by_prefix=presence-",
        ));
    }
    let occupied: Vec<(Topic, usize)> = occupancy(&state, &signed.app)
        .await?
        .into_iter()
        .filter_map(|(topic, count)| Some((Topic::parse(&topic)?, count)))
        .filter(|(topic, count)| {
            *count > 0 && topic.kind() != ChannelKind::User && topic.channel().starts_with(prefix)
        })
        .collect();
    let names: Vec<String> = occupied
        .iter()
        .map(|(t, _)| t.as_str().to_owned())
        .collect();
    let users = user_counts(&state, &presence_topics(info, names.iter())).await?;
    let mut channels = Map::new();
    for (topic, count) in occupied {
        let members = users.get(topic.as_str()).copied().unwrap_or(0);
        channels.insert(
            topic.channel().to_owned(),
            Value::Object(info.render(count, members)),
        );
    }
    Ok(Json(json!({ "channels": channels })))
}

/// The topic of the `:channel` path parameter.
fn channel_topic(signed: &Signed) -> Result<Topic> {
    Topic::new(signed.path("channel")?, &signed.app.slug)
        .map_err(|e| PusherError::bad_request(e.to_string()))
}

/// `GET /apps/:app_id/channels/:channel`.
pub async fn channel(State(state): State<NodeState>, signed: Signed) -> Result<Json<Value>> {
    let topic = channel_topic(&signed)?;
    let info = Info::parse_one(signed.param("info"))?;
    info.check(&topic)?;
    let count = occupancy(&state, &signed.app)
        .await?
        .get(topic.as_str())
        .copied()
        .unwrap_or(0);
    // `info.check` allowed user_count only for a presence channel.
    let members = if info.user_count {
        let topics = [topic.as_str().to_owned()];
        user_counts(&state, &topics)
            .await?
            .get(topic.as_str())
            .copied()
            .unwrap_or(0)
    } else {
        0
    };
    let mut body = info.render(count, members);
    body.insert("occupied".into(), json!(count > 0));
    // `info.check` allowed cache only for a cache channel, which always keeps its last event.
    if info.cache
        && let Some(keep) = state.keep(&signed.app, &topic)
    {
        let page = state
            .bus
            .history(topic.as_str(), keep, Read::Last(1))
            .await
            .map_err(|e| PusherError::from(ApiError::Unavailable(e.to_string())))?;
        if let Some(event) = page.events.last() {
            let data: Value =
                serde_json::from_str(&event.data.pusher_data()).unwrap_or(Value::Null);
            body.insert(
                "cache".into(),
                json!({ "event": event.event, "data": data, "ttl": page.ttl_secs }),
            );
        }
    }
    Ok(Json(Value::Object(body)))
}

/// `GET /apps/:app_id/channels/:channel/users`: presence channels only, cluster-wide.
pub async fn users(State(state): State<NodeState>, signed: Signed) -> Result<Json<Value>> {
    let topic = channel_topic(&signed)?;
    if topic.kind() != ChannelKind::Presence {
        return Err(PusherError::bad_request(
            "users are only available for presence channels",
        ));
    }
    let mut users = state
        .presence
        .users(topic.as_str())
        .await
        .map_err(|e| PusherError::from(ApiError::Unavailable(e.to_string())))?;
    users.sort_unstable();
    let users: Vec<Value> = users.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /apps/:app_id/users/:user_id/terminate_connections`, and
/// `POST /users/:user_id/terminate_connections` with the app named by `auth_key` alone (the
/// path the Python SDK 3.x signs and sends): on every node.
pub async fn terminate(State(state): State<NodeState>, signed: Signed) -> Result<Json<Value>> {
    let user_id = signed.path("user_id")?;
    if user_id.len() > 128 || Topic::user(user_id, &signed.app.slug).is_err() {
        return Err(PusherError::bad_request("not a user id"));
    }
    let control = Control::TerminateUser {
        slug: signed.app.slug.clone(),
        user_id: user_id.to_owned(),
    };
    state
        .bus
        .publish_control(&control)
        .await
        .map_err(|e| PusherError::from(ApiError::Unavailable(e.to_string())))?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_and_queries() {
        assert!(is_socket_id("123.456"));
        for bad in ["123", ".1", "1.", "a.1", "1.2.3", "1.-2"] {
            assert!(!is_socket_id(bad), "{bad}");
        }
        let uri: Uri =
            "/apps/1/channels?filter_by_prefix=presence-&info=user_count%2Csubscription_count"
                .parse()
                .unwrap();
        let params = query_params(&uri).unwrap();
        assert_eq!(
            param(&params, "info"),
            Some("user_count,subscription_count")
        );
        let uri: Uri = "/x?a=1&A=2".parse().unwrap();
        assert!(query_params(&uri).is_err());
        assert!(Info::parse(Some("subscription_count,bogus")).is_err());
    }
}
