//! Topics: one namespace for both protocols.
//!
//! A topic is `C:S`: the Pusher channel `C` of the app with slug `S`. It is also the topic a
//! Phoenix client joins and the Redis channel the bus uses. Pusher channel names cannot contain
//! `:`, so the first `:` splits a topic unambiguously. The seed's `public:S` and `private:S` are
//! the channels `public` and `private`.

use std::fmt;

/// Longest Pusher channel name, prefix included.
pub const CHANNEL_MAX_CHARS: usize = 164;

/// The prefix of the internal channel a signed-in Pusher user receives `sendToUser` events on.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// What a channel name says about who may subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// Anyone may subscribe.
    Public,
    /// `private-*` and the seed's bare `private`: an auth signature or a token is needed.
    Private,
    /// `private-encrypted-*`: as private; payloads are end-to-end encrypted, the server relays.
    Encrypted,
    /// `presence-*`: as private, plus a member list.
    Presence,
    /// `#server-to-user-<id>`: the connections signed in as that user.
    User,
}

impl ChannelKind {
    #[must_use]
    pub fn of(channel: &str) -> ChannelKind {
        if channel.starts_with(USER_CHANNEL_PREFIX) {
            ChannelKind::User
        } else if channel.starts_with("private-encrypted-") {
            ChannelKind::Encrypted
        } else if channel.starts_with("private-") || channel == "private" {
            ChannelKind::Private
        } else if channel.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Whether joining needs an auth signature (Pusher) or a token (Phoenix).
    #[must_use]
    pub fn needs_auth(self) -> bool {
        self != ChannelKind::Public
    }

    /// A closed set of metric label values.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            ChannelKind::Public => "public",
            ChannelKind::Private => "private",
            ChannelKind::Encrypted => "encrypted",
            ChannelKind::Presence => "presence",
            ChannelKind::User => "user",
        }
    }
}

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {CHANNEL_MAX_CHARS} characters")]
    TooLong,
    #[error("channel name may only contain A-Z, a-z, 0-9, and _ - = @ , . ;")]
    Charset,
}

/// Checks a Pusher channel name: 1 to 164 of `A-Za-z0-9_-=@,.;`; `#` only in the internal user
/// channel's prefix.
///
/// # Errors
/// What is wrong with the name.
pub fn check_channel(channel: &str) -> Result<(), ChannelNameError> {
    if channel.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if channel.len() > CHANNEL_MAX_CHARS {
        return Err(ChannelNameError::TooLong);
    }
    let rest = channel.strip_prefix(USER_CHANNEL_PREFIX).unwrap_or(channel);
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
    if rest.is_empty() || !rest.bytes().all(allowed) {
        return Err(ChannelNameError::Charset);
    }
    Ok(())
}

/// A parsed topic: a valid channel name and a non-empty app slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    full: String,
    /// Byte index of the `:`.
    split: usize,
    kind: ChannelKind,
}

impl Topic {
    /// Parses `C:S`; `None` unless `C` is a channel name and `S` is non-empty.
    #[must_use]
    pub fn parse(topic: &str) -> Option<Topic> {
        let (channel, slug) = topic.split_once(':')?;
        if slug.is_empty() || check_channel(channel).is_err() {
            return None;
        }
        Some(Topic {
            full: topic.to_owned(),
            split: channel.len(),
            kind: ChannelKind::of(channel),
        })
    }

    /// The internal channel of user `id` in app `slug` (`#server-to-user-<id>:<slug>`).
    ///
    /// # Errors
    /// `id` has characters a channel name cannot hold.
    pub fn user(id: &str, slug: &str) -> Result<Topic, ChannelNameError> {
        Topic::new(&format!("{USER_CHANNEL_PREFIX}{id}"), slug)
    }

    /// The topic of `channel` in app `slug`.
    ///
    /// # Errors
    /// `channel` is not a channel name.
    pub fn new(channel: &str, slug: &str) -> Result<Topic, ChannelNameError> {
        check_channel(channel)?;
        Ok(Topic {
            full: format!("{channel}:{slug}"),
            split: channel.len(),
            kind: ChannelKind::of(channel),
        })
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.full
    }

    #[must_use]
    pub fn channel(&self) -> &str {
        &self.full[..self.split]
    }

    #[must_use]
    pub fn app(&self) -> &str {
        &self.full[self.split + 1..]
    }

    #[must_use]
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// One of the seed's two topics (`public:S`, `private:S`).
    #[must_use]
    pub fn is_seed(&self) -> bool {
        matches!(self.channel(), "public" | "private")
    }

    #[must_use]
    pub fn into_string(self) -> String {
        self.full
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// The app slug of a topic string, without validating the channel: for labels and routing of
/// topics that were validated when they were joined or published.
#[must_use]
pub fn app_of(topic: &str) -> Option<&str> {
    topic.split_once(':').map(|(_, slug)| slug)
}

/// The channel part of a topic (`presence-room` of `presence-room:foo-app`), as Pusher names it.
#[must_use]
pub fn channel_of(topic: &str) -> Option<&str> {
    topic.split_once(':').map(|(channel, _)| channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_topics() {
        let t = Topic::parse("public:foo-app").unwrap();
        assert_eq!(
            (t.channel(), t.app(), t.kind()),
            ("public", "foo-app", ChannelKind::Public)
        );
        assert!(t.is_seed());
        let t = Topic::parse("private:a:b").unwrap();
        assert_eq!(
            (t.channel(), t.app(), t.kind()),
            ("private", "a:b", ChannelKind::Private)
        );
        assert_eq!(
            Topic::parse("room:lobby").unwrap().kind(),
            ChannelKind::Public
        );
        assert!(!Topic::parse("room:lobby").unwrap().is_seed());
        assert_eq!(Topic::parse("public:"), None);
        assert_eq!(Topic::parse("nocolon"), None);
        assert_eq!(Topic::parse(":app"), None);
        assert_eq!(Topic::parse("bad channel:app"), None);
        let kinds = [
            ("private-x", ChannelKind::Private),
            ("private-encrypted-x", ChannelKind::Encrypted),
            ("presence-x", ChannelKind::Presence),
            ("#server-to-user-42", ChannelKind::User),
            ("privatex", ChannelKind::Public),
        ];
        for (channel, kind) in kinds {
            assert_eq!(Topic::new(channel, "s").unwrap().kind(), kind, "{channel}");
        }
        assert_eq!(Topic::new("x", "s").unwrap().as_str(), "x:s");
        assert_eq!(
            Topic::user("42", "s").unwrap().as_str(),
            "#server-to-user-42:s"
        );
        assert!(Topic::user("a b", "s").is_err());
        assert_eq!(app_of("public:foo"), Some("foo"));
    }

    #[test]
    fn channel_names() {
        assert!(check_channel("a-Z_0=@,.;").is_ok());
        assert!(check_channel(&"x".repeat(164)).is_ok());
        assert_eq!(
            check_channel(&"x".repeat(165)),
            Err(ChannelNameError::TooLong)
        );
        assert_eq!(check_channel(""), Err(ChannelNameError::Empty));
        for bad in ["a:b", "a b", "a#b", "#server-to-user-", "é", "a/b"] {
            assert_eq!(check_channel(bad), Err(ChannelNameError::Charset), "{bad}");
        }
    }
}
