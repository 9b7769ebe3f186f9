//! Operations: Prometheus metrics, cluster-wide usage stats, graceful shutdown, logs.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::phx::{self, Vsn};
use common::process::NodeProcess;
use common::{
    ADMIN, Db, create_app, fresh_postgres_database, parse_metrics, redis_url, spawn_app_with,
};
use serde_json::{Value, json};

async fn metrics(http: &reqwest::Client, url: &str) -> HashMap<String, f64> {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse_metrics(&response.text().await.unwrap())
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    *series.get(key).unwrap_or_else(|| {
        let mut known: Vec<_> = series
            .keys()
            .filter(|k| k.starts_with(key.split('{').next().unwrap()))
            .collect();
        known.sort();
        panic!("missing series {key}; have {known:?}")
    })
}

#[tokio::test]
async fn metric_names_labels_and_values() {
    let app = spawn_app_with(Db::Sqlite, |c| c.metrics.max_app_labels = 1).await;
    let data = create_app(&app, json!({"name": "metrics-one"})).await;
    create_app(&app, json!({"name": "metrics-two"})).await;
    create_app(&app, json!({"name": "metrics-three"})).await;
    let url = app.url("/metrics");

    let before = metrics(&app.http, &url).await;
    assert_eq!(
        value(&before, r#"pushlite_build_info{version="0.1.0"}"#),
        1.0
    );
    assert!(value(&before, "process_resident_memory_bytes") > 0.0);
    assert!(value(&before, "process_open_fds") > 0.0);
    assert!(before.contains_key("process_cpu_seconds_total"));
    assert_eq!(value(&before, "pushlite_bus_subscriptions"), 0.0);

    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = client.join("public:metrics-one").await;
    client.join("room:lobby").await;
    let response = app
        .http
        .post(app.url("/api/apps/metrics-one/events"))
        .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
        .form(&[
            ("topic", "t"),
            ("event", "e"),
            ("scope", "public"),
            ("payload", "{}"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    client.recv_event("t:e").await;
    client
        .push(
            Some(&join_ref),
            "9",
            "public:metrics-one",
            "chat",
            json!({}),
        )
        .await;
    client.recv_event("chat").await;
    // the third app is folded into `other`
    let mut third = phx::connect(app.addr, Vsn::V1, "", None).await;
    third.join("public:metrics-three").await;

    let m = metrics(&app.http, &url).await;
    let one = r#"app="metrics-one""#;
    let conn = r#"app="metrics-one",protocol="phoenix""#;
    assert_eq!(value(&m, &format!("pushlite_connections{{{conn}}}")), 1.0);
    assert_eq!(
        value(&m, &format!("pushlite_connections_opened_total{{{conn}}}")),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"pushlite_connections{app="other",protocol="phoenix"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"pushlite_joins_total{{{one},result="ok",scope="public"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"pushlite_joins_total{app="none",result="unmatched",scope="none"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"pushlite_events_published_total{{{one},source="http"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &format!(r#"pushlite_events_published_total{{{one},source="client"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&m, &format!("pushlite_messages_delivered_total{{{one}}}")),
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"pushlite_http_requests_total{method="POST",route="/api/apps/{app_slug}/events",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"pushlite_http_request_duration_seconds_count{route="/api/apps/{app_slug}/events"}"#
        ),
        1.0
    );
    assert!(
        m.keys()
            .all(|k| !k.contains("route=\"/api/apps/metrics-one")),
        "routes are patterns, never raw paths"
    );
    assert_eq!(
        value(&m, "pushlite_bus_publish_duration_seconds_count"),
        2.0
    );
    assert_eq!(value(&m, "pushlite_bus_messages_received_total"), 2.0);
    assert_eq!(value(&m, "pushlite_bus_subscriptions"), 2.0);
    assert_eq!(value(&m, "pushlite_bus_reconnects_total"), 0.0);

    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&app.http, &url).await;
        if m.get(&format!("pushlite_connections{{{conn}}}")) == Some(&0.0)
            && m.get("pushlite_bus_subscriptions") == Some(&1.0)
        {
            assert_eq!(
                value(
                    &m,
                    &format!(r#"pushlite_connections_closed_total{{{conn},reason="client"}}"#)
                ),
                1.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "the closed socket is counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_on_a_separate_listener() {
    let port = common::redis::free_port();
    let app = spawn_app_with(Db::Sqlite, |c| {
        c.metrics.listen = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    let main = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(main.status(), 404);
    let separate = app
        .http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(separate.status(), 200);
    assert!(
        separate
            .text()
            .await
            .unwrap()
            .contains("pushlite_build_info")
    );
}

#[tokio::test]
async fn single_node_stats_and_nodes() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let data = create_app(&app, json!({"name": "stats-app"})).await;
    let mut a = phx::connect(app.addr, Vsn::V2, "", None).await;
    a.join("public:stats-app").await;
    let mut b = phx::connect(app.addr, Vsn::V2, "", None).await;
    b.join("public:stats-app").await;
    for _ in 0..3 {
        app.http
            .post(app.url("/api/apps/stats-app/events"))
            .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
            .json(&json!({"topic": "t", "event": "e", "scope": "public"}))
            .send()
            .await
            .unwrap();
    }
    for _ in 0..3 {
        a.recv().await;
        b.recv().await;
    }
    let stats: Value = app
        .admin(reqwest::Method::GET, "/api/admin/apps/stats-app/stats")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &stats["data"];
    assert_eq!(d["connections"], 2);
    assert_eq!(d["nodes"], 1);
    assert_eq!(d["topics"], json!({"public:stats-app": 2}));
    assert_eq!(
        d["events_published"],
        json!({"last_minute": 3, "since_start": 3})
    );
    assert_eq!(
        d["messages_delivered"],
        json!({"last_minute": 6, "since_start": 6})
    );
    let missing = app
        .admin(reqwest::Method::GET, "/api/admin/apps/nope/stats")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let anonymous = app
        .http
        .get(app.url("/api/admin/nodes"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let nodes: Value = app
        .admin(reqwest::Method::GET, "/api/admin/nodes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes["data"].as_array().unwrap().len(), 1);
    assert_eq!(nodes["data"][0]["connections"], 2);
    assert_eq!(nodes["data"][0]["version"], "0.1.0");
}

fn cluster_env<'a>(database: &'a str, redis: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", database),
        ("REDIS_URL", redis),
        ("PUSHLITE_STATS__HEARTBEAT_MS", "200"),
        ("PUSHLITE_STATS__NODE_TTL_MS", "1000"),
        ("PUSHLITE_SERVER__DRAIN_DELAY_MS", "700"),
        ("PUSHLITE_SERVER__SHUTDOWN_TIMEOUT_MS", "8000"),
        ("RUST_LOG", "info"),
    ]
}

async fn admin_get(http: &reqwest::Client, url: String) -> Value {
    http.get(url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn stats_sum_over_nodes_and_drop_a_killed_node() {
    let database = fresh_postgres_database().await;
    let redis = redis_url();
    let env = cluster_env(&database, &redis);
    let a = NodeProcess::spawn(&env).await;
    let b = NodeProcess::spawn(&env).await;
    let http = reqwest::Client::new();
    let app = a
        .create_app(&format!("sum-{}", uuid::Uuid::new_v4().simple()))
        .await;
    let slug = app["slug"].as_str().unwrap().to_owned();
    let topic = format!("public:{slug}");
    let mut clients = Vec::new();
    for node in [&a, &a, &b] {
        let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
        client.join(&topic).await;
        clients.push(client);
    }
    for _ in 0..3 {
        let status = http
            .post(a.url(&format!("/api/apps/{slug}/events")))
            .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
            .json(&json!({"topic": "t", "event": "e", "scope": "public"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    for client in &mut clients {
        for _ in 0..3 {
            client.recv().await;
        }
    }
    // asked on node B, the answer covers both nodes
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = admin_get(&http, b.url(&format!("/api/admin/apps/{slug}/stats"))).await;
        let d = &stats["data"];
        if d["nodes"] == 2 && d["messages_delivered"]["since_start"] == 9 {
            assert_eq!(d["connections"], 3);
            assert_eq!(d["topics"], json!({ topic.clone(): 3 }));
            assert_eq!(d["events_published"]["since_start"], 3);
            assert_eq!(d["events_published"]["last_minute"], 3);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats never summed both nodes: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes = admin_get(&http, b.url("/api/admin/nodes")).await;
    assert_eq!(nodes["data"].as_array().unwrap().len(), 2);

    let mut a = a;
    a.signal("KILL");
    a.wait(Duration::from_secs(5)).await.expect("killed");
    let killed_at = Instant::now();
    loop {
        let nodes = admin_get(&http, b.url("/api/admin/nodes")).await;
        if nodes["data"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_millis(1000 + 500),
            "the killed node drops out within its TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_then_closes_every_socket_and_exits_0() {
    let database = fresh_postgres_database().await;
    let redis = redis_url();
    let env = cluster_env(&database, &redis);
    let mut a = NodeProcess::spawn(&env).await;
    let b = NodeProcess::spawn(&env).await;
    let http = reqwest::Client::new();
    let app = a
        .create_app(&format!("drain-{}", uuid::Uuid::new_v4().simple()))
        .await;
    let slug = app["slug"].as_str().unwrap().to_owned();
    let topic = format!("public:{slug}");
    let trigger = |node: &NodeProcess, n: u64| {
        http.post(node.url(&format!("/api/apps/{slug}/events")))
            .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
            .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {"n": n}}))
            .send()
    };
    // 1,000 sockets on A (a few joined), one joined subscriber on B
    let mut on_a = Vec::new();
    for i in 0..1000 {
        let mut client = phx::connect(a.addr, Vsn::V2, "", None).await;
        if i < 5 {
            client.join(&topic).await;
        }
        on_a.push(client);
    }
    let mut on_b = phx::connect(b.addr, Vsn::V2, "", None).await;
    on_b.join(&topic).await;

    let signalled = Instant::now();
    a.signal("TERM");
    // readiness flips at once
    loop {
        let ready = http.get(a.url("/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            let body: Value = ready.json().await.unwrap();
            assert_eq!(body["checks"]["serving"], false);
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "readyz turned 503 at once"
        );
    }
    // during the drain, triggers posted to the surviving node reach subscribers on both
    assert_eq!(trigger(&b, 1).await.unwrap().status(), 200);
    assert_eq!(on_b.recv().await.payload, json!({"n": 1}));
    assert_eq!(on_a[0].recv().await.payload, json!({"n": 1}));

    // then every socket on A gets a close that tells phoenix.js to reconnect
    for client in &mut on_a {
        assert_eq!(client.closed_with().await, Some(1012));
    }
    assert!(
        signalled.elapsed() >= Duration::from_millis(700),
        "not before the drain delay"
    );
    // new upgrades are refused by A; clients reconnect to B and keep receiving
    let refused = phx::try_connect(a.addr, Vsn::V2, "", None).await;
    assert!(refused.is_err(), "A takes no new sockets");
    let mut moved = phx::connect(b.addr, Vsn::V2, "", None).await;
    assert_eq!(moved.join(&topic).await.1.payload["status"], "ok");
    assert_eq!(trigger(&b, 2).await.unwrap().status(), 200);
    assert_eq!(moved.recv().await.payload, json!({"n": 2}));
    assert_eq!(on_b.recv().await.payload, json!({"n": 2}));

    let status = a
        .wait(Duration::from_secs(8))
        .await
        .expect("exits within the shutdown timeout");
    assert_eq!(status.code(), Some(0), "{}", a.logs());
}

#[tokio::test]
async fn logs_never_contain_secrets() {
    let database = fresh_postgres_database().await;
    let redis = redis_url();
    let node = NodeProcess::spawn(&[
        ("DATABASE_URL", &database),
        ("REDIS_URL", &redis),
        ("RUST_LOG", "debug"),
        ("PUSHLITE_LOG_FORMAT", "json"),
    ])
    .await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(node.url("/api/admin/apps"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .header("x-request-id", "req-abc-123")
        .json(&json!({"app": {"name": "logged-app"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["data"]["key"].as_str().unwrap().to_owned();
    let secret = created["data"]["secret"].as_str().unwrap().to_owned();
    http.post(node.url("/api/apps/logged-app/events"))
        .basic_auth(&key, Some(&secret))
        .form(&[("topic", "t"), ("event", "e"), ("scope", "public")])
        .send()
        .await
        .unwrap();
    http.post(node.url("/api/apps/logged-app/events"))
        .basic_auth(&key, Some("a-wrong-secret-value"))
        .form(&[("topic", "t"), ("event", "e"), ("scope", "public")])
        .send()
        .await
        .unwrap();
    let token = pushlite::token::mint(
        &secret,
        &pushlite::token::Claims {
            exp: chrono::Utc::now().timestamp() + 600,
            nbf: None,
            sub: None,
            presence: None,
            subscribe: vec!["private:*".into()],
            publish: vec![],
        },
    );
    let mut client = phx::connect(node.addr, Vsn::V2, &format!("token={token}"), None).await;
    client.join("private:logged-app").await;
    let rotated: Value = http
        .post(node.url("/api/admin/apps/logged-app/rotate_secret"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["data"]["secret"].as_str().unwrap().to_owned();
    http.get(node.url("/api/admin/apps"))
        .basic_auth("intruder", Some("guessed-password"))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let logs = node.logs();
    assert!(
        logs.contains("req-abc-123"),
        "requests are logged with their id"
    );
    assert!(logs.lines().count() > 5);
    for line in logs.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
    }
    use base64::Engine;
    let basic =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    for needle in [
        ADMIN.1.to_owned(),
        secret.clone(),
        new_secret,
        token.clone(),
        "a-wrong-secret-value".to_owned(),
        "guessed-password".to_owned(),
        basic(ADMIN.0, ADMIN.1),
        basic(&key, &secret),
    ] {
        assert!(
            !logs.contains(&needle),
            "a secret leaked into the logs: {needle}"
        );
    }
}
