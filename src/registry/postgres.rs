//! [`AppRegistry`] on Postgres: `allowed_origins` is a `TEXT[]`, timestamps are `TIMESTAMPTZ`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{AppRegistry, RegistryError, write_error};
use crate::domain::app::{App, AppChanges, NewApp, is_valid_key, is_valid_slug};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgRegistry {
    pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    name: String,
    slug: String,
    key: String,
    secret: String,
    active: bool,
    client_events: bool,
    max_presence_members: i32,
    allowed_origins: Vec<String>,
    webhooks: String,
    history_size: i32,
    history_ttl_secs: i32,
    max_connections: Option<i32>,
    max_triggers_per_sec: Option<i32>,
    webhook_max_queue: Option<i32>,
    inserted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<Row> for App {
    type Error = RegistryError;

    fn try_from(r: Row) -> Result<App, RegistryError> {
        let webhooks = serde_json::from_str(&r.webhooks)
            .map_err(|e| RegistryError::Corrupt(format!("app {}: webhooks: {e}", r.id)))?;
        Ok(App {
            id: r.id,
            name: r.name,
            slug: r.slug,
            key: r.key,
            secret: r.secret,
            active: r.active,
            client_events: r.client_events,
            max_presence_members: r.max_presence_members,
            allowed_origins: r.allowed_origins,
            webhooks,
            history_size: r.history_size,
            history_ttl_secs: r.history_ttl_secs,
            max_connections: r.max_connections,
            max_triggers_per_sec: r.max_triggers_per_sec,
            webhook_max_queue: r.webhook_max_queue,
            inserted_at: r.inserted_at,
            updated_at: r.updated_at,
        })
    }
}

impl PgRegistry {
    /// Connects eagerly, so a wrong URL fails at startup rather than on the first request.
    ///
    /// # Errors
    /// The URL cannot be parsed or the server cannot be reached.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<PgRegistry, RegistryError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(PgRegistry { pool })
    }

    async fn one(&self, sql: &'static str, arg: &str) -> Result<Option<App>, RegistryError> {
        let row: Option<Row> = sqlx::query_as(sql)
            .bind(arg.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(App::try_from).transpose()
    }
}

#[async_trait]
impl AppRegistry for PgRegistry {
    async fn migrate(&self) -> Result<(), RegistryError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<App>, RegistryError> {
        let rows: Vec<Row> =
            sqlx::query_as(concat!("SELECT ", columns!(), " FROM apps ORDER BY id"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(App::try_from).collect()
    }

    async fn by_slug(&self, slug: &str) -> Result<Option<Arc<App>>, RegistryError> {
        if !is_valid_slug(slug) {
            return Ok(None);
        }
        self.one(
            concat!("SELECT ", columns!(), " FROM apps WHERE slug = $1"),
            slug,
        )
        .await
        .map(|app| app.map(Arc::new))
    }

    async fn by_key(&self, key: &str) -> Result<Option<Arc<App>>, RegistryError> {
        if !is_valid_key(key) {
            return Ok(None);
        }
        self.one(
            concat!("SELECT ", columns!(), " FROM apps WHERE key = $1"),
            key,
        )
        .await
        .map(|app| app.map(Arc::new))
    }

    async fn insert(&self, app: &NewApp) -> Result<App, RegistryError> {
        let now = Utc::now();
        let row: Row = sqlx::query_as(concat!(
            "INSERT INTO apps (name, slug, key, secret, active, allowed_origins, inserted_at, updated_at, client_events, max_presence_members, webhooks, history_size, history_ttl_secs, max_connections, max_triggers_per_sec, webhook_max_queue) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING ",
            columns!()
        ))
        .bind(app.name.clone())
        .bind(app.slug.clone())
        .bind(app.key.clone())
        .bind(app.secret.clone())
        .bind(app.active)
        .bind(app.allowed_origins.clone())
        .bind(now)
        .bind(app.client_events)
        .bind(app.max_presence_members)
        .bind(super::webhooks_json(&app.webhooks))
        .bind(app.history_size)
        .bind(app.history_ttl_secs)
        .bind(app.max_connections)
        .bind(app.max_triggers_per_sec)
        .bind(app.webhook_max_queue)
        .fetch_one(&self.pool)
        .await
        .map_err(write_error)?;
        row.try_into()
    }

    async fn update(&self, slug: &str, changes: &AppChanges) -> Result<Option<App>, RegistryError> {
        if !is_valid_slug(slug) {
            return Ok(None);
        }
        let (name, new_slug) = changes.name_and_slug.clone().unzip();
        let row: Option<Row> = sqlx::query_as(concat!(
            "UPDATE apps SET name = COALESCE($2, name), slug = COALESCE($3, slug), \
             active = COALESCE($4, active), allowed_origins = COALESCE($5, allowed_origins), \
             updated_at = $6, client_events = COALESCE($7, client_events), \
             max_presence_members = COALESCE($8, max_presence_members), \
             webhooks = COALESCE($9, webhooks), history_size = COALESCE($10, history_size), \
             history_ttl_secs = COALESCE($11, history_ttl_secs), \
             max_connections = CASE WHEN $12 THEN $13 ELSE max_connections END, \
             max_triggers_per_sec = CASE WHEN $14 THEN $15 ELSE max_triggers_per_sec END, \
             webhook_max_queue = CASE WHEN $16 THEN $17 ELSE webhook_max_queue END \
             WHERE slug = $1 RETURNING ",
            columns!()
        ))
        .bind(slug.to_owned())
        .bind(name)
        .bind(new_slug)
        .bind(changes.active)
        .bind(changes.allowed_origins.clone())
        .bind(Utc::now())
        .bind(changes.client_events)
        .bind(changes.max_presence_members)
        .bind(changes.webhooks.as_deref().map(super::webhooks_json))
        .bind(changes.history_size)
        .bind(changes.history_ttl_secs)
        .bind(changes.max_connections.is_some())
        .bind(changes.max_connections.flatten())
        .bind(changes.max_triggers_per_sec.is_some())
        .bind(changes.max_triggers_per_sec.flatten())
        .bind(changes.webhook_max_queue.is_some())
        .bind(changes.webhook_max_queue.flatten())
        .fetch_optional(&self.pool)
        .await
        .map_err(write_error)?;
        row.map(App::try_from).transpose()
    }

    async fn rotate_secret(&self, slug: &str, secret: &str) -> Result<Option<App>, RegistryError> {
        if !is_valid_slug(slug) {
            return Ok(None);
        }
        let row: Option<Row> = sqlx::query_as(concat!(
            "UPDATE apps SET secret = $2, updated_at = $3 WHERE slug = $1 RETURNING ",
            columns!()
        ))
        .bind(slug.to_owned())
        .bind(secret.to_owned())
        .bind(Utc::now())
        .fetch_optional(&self.pool)
        .await?;
        row.map(App::try_from).transpose()
    }

    async fn delete(&self, slug: &str) -> Result<bool, RegistryError> {
        if !is_valid_slug(slug) {
            return Ok(false);
        }
        let done = sqlx::query("DELETE FROM apps WHERE slug = $1")
            .bind(slug.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn start_session(&self, token_hash: &str, expires_at: i64) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(chrono::Utc::now().timestamp())
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO console_sessions (token_hash, expires_at) VALUES ($1, $2)")
            .bind(token_hash.to_owned())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_valid(&self, token_hash: &str, now: i64) -> Result<bool, RegistryError> {
        let found: Option<(i64,)> = sqlx::query_as(
            "SELECT expires_at FROM console_sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash.to_owned())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn end_session(&self, token_hash: &str) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
