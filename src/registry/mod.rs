//! The app registry: who may trigger events and whose topics may be joined.
//!
//! One trait, [`AppRegistry`], with a Postgres and an SQLite implementation chosen by the URL
//! scheme in [`connect`]. There is no in-memory fallback: a database that cannot be reached or
//! migrated is a startup error.

/// The `apps` columns in [`App`] order, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, name, slug, key, secret, active, client_events, allowed_origins, max_presence_members, webhooks, history_size, history_ttl_secs, max_connections, max_triggers_per_sec, webhook_max_queue, inserted_at, updated_at"
    };
}

mod cached;
mod postgres;
mod sqlite;
mod timed;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::DatabaseConfig;
use crate::domain::app::{App, AppChanges, NewApp};

pub use cached::{AppCache, CachedRegistry};
pub use postgres::PgRegistry;
pub use sqlite::SqliteRegistry;
pub use timed::TimedRegistry;

/// Errors of the registry layer. Mapped once to HTTP statuses in `http::error`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A unique index refused the write; `field` is the user-facing field name.
    #[error("{field} has already been taken")]
    Conflict { field: &'static str },
    /// The database could not be reached or answered with an error.
    #[error("database unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The embedded migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row that cannot be represented (for example, broken JSON).
    #[error("corrupt row in apps: {0}")]
    Corrupt(String),
    /// The database did not answer within `database.query_timeout_secs`.
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
}

/// The persistent store of apps.
///
/// Contract, for every implementation:
/// - slugs, names and keys are unique; a write that would break that returns
///   [`RegistryError::Conflict`] naming the field, and changes nothing;
/// - `update` and `rotate_secret` set `updated_at`; `inserted_at` never changes;
/// - lookups are by slug or key and never return a deleted app;
/// - every method is a single statement, so concurrent callers never see half a write
///   (`start_session` is two independent ones: forget expired sessions, store the new one);
/// - console sessions are stored by the hash of their token, and a session is valid from
///   `start_session` until its expiry or `end_session`, on every node.
#[async_trait]
pub trait AppRegistry: Send + Sync + 'static {
    /// Applies the embedded migrations for this backend.
    async fn migrate(&self) -> Result<(), RegistryError>;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), RegistryError>;
    async fn list(&self) -> Result<Vec<App>, RegistryError>;
    async fn by_slug(&self, slug: &str) -> Result<Option<Arc<App>>, RegistryError>;
    async fn by_key(&self, key: &str) -> Result<Option<Arc<App>>, RegistryError>;
    async fn insert(&self, app: &NewApp) -> Result<App, RegistryError>;
    /// `None` when no app has this slug.
    async fn update(&self, slug: &str, changes: &AppChanges) -> Result<Option<App>, RegistryError>;
    /// Replaces the secret; `None` when no app has this slug.
    async fn rotate_secret(&self, slug: &str, secret: &str) -> Result<Option<App>, RegistryError>;
    /// `false` when no app has this slug.
    async fn delete(&self, slug: &str) -> Result<bool, RegistryError>;
    /// Stores a console session valid until `expires_at` (Unix seconds).
    async fn start_session(&self, token_hash: &str, expires_at: i64) -> Result<(), RegistryError>;
    /// Whether the session exists and has not expired at `now` (Unix seconds).
    async fn session_valid(&self, token_hash: &str, now: i64) -> Result<bool, RegistryError>;
    async fn end_session(&self, token_hash: &str) -> Result<(), RegistryError>;
}

/// Opens the registry named by `config.url`, every call bounded by
/// `database.query_timeout_secs`.
///
/// # Errors
/// The database cannot be reached, or the URL names no supported backend.
pub async fn connect(config: &DatabaseConfig) -> Result<Arc<dyn AppRegistry>, RegistryError> {
    let acquire_timeout = Duration::from_secs(config.acquire_timeout_secs);
    let backend: Arc<dyn AppRegistry> = if config.url.starts_with("sqlite:") {
        Arc::new(
            SqliteRegistry::connect(&config.url, config.max_connections, acquire_timeout).await?,
        )
    } else {
        Arc::new(PgRegistry::connect(&config.url, config.max_connections, acquire_timeout).await?)
    };
    Ok(Arc::new(TimedRegistry::new(
        backend,
        Duration::from_secs(config.query_timeout_secs),
    )))
}

/// Maps a unique-index violation to the field the client can fix.
fn conflict_field(err: &sqlx::Error) -> Option<&'static str> {
    let db = err.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    // Postgres names the index; SQLite says "UNIQUE constraint failed: apps.<column>".
    let text = db
        .constraint()
        .map_or_else(|| db.message().to_owned(), str::to_owned);
    // The slug is made from the name, so a taken slug is a taken name for the client.
    Some(if text.contains("apps_key") || text.contains("apps.key") {
        "key"
    } else {
        "name"
    })
}

/// The `webhooks` column: the list as JSON text, in both backends.
fn webhooks_json(webhooks: &[crate::domain::webhook::Webhook]) -> String {
    serde_json::to_string(webhooks)
        .unwrap_or_else(|e| unreachable!("strings and names always serialize: {e}"))
}

fn write_error(err: sqlx::Error) -> RegistryError {
    match conflict_field(&err) {
        Some(field) => RegistryError::Conflict { field },
        None => RegistryError::Unavailable(err),
    }
}
