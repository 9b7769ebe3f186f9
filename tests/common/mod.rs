//! Test harness: boots real nodes on port 0 against a real database.
//!
//! Postgres comes from `DATABASE_URL` (a server `make test` provides or starts); each test gets
//! a fresh database on it. SQLite gets a fresh file in a temporary directory.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod bench;
pub mod phx;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod pusher;
pub mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use pushlite::Config;
use pushlite::Server;
use sqlx::Connection;

pub const ADMIN: (&str, &str) = ("admin-user", "admin-password-for-tests");

#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub fn postgres_server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL must point at a Postgres server: run the suite with `make test`, which provides one")
    })
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!("REDIS_URL must point at a Redis server: run the suite with `make test`, which provides one")
    })
}

/// Creates an empty database on the test Postgres server and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let server = postgres_server_url();
    let name = format!("pushlite_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to the test Postgres server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    with_database(&server, &name)
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..host_end])
}

/// A database URL of the given kind, freshly created; keep the returned guard alive.
pub async fn fresh_database(db: Db) -> (String, Option<tempfile::TempDir>) {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}/pushlite.db", dir.path().display());
            (url, Some(dir))
        }
        Db::Postgres => (fresh_postgres_database().await, None),
    }
}

pub fn test_config(database_url: String) -> Config {
    let mut config = Config::default();
    config.server.port = 0;
    config.database.url = database_url;
    config.admin.username = ADMIN.0.to_owned();
    config.admin.password = ADMIN.1.to_owned();
    // Every test client connects from 127.0.0.1: one address, many users. The limit itself
    // is tested in tests/limits.rs.
    config.limits.upgrades_per_sec_per_ip = 0;
    config
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
    }
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: Db, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let (url, dir) = fresh_database(db).await;
    let mut config = test_config(url);
    adjust(&mut config);
    spawn_config(config, dir).await
}

/// Node logs go through the test writer: libtest shows them only for a failing test.
fn init_test_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

pub async fn spawn_config(config: Config, dir: Option<tempfile::TempDir>) -> TestApp {
    init_test_logs();
    let server = Server::build(config.clone()).await.expect("server builds");
    let addr = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
        config,
        _dir: dir,
    }
}

/// `count` in-process nodes sharing one fresh Postgres database and the Redis at `redis`.
pub async fn cluster(count: usize, redis: &str) -> Vec<TestApp> {
    let database = fresh_postgres_database().await;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let mut config = test_config(database.clone());
        config.redis.url = Some(redis.to_owned());
        nodes.push(spawn_config(config, None).await);
    }
    nodes
}

/// Creates an app through the admin API; returns its `data` object.
pub async fn create_app(app: &TestApp, body: serde_json::Value) -> serde_json::Value {
    let response = app
        .admin(reqwest::Method::POST, "/api/admin/apps")
        .json(&serde_json::json!({ "app": body }))
        .send()
        .await
        .expect("create app");
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.expect("JSON");
    body["data"].clone()
}

/// Posts an event as the article's Rails client does (a form with `payload` as JSON text).
pub async fn trigger_form(
    app: &TestApp,
    data: &serde_json::Value,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let slug = data["slug"].as_str().expect("slug");
    app.http
        .post(app.url(&format!("/api/apps/{slug}/events")))
        .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
        .form(fields)
        .send()
        .await
        .expect("trigger")
}

/// Runs a real client program (a Node or Python script) to completion, at most 60 s, and
/// returns what it printed on stdout as JSON; its stderr is shown when it fails.
pub async fn run_client(program: &str, args: &[String], dir: &str) -> serde_json::Value {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the client finishes within 60 s")
        .expect("the client runs");
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON results on stdout")
}

/// `name{sorted labels}` → value, from the text exposition.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = match key.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => key.to_owned(),
        };
        series.insert(key, value.parse().unwrap_or(f64::NAN));
    }
    series
}

impl TestApp {
    /// The node's `/metrics` exposition, as text.
    pub async fn metrics_text(&self) -> String {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape");
        response.text().await.expect("exposition")
    }

    /// The node's `/metrics`, parsed with [`parse_metrics`].
    pub async fn metrics(&self) -> HashMap<String, f64> {
        parse_metrics(&self.metrics_text().await)
    }
}
