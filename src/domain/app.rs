//! Apps: the tenants of a pushlite node, and the validation of what clients send about them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::history;
use super::webhook::{self, Webhook};

/// One registered application, as stored and as shown by the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct App {
    pub id: i64,
    pub name: String,
    pub slug: String,
    pub key: String,
    pub secret: String,
    pub active: bool,
    /// Whether sockets may push client events (events from one browser to the others) to this
    /// app's topics. A public client event cannot be told apart from a server event.
    pub client_events: bool,
    /// Origins allowed to join this app's topics; empty means any origin.
    pub allowed_origins: Vec<String>,
    /// Users at most in one presence channel of this app, cluster-wide.
    pub max_presence_members: i32,
    /// Where the app's server hears about occupancy, members and client events.
    pub webhooks: Vec<Webhook>,
    /// Events each channel keeps for recovery and late joiners; 0 keeps none.
    pub history_size: i32,
    /// How long a channel's history outlives its latest event.
    pub history_ttl_secs: i32,
    /// Connections at most across the cluster (0: none); `None` follows
    /// `limits.connections_per_app`.
    pub max_connections: Option<i32>,
    /// HTTP-triggered events per second at most across the cluster (0: none); `None` follows
    /// `limits.triggers_per_sec_per_app`.
    pub max_triggers_per_sec: Option<i32>,
    /// Webhook events at most queued or waiting to retry for this app, cluster-wide (0: only
    /// `webhooks.max_queue` applies); `None` follows `webhooks.max_queue_per_app`.
    pub webhook_max_queue: Option<i32>,
    pub inserted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl App {
    /// Whether a WebSocket upgrade from `origin` may join this app's topics.
    #[must_use]
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        origin.is_some_and(|o| {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            self.allowed_origins.contains(&o)
        })
    }
}

/// Whether `slug` could have been made by [`slug::slugify`] within the name limits: ASCII
/// lowercase letters, digits and dashes. Anything else names no app and is refused before the
/// database sees it (a NUL byte would make Postgres fail, and raise outage alerts).
#[must_use]
pub fn is_valid_slug(slug: &str) -> bool {
    (1..=NAME_MAX).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether `key` could be an app key (generated keys are UUIDs; seeded ones are plain text).
#[must_use]
pub fn is_valid_key(key: &str) -> bool {
    (1..=NAME_MAX).contains(&key.len()) && !key.chars().any(char::is_control)
}

/// A validated app ready to be inserted.
#[derive(Debug, Clone)]
pub struct NewApp {
    pub name: String,
    pub slug: String,
    pub key: String,
    pub secret: String,
    pub active: bool,
    pub client_events: bool,
    pub allowed_origins: Vec<String>,
    pub max_presence_members: i32,
    pub webhooks: Vec<Webhook>,
    pub history_size: i32,
    pub history_ttl_secs: i32,
    pub max_connections: Option<i32>,
    pub max_triggers_per_sec: Option<i32>,
    pub webhook_max_queue: Option<i32>,
}

/// Validated changes to an existing app. A new name always comes with its new slug.
#[derive(Debug, Clone, Default)]
pub struct AppChanges {
    pub name_and_slug: Option<(String, String)>,
    pub active: Option<bool>,
    pub client_events: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_presence_members: Option<i32>,
    pub webhooks: Option<Vec<Webhook>>,
    pub history_size: Option<i32>,
    pub history_ttl_secs: Option<i32>,
    /// `Some(None)`: back to the global limit.
    pub max_connections: Option<Option<i32>>,
    pub max_triggers_per_sec: Option<Option<i32>>,
    pub webhook_max_queue: Option<Option<i32>>,
}

/// Field name → messages, rendered as Phoenix's `{"errors": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ValidationErrors(pub BTreeMap<&'static str, Vec<String>>);

impl ValidationErrors {
    #[must_use]
    pub fn single(field: &'static str, message: &str) -> Self {
        let mut errors = ValidationErrors::default();
        errors.add(field, message);
        errors
    }

    pub fn add(&mut self, field: &'static str, message: &str) {
        self.0.entry(field).or_default().push(message.to_owned());
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const NAME_MIN: usize = 5;
const NAME_MAX: usize = 255;
const ORIGINS_MAX: usize = 100;
const ORIGIN_MAX_BYTES: usize = 255;
/// Pusher's limit of users in one presence channel: the default of every app.
pub const DEFAULT_PRESENCE_MEMBERS: i32 = 100;
/// Beyond this a presence snapshot (sent to every joining member) grows too large to be useful.
const PRESENCE_MEMBERS_MAX: i32 = 10_000;
/// An app's `history_ttl_secs` unless it says otherwise (or the configured ceiling is lower).
pub const DEFAULT_HISTORY_TTL_SECS: i32 = 3600;

/// What the validation of an app's fields allows, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub webhooks: webhook::Rules,
    pub history: history::Bounds,
}

impl Rules {
    /// `history_ttl_secs` of an app created without one.
    #[must_use]
    pub fn default_history_ttl(&self) -> i32 {
        DEFAULT_HISTORY_TTL_SECS.min(i32::try_from(self.history.max_ttl_secs).unwrap_or(i32::MAX))
    }
}

/// A fresh random credential: a v4 UUID carries 122 random bits, as the article's
/// `SecureRandom.uuid` did.
#[must_use]
pub fn random_credential() -> String {
    Uuid::new_v4().to_string()
}

/// The `app` object of an admin request, before validation. Fields the server owns (`id`,
/// `slug`, `key`, `secret`, timestamps) are ignored, as Ecto's `cast` ignores them, so a client
/// may send back what it read.
#[derive(Debug, Default)]
pub struct AppParams {
    name: Option<Value>,
    active: Option<Value>,
    client_events: Option<Value>,
    allowed_origins: Option<Value>,
    max_presence_members: Option<Value>,
    webhooks: Option<Value>,
    history_size: Option<Value>,
    history_ttl_secs: Option<Value>,
    max_connections: Option<Value>,
    max_triggers_per_sec: Option<Value>,
    webhook_max_queue: Option<Value>,
}

impl AppParams {
    #[must_use]
    pub fn from_map(mut map: Map<String, Value>) -> Self {
        AppParams {
            name: map.remove("name"),
            active: map.remove("active"),
            client_events: map.remove("client_events"),
            allowed_origins: map.remove("allowed_origins"),
            max_presence_members: map.remove("max_presence_members"),
            webhooks: map.remove("webhooks"),
            history_size: map.remove("history_size"),
            history_ttl_secs: map.remove("history_ttl_secs"),
            max_connections: map.remove("max_connections"),
            max_triggers_per_sec: map.remove("max_triggers_per_sec"),
            webhook_max_queue: map.remove("webhook_max_queue"),
        }
    }

    /// Validates a create request and generates the server-owned fields.
    ///
    /// # Errors
    /// Every problem found, by field.
    pub fn into_new_app(self, rules: Rules) -> Result<NewApp, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = match &self.name {
            None | Some(Value::Null) => {
                errors.add("name", "can't be blank");
                None
            }
            Some(value) => validate_name(value, &mut errors),
        };
        let active = self
            .active
            .as_ref()
            .map_or(Some(true), |v| cast_bool("active", v, &mut errors));
        let client_events = self
            .client_events
            .as_ref()
            .map_or(Some(true), |v| cast_bool("client_events", v, &mut errors));
        let allowed_origins = self
            .allowed_origins
            .as_ref()
            .map_or(Some(Vec::new()), |v| cast_origins(v, &mut errors));
        let max_presence_members = self
            .max_presence_members
            .as_ref()
            .map_or(Some(DEFAULT_PRESENCE_MEMBERS), |v| {
                cast_presence_members(v, &mut errors)
            });
        let webhooks = self.webhooks.as_ref().map_or(Some(Vec::new()), |v| {
            cast_webhooks(v, rules.webhooks, &mut errors)
        });
        let history_size = self
            .history_size
            .as_ref()
            .map_or(Some(0), |v| cast_history_size(v, rules, &mut errors));
        let history_ttl_secs = self
            .history_ttl_secs
            .as_ref()
            .map_or(Some(rules.default_history_ttl()), |v| {
                cast_history_ttl(v, rules, &mut errors)
            });
        let max_connections = self.max_connections.as_ref().map_or(Some(None), |v| {
            cast_quota("max_connections", v, &mut errors)
        });
        let max_triggers_per_sec = self.max_triggers_per_sec.as_ref().map_or(Some(None), |v| {
            cast_quota("max_triggers_per_sec", v, &mut errors)
        });
        let webhook_max_queue = self.webhook_max_queue.as_ref().map_or(Some(None), |v| {
            cast_quota("webhook_max_queue", v, &mut errors)
        });
        match (
            name,
            active,
            client_events,
            allowed_origins,
            max_presence_members,
            webhooks,
        ) {
            (
                Some((name, slug)),
                Some(active),
                Some(client_events),
                Some(allowed_origins),
                Some(max_presence_members),
                Some(webhooks),
            ) if errors.is_empty() => Ok(NewApp {
                history_size: history_size.unwrap_or(0),
                history_ttl_secs: history_ttl_secs.unwrap_or(DEFAULT_HISTORY_TTL_SECS),
                max_connections: max_connections.flatten(),
                max_triggers_per_sec: max_triggers_per_sec.flatten(),
                webhook_max_queue: webhook_max_queue.flatten(),
                name,
                slug,
                key: random_credential(),
                secret: random_credential(),
                active,
                client_events,
                allowed_origins,
                max_presence_members,
                webhooks,
            }),
            _ => Err(errors),
        }
    }

    /// Validates an update request; absent fields stay as they are.
    ///
    /// # Errors
    /// Every problem found, by field.
    pub fn into_changes(self, rules: Rules) -> Result<AppChanges, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let changes = AppChanges {
            name_and_slug: self
                .name
                .as_ref()
                .and_then(|v| validate_name(v, &mut errors)),
            active: self
                .active
                .as_ref()
                .and_then(|v| cast_bool("active", v, &mut errors)),
            client_events: self
                .client_events
                .as_ref()
                .and_then(|v| cast_bool("client_events", v, &mut errors)),
            allowed_origins: self
                .allowed_origins
                .as_ref()
                .and_then(|v| cast_origins(v, &mut errors)),
            max_presence_members: self
                .max_presence_members
                .as_ref()
                .and_then(|v| cast_presence_members(v, &mut errors)),
            webhooks: self
                .webhooks
                .as_ref()
                .and_then(|v| cast_webhooks(v, rules.webhooks, &mut errors)),
            history_size: self
                .history_size
                .as_ref()
                .and_then(|v| cast_history_size(v, rules, &mut errors)),
            history_ttl_secs: self
                .history_ttl_secs
                .as_ref()
                .and_then(|v| cast_history_ttl(v, rules, &mut errors)),
            max_connections: self
                .max_connections
                .as_ref()
                .and_then(|v| cast_quota("max_connections", v, &mut errors)),
            max_triggers_per_sec: self
                .max_triggers_per_sec
                .as_ref()
                .and_then(|v| cast_quota("max_triggers_per_sec", v, &mut errors)),
            webhook_max_queue: self
                .webhook_max_queue
                .as_ref()
                .and_then(|v| cast_quota("webhook_max_queue", v, &mut errors)),
        };
        if errors.is_empty() {
            Ok(changes)
        } else {
            Err(errors)
        }
    }
}

fn validate_name(value: &Value, errors: &mut ValidationErrors) -> Option<(String, String)> {
    let Value::String(name) = value else {
        errors.add("name", "is invalid");
        return None;
    };
    let chars = name.chars().count();
    if name.trim().is_empty() {
        errors.add("name", "can't be blank");
        return None;
    }
    if chars < NAME_MIN {
        errors.add("name", "should be at least 5 character(s)");
        return None;
    }
    if chars > NAME_MAX {
        errors.add("name", "should be at most 255 character(s)");
        return None;
    }
    if name.chars().any(char::is_control) {
        errors.add("name", "must not contain control characters");
        return None;
    }
    let slug = slug::slugify(name);
    if slug.is_empty() {
        errors.add("name", "must contain a letter or a digit");
        return None;
    }
    if slug.len() > NAME_MAX {
        errors.add("name", "makes a slug longer than 255 characters");
        return None;
    }
    Some((name.clone(), slug))
}

/// Ecto's boolean cast: JSON booleans and the strings a form can carry.
fn cast_bool(field: &'static str, value: &Value, errors: &mut ValidationErrors) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" || s == "1" => Some(true),
        Value::String(s) if s == "false" || s == "0" => Some(false),
        _ => {
            errors.add(field, "is invalid");
            None
        }
    }
}

/// A member limit: an integer (or a form's digits) from 1 to [`PRESENCE_MEMBERS_MAX`].
fn cast_presence_members(value: &Value, errors: &mut ValidationErrors) -> Option<i32> {
    let number = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match number.and_then(|n| i32::try_from(n).ok()) {
        Some(n) if (1..=PRESENCE_MEMBERS_MAX).contains(&n) => Some(n),
        _ => {
            errors.add("max_presence_members", "must be an integer from 1 to 10000");
            None
        }
    }
}

/// An integer, or a form's digits.
fn cast_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

/// A per-app quota: `null` (or a form's empty string) for the global limit, 0 for none, or
/// the limit.
fn cast_quota(
    field: &'static str,
    value: &Value,
    errors: &mut ValidationErrors,
) -> Option<Option<i32>> {
    match value {
        Value::Null => return Some(None),
        Value::String(s) if s.trim().is_empty() => return Some(None),
        _ => {}
    }
    match cast_int(value).and_then(|n| i32::try_from(n).ok()) {
        Some(n) if n >= 0 => Some(Some(n)),
        _ => {
            errors.add(
                field,
                "must be null (the global limit), 0 (no limit) or a positive integer",
            );
            None
        }
    }
}

fn cast_history_size(value: &Value, rules: Rules, errors: &mut ValidationErrors) -> Option<i32> {
    let max = rules.history.max_size;
    match cast_int(value).and_then(|n| i32::try_from(n).ok()) {
        Some(n) if u32::try_from(n).is_ok_and(|n| n <= max) => Some(n),
        _ => {
            errors.add(
                "history_size",
                &format!("must be an integer from 0 (no history) to {max}"),
            );
            None
        }
    }
}

fn cast_history_ttl(value: &Value, rules: Rules, errors: &mut ValidationErrors) -> Option<i32> {
    let max = rules.history.max_ttl_secs;
    match cast_int(value).and_then(|n| i32::try_from(n).ok()) {
        Some(n) if n >= 1 && u32::try_from(n).is_ok_and(|n| n <= max) => Some(n),
        _ => {
            errors.add(
                "history_ttl_secs",
                &format!("must be an integer from 1 to {max}"),
            );
            None
        }
    }
}

fn cast_webhooks(
    value: &Value,
    rules: webhook::Rules,
    errors: &mut ValidationErrors,
) -> Option<Vec<Webhook>> {
    webhook::cast(value, rules)
        .map_err(|message| errors.add("webhooks", &message))
        .ok()
}

/// A list of origins (`scheme://host[:port]`), or one comma-separated string from a form.
fn cast_origins(value: &Value, errors: &mut ValidationErrors) -> Option<Vec<String>> {
    let raw: Vec<&str> = match value {
        Value::Array(items) => {
            let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let Some(strings) = strings else {
                errors.add("allowed_origins", "must be a list of strings");
                return None;
            };
            strings
        }
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        Value::Null => Vec::new(),
        _ => {
            errors.add("allowed_origins", "must be a list of strings");
            return None;
        }
    };
    if raw.len() > ORIGINS_MAX {
        errors.add("allowed_origins", "must have at most 100 entries");
        return None;
    }
    let mut origins = Vec::with_capacity(raw.len());
    for origin in raw {
        match normalize_origin(origin) {
            Some(o) => {
                if !origins.contains(&o) {
                    origins.push(o);
                }
            }
            None => {
                errors.add(
                    "allowed_origins",
                    "each entry must be an origin such as https://example.com",
                );
                return None;
            }
        }
    }
    Some(origins)
}

fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if origin.len() > ORIGIN_MAX_BYTES {
        return None;
    }
    let (scheme, host) = origin.split_once("://")?;
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    (matches!(scheme, "http" | "https") && valid_host).then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RULES: Rules = Rules {
        webhooks: webhook::Rules {
            allow_private_targets: false,
            max_per_app: 10,
        },
        history: history::Bounds {
            max_size: 1000,
            max_ttl_secs: 86_400,
            meta_ttl_secs: 86_400,
            cache_ttl_secs: 1800,
        },
    };

    #[test]
    fn history_settings() {
        let app = params(json!({"name": "chat-app"}))
            .into_new_app(RULES)
            .expect("valid");
        assert_eq!((app.history_size, app.history_ttl_secs), (0, 3600));
        let app = params(json!({"name": "chat-app", "history_size": "50", "history_ttl_secs": 60}))
            .into_new_app(RULES)
            .expect("valid");
        assert_eq!((app.history_size, app.history_ttl_secs), (50, 60));
        let err = params(json!({"name": "chat-app", "history_size": 1001, "history_ttl_secs": 0}))
            .into_new_app(RULES)
            .unwrap_err();
        assert!(err.0.contains_key("history_size") && err.0.contains_key("history_ttl_secs"));
        let err = params(json!({"history_size": -1, "history_ttl_secs": 86_401}))
            .into_changes(RULES)
            .unwrap_err();
        assert!(err.0.contains_key("history_size") && err.0.contains_key("history_ttl_secs"));
        let changes = params(json!({"history_size": 0}))
            .into_changes(RULES)
            .unwrap();
        assert_eq!(
            (changes.history_size, changes.history_ttl_secs),
            (Some(0), None)
        );
    }

    #[test]
    fn quota_settings() {
        let app = params(json!({"name": "quota-app", "max_connections": 500}))
            .into_new_app(RULES)
            .expect("valid");
        assert_eq!(
            (app.max_connections, app.max_triggers_per_sec),
            (Some(500), None)
        );
        let changes = params(json!({"max_connections": null, "max_triggers_per_sec": "0"}))
            .into_changes(RULES)
            .unwrap();
        assert_eq!(
            (changes.max_connections, changes.max_triggers_per_sec),
            (Some(None), Some(Some(0)))
        );
        let err = params(json!({"max_connections": -1, "max_triggers_per_sec": "many"}))
            .into_changes(RULES)
            .unwrap_err();
        assert!(
            err.0.contains_key("max_connections") && err.0.contains_key("max_triggers_per_sec")
        );
        let untouched = params(json!({})).into_changes(RULES).unwrap();
        assert_eq!(untouched.max_connections, None);
    }

    fn params(v: Value) -> AppParams {
        match v {
            Value::Object(map) => AppParams::from_map(map),
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn create_generates_slug_and_credentials() {
        let app = params(json!({"name": "Foo App", "key": "mine", "secret": "mine"}))
            .into_new_app(RULES)
            .expect("valid");
        assert_eq!(app.slug, "foo-app");
        assert!(app.active);
        assert_ne!(app.key, "mine");
        assert_ne!(app.secret, "mine");
        assert_ne!(app.key, app.secret);
        assert_eq!(app.secret.len(), 36);
    }

    #[test]
    fn name_rules() {
        let err = params(json!({"name": "abc"}))
            .into_new_app(RULES)
            .unwrap_err();
        assert_eq!(err.0["name"], vec!["should be at least 5 character(s)"]);
        let err = params(json!({})).into_new_app(RULES).unwrap_err();
        assert_eq!(err.0["name"], vec!["can't be blank"]);
        let err = params(json!({"name": "!!!!!!"}))
            .into_new_app(RULES)
            .unwrap_err();
        assert!(err.0.contains_key("name"));
        let err = params(json!({"name": "a\u{0}bcdef"}))
            .into_new_app(RULES)
            .unwrap_err();
        assert!(err.0.contains_key("name"));
        let long = "x".repeat(256);
        assert!(params(json!({ "name": long })).into_new_app(RULES).is_err());
    }

    #[test]
    fn casts_form_values() {
        let app = params(json!({"name": "shop-app", "active": "false",
                                "allowed_origins": "https://A.example.com/, http://b.test:8080"}))
        .into_new_app(RULES)
        .expect("valid");
        assert!(!app.active);
        assert_eq!(
            app.allowed_origins,
            vec!["https://a.example.com", "http://b.test:8080"]
        );
        let err = params(json!({"name": "shop-app", "active": "maybe",
                                "allowed_origins": ["ftp://x"]}))
        .into_new_app(RULES)
        .unwrap_err();
        assert!(err.0.contains_key("active") && err.0.contains_key("allowed_origins"));
    }

    #[test]
    fn origin_check() {
        let mut app = App {
            id: 1,
            name: "n".into(),
            slug: "n".into(),
            key: "k".into(),
            secret: "s".into(),
            active: true,
            client_events: true,
            allowed_origins: vec![],
            max_presence_members: crate::domain::app::DEFAULT_PRESENCE_MEMBERS,
            webhooks: Vec::new(),
            history_size: 0,
            history_ttl_secs: crate::domain::app::DEFAULT_HISTORY_TTL_SECS,
            max_connections: None,
            max_triggers_per_sec: None,
            webhook_max_queue: None,
            inserted_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert!(app.origin_allowed(None));
        app.allowed_origins = vec!["https://a.com".into()];
        assert!(app.origin_allowed(Some("https://A.com")));
        assert!(!app.origin_allowed(Some("https://b.com")));
        assert!(!app.origin_allowed(None));
    }
}
