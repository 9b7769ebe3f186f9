//! Limits and quotas, each through its protocol's refusal and its metric: connections per app
//! across two nodes (Pusher 4004, Phoenix join error), HTTP triggers per second per app
//! across two nodes (429 with `Retry-After`, seed and Pusher APIs), WebSocket and long-poll
//! upgrades per client address behind a trusted proxy, and failed admin logins per address
//! (admin API and console).

mod common;

use std::time::Duration;

use common::phx::{self, Vsn};
use common::pusher;
use common::{TestApp, create_app, fresh_postgres_database, redis_url, spawn_config, test_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const WAIT: Duration = Duration::from_secs(10);

/// Two nodes on one database and the suite's Redis, each adjusted by `adjust`.
async fn two_nodes(adjust: impl Fn(&mut pushlite::Config)) -> Vec<TestApp> {
    let database = fresh_postgres_database().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut config = test_config(database.clone());
        config.redis.url = Some(redis_url());
        adjust(&mut config);
        nodes.push(spawn_config(config, None).await);
    }
    nodes
}

async fn refusals(node: &TestApp, limit: &str) -> f64 {
    node.metrics()
        .await
        .get(&format!(
            "pushlite_limit_refusals_total{{limit=\"{limit}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

async fn patch(node: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    let response = node
        .admin(reqwest::Method::PATCH, &format!("/api/admin/apps/{slug}"))
        .json(&json!({ "app": body }))
        .send()
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Connects to `/app/:key` and returns the first frame: `connection_established`, or the
/// `pusher:error` before a close.
async fn pusher_hello(node: &TestApp, key: &str) -> (pusher::Client, Value) {
    let mut client = pusher::open(
        node.addr,
        key,
        "protocol=7&client=rust-test&version=8.4.0",
        None,
    )
    .await;
    let hello = client.recv().await;
    (client, hello)
}

#[tokio::test]
async fn an_app_over_its_connection_quota_is_refused_on_every_node_and_protocol() {
    let nodes = two_nodes(|_| {}).await;
    let app = create_app(&nodes[0], json!({"name": "quota-app"})).await;
    let (slug, key) = (app["slug"].as_str().unwrap(), app["key"].as_str().unwrap());
    let (status, body) = patch(&nodes[0], slug, json!({"max_connections": 2})).await;
    assert_eq!((status, &body["data"]["max_connections"]), (200, &json!(2)));

    // one Pusher connection on A, one Phoenix socket joined on B
    let (_first, hello) = pusher_hello(&nodes[0], key).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let mut second = phx::connect(nodes[1].addr, Vsn::V2, "", None).await;
    let (_, reply) = second.join(&format!("public:{slug}")).await;
    assert_eq!(reply.payload["status"], "ok");

    // A hears of B's connection within a heartbeat; then a third is refused on A, as a
    // Pusher connection (4004) and as a Phoenix join (an error reply). Connections tried
    // before that are closed again; one closing late can only cause an extra refusal.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (mut client, hello) = pusher_hello(&nodes[0], key).await;
        let mut third = phx::connect(nodes[0].addr, Vsn::V2, "", None).await;
        let (_, reply) = third.join(&format!("public:{slug}")).await;
        if hello["event"] == "pusher:error" && reply.payload["status"] == "error" {
            assert_eq!(hello["data"]["code"], 4004, "{hello}");
            assert_eq!(client.closed_with().await.0, Some(4004));
            assert_eq!(
                reply.payload,
                json!({"status": "error", "response": {"reason": "over connection quota"}})
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never counted B's connection"
        );
        drop((client, third));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refusals(&nodes[0], "connections").await >= 2.0);
    // a socket already counted for the app joins its other channels freely
    let (_, reply) = second.join(&format!("other:{slug}")).await;
    assert_eq!(reply.payload["status"], "ok");

    // back to the global limit (none): the join goes through
    let (status, body) = patch(&nodes[0], slug, json!({"max_connections": null})).await;
    assert_eq!(
        (status, &body["data"]["max_connections"]),
        (200, &Value::Null)
    );
    let mut third = phx::connect(nodes[0].addr, Vsn::V2, "", None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, reply) = third.join(&format!("public:{slug}")).await;
        if reply.payload["status"] == "ok" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_global_connection_quota_applies_to_apps_without_their_own() {
    let nodes = two_nodes(|c| c.limits.connections_per_app = 1).await;
    let app = create_app(&nodes[0], json!({"name": "global-quota"})).await;
    let free = create_app(&nodes[0], json!({"name": "free-app", "max_connections": 0})).await;
    let key = app["key"].as_str().unwrap();
    let (_one, hello) = pusher_hello(&nodes[0], key).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let (_, hello) = pusher_hello(&nodes[0], key).await;
    assert_eq!(hello["data"]["code"], 4004, "{hello}");
    // an app with 0 has none
    let free_key = free["key"].as_str().unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (client, hello) = pusher_hello(&nodes[0], free_key).await;
        assert_eq!(hello["event"], "pusher:connection_established");
        held.push(client);
    }
}

/// Sleeps into the first 100 ms of a wall-clock second, so a burst stays in one window.
async fn start_of_a_second() {
    let ms = chrono::Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1010 - ms))).await;
}

async fn seed_trigger(node: &TestApp, app: &Value) -> reqwest::Response {
    node.http
        .post(node.url(&format!(
            "/api/apps/{}/events",
            app["slug"].as_str().unwrap()
        )))
        .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
        .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {}}))
        .send()
        .await
        .expect("trigger")
}

async fn pusher_trigger(node: &TestApp, app: &Value, channels: &[&str]) -> reqwest::Response {
    let body = json!({"name": "e", "channels": channels, "data": "{}"}).to_string();
    pusher::signed_trigger(&node.http, &node.base, app, body)
        .send()
        .await
        .expect("trigger")
}

#[tokio::test]
async fn triggers_over_the_rate_get_429_with_retry_after_on_every_node() {
    let nodes = two_nodes(|_| {}).await;
    let app = create_app(
        &nodes[0],
        json!({"name": "rated-app", "max_triggers_per_sec": 5}),
    )
    .await;
    let mut client = phx::connect(nodes[1].addr, Vsn::V2, "", None).await;
    let (_, reply) = client.join("public:rated-app").await;
    assert_eq!(reply.payload["status"], "ok");

    start_of_a_second().await;
    // five in one second across both nodes, then the sixth is refused
    for n in 0..5 {
        let response = seed_trigger(&nodes[n % 2], &app).await;
        assert_eq!(response.status(), 200, "trigger {n}");
    }
    let response = seed_trigger(&nodes[1], &app).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["errors"]["detail"]
            .as_str()
            .unwrap()
            .contains("trigger rate")
    );
    // the Pusher HTTP API shares the budget, and answers in its own shape
    let response = pusher_trigger(&nodes[0], &app, &["c"]).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"error": "Too Many Requests"})
    );
    assert_eq!(
        refusals(&nodes[0], "triggers").await + refusals(&nodes[1], "triggers").await,
        2.0
    );
    // exactly the five accepted ones were delivered
    for _ in 0..5 {
        assert_eq!(client.recv().await.event, "t:e");
    }
    assert!(client.try_recv(Duration::from_millis(300)).await.is_none());

    // the next second has a fresh budget; a three-channel trigger counts three, and a
    // refused one costs nothing
    start_of_a_second().await;
    assert_eq!(
        pusher_trigger(&nodes[0], &app, &["a", "b", "c"])
            .await
            .status(),
        200
    );
    assert_eq!(
        pusher_trigger(&nodes[1], &app, &["a", "b", "c"])
            .await
            .status(),
        429
    );
    assert_eq!(seed_trigger(&nodes[1], &app).await.status(), 200);
    assert_eq!(seed_trigger(&nodes[0], &app).await.status(), 200);
    assert_eq!(seed_trigger(&nodes[0], &app).await.status(), 429);
}

/// A WebSocket upgrade to `path` sent by a proxy on the client `forwarded`'s behalf; returns
/// the HTTP status and `Retry-After` of a refusal, or 101.
async fn upgrade_from(node: &TestApp, path: &str, forwarded: &str) -> (u16, Option<String>) {
    let mut request = format!("ws://{}{path}", node.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_str(forwarded).unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => (101, None),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        ),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn upgrades_are_limited_per_client_address_behind_trusted_proxies() {
    let behind_proxy = spawn_config(
        {
            let mut config = test_config(fresh_postgres_database().await);
            config.limits.upgrades_per_sec_per_ip = 3;
            config.limits.trusted_proxies = vec!["127.0.0.0/8".to_owned()];
            config
        },
        None,
    )
    .await;
    let app = create_app(&behind_proxy, json!({"name": "upgrade-app"})).await;
    let pusher_path = format!("/app/{}?protocol=7", app["key"].as_str().unwrap());
    let phoenix_path = "/socket/websocket?vsn=2.0.0";
    // the proxy appends the client's address to what the client sent
    let client = "203.0.113.9";
    let spoofed = format!("198.51.100.1, {client}");
    assert_eq!(
        upgrade_from(&behind_proxy, phoenix_path, client).await.0,
        101
    );
    assert_eq!(
        upgrade_from(&behind_proxy, &pusher_path, &spoofed).await.0,
        101
    );
    assert_eq!(
        upgrade_from(&behind_proxy, phoenix_path, client).await.0,
        101
    );
    let (status, retry) = upgrade_from(&behind_proxy, &pusher_path, client).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")));
    // a long-poll session from there counts the same
    let response = behind_proxy
        .http
        .get(behind_proxy.url("/socket/longpoll?vsn=2.0.0"))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], 500);
    // another client behind the same proxy has its own budget
    assert_eq!(
        upgrade_from(&behind_proxy, phoenix_path, "203.0.113.10")
            .await
            .0,
        101
    );
    assert_eq!(refusals(&behind_proxy, "upgrades").await, 2.0);
    // the budget refills at its rate
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        upgrade_from(&behind_proxy, phoenix_path, client).await.0,
        101
    );

    // without trusted proxies the header is the client's to write, so it is ignored
    let direct = spawn_config(
        {
            let mut config = test_config(fresh_postgres_database().await);
            config.limits.upgrades_per_sec_per_ip = 2;
            config
        },
        None,
    )
    .await;
    assert_eq!(
        upgrade_from(&direct, phoenix_path, "192.0.2.1").await.0,
        101
    );
    assert_eq!(
        upgrade_from(&direct, phoenix_path, "192.0.2.2").await.0,
        101
    );
    assert_eq!(
        upgrade_from(&direct, phoenix_path, "192.0.2.3").await.0,
        429
    );
}

#[tokio::test]
async fn wrong_admin_passwords_are_limited_per_address_across_api_and_console() {
    let node = spawn_config(
        {
            let mut config = test_config(fresh_postgres_database().await);
            config.limits.admin_login_failures_per_min = 3;
            config.limits.trusted_proxies = vec!["127.0.0.1".to_owned()];
            config.console.login_delay_ms = 0;
            config
        },
        None,
    )
    .await;
    let attacker = "203.0.113.50";
    let admin = |user: &str, password: &str, from: &str| {
        node.http
            .get(node.url("/api/admin/apps"))
            .basic_auth(user, Some(password))
            .header("x-forwarded-for", from)
            .send()
    };
    // no credentials at all is a prompt, not a guess
    for _ in 0..5 {
        let response = node
            .http
            .get(node.url("/api/admin/apps"))
            .header("x-forwarded-for", attacker)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    for n in 0..3 {
        let response = admin("admin-user", &format!("guess-{n}"), attacker)
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "guess {n}");
    }
    // now even the right password is refused from there, before it is checked
    let response = admin(common::ADMIN.0, common::ADMIN.1, attacker)
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(response.json::<Value>().await.unwrap()["errors"]["detail"].is_string());
    // the console login shares the budget
    let response = node
        .http
        .post(node.url("/console/login"))
        .header("x-forwarded-for", attacker)
        .header("cookie", format!("pushlite_login={}", "a".repeat(64)))
        .form(&[
            ("username", "x"),
            ("password", "y"),
            ("csrf", &"a".repeat(64)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    // the operator elsewhere is not locked out
    let response = admin(common::ADMIN.0, common::ADMIN.1, "198.51.100.7")
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(refusals(&node, "admin_login").await, 2.0);
}

#[tokio::test]
async fn quota_settings_are_validated_by_the_admin_api() {
    let node = spawn_config(test_config(fresh_postgres_database().await), None).await;
    let response = node
        .admin(reqwest::Method::POST, "/api/admin/apps")
        .json(&json!({"app": {"name": "bad-quota", "max_connections": -5, "max_triggers_per_sec": "lots"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(body["errors"]["max_connections"].is_array(), "{body}");
    assert!(body["errors"]["max_triggers_per_sec"].is_array(), "{body}");
    let app = create_app(&node, json!({"name": "good-quota"})).await;
    assert_eq!(
        (&app["max_connections"], &app["max_triggers_per_sec"]),
        (&Value::Null, &Value::Null)
    );
}
