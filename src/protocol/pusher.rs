//! The Pusher Channels protocol 7 frames: `{"event", "channel"?, "data"?}` JSON text. Server
//! frames of `pusher:*` and `pusher_internal:*` events carry `data` as a JSON-encoded string
//! where Pusher does (its "double encoding"); channel events carry the producer's `data` as is.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The only protocol version served.
pub const PROTOCOL: u32 = 7;

/// One client frame, with `data` kept as text so client events relay it byte-identical.
#[derive(Debug, Deserialize)]
pub struct Inbound {
    pub event: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

pub use super::DecodeError;

/// Decodes one text frame.
///
/// # Errors
/// Malformed JSON, or JSON that is not a Pusher message.
pub fn decode(text: &str) -> Result<Inbound, DecodeError> {
    let value: Box<RawValue> = serde_json::from_str(text)?;
    if !value.get().starts_with('{') {
        return Err(DecodeError::Shape("expected an object with event"));
    }
    serde_json::from_str(value.get())
        .map_err(|_| DecodeError::Shape("expected an object with a string event"))
}

/// The fields of `pusher:subscribe`.
#[derive(Debug, Deserialize)]
pub struct Subscribe {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// What a presence subscription's `channel_data` holds: the member's id (a string, or a number
/// as some server SDKs send it) and optional info.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    pub user_id: UserId,
    #[serde(default)]
    pub user_info: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UserId {
    Text(String),
    Number(serde_json::Number),
}

impl UserId {
    #[must_use]
    pub fn into_string(self) -> String {
        match self {
            UserId::Text(text) => text,
            UserId::Number(number) => number.to_string(),
        }
    }
}

/// The fields of `pusher:signin`.
#[derive(Debug, Deserialize)]
pub struct Signin {
    pub auth: String,
    pub user_data: String,
}

/// Reads the `data` of a `pusher:*` frame as `T`: an object, or a string holding one (some
/// clients double-encode what they send too).
///
/// # Errors
/// `data` is missing or does not hold the fields of `T`.
pub fn data_of<T: serde::de::DeserializeOwned>(data: Option<&RawValue>) -> Result<T, DecodeError> {
    let data = data.ok_or(DecodeError::Shape("data is required"))?;
    let text = data.get();
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text)?;
        Ok(serde_json::from_str(&inner)?)
    } else {
        Ok(serde_json::from_str(text)?)
    }
}

fn quoted(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A frame whose `data` is `data_json` (JSON text), on `channel` if any.
fn frame(event: &str, channel: Option<&str>, data_json: &str) -> String {
    match channel {
        Some(channel) => format!(
            "{{\"event\":{},\"channel\":{},\"data\":{data_json}}}",
            quoted(event),
            quoted(channel)
        ),
        None => format!("{{\"event\":{},\"data\":{data_json}}}", quoted(event)),
    }
}

/// A channel event, with `data` (JSON text) relayed as the producer wrote it.
#[must_use]
pub fn event(channel: &str, event: &str, data_json: &str, user_id: Option<&str>) -> String {
    match user_id {
        Some(user_id) => format!(
            "{{\"event\":{},\"channel\":{},\"data\":{data_json},\"user_id\":{}}}",
            quoted(event),
            quoted(channel),
            quoted(user_id)
        ),
        None => frame(event, Some(channel), data_json),
    }
}

#[must_use]
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = json!({"socket_id": socket_id, "activity_timeout": activity_timeout_secs});
    frame(
        "pusher:connection_established",
        None,
        &quoted(&data.to_string()),
    )
}

#[must_use]
pub fn pong() -> String {
    frame("pusher:pong", None, "\"{}\"")
}

#[must_use]
pub fn ping() -> String {
    frame("pusher:ping", None, "\"{}\"")
}

/// `pusher:error`; `code` is `None` for errors that do not close the connection.
#[must_use]
pub fn error(code: Option<u16>, message: &str) -> String {
    frame(
        "pusher:error",
        None,
        &json!({"code": code, "message": message}).to_string(),
    )
}

#[must_use]
pub fn subscription_succeeded(channel: &str) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "\"{}\"",
    )
}

/// A cache channel had no event to give its new subscriber.
#[must_use]
pub fn cache_miss(channel: &str) -> String {
    format!(
        "{{\"event\":\"pusher:cache_miss\",\"channel\":{}}}",
        quoted(channel)
    )
}

/// `pusher_internal:subscription_succeeded` of a presence channel: `data` holds the members.
#[must_use]
pub fn presence_succeeded(channel: &str, presence: &Value) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &quoted(&presence.to_string()),
    )
}

/// An internal channel event whose `data` is `data` as JSON text in a string.
#[must_use]
pub fn internal(channel: &str, event: &str, data: &Value) -> String {
    frame(event, Some(channel), &quoted(&data.to_string()))
}

/// `pusher:subscription_error` as Soketi sends it: `{type, error, status}`.
#[must_use]
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    frame(
        "pusher:subscription_error",
        Some(channel),
        &json!({"type": kind, "error": message, "status": status}).to_string(),
    )
}

#[must_use]
pub fn signin_success(user_data: &str) -> String {
    frame(
        "pusher:signin_success",
        None,
        &json!({ "user_data": user_data }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_frames() {
        let m =
            decode(r#"{"event":"pusher:subscribe","data":{"channel":"x","auth":"k:s"}}"#).unwrap();
        assert_eq!(m.event, "pusher:subscribe");
        let sub: Subscribe = data_of(m.data.as_deref()).unwrap();
        assert_eq!(
            (sub.channel.as_str(), sub.auth.as_deref()),
            ("x", Some("k:s"))
        );
        let m = decode(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"y\"}"}"#).unwrap();
        let sub: Subscribe = data_of(m.data.as_deref()).unwrap();
        assert_eq!(sub.channel, "y");
        let m =
            decode(r#"{"event":"client-a","channel":"private-c","data":{"k": [1, 2]}}"#).unwrap();
        assert_eq!(m.data.unwrap().get(), r#"{"k": [1, 2]}"#);
        assert!(decode("[1]").is_err());
        assert!(decode(r#"{"event":5}"#).is_err());
        assert!(decode("{").is_err());
        assert!(data_of::<Subscribe>(None).is_err());
    }

    #[test]
    fn encodes_frames() {
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":120,\"socket_id\":\"1.2\"}"}"#
        );
        assert_eq!(
            event("public", "a\"b", r#""{}""#, None),
            r#"{"event":"a\"b","channel":"public","data":"{}"}"#
        );
        assert_eq!(
            event("presence-x", "client-e", "{}", Some("u1")),
            r#"{"event":"client-e","channel":"presence-x","data":{},"user_id":"u1"}"#
        );
        assert_eq!(
            subscription_succeeded("c"),
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#
        );
        assert_eq!(
            error(Some(4001), "no"),
            r#"{"event":"pusher:error","data":{"code":4001,"message":"no"}}"#
        );
    }
}
