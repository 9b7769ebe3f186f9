//! An app's webhooks: where its server wants to hear about channel occupancy, presence members
//! and client events, and the checks that keep a webhook from pointing inside the cluster.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

/// The longest webhook URL accepted.
pub const URL_MAX_BYTES: usize = 2048;

/// The kinds of webhook event, as Pusher names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::ChannelOccupied,
        Kind::ChannelVacated,
        Kind::MemberAdded,
        Kind::MemberRemoved,
        Kind::ClientEvent,
        Kind::CacheMiss,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ChannelOccupied => "channel_occupied",
            Kind::ChannelVacated => "channel_vacated",
            Kind::MemberAdded => "member_added",
            Kind::MemberRemoved => "member_removed",
            Kind::ClientEvent => "client_event",
            Kind::CacheMiss => "cache_miss",
        }
    }

    #[must_use]
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// One webhook of an app: a URL and the events it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub events: Vec<Kind>,
}

impl Webhook {
    #[must_use]
    pub fn wants(&self, kind: Kind) -> bool {
        self.events.contains(&kind)
    }
}

/// Whether any of `hooks` wants one of `kinds`.
#[must_use]
pub fn any_wants(hooks: &[Webhook], kinds: &[Kind]) -> bool {
    hooks
        .iter()
        .any(|hook| kinds.iter().any(|kind| hook.wants(*kind)))
}

/// What the validation of a webhook list allows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Accept loopback, private and link-local targets (tests, or a receiver in the cluster).
    pub allow_private_targets: bool,
    pub max_per_app: usize,
}

/// Validates the `webhooks` field: a list of `{"url", "events"}` objects, or the JSON text of
/// one (a form field). Unknown keys in an entry (the status the admin API shows) are ignored,
/// so a client may send back what it read.
///
/// # Errors
/// One message saying what is wrong.
pub fn cast(value: &Value, rules: Rules) -> Result<Vec<Webhook>, String> {
    let parsed;
    let value = match value {
        Value::String(text) if text.trim().is_empty() => return Ok(Vec::new()),
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|_| "must be a JSON list of {\"url\", \"events\"} objects".to_owned())?;
            &parsed
        }
        other => other,
    };
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err("must be a list of {\"url\", \"events\"} objects".to_owned()),
    };
    if items.len() > rules.max_per_app {
        return Err(format!("must have at most {} entries", rules.max_per_app));
    }
    let mut hooks: Vec<Webhook> = Vec::with_capacity(items.len());
    for item in items {
        let hook = cast_one(item, rules)?;
        if hooks.iter().any(|h| h.url == hook.url) {
            return Err(format!("lists {} twice", hook.url));
        }
        hooks.push(hook);
    }
    Ok(hooks)
}

fn cast_one(item: &Value, rules: Rules) -> Result<Webhook, String> {
    let Value::Object(fields) = item else {
        return Err("each entry must be an object with url and events".to_owned());
    };
    let Some(Value::String(url)) = fields.get("url") else {
        return Err("each entry needs a url (a string)".to_owned());
    };
    let url = check_url(url, rules.allow_private_targets)?;
    let names: Vec<&str> = match fields.get("events") {
        Some(Value::Array(names)) => names
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "events must be a list of event names".to_owned())?,
        Some(Value::String(names)) => names
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        _ => return Err("each entry needs events (a list of event names)".to_owned()),
    };
    let mut events = Vec::new();
    for name in names {
        let kind = Kind::parse(name).ok_or_else(|| {
            format!(
                "unknown event {name:?}; known: channel_occupied, channel_vacated, member_added, member_removed, client_event, cache_miss"
            )
        })?;
        if !events.contains(&kind) {
            events.push(kind);
        }
    }
    if events.is_empty() {
        return Err("events must name at least one event".to_owned());
    }
    Ok(Webhook { url, events })
}

/// Parses a webhook URL and refuses what it must not reach. Returns the URL as it will be
/// called.
///
/// # Errors
/// Why the URL cannot be used.
pub fn check_url(raw: &str, allow_private: bool) -> Result<String, String> {
    if raw.len() > URL_MAX_BYTES {
        return Err(format!("url is longer than {URL_MAX_BYTES} bytes"));
    }
    let url = Url::parse(raw.trim()).map_err(|e| format!("url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("url must be http:// or https://".to_owned());
    }
    if url.fragment().is_some() {
        return Err("url must not have a #fragment".to_owned());
    }
    let Some(host) = url.host() else {
        return Err("url must name a host".to_owned());
    };
    if !allow_private {
        let private = match host {
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
            url::Host::Ipv4(ip) => is_private(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => is_private(IpAddr::V6(ip)),
        };
        if private {
            return Err(
                "url points at a loopback, private or link-local address (set webhooks.allow_private_targets to allow it)"
                    .to_owned(),
            );
        }
    }
    Ok(url.to_string())
}

/// Addresses a webhook may not reach unless private targets are allowed: loopback, private,
/// link-local, carrier-grade NAT, unspecified, multicast and broadcast ranges, and IPv6's
/// unique-local and the IPv4 addresses it embeds.
#[must_use]
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            private_v6(v6)
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        // 100.64.0.0/10, carrier-grade NAT (and many clusters' pod networks).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15 (benchmarking), 240.0.0.0/4.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 the old site-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // 2002::/16 (6to4) carries an IPv4 address in its next 32 bits.
        || (first == 0x2002 && {
            let s = ip.segments();
            let [a, b] = s[1].to_be_bytes();
            let [c, d] = s[2].to_be_bytes();
            private_v4(Ipv4Addr::new(a, b, c, d))
        })
        // 64:ff9b::/96 (NAT64) and ::/96 (IPv4-compatible) carry an IPv4 address.
        || (ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            && private_v4(embedded_v4(ip)))
        || (ip.segments()[..6] == [0; 6] && private_v4(embedded_v4(ip)))
}

fn embedded_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STRICT: Rules = Rules {
        allow_private_targets: false,
        max_per_app: 3,
    };

    #[test]
    fn accepts_public_urls_and_form_text() {
        let hooks = cast(
            &json!([{"url": "https://example.com/hook", "events": ["channel_occupied", "client_event"]}]),
            STRICT,
        )
        .expect("valid");
        assert_eq!(
            hooks[0].events,
            vec![Kind::ChannelOccupied, Kind::ClientEvent]
        );
        let form = cast(
            &json!(
                r#"[{"url":"http://93.184.216.34:8080/x","events":"member_added, member_removed"}]"#
            ),
            STRICT,
        )
        .expect("valid form text");
        assert_eq!(form[0].events, vec![Kind::MemberAdded, Kind::MemberRemoved]);
        assert!(cast(&json!(""), STRICT).expect("empty").is_empty());
    }

    #[test]
    fn refuses_private_targets_unless_allowed() {
        for url in [
            "http://127.0.0.1/x",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://198.18.0.1/",
            "http://[2002:7f00:1::]/",
            "http://[fec0::1]/",
        ] {
            let hooks = json!([{ "url": url, "events": ["channel_occupied"] }]);
            assert!(cast(&hooks, STRICT).is_err(), "{url} must be refused");
            let open = Rules {
                allow_private_targets: true,
                ..STRICT
            };
            assert!(
                cast(&hooks, open).is_ok(),
                "{url} allowed when private targets are"
            );
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        for bad in [
            json!({"url": "https://a.com"}),
            json!([{"url": "ftp://a.com/", "events": ["channel_occupied"]}]),
            json!([{"url": "https://a.com/#x", "events": ["channel_occupied"]}]),
            json!([{"url": "https://a.com/", "events": []}]),
            json!([{"url": "https://a.com/", "events": ["subscription_count"]}]),
            json!([{"url": "https://a.com/", "events": [1]}]),
            json!([{"url": 5, "events": ["client_event"]}]),
            json!([{"url": "https://a.com/", "events": ["client_event"]},
                   {"url": "https://a.com/", "events": ["client_event"]}]),
            json!([{"url": "https://a.com/1", "events": ["client_event"]},
                   {"url": "https://a.com/2", "events": ["client_event"]},
                   {"url": "https://a.com/3", "events": ["client_event"]},
                   {"url": "https://a.com/4", "events": ["client_event"]}]),
        ] {
            assert!(cast(&bad, STRICT).is_err(), "{bad} must be refused");
        }
    }
}
