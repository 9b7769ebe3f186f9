//! Postgres unreachable: apps already cached keep working, the admin API answers 503, and
//! everything recovers when the database is back.

mod common;

use std::time::Duration;

use common::phx::{self, Vsn};
use common::proxy::Proxy;
use common::pusher;
use common::{create_app, fresh_postgres_database, redis_url, spawn_config, test_config};
use serde_json::{Value, json};

/// `postgres://user@host:port/db` → (`host:port` resolved, rest after the authority).
async fn split(url: &str) -> (std::net::SocketAddr, String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(u, h)| (u, h));
    let addr = tokio::net::lookup_host(host)
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    (addr, format!("{scheme}://{userinfo}@"), path.to_owned())
}

#[tokio::test]
async fn cached_apps_survive_a_database_outage() {
    let database = fresh_postgres_database().await;
    let (target, prefix, path) = split(&database).await;
    let proxy = Proxy::start(target).await;
    let mut config = test_config(format!("{prefix}127.0.0.1:{}{path}", proxy.port));
    config.redis.url = Some(redis_url());
    config.database.acquire_timeout_secs = 1;
    let node = spawn_config(config, None).await;
    let app = create_app(
        &node,
        json!({"name": format!("pg-{}", uuid::Uuid::new_v4().simple())}),
    )
    .await;
    let slug = app["slug"].as_str().unwrap().to_owned();
    let topic = format!("public:{slug}");
    let trigger = || {
        node.http
            .post(node.url(&format!("/api/apps/{slug}/events")))
            .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
            .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {"n": 1}}))
            .send()
    };
    let pusher_trigger = || {
        let body = json!({"name": "p", "channel": "pusher-room", "data": "{\"n\":2}"}).to_string();
        pusher::signed_trigger(&node.http, &node.base, &app, body).send()
    };
    // the node has the app cached once it served it, by slug and by key
    assert_eq!(trigger().await.unwrap().status(), 200);
    assert_eq!(pusher_trigger().await.unwrap().status(), 200);

    proxy.cut();
    // Pusher connections and HTTP API calls of a cached app too
    let mut pusher_client = pusher::connect(node.addr, app["key"].as_str().unwrap()).await;
    pusher_client.subscribed("pusher-room", None).await;
    assert_eq!(pusher_trigger().await.unwrap().status(), 200);
    assert_eq!(pusher_client.recv_event("p").await["data"], "{\"n\":2}");
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let (_, reply) = client.join(&topic).await;
    assert_eq!(
        reply.payload["status"], "ok",
        "join of a cached app works without the database"
    );
    assert_eq!(trigger().await.unwrap().status(), 200);
    assert_eq!(client.recv().await.payload, json!({"n": 1}));

    let admin = node
        .admin(reqwest::Method::GET, "/api/admin/apps")
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 503);
    let body: Value = admin.json().await.unwrap();
    assert!(body["errors"]["detail"].is_string());
    let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["database"],
        false
    );

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = node
            .admin(reqwest::Method::GET, "/api/admin/apps")
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "admin API recovers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// A frozen database (connections open, nothing answered) fails registry calls after
/// `database.query_timeout_secs` instead of holding requests and joins until TCP gives up.
#[tokio::test]
async fn a_frozen_database_is_answered_503_in_bounded_time() {
    let database = fresh_postgres_database().await;
    let (target, prefix, path) = split(&database).await;
    let proxy = Proxy::start(target).await;
    let mut config = test_config(format!("{prefix}127.0.0.1:{}{path}", proxy.port));
    config.database.acquire_timeout_secs = 1;
    config.database.query_timeout_secs = 1;
    let node = spawn_config(config, None).await;
    create_app(&node, json!({"name": "frozen-db-app"})).await;

    proxy.freeze();
    let started = std::time::Instant::now();
    let admin = node
        .admin(reqwest::Method::GET, "/api/admin/apps")
        .send()
        .await
        .expect("answered before the client's 10 s timeout");
    assert_eq!(admin.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // an app the node has not cached cannot be joined, and the join is answered
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let (_, reply) = client.join("public:frozen-db-app").await;
    assert_eq!(reply.payload["response"]["reason"], "unavailable");
    proxy.cut();
}
