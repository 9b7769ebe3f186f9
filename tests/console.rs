//! The web console over plain HTTP, against real Postgres and Redis: sessions shared by every
//! node and ended by logout, cookie flags, CSRF on every change, failed logins slowed and
//! counted, the switch that turns it off, and the debug stream: nothing on Redis while nobody
//! watches, records from other nodes while somebody does, capped at `console.debug_rate`.
//! The whole flow in a real browser is in `tests/browser.rs`.

mod common;

use std::time::{Duration, Instant};

use common::redis::{RedisServer, cli};
use common::{
    Db, TestApp, create_app, fresh_postgres_database, parse_metrics, phx, spawn_app_with,
    spawn_config, test_config, trigger_form,
};
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The value of `name` in a response's `Set-Cookie` headers, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|header| {
            let value = header.strip_prefix(&format!("{name}="))?;
            let value = value.split(';').next().unwrap_or_default();
            Some((value.to_owned(), header.to_owned()))
        })
}

fn attribute(html: &str, before: &str) -> String {
    let start = html.find(before).expect(before) + before.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A logged-in console: the session cookie and the page's CSRF token.
struct Console {
    base: String,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

/// The login form's CSRF token and its cookie.
async fn login_form(base: &str, http: &reqwest::Client) -> (String, String) {
    let page = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .expect("login page");
    assert_eq!(page.status(), 200);
    let (token, _) = set_cookie(&page, "pushlite_login").expect("login cookie");
    let html = page.text().await.expect("html");
    assert_eq!(attribute(&html, "name=\"csrf\" value=\""), token);
    (token.clone(), format!("pushlite_login={token}"))
}

async fn try_login(base: &str, password: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let http = client();
    let (csrf, cookie) = login_form(base, &http).await;
    let mut request = http
        .post(format!("{base}/console/login"))
        .header(COOKIE, cookie)
        .form(&[
            ("username", common::ADMIN.0),
            ("password", password),
            ("csrf", &csrf),
        ]);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("login")
}

async fn login(node: &TestApp) -> Console {
    let response = try_login(&node.base, common::ADMIN.1, &[]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console");
    let (token, _) = set_cookie(&response, "pushlite_session").expect("session cookie");
    let mut console = Console {
        base: node.base.clone(),
        http: client(),
        cookie: format!("pushlite_session={token}"),
        csrf: String::new(),
    };
    let page = console.get("/console").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    console.csrf = attribute(&html, "name=\"csrf-token\" content=\"");
    console
}

impl Console {
    fn on(&self, node: &TestApp) -> Console {
        Console {
            base: node.base.clone(),
            http: client(),
            cookie: self.cookie.clone(),
            csrf: self.csrf.clone(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("GET")
    }

    async fn post(&self, path: &str, csrf: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .json(body);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send().await.expect("POST")
    }
}

/// A Server-Sent Events reader over a streaming response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(console: &Console, slug: &str) -> Events {
        let response = console
            .http
            .get(format!("{}/console/api/apps/{slug}/debug", console.base))
            .header(COOKIE, &console.cookie)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .expect("debug stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (`event` name, or `message`, and its data), within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if block.starts_with(':') {
                    continue;
                }
                let mut name = "message".to_owned();
                let mut data = Value::Null;
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(d).expect("JSON data");
                    }
                }
                return Some((name, data));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("stream readable")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next record of `kind`, skipping others, within `wait`.
    async fn record(&mut self, kind: &str, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (name, data) = self.next(left).await?;
            if name == "message" && data["kind"] == kind {
                return Some(data);
            }
        }
    }
}

fn counter(metrics: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

/// Calls of one Redis command so far.
async fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info = cli(redis.port, &["info", "commandstats"]).await;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Two nodes on one fresh Postgres database and `redis`.
async fn two_nodes(redis: &RedisServer, adjust: impl Fn(&mut pushlite::Config)) -> Vec<TestApp> {
    let database = fresh_postgres_database().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut config = test_config(database.clone());
        config.redis.url = Some(redis.url());
        adjust(&mut config);
        nodes.push(spawn_config(config, None).await);
    }
    nodes
}

#[tokio::test]
async fn sessions_hold_on_every_node_until_logout_and_every_change_needs_the_csrf_token() {
    let redis = RedisServer::start().await;
    let nodes = two_nodes(&redis, |config| config.console.login_delay_ms = 300).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // Nothing without a session: pages send to the login form, the API says 401 (and never
    // asks for Basic credentials, which would pop up a browser dialog).
    let anonymous = client();
    for page in [
        "/console",
        "/console/nodes",
        "/console/apps/new",
        "/console/apps/foo",
    ] {
        let response = anonymous.get(a.url(page)).send().await.expect("page");
        assert_eq!(response.status(), 303, "{page}");
        assert_eq!(response.headers()["location"], "/console/login");
    }
    let api = anonymous
        .get(a.url("/console/api/apps"))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 401);
    assert!(api.headers().get("www-authenticate").is_none());

    // A failed login: refused after the delay, counted.
    let started = Instant::now();
    let failed = try_login(&a.base, "wrong", &[]).await;
    assert_eq!(failed.status(), 401);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(set_cookie(&failed, "pushlite_session").is_none());
    // A login form posted without its own token (from another site) is refused too.
    let forged = client()
        .post(a.url("/console/login"))
        .form(&[("username", common::ADMIN.0), ("password", common::ADMIN.1)])
        .send()
        .await
        .expect("login");
    assert_eq!(forged.status(), 403);
    assert!(set_cookie(&forged, "pushlite_session").is_none());

    // The cookie: HttpOnly, SameSite=Strict, and Secure when the proxy says https.
    let plain = try_login(&a.base, common::ADMIN.1, &[]).await;
    let (_, header) = set_cookie(&plain, "pushlite_session").expect("cookie");
    assert!(header.contains("; Path=/console; Max-Age=28800; HttpOnly; SameSite=Strict"));
    assert!(!header.contains("Secure"), "{header}");
    let https = try_login(&a.base, common::ADMIN.1, &[("x-forwarded-proto", "https")]).await;
    let (_, header) = set_cookie(&https, "pushlite_session").expect("cookie");
    assert!(
        header.ends_with("; HttpOnly; SameSite=Strict; Secure"),
        "{header}"
    );
    let metrics = parse_metrics(&a.metrics_text().await);
    assert_eq!(
        counter(&metrics, "pushlite_console_logins_total{result=\"failed\"}"),
        1.0
    );
    assert_eq!(
        counter(&metrics, "pushlite_console_logins_total{result=\"ok\"}"),
        2.0
    );

    // A session from node A works on node B.
    let console = login(a).await;
    let on_b = console.on(b);
    assert_eq!(on_b.get("/console/api/apps").await.status(), 200);
    let page = on_b.get("/console/nodes").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // Every change needs the CSRF token; without it nothing is written.
    let app = json!({"app": {"name": "csrf check"}});
    let refused = on_b.post("/console/api/apps", None, &app).await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["errors"]["detail"], "missing or wrong CSRF token");
    let wrong = on_b
        .post("/console/api/apps", Some(&"0".repeat(64)), &app)
        .await;
    assert_eq!(wrong.status(), 403);
    let listed: Value = on_b
        .get("/console/api/apps")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["data"], json!([]));
    let created = on_b
        .post("/console/api/apps", Some(&console.csrf), &app)
        .await;
    assert_eq!(created.status(), 201);

    // Logging out on node A ends the session on node B too.
    let logout = console
        .http
        .post(a.url("/console/logout"))
        .header(COOKIE, &console.cookie)
        .form(&[("csrf", console.csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), 303);
    assert_eq!(on_b.get("/console/api/apps").await.status(), 401);
    assert_eq!(on_b.get("/console").await.status(), 303);
}

/// Nobody watching: not one Redis command more than the events themselves. Watching from
/// node A: what happens on node B arrives, capped at `console.debug_rate` a second, with the
/// skipped ones counted; the watch ends with the viewer.
#[tokio::test]
async fn the_debug_stream_is_free_unwatched_and_capped_when_watched() {
    let redis = RedisServer::start().await;
    let nodes = two_nodes(&redis, |config| config.console.debug_rate = 5).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let app = create_app(a, json!({"name": "watched"})).await;
    let slug = app["slug"].as_str().unwrap().to_owned();
    let fire = |text: String| {
        let app = app.clone();
        async move {
            let payload = json!({ "text": text }).to_string();
            let fields = [
                ("topic", "chat"),
                ("event", "msg"),
                ("scope", "public"),
                ("payload", payload.as_str()),
            ];
            assert_eq!(trigger_form(b, &app, &fields).await.status(), 200);
        }
    };

    // Unwatched: a socket joins and leaves, 20 events go out: exactly 20 PUBLISHes.
    let before = calls(&redis, "publish").await;
    let mut socket = phx::connect(b.addr, phx::Vsn::V2, "", None).await;
    socket.join(&format!("public:{slug}")).await;
    for n in 0..20 {
        fire(format!("unwatched {n}")).await;
    }
    drop(socket);
    assert_eq!(calls(&redis, "publish").await - before, 20);
    for node in [a, b] {
        let metrics = parse_metrics(&node.metrics_text().await);
        assert!(
            !metrics
                .keys()
                .any(|k| k.starts_with("pushlite_console_debug_records_total")),
            "no record was made"
        );
    }

    // Watched from node A.
    let console = login(a).await;
    let mut events = Events::open(&console, &slug).await;
    let (name, hello) = events.next(Duration::from_secs(5)).await.expect("hello");
    assert_eq!(name, "hello");
    assert_eq!(hello["rate_per_node"], 5);
    // Node B hears of the watch within a few milliseconds: its first record arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        assert!(Instant::now() < deadline, "node B never sent a record");
        fire("first".to_owned()).await;
        if let Some(record) = events.record("event", Duration::from_millis(200)).await {
            break record;
        }
    };
    assert_ne!(first["node"], hello["node"], "the record came from node B");
    assert_eq!(first["channel"], "public");
    assert_eq!(first["event"], "chat:msg");
    assert_eq!(first["data"], "{\"text\":\"first\"}");

    // A fresh second, and one record to carry anything the retries above had skipped.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fire("sync".to_owned()).await;
    loop {
        let record = events
            .record("event", Duration::from_secs(5))
            .await
            .expect("sync");
        if record["data"] == "{\"text\":\"sync\"}" {
            break;
        }
    }
    // A burst of 40 within a second or two: at most 5 a second get through, the rest are
    // skipped, and the count arrives with the next record that passes.
    for n in 0..40 {
        fire(format!("burst {n}")).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fire("after".to_owned()).await;
    let (mut shown, mut skipped) = (0, 0);
    loop {
        let record = events
            .record("event", Duration::from_secs(5))
            .await
            .expect("the record after the burst");
        shown += 1;
        skipped += record["skipped"].as_u64().unwrap_or(0);
        if record["data"] == "{\"text\":\"after\"}" {
            break;
        }
    }
    assert_eq!(shown + skipped, 41, "every event is shown or counted");
    assert!(skipped >= 25, "capped: {shown} shown, {skipped} skipped");
    let metrics = parse_metrics(&b.metrics_text().await);
    assert_eq!(
        counter(
            &metrics,
            "pushlite_console_debug_records_total{outcome=\"skipped\"}"
        ),
        skipped as f64
    );

    // Joins, refusals and disconnects, with their reasons.
    let mut socket = phx::connect(b.addr, phx::Vsn::V2, "", None).await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // a fresh second's budget
    let (_, reply) = socket.join(&format!("private:{slug}")).await;
    assert_eq!(reply.payload["status"], "error");
    let refused = events
        .record("refused", Duration::from_secs(5))
        .await
        .expect("refused");
    assert_eq!(refused["channel"], "private");
    assert_eq!(refused["reason"], "unauthorized");
    assert_eq!(refused["protocol"], "phoenix");
    socket.join(&format!("public:{slug}")).await;
    assert!(
        events
            .record("join", Duration::from_secs(5))
            .await
            .is_some()
    );
    drop(socket);
    let gone = events
        .record("disconnect", Duration::from_secs(5))
        .await
        .expect("disconnect");
    assert_eq!(gone["reason"], "client");

    // The viewer leaves: the watch ends on every node, and events cost one PUBLISH again.
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut quiet = 0;
    while quiet < 10 {
        assert!(Instant::now() < deadline, "node B kept sending records");
        let before = calls(&redis, "publish").await;
        fire("unwatched again".to_owned()).await;
        quiet = if calls(&redis, "publish").await - before == 1 {
            quiet + 1
        } else {
            0
        };
    }
}

#[tokio::test]
async fn the_console_works_embedded_and_can_be_switched_off() {
    // SQLite and the in-process bus, as `make run` has it.
    let node = spawn_app_with(Db::Sqlite, |config| config.console.debug_max_viewers = 1).await;
    let console = login(&node).await;
    let app = create_app(&node, json!({"name": "embedded"})).await;
    let slug = app["slug"].as_str().unwrap();
    let mut events = Events::open(&console, slug).await;
    events.next(Duration::from_secs(5)).await.expect("hello");
    let second = console
        .get(&format!("/console/api/apps/{slug}/debug"))
        .await;
    assert_eq!(second.status(), 429, "console.debug_max_viewers is 1");
    // A cookie of the right shape that this cluster did not sign is no session.
    let forged = Console {
        cookie: format!("pushlite_session={}", "ab".repeat(48)),
        ..console.on(&node)
    };
    assert_eq!(forged.get("/console/api/apps").await.status(), 401);
    let sent = console
        .post(
            &format!("/console/api/apps/{slug}/events"),
            Some(&console.csrf),
            &json!({"scope": "public", "topic": "t", "event": "e", "payload": "{\"a\":1}"}),
        )
        .await;
    assert_eq!(sent.status(), 200);
    let record = events
        .record("console_event", Duration::from_secs(5))
        .await
        .expect("record");
    assert_eq!(record["data"], "{\"a\":1}");
    // A bad test event is a 422 naming the problem.
    let bad = console
        .post(
            &format!("/console/api/apps/{slug}/events"),
            Some(&console.csrf),
            &json!({"scope": "public", "topic": "t", "event": "e", "payload": "[1]"}),
        )
        .await;
    assert_eq!(bad.status(), 422);
    let stats: Value = console
        .get(&format!("/console/api/apps/{slug}/stats"))
        .await
        .json()
        .await
        .expect("JSON");
    let buckets = stats["data"]["series"]["buckets"]
        .as_array()
        .expect("series");
    assert_eq!(buckets.len(), 30);
    let events_total: u64 = buckets.iter().map(|b| b["events"].as_u64().unwrap()).sum();
    assert_eq!(events_total, 1, "the chart counts the test event");
    for (asset, kind) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    ] {
        let response = client()
            .get(node.url(&format!("/console/assets/{asset}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], kind);
    }

    let off = spawn_app_with(Db::Sqlite, |config| config.console.enabled = false).await;
    for path in ["/console", "/console/login", "/console/assets/console.js"] {
        let response = client().get(off.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 404, "{path}");
    }
    let admin = off
        .admin(reqwest::Method::GET, "/api/admin/apps")
        .send()
        .await
        .expect("admin");
    assert_eq!(admin.status(), 200, "the admin API does not depend on it");
}
