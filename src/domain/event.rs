//! The protocol-neutral event that crosses the bus, and the naming rules for topics and events.

use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;

use super::history::Position;

/// Longest topic (the article's `topic` parameter) or event name, in bytes.
pub const NAME_MAX_BYTES: usize = 200;

/// One message for every subscriber of `topic` (see [`crate::domain::topic`]).
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub event: String,
    pub data: Data,
    /// A Pusher `socket_id` that must not receive the event (the sender's own connection).
    pub exclude: Option<String>,
    /// The sender's user id, for a client event on a presence channel (Pusher's `user_id`).
    pub user_id: Option<String>,
    /// Where the event stands in its topic's history, once stored there (topics with history
    /// only; see [`crate::domain::history`]).
    pub position: Option<Position>,
}

/// An event's payload as its producer wrote it. Each protocol renders it once per event:
/// - a Phoenix client always receives an object: an [`Data::Object`] as is; a
///   [`Data::Pusher`] that is an object, or a string holding a JSON object, as that object;
///   any other Pusher data wrapped as `{"data": <value>}`;
/// - a Pusher client receives [`Data::Pusher`] byte-identical, and an [`Data::Object`] as
///   its JSON text in a string (Pusher's usual double encoding).
#[derive(Debug, Clone)]
pub enum Data {
    /// A JSON object: the seed's events API and Phoenix client events.
    Object(Box<RawValue>),
    /// Pusher `data`, any JSON value (a string from the server SDKs).
    Pusher(Box<RawValue>),
}

impl Data {
    /// The payload as its producer wrote it.
    #[must_use]
    pub fn text(&self) -> &str {
        match self {
            Data::Object(raw) | Data::Pusher(raw) => raw.get(),
        }
    }

    /// The payload of a Phoenix frame: always a JSON object.
    #[must_use]
    pub fn phoenix_payload(&self) -> Cow<'_, str> {
        match self {
            Data::Object(object) => Cow::Borrowed(object.get()),
            Data::Pusher(raw) => {
                let text = raw.get();
                if text.starts_with('{') {
                    return Cow::Borrowed(text);
                }
                if text.starts_with('"')
                    && let Ok(inner) = serde_json::from_str::<String>(text)
                    && inner.trim_start().starts_with('{')
                    && serde_json::from_str::<&RawValue>(&inner).is_ok()
                {
                    return Cow::Owned(inner);
                }
                Cow::Owned(format!("{{\"data\":{text}}}"))
            }
        }
    }

    /// The `data` value of a Pusher frame, as JSON text.
    #[must_use]
    pub fn pusher_data(&self) -> Cow<'_, str> {
        match self {
            Data::Object(object) => Cow::Owned(Value::String(object.get().to_owned()).to_string()),
            Data::Pusher(raw) => Cow::Borrowed(raw.get()),
        }
    }
}

/// Who may join a topic without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Public,
    Private,
}

impl Scope {
    #[must_use]
    pub fn parse(scope: &str) -> Option<Scope> {
        match scope {
            "public" => Some(Scope::Public),
            "private" => Some(Scope::Private),
            _ => None,
        }
    }

    /// The seed's topic of an app's scope: `"#{scope}:#{app_slug}"`.
    #[must_use]
    pub fn topic(self, slug: &str) -> String {
        match self {
            Scope::Public => format!("public:{slug}"),
            Scope::Private => format!("private:{slug}"),
        }
    }
}

/// Checks a client-supplied name: non-empty, at most [`NAME_MAX_BYTES`], no control characters.
///
/// # Errors
/// A sentence saying what is wrong, for the error body.
pub fn check_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("`{field}` can't be blank"))
    } else if value.len() > NAME_MAX_BYTES {
        Err(format!("`{field}` is longer than {NAME_MAX_BYTES} bytes"))
    } else if value.chars().any(char::is_control) {
        Err(format!("`{field}` must not contain control characters"))
    } else {
        Ok(())
    }
}

/// Why [`is_reserved`] refuses a name, for error messages.
pub const RESERVED: &str = "event names starting with phx_, pusher: or pusher_internal:, and presence_state and presence_diff, are reserved";

/// Event names the server sends itself: the Phoenix client's own (`phx_close`, `phx_reply`,
/// …), Pusher's (`pusher:…`, `pusher_internal:member_added`, …) and Phoenix Presence's. One sent
/// as a broadcast would close or confuse every channel of the topic, or fake its membership.
#[must_use]
pub fn is_reserved(event: &str) -> bool {
    event.starts_with("phx_")
        || event.starts_with("pusher:")
        || event.starts_with("pusher_internal:")
        || event == "presence_state"
        || event == "presence_diff"
}

/// The article's event naming: `"#{topic}:#{event}"`, or just `event` for `#general`.
#[must_use]
pub fn event_name(topic: &str, event: &str) -> String {
    if topic == "#general" {
        event.to_owned()
    } else {
        format!("{topic}:{event}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_cross_protocols() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        let object = Data::Object(raw(r#"{"a":1}"#));
        assert_eq!(object.phoenix_payload(), r#"{"a":1}"#);
        assert_eq!(object.pusher_data(), r#""{\"a\":1}""#);
        let sdk = Data::Pusher(raw(r#""{\"a\": 1}""#));
        assert_eq!(sdk.pusher_data(), r#""{\"a\": 1}""#);
        assert_eq!(sdk.phoenix_payload(), r#"{"a": 1}"#);
        let text = Data::Pusher(raw(r#""hello""#));
        assert_eq!(text.phoenix_payload(), r#"{"data":"hello"}"#);
        let broken = Data::Pusher(raw(r#""{oops""#));
        assert_eq!(broken.phoenix_payload(), r#"{"data":"{oops"}"#);
        let client = Data::Pusher(raw(r#"{"b":2}"#));
        assert_eq!(client.phoenix_payload(), r#"{"b":2}"#);
        assert_eq!(client.pusher_data(), r#"{"b":2}"#);
        assert_eq!(
            Data::Pusher(raw("[1]")).phoenix_payload(),
            r#"{"data":[1]}"#
        );
        assert_eq!(Scope::Private.topic("x"), "private:x");
    }

    #[test]
    fn names() {
        assert_eq!(event_name("#general", "msg"), "msg");
        assert_eq!(event_name("foo-topic", "msg"), "foo-topic:msg");
        assert!(check_name("event", "").is_err());
        assert!(check_name("event", &"x".repeat(201)).is_err());
        assert!(check_name("event", "a\nb").is_err());
        assert!(check_name("event", "ok").is_ok());
        assert!(is_reserved("phx_close") && !is_reserved("x:phx_close"));
    }
}
