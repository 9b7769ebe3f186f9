//! Webhooks against real nodes, Redis, Postgres and a real receiver that checks every request
//! with the `pusher` Node SDK's `webhook()` validator: occupancy decided once across three
//! nodes with pusher-js and phoenix.js, a reload inside the leave delay, a receiver that is down
//! then back, a node killed with `kill -9` holding undelivered events, and URL validation.
//! Each Redis test has its own `redis-server`: the queue is cluster-wide by design.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::process::NodeProcess;
use common::pusher;
use common::redis::{RedisServer, free_port};
use common::{
    Db, TestApp, create_app, fresh_postgres_database, run_client, spawn_app_with, spawn_config,
    test_config,
};
use pushlite::Config;
use pushlite::domain::signature;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
const ALL_EVENTS: [&str; 6] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// The receiver: `node webhook_receiver.mjs`, one JSON line per request it got.
struct Receiver {
    port: u16,
    lines: mpsc::UnboundedReceiver<Value>,
    _child: tokio::process::Child,
}

impl Receiver {
    /// Starts on `port` (0: any), validating with the app's key and secret.
    async fn start(port: u16, app: &Value) -> Receiver {
        let mut child = tokio::process::Command::new("node")
            .arg("webhook_receiver.mjs")
            .arg(port.to_string())
            .arg(app["key"].as_str().expect("key"))
            .arg(app["secret"].as_str().expect("secret"))
            .current_dir(JS_DIR)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (make test installs the JS clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        let hello = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("the receiver starts")
            .expect("a first line");
        let port = u16::try_from(hello["listening"].as_u64().expect("listening port")).unwrap();
        Receiver {
            port,
            lines,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pusher/webhooks", self.port)
    }

    /// Every event received until `done` holds for them (asserted within `wait`). Each event
    /// carries its request's id as `_id`; every request must have passed the SDK's validator.
    async fn until(&mut self, wait: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        while !done(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(request)) => events.extend(check(&request)),
                _ => panic!("webhooks still missing after {wait:?}; got {events:?}"),
            }
        }
        events
    }

    /// Whatever arrives within `wait`.
    async fn quiet(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        while let Ok(Some(request)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            events.extend(check(&request));
        }
        events
    }
}

/// A request's events, each tagged with the request's id, after checking it was valid.
fn check(request: &Value) -> Vec<Value> {
    assert_eq!(
        request["valid"], true,
        "the Pusher SDK refused a webhook: {request}"
    );
    assert!(
        request["id"].as_str().is_some_and(|id| id.len() == 32),
        "X-Pushlite-Webhook-Id: {request}"
    );
    let mut events = request["events"].as_array().cloned().unwrap_or_default();
    for event in &mut events {
        event["_id"] = request["id"].clone();
    }
    events
}

fn count(events: &[Value], name: &str, channel: &str) -> usize {
    events
        .iter()
        .filter(|e| e["name"] == name && e["channel"] == channel)
        .count()
}

fn hooks(url: &str, events: &[&str]) -> Value {
    json!([{ "url": url, "events": events }])
}

/// Test settings: private targets allowed (the receiver is on loopback), short delays.
fn adjust(config: &mut Config) {
    config.webhooks.allow_private_targets = true;
    config.webhooks.leave_delay_ms = 300;
    config.webhooks.backoff_initial_ms = 100;
    config.webhooks.backoff_max_ms = 400;
    config.webhooks.claim_idle_ms = 2000;
}

/// `count` in-process nodes on one fresh Postgres database and the Redis at `redis`.
async fn nodes(count: usize, redis: &str, tweak: impl Fn(&mut Config)) -> Vec<TestApp> {
    let database = fresh_postgres_database().await;
    let mut nodes = Vec::new();
    for _ in 0..count {
        let mut config = test_config(database.clone());
        config.redis.url = Some(redis.to_owned());
        adjust(&mut config);
        tweak(&mut config);
        nodes.push(spawn_config(config, None).await);
    }
    nodes
}

/// Creates an app, starts a receiver with its credentials, and points the app's webhook
/// (every event) at it.
async fn hooked_app(node: &TestApp) -> (Value, Receiver) {
    let app = create_app(node, json!({ "name": unique("hooked") })).await;
    let receiver = Receiver::start(0, &app).await;
    let updated = set_hooks(node, &app, hooks(&receiver.url(), &ALL_EVENTS)).await;
    assert_eq!(updated.status(), 200);
    (app, receiver)
}

async fn set_hooks(node: &TestApp, app: &Value, webhooks: Value) -> reqwest::Response {
    set_hooks_at(&node.base, app, webhooks).await
}

/// Replaces an app's webhooks through the admin API of the node at `base` (`http://host:port`).
async fn set_hooks_at(base: &str, app: &Value, webhooks: Value) -> reqwest::Response {
    let slug = app["slug"].as_str().unwrap();
    reqwest::Client::new()
        .patch(format!("{base}/api/admin/apps/{slug}"))
        .basic_auth(common::ADMIN.0, Some(common::ADMIN.1))
        .json(&json!({ "app": { "webhooks": webhooks } }))
        .send()
        .await
        .expect("update")
}

async fn show(node: &TestApp, app: &Value) -> Value {
    let slug = app["slug"].as_str().unwrap();
    let shown: Value = node
        .admin(reqwest::Method::GET, &format!("/api/admin/apps/{slug}"))
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("JSON");
    shown["data"].clone()
}

fn private_auth(app: &Value, socket_id: &str, channel: &str) -> String {
    let key = app["key"].as_str().unwrap();
    let secret = app["secret"].as_str().unwrap();
    let signed = signature::sign(secret, &signature::channel_string(socket_id, channel, None));
    format!("{key}:{signed}")
}

/// Subscribes a raw Pusher client to a presence channel as `user`.
async fn join_presence(client: &mut pusher::Client, app: &Value, channel: &str, user: &str) {
    let key = app["key"].as_str().unwrap();
    let secret = app["secret"].as_str().unwrap();
    let channel_data = json!({ "user_id": user }).to_string();
    let signed = signature::sign(
        secret,
        &signature::channel_string(&client.socket_id, channel, Some(&channel_data)),
    );
    client
        .send(json!({"event": "pusher:subscribe", "data": {
            "channel": channel, "auth": format!("{key}:{signed}"), "channel_data": channel_data,
        }}))
        .await;
    let answer = client
        .recv_event("pusher_internal:subscription_succeeded")
        .await;
    assert_eq!(answer["channel"], channel);
}

/// The sum of a metric's series whose name and labels contain every one of `parts`.
async fn metric(node: &TestApp, parts: &[&str]) -> f64 {
    let text = node
        .http
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    common::parse_metrics(&text)
        .into_iter()
        .filter(|(series, _)| parts.iter().all(|part| series.contains(part)))
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test]
async fn webhook_configuration_is_validated_and_shown() {
    let node = spawn_app_with(Db::Sqlite, |_| {}).await;
    let app = create_app(&node, json!({ "name": unique("config") })).await;
    assert_eq!(app["webhooks"], json!([]));
    for (webhooks, why) in [
        (
            hooks("http://127.0.0.1:9/x", &["channel_occupied"]),
            "loopback",
        ),
        (hooks("http://10.0.0.7/x", &["channel_occupied"]), "private"),
        (
            hooks("http://169.254.169.254/latest", &["channel_occupied"]),
            "link-local",
        ),
        (
            hooks("http://[::1]/x", &["channel_occupied"]),
            "IPv6 loopback",
        ),
        (
            hooks("http://localhost/x", &["channel_occupied"]),
            "localhost",
        ),
        (
            hooks("ftp://example.com/x", &["channel_occupied"]),
            "scheme",
        ),
        (
            hooks("https://example.com/x", &["channel_opened"]),
            "unknown event",
        ),
        (hooks("https://example.com/x", &[]), "no events"),
        (json!("not json"), "not a list"),
    ] {
        let response = set_hooks(&node, &app, webhooks).await;
        assert_eq!(response.status(), 422, "{why}");
        let body: Value = response.json().await.unwrap();
        assert!(body["errors"]["webhooks"].is_array(), "{why}: {body}");
    }
    let response = set_hooks(
        &node,
        &app,
        hooks(
            "https://hooks.example.com/pusher",
            &["channel_occupied", "client_event"],
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    let shown = show(&node, &app).await;
    assert_eq!(
        shown["webhooks"][0]["events"],
        json!(["channel_occupied", "client_event"])
    );
    assert_eq!(shown["webhooks"][0]["last_status"], Value::Null);
    assert_eq!(shown["webhooks"][0]["last_error"], Value::Null);
    // The form equivalent: the list as JSON text.
    let slug = app["slug"].as_str().unwrap();
    let form = node
        .admin(reqwest::Method::PATCH, &format!("/api/admin/apps/{slug}"))
        .form(&[(
            "app[webhooks]",
            r#"[{"url":"https://hooks.example.com/form","events":["member_added"]}]"#,
        )])
        .send()
        .await
        .expect("form update");
    assert_eq!(form.status(), 200);
    let shown = show(&node, &app).await;
    assert_eq!(
        shown["webhooks"][0]["url"],
        "https://hooks.example.com/form"
    );
    // Sending back what was read (with the status fields) is accepted.
    let echoed = set_hooks(&node, &app, shown["webhooks"].clone()).await;
    assert_eq!(echoed.status(), 200);
    assert_eq!(set_hooks(&node, &app, json!([])).await.status(), 200);
    assert_eq!(show(&node, &app).await["webhooks"], json!([]));
}

/// Embedded mode (no Redis): the in-memory queue, occupancy, and client events batched into
/// one request.
#[tokio::test]
async fn embedded_mode_delivers_occupancy_and_batched_client_events() {
    let node = spawn_app_with(Db::Sqlite, |config| {
        adjust(config);
        config.webhooks.batch_max = 50;
        config.webhooks.batch_delay_ms = 300;
    })
    .await;
    let (app, mut receiver) = hooked_app(&node).await;
    let key = app["key"].as_str().unwrap();
    let mut client = pusher::connect(node.addr, key).await;
    let channel = "private-chat";
    let auth = private_auth(&app, &client.socket_id, channel);
    client.subscribed(channel, Some(auth)).await;
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "channel_occupied", channel) == 1
        })
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    for n in 0..3 {
        client
            .send(json!({"event": "client-typing", "channel": channel, "data": {"n": n}}))
            .await;
    }
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "client_event", channel) == 3
        })
        .await;
    // One request: the three were queued within the batch delay.
    assert!(
        events.iter().all(|e| e["_id"] == events[0]["_id"]),
        "{events:?}"
    );
    assert_eq!(events[0]["event"], "client-typing");
    assert_eq!(events[0]["socket_id"], client.socket_id.as_str());
    let data: Value =
        serde_json::from_str(events[0]["data"].as_str().expect("string data")).expect("JSON text");
    assert_eq!(data, json!({"n": 0}));
    drop(client);
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "channel_vacated", channel) == 1
        })
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let shown = show(&node, &app).await;
    assert_eq!(shown["webhooks"][0]["last_status"], 200);
    // The node counts a request once it has read the answer, which can be after the receiver
    // has handed the request to the test.
    let sent_ok = ["pushlite_webhooks_sent_total", "result=\"ok\""];
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&node, &sent_ok).await < 3.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&node, &sent_ok).await >= 3.0);
    assert!(metric(&node, &["pushlite_webhook_delivery_seconds_count"]).await >= 5.0);
}

/// A subscriber of an empty cache channel is told `pusher:cache_miss`, and so is the app's
/// server (both protocols); once the channel has an event, no more misses.
#[tokio::test]
async fn cache_misses_reach_the_app_server() {
    let node = &nodes(1, &common::redis_url(), |_| {}).await[0];
    let (app, mut receiver) = hooked_app(node).await;
    let slug = app["slug"].as_str().unwrap();
    let mut client = pusher::connect(node.addr, app["key"].as_str().unwrap()).await;
    client.subscribed("cache-quotes", None).await;
    let miss = client.recv().await;
    assert_eq!(
        miss,
        json!({"event": "pusher:cache_miss", "channel": "cache-quotes"})
    );
    let mut phoenix = common::phx::connect(node.addr, common::phx::Vsn::V2, "", None).await;
    let (_, reply) = phoenix.join(&format!("cache-board:{slug}")).await;
    assert_eq!(reply.payload["response"]["offset"], 0, "{reply:?}");
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "cache_miss", "cache-quotes") == 1
                && count(e, "cache_miss", "cache-board") == 1
        })
        .await;
    let miss = events.iter().find(|e| e["name"] == "cache_miss").unwrap();
    assert_eq!(
        miss.as_object().unwrap().len(),
        3,
        "name, channel and _id: {miss}"
    );
    let body = r#"{"name":"quote","channel":"cache-quotes","data":"{}"}"#;
    let triggered = pusher::signed_trigger(&node.http, &node.base, &app, body.to_owned())
        .send()
        .await
        .expect("trigger");
    assert_eq!(triggered.status(), 200);
    let mut late = pusher::connect(node.addr, app["key"].as_str().unwrap()).await;
    late.subscribed("cache-quotes", None).await;
    assert_eq!(late.recv().await["event"], "quote");
    let more = receiver.quiet(Duration::from_millis(500)).await;
    assert_eq!(count(&more, "cache_miss", "cache-quotes"), 0, "{more:?}");
}

/// pusher-js on node A and phoenix.js on node B (one user on a presence channel too), a raw
/// client on node C: one occupied, one vacated per channel, one member added and removed.
#[tokio::test]
async fn one_occupied_and_one_vacated_per_transition_across_three_nodes() {
    let redis = RedisServer::start().await;
    let nodes = nodes(3, &redis.url(), |_| {}).await;
    let (app, mut receiver) = hooked_app(&nodes[0]).await;
    let (channel, presence) = ("lobby", "presence-lobby");
    let key = app["key"].as_str().unwrap();
    let mut raw = pusher::connect(nodes[2].addr, key).await;
    raw.subscribed(channel, None).await;
    join_presence(&mut raw, &app, presence, "bob").await;
    let config = json!({
        "a": nodes[0].addr.to_string(), "b": nodes[1].addr.to_string(),
        "slug": app["slug"], "key": app["key"], "secret": app["secret"],
        "channel": channel, "presence": presence, "holdMs": 800,
    });
    let pages = run_client(
        "node",
        &["webhooks_e2e.mjs".to_owned(), config.to_string()],
        JS_DIR,
    )
    .await;
    assert_eq!(pages["pusher"], "closed");
    drop(raw);
    let done = |e: &[Value]| {
        count(e, "channel_vacated", channel) >= 1
            && count(e, "channel_vacated", presence) >= 1
            && count(e, "member_removed", presence) >= 2
    };
    let mut events = receiver.until(Duration::from_secs(15), done).await;
    // Anything a second node would have sent twice arrives within this quiet period.
    events.extend(receiver.quiet(Duration::from_millis(1500)).await);
    for ch in [channel, presence] {
        assert_eq!(
            count(&events, "channel_occupied", ch),
            1,
            "{ch}: {events:?}"
        );
        assert_eq!(count(&events, "channel_vacated", ch), 1, "{ch}: {events:?}");
    }
    let members = |name: &str, user: &str| {
        events
            .iter()
            .filter(|e| e["name"] == name && e["user_id"] == user)
            .count()
    };
    assert_eq!(members("member_added", "ann"), 1, "{events:?}");
    assert_eq!(members("member_removed", "ann"), 1, "{events:?}");
    assert_eq!(members("member_added", "bob"), 1, "{events:?}");
    assert_eq!(members("member_removed", "bob"), 1, "{events:?}");
    for ch in [channel, presence] {
        let occupied = events
            .iter()
            .position(|e| e["name"] == "channel_occupied" && e["channel"] == ch);
        let vacated = events
            .iter()
            .position(|e| e["name"] == "channel_vacated" && e["channel"] == ch);
        assert!(
            occupied < vacated,
            "{ch}: occupied before vacated: {events:?}"
        );
    }
}

/// A page reload: the channel and the member come back within the leave delay, and nothing is
/// sent; a real leave is sent once the delay has passed.
#[tokio::test]
async fn reload_inside_the_leave_delay_sends_nothing() {
    let redis = RedisServer::start().await;
    let nodes = nodes(1, &redis.url(), |config| {
        config.webhooks.leave_delay_ms = 1500;
    })
    .await;
    let node = &nodes[0];
    let (app, mut receiver) = hooked_app(node).await;
    let key = app["key"].as_str().unwrap();
    let (channel, presence) = ("news", "presence-room");
    let mut page = pusher::connect(node.addr, key).await;
    page.subscribed(channel, None).await;
    join_presence(&mut page, &app, presence, "carol").await;
    receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "channel_occupied", channel) == 1
                && count(e, "channel_occupied", presence) == 1
                && count(e, "member_added", presence) == 1
        })
        .await;
    // Reload: close, and come back at once.
    drop(page);
    let mut page = pusher::connect(node.addr, key).await;
    page.subscribed(channel, None).await;
    join_presence(&mut page, &app, presence, "carol").await;
    let during = receiver.quiet(Duration::from_millis(2500)).await;
    assert!(during.is_empty(), "a reload sends nothing: {during:?}");
    drop(page);
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "channel_vacated", channel) == 1
                && count(e, "channel_vacated", presence) == 1
                && count(e, "member_removed", presence) == 1
        })
        .await;
    assert_eq!(events.len(), 3, "{events:?}");
}

/// Reloads that land on the other node: the member leaves on one node and comes back on the
/// other at once, three times. Each node reports its own edges; nothing is sent until the
/// final leave, which is sent once.
#[tokio::test]
async fn reloads_onto_another_node_send_nothing() {
    let redis = RedisServer::start().await;
    let nodes = nodes(2, &redis.url(), |config| {
        config.webhooks.leave_delay_ms = 1500;
    })
    .await;
    let (app, mut receiver) = hooked_app(&nodes[0]).await;
    let key = app["key"].as_str().unwrap();
    let presence = "presence-desk";
    let mut page = pusher::connect(nodes[0].addr, key).await;
    join_presence(&mut page, &app, presence, "dave").await;
    receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "member_added", presence) == 1 && count(e, "channel_occupied", presence) == 1
        })
        .await;
    for round in 1..=3 {
        drop(page);
        page = pusher::connect(nodes[round % 2].addr, key).await;
        join_presence(&mut page, &app, presence, "dave").await;
    }
    let during = receiver.quiet(Duration::from_millis(2500)).await;
    assert!(during.is_empty(), "reloads send nothing: {during:?}");
    drop(page);
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "member_removed", presence) == 1 && count(e, "channel_vacated", presence) == 1
        })
        .await;
    events
        .iter()
        .chain(&receiver.quiet(Duration::from_millis(1000)).await)
        .for_each(|e| {
            assert!(
                e["name"] == "member_removed" || e["name"] == "channel_vacated",
                "{e}"
            )
        });
    assert_eq!(events.len(), 2, "{events:?}");
}

/// The receiver is down for several retries, then back: every event arrives, and the admin
/// API showed the failure meanwhile.
#[tokio::test]
async fn receiver_down_then_back_gets_every_event() {
    let redis = RedisServer::start().await;
    let nodes = nodes(1, &redis.url(), |_| {}).await;
    let node = &nodes[0];
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/pusher/webhooks");
    let app = create_app(node, json!({ "name": unique("hooked") })).await;
    let updated = set_hooks(node, &app, hooks(&url, &["channel_occupied"])).await;
    assert_eq!(updated.status(), 200);
    let key = app["key"].as_str().unwrap();
    let mut client = pusher::connect(node.addr, key).await;
    let channels: Vec<String> = (0..5).map(|i| format!("feed-{i}")).collect();
    for channel in &channels {
        client.subscribed(channel, None).await;
    }
    let slug = app["slug"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(
        node,
        &["pushlite_webhooks_sent_total", &slug, "result=\"error\""],
    )
    .await
        < 4.0
    {
        assert!(Instant::now() < deadline, "no retries counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = show(node, &app).await;
    assert!(
        shown["webhooks"][0]["last_error"].is_string(),
        "the failure is shown: {shown}"
    );
    assert_eq!(shown["webhooks"][0]["last_status"], Value::Null);
    let mut receiver = Receiver::start(port, &app).await;
    let events = receiver
        .until(Duration::from_secs(15), |e| {
            channels
                .iter()
                .all(|c| count(e, "channel_occupied", c) >= 1)
        })
        .await;
    assert_eq!(events.len(), 5, "{events:?}");
    let shown = show(node, &app).await;
    assert_eq!(shown["webhooks"][0]["last_status"], 200, "{shown}");
    assert_eq!(shown["webhooks"][0]["last_error"], Value::Null);
}

/// Node A is killed with `kill -9` while it holds undelivered events (its requests hang on a
/// receiver that accepts and never answers): node B takes them over and delivers them, and
/// vacates A's channels once A is found dead.
#[tokio::test]
async fn events_of_a_killed_node_are_delivered_by_another() {
    let redis = RedisServer::start().await;
    let database = fresh_postgres_database().await;
    let port = free_port();
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("PUSHLITE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ("PUSHLITE_WEBHOOKS__LEAVE_DELAY_MS", "300"),
        ("PUSHLITE_WEBHOOKS__BACKOFF_INITIAL_MS", "100"),
        ("PUSHLITE_WEBHOOKS__BACKOFF_MAX_MS", "400"),
        ("PUSHLITE_WEBHOOKS__CLAIM_IDLE_MS", "2000"),
        ("PUSHLITE_WEBHOOKS__TIMEOUT_MS", "60000"),
        ("PUSHLITE_PRESENCE__NODE_TIMEOUT_MS", "2000"),
    ];
    // A black hole on the receiver's port: connections are accepted and never answered.
    let hole = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    let black_hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    let mut a = NodeProcess::spawn(&env).await;
    let app = a.create_app(&unique("crash")).await;
    let url = format!("http://127.0.0.1:{port}/pusher/webhooks");
    let events = ["channel_occupied", "channel_vacated"];
    let updated = set_hooks_at(&a.url(""), &app, hooks(&url, &events)).await;
    assert_eq!(updated.status(), 200);
    let key = app["key"].as_str().unwrap();
    let mut clients = Vec::new();
    let channels: Vec<String> = (0..5).map(|i| format!("room-{i}")).collect();
    for channel in &channels {
        let mut client = pusher::connect(a.addr, key).await;
        client.subscribed(channel, None).await;
        clients.push(client);
    }
    // A has taken the events: its requests hang.
    tokio::time::timeout(Duration::from_secs(15), accepted.recv())
        .await
        .expect("node A posts")
        .expect("a connection");
    let b = NodeProcess::spawn(&env).await;
    a.signal("KILL");
    a.wait(Duration::from_secs(5)).await.expect("A is dead");
    drop(clients);
    black_hole.abort();
    let _ = black_hole.await;
    let mut receiver = Receiver::start(port, &app).await;
    let events = receiver
        .until(Duration::from_secs(30), |e| {
            channels.iter().all(|c| {
                count(e, "channel_occupied", c) >= 1 && count(e, "channel_vacated", c) >= 1
            })
        })
        .await;
    let mut events = events;
    events.extend(receiver.quiet(Duration::from_millis(1000)).await);
    let worst = channels
        .iter()
        .flat_map(|c| {
            [
                count(&events, "channel_occupied", c),
                count(&events, "channel_vacated", c),
            ]
        })
        .max()
        .unwrap_or(0);
    println!(
        "crash test: {} events delivered, worst count of one event {worst}",
        events.len()
    );
    assert!(worst <= 2, "at least once, not a flood: {events:?}");
    // Every delivery of one event, whichever node and attempt made it, carries one id.
    for name in ["channel_occupied", "channel_vacated"] {
        for c in &channels {
            let ids: std::collections::HashSet<&Value> = events
                .iter()
                .filter(|e| e["name"] == name && e["channel"] == c.as_str())
                .map(|e| &e["_id"])
                .collect();
            assert_eq!(ids.len(), 1, "{name} {c}: {events:?}");
        }
    }
    assert!(b.logs().contains("took over events"), "{}", b.logs());
}

/// A node stopped with SIGTERM (a rolling deploy) is never swept as dead: it vacates its own
/// channels on the way out, and another node delivers the webhook.
#[tokio::test]
async fn a_node_that_stops_cleanly_vacates_its_channels() {
    let redis = RedisServer::start().await;
    let database = fresh_postgres_database().await;
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("PUSHLITE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ("PUSHLITE_WEBHOOKS__LEAVE_DELAY_MS", "300"),
        ("PUSHLITE_SERVER__DRAIN_DELAY_MS", "100"),
    ];
    let mut a = NodeProcess::spawn(&env).await;
    let _b = NodeProcess::spawn(&env).await;
    let app = a.create_app(&unique("rolling")).await;
    let mut receiver = Receiver::start(0, &app).await;
    let events = ["channel_occupied", "channel_vacated"];
    let updated = set_hooks_at(&a.url(""), &app, hooks(&receiver.url(), &events)).await;
    assert_eq!(updated.status(), 200);
    let mut client = pusher::connect(a.addr, app["key"].as_str().unwrap()).await;
    client.subscribed("deploys", None).await;
    receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "channel_occupied", "deploys") == 1
        })
        .await;
    a.signal("TERM");
    a.wait(Duration::from_secs(10)).await.expect("A stops");
    let events = receiver
        .until(Duration::from_secs(10), |e| {
            count(e, "channel_vacated", "deploys") == 1
        })
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
}

/// Member edges reach the store in whatever order the nodes report them: only an edge newer
/// (by the presence change's epoch and version) than the last one applied counts, so a node
/// that reports late can neither announce a member twice nor remove one who is present.
#[tokio::test]
async fn member_edges_out_of_order_follow_the_presence_version() {
    use fred::prelude::{Builder, ClientLike, Config as RedisConfig};
    use pushlite::presence::MemberEdge;
    use pushlite::webhooks::{RedisWebhookStore, RedisWebhookStoreConfig, WebhookStore};

    let redis = RedisServer::start().await;
    let client = Builder::from_config(RedisConfig::from_url(&redis.url()).expect("URL"))
        .build()
        .expect("client");
    client.init().await.expect("connects");
    let store = RedisWebhookStore::connect(
        client,
        RedisWebhookStoreConfig {
            node: "n1".to_owned(),
            leave_delay: Duration::from_millis(200),
            max_queue: 1000,
            claim_idle: Duration::from_secs(30),
        },
    )
    .await
    .expect("store");
    let edge = |joined: bool, epoch: &str, ver: u64| MemberEdge {
        topic: "presence-x:shop".to_owned(),
        user_id: "u".to_owned(),
        joined,
        epoch: epoch.to_owned(),
        ver,
    };
    // Epochs are Redis times in microseconds: a channel that emptied and filled again has a
    // later one.
    let (first, second) = ("1764450000000001", "1764450000500000");
    let settle = async || {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.fire_due().await.expect("due");
        let jobs = store
            .take(100, Duration::from_millis(100))
            .await
            .expect("take");
        let names: Vec<String> = jobs
            .iter()
            .map(|job| {
                let event: Value = serde_json::from_str(job.event.get()).expect("JSON");
                event["name"].as_str().expect("name").to_owned()
            })
            .collect();
        let ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
        store.done(&ids, &[]).await.expect("done");
        names
    };
    store.member(&edge(true, first, 1), true).await.unwrap();
    assert_eq!(settle().await, ["member_added"]);
    // Alone in the channel, the user reloads onto another node: the channel empties (its
    // epoch goes) and fills again. The new node's join is reported before the old one's leave.
    store.member(&edge(true, second, 1), true).await.unwrap();
    store.member(&edge(false, first, 2), true).await.unwrap();
    assert!(settle().await.is_empty(), "still there: nothing to send");
    // In one epoch: the leave (v3) is late behind the next join (v4).
    store.member(&edge(true, second, 4), true).await.unwrap();
    store.member(&edge(false, second, 3), true).await.unwrap();
    assert!(settle().await.is_empty(), "still there: nothing to send");
    store.member(&edge(false, second, 5), true).await.unwrap();
    assert_eq!(settle().await, ["member_removed"]);
    // A join reported after the removal fired, though older than it, stays old.
    store.member(&edge(true, second, 4), true).await.unwrap();
    assert!(settle().await.is_empty(), "a stale join announces nobody");
    // The member comes back for real.
    store.member(&edge(true, second, 6), true).await.unwrap();
    assert_eq!(settle().await, ["member_added"]);
    // An app without member webhooks keeps the state, and queues nothing.
    store.member(&edge(false, second, 7), false).await.unwrap();
    assert!(settle().await.is_empty());
}

/// An app's share of the queue: with its receiver down, an app whose `webhook_max_queue` is 3
/// gets 3 of its 5 events queued (the other 2 refused and counted) while an app on the global
/// share (10) gets all 5; once the receivers are up, exactly the queued events arrive, and the
/// first app's share is free again.
async fn quota_keeps_one_app_from_filling_the_queue(nodes: &[TestApp]) {
    let node = &nodes[0];
    let (small_port, other_port) = (free_port(), free_port());
    let small = create_app(
        node,
        json!({ "name": unique("small"), "webhook_max_queue": 3 }),
    )
    .await;
    assert_eq!(small["webhook_max_queue"], 3, "{small}");
    let other = create_app(node, json!({ "name": unique("other") })).await;
    assert_eq!(other["webhook_max_queue"], Value::Null, "{other}");
    for (app, port) in [(&small, small_port), (&other, other_port)] {
        let url = format!("http://127.0.0.1:{port}/pusher/webhooks");
        let updated = set_hooks(node, app, hooks(&url, &["channel_occupied"])).await;
        assert_eq!(updated.status(), 200);
    }
    let refusals = |node| metric(node, &["pushlite_limit_refusals_total", "webhook_queue"]);
    let before = refusals(node).await;
    let mut clients = Vec::new();
    for app in [&small, &other] {
        let mut client = pusher::connect(node.addr, app["key"].as_str().unwrap()).await;
        for i in 0..5 {
            client.subscribed(&format!("feed-{i}"), None).await;
        }
        clients.push(client);
    }
    let small_slug = small["slug"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(
        node,
        &[
            "pushlite_webhooks_sent_total",
            small_slug,
            "result=\"dropped\"",
        ],
    )
    .await
        < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "the small app's events were not refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refusals(node).await - before, 2.0);
    let mut small_receiver = Receiver::start(small_port, &small).await;
    let mut other_receiver = Receiver::start(other_port, &other).await;
    let got = small_receiver
        .until(Duration::from_secs(15), |e| e.len() >= 3)
        .await;
    let extra = small_receiver.quiet(Duration::from_millis(1500)).await;
    assert_eq!(got.len() + extra.len(), 3, "{got:?} {extra:?}");
    let all = other_receiver
        .until(Duration::from_secs(15), |e| e.len() >= 5)
        .await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(refusals(node).await - before, 2.0);
    // Delivered events leave the app's count: a new one is queued and delivered.
    clients[0].subscribed("feed-late", None).await;
    let late = small_receiver
        .until(Duration::from_secs(15), |e| {
            count(e, "channel_occupied", "feed-late") == 1
        })
        .await;
    assert_eq!(late.len(), 1, "{late:?}");
}

#[tokio::test]
async fn an_apps_webhook_quota_holds_on_redis() {
    let redis = RedisServer::start().await;
    let nodes = nodes(1, &redis.url(), |config| {
        config.webhooks.max_queue_per_app = 10;
    })
    .await;
    quota_keeps_one_app_from_filling_the_queue(&nodes).await;
}

#[tokio::test]
async fn an_apps_webhook_quota_holds_in_embedded_mode() {
    let node = spawn_app_with(Db::Sqlite, |config| {
        adjust(config);
        config.webhooks.max_queue_per_app = 10;
    })
    .await;
    quota_keeps_one_app_from_filling_the_queue(std::slice::from_ref(&node)).await;
}
