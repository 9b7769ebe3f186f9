//! The protocol-neutral event that crosses the bus, and the naming rules for topics and events.

use serde_json::value::RawValue;

/// Longest topic (the article's `topic` parameter) or event name, in bytes.
pub const NAME_MAX_BYTES: usize = 200;

/// One message for every subscriber of `topic` (`scope:app_slug`).
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub event: String,
    /// A JSON object, kept as text: it is validated once and never re-encoded.
    pub payload: Box<RawValue>,
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

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Public => "public",
            Scope::Private => "private",
        }
    }
}

/// Splits `public:foo-app` into its scope and app slug; `None` for any other shape.
#[must_use]
pub fn parse_topic(topic: &str) -> Option<(Scope, &str)> {
    let (scope, slug) = topic.split_once(':')?;
    let scope = Scope::parse(scope)?;
    (!slug.is_empty()).then_some((scope, slug))
}

/// The bus topic of an app's scope: `"#{scope}:#{app_slug}"`.
#[must_use]
pub fn topic_for(scope: Scope, slug: &str) -> String {
    format!("{}:{slug}", scope.as_str())
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

/// Event names the Phoenix client reserves for itself (`phx_close`, `phx_reply`, `phx_error`,
/// …): one sent as a broadcast would close or confuse every channel of the topic.
#[must_use]
pub fn is_reserved(event: &str) -> bool {
    event.starts_with("phx_")
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
    fn topics() {
        assert_eq!(
            parse_topic("public:foo-app"),
            Some((Scope::Public, "foo-app"))
        );
        assert_eq!(parse_topic("private:a:b"), Some((Scope::Private, "a:b")));
        assert_eq!(parse_topic("room:lobby"), None);
        assert_eq!(parse_topic("public:"), None);
        assert_eq!(topic_for(Scope::Private, "x"), "private:x");
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
