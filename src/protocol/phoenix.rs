//! The Phoenix Channels serializers: `vsn=1.0.0` (JSON objects, the default when `vsn` is
//! absent) and `vsn=2.0.0` (JSON arrays `[join_ref, ref, topic, event, payload]`).

use serde_json::{Value, json};

/// The negotiated serializer of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// Phoenix negotiates `~> 1.0.0` and `~> 2.0.0`; anything else is refused at the upgrade.
    #[must_use]
    pub fn negotiate(vsn: Option<&str>) -> Option<Vsn> {
        let Some(vsn) = vsn else {
            return Some(Vsn::V1);
        };
        let mut parts = vsn.split('.');
        let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
        let numeric = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if parts.next().is_some() || !numeric(patch) || minor != Some("0") {
            return None;
        }
        match major {
            Some("1") => Some(Vsn::V1),
            Some("2") => Some(Vsn::V2),
            _ => None,
        }
    }
}

/// One client frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

pub use super::DecodeError;

fn opt_string(value: Value, what: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(DecodeError::Shape(what)),
    }
}

fn string(value: Value, what: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::Shape(what)),
    }
}

impl Inbound {
    /// Checks the field types shared by both serializers.
    fn from_values(
        join_ref: Value,
        msg_ref: Value,
        topic: Value,
        event: Value,
        payload: Value,
    ) -> Result<Inbound, DecodeError> {
        Ok(Inbound {
            join_ref: opt_string(join_ref, "join_ref must be a string or null")?,
            msg_ref: opt_string(msg_ref, "ref must be a string or null")?,
            topic: string(topic, "topic must be a string")?,
            event: string(event, "event must be a string")?,
            payload,
        })
    }
}

/// Decodes one text frame.
///
/// # Errors
/// Malformed JSON, or JSON that is not a Phoenix message.
pub fn decode(vsn: Vsn, text: &str) -> Result<Inbound, DecodeError> {
    let value: Value = serde_json::from_str(text)?;
    match vsn {
        Vsn::V2 => {
            let Value::Array(items) = value else {
                return Err(DecodeError::Shape(
                    "expected [join_ref, ref, topic, event, payload]",
                ));
            };
            let mut items = items.into_iter();
            let (Some(join_ref), Some(msg_ref), Some(topic), Some(event), Some(payload)) = (
                items.next(),
                items.next(),
                items.next(),
                items.next(),
                items.next(),
            ) else {
                return Err(DecodeError::Shape(
                    "expected [join_ref, ref, topic, event, payload]",
                ));
            };
            Inbound::from_values(join_ref, msg_ref, topic, event, payload)
        }
        Vsn::V1 => {
            let Value::Object(mut map) = value else {
                return Err(DecodeError::Shape(
                    "expected an object with topic, event, payload, ref",
                ));
            };
            let mut take = |key: &'static str| map.remove(key);
            let (Some(topic), Some(event), Some(payload), Some(msg_ref)) =
                (take("topic"), take("event"), take("payload"), take("ref"))
            else {
                return Err(DecodeError::Shape(
                    "expected an object with topic, event, payload, ref",
                ));
            };
            let join_ref = take("join_ref").unwrap_or(Value::Null);
            Inbound::from_values(join_ref, msg_ref, topic, event, payload)
        }
    }
}

fn quoted(s: Option<&str>) -> String {
    s.map_or_else(
        || "null".to_owned(),
        |s| Value::String(s.to_owned()).to_string(),
    )
}

/// Encodes one server frame around a payload that is already JSON text. V1 never carries
/// `join_ref`, as Phoenix's V1 serializer.
#[must_use]
pub fn encode_raw(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> String {
    let (msg_ref, topic, event) = (quoted(msg_ref), quoted(Some(topic)), quoted(Some(event)));
    match vsn {
        Vsn::V2 => format!(
            "[{},{msg_ref},{topic},{event},{payload_json}]",
            quoted(join_ref)
        ),
        Vsn::V1 => format!(
            "{{\"topic\":{topic},\"event\":{event},\"payload\":{payload_json},\"ref\":{msg_ref}}}"
        ),
    }
}

/// Reply status of a `phx_reply`.
#[derive(Debug, Clone, Copy)]
pub enum Status {
    Ok,
    Error,
}

/// A `phx_reply` to the client message with `msg_ref`.
#[must_use]
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: Status,
    response: &Value,
) -> String {
    let status = match status {
        Status::Ok => "ok",
        Status::Error => "error",
    };
    let payload = json!({ "status": status, "response": response }).to_string();
    encode_raw(vsn, join_ref, msg_ref, topic, "phx_reply", &payload)
}

/// `phx_close` for the channel instance `join_ref` (its `ref` is the join's ref, as in Phoenix).
#[must_use]
pub fn close(vsn: Vsn, join_ref: Option<&str>, topic: &str) -> String {
    encode_raw(vsn, join_ref, join_ref, topic, "phx_close", "{}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Vsn::negotiate(None), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::negotiate(Some("2.0.3")), Some(Vsn::V2));
        for bad in [
            "3.0.0", "2.1.0", "2", "", "2.0", "2.0.0.0", "x.0.0", "2.0.x",
        ] {
            assert_eq!(Vsn::negotiate(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn decode_both() {
        let v2 = decode(Vsn::V2, r#"["1","2","public:a","phx_join",{},"extra"]"#).unwrap();
        assert_eq!(v2.join_ref.as_deref(), Some("1"));
        assert_eq!(v2.msg_ref.as_deref(), Some("2"));
        assert_eq!(v2.topic, "public:a");
        let v1 = decode(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"5"}"#,
        )
        .unwrap();
        assert_eq!(v1.join_ref, None);
        assert_eq!(v1.event, "heartbeat");
        assert!(decode(Vsn::V2, "[1,2").is_err());
        assert!(decode(Vsn::V2, r#"[null,"1","t"]"#).is_err());
        assert!(decode(Vsn::V2, r#"[null,"1",5,"e",{}]"#).is_err());
        assert!(decode(Vsn::V1, r#"{"topic":"t","event":"e"}"#).is_err());
        assert!(decode(Vsn::V1, r#"["1","2","t","e",{}]"#).is_err());
    }

    #[test]
    fn encode_both() {
        assert_eq!(
            encode_raw(Vsn::V2, None, None, "public:a", "m\"x", r#"{"a":1}"#),
            r#"[null,null,"public:a","m\"x",{"a":1}]"#
        );
        assert_eq!(
            encode_raw(Vsn::V1, Some("1"), Some("2"), "t", "e", "{}"),
            r#"{"topic":"t","event":"e","payload":{},"ref":"2"}"#
        );
        assert_eq!(
            reply(Vsn::V2, Some("1"), Some("1"), "t", Status::Ok, &json!({})),
            r#"["1","1","t","phx_reply",{"response":{},"status":"ok"}]"#
        );
    }
}
