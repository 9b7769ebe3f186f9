//! What the bench targets (`benches/soak.rs`, `benches/scale.rs`) share beyond the test harness.

use serde_json::Value;

/// A number from the environment variable `name`, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The credentials of an app the admin API created, for triggers and Pusher sockets.
#[derive(Clone)]
pub struct App {
    pub id: String,
    pub slug: String,
    pub key: String,
    pub secret: String,
}

impl App {
    /// From the `data` object of `POST /api/admin/apps`.
    pub fn from_created(created: &Value) -> App {
        let text = |name: &str| created[name].as_str().expect("app field").to_owned();
        App {
            id: created["id"].to_string(),
            slug: text("slug"),
            key: text("key"),
            secret: text("secret"),
        }
    }
}
