//! Several nodes sharing one Redis and one Postgres: cross-node delivery exactly once,
//! per-topic subscriptions, cluster-wide app changes, Redis faults, Redis Cluster.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::phx::{self, Client, Vsn};
use common::redis::{RedisServer, cli, form_cluster};
use common::{TestApp, create_app, fresh_postgres_database, redis_url, test_config};
use serde_json::{Value, json};

/// `count` nodes on one Postgres database and the given Redis URL.
async fn nodes(count: usize, redis: &str) -> Vec<TestApp> {
    common::cluster(count, redis).await
}

async fn joined(node: &TestApp, topic: &str) -> (Client, String) {
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let (join_ref, reply) = client.join(topic).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    (client, join_ref)
}

async fn trigger(node: &TestApp, app: &Value, payload: Value) -> reqwest::StatusCode {
    node.http
        .post(node.url(&format!(
            "/api/apps/{}/events",
            app["slug"].as_str().unwrap()
        )))
        .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
        .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": payload}))
        .send()
        .await
        .map_or(reqwest::StatusCode::BAD_GATEWAY, |r| r.status())
}

/// `pushlite_bus_messages_received_total` of a node.
async fn bus_received(node: &TestApp) -> f64 {
    metric(node, "pushlite_bus_messages_received_total").await
}

async fn metric(node: &TestApp, name: &str) -> f64 {
    node.metrics()
        .await
        .get(name)
        .copied()
        .expect("the metric is exposed")
}

/// A unique slug per test, since tests share the harness's Redis.
fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[tokio::test]
async fn three_nodes_deliver_exactly_once() {
    let nodes = nodes(3, &redis_url()).await;
    let app = create_app(&nodes[0], json!({"name": unique_name("trio")})).await;
    let topic = format!("public:{}", app["slug"].as_str().unwrap());
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(joined(node, &topic).await);
    }
    assert_eq!(trigger(&nodes[1], &app, json!({"n": 1})).await, 200);
    for (client, _) in &mut clients {
        let frame = client.recv().await;
        assert_eq!(
            (frame.event.as_str(), frame.payload.clone()),
            ("t:e", json!({"n": 1}))
        );
    }
    // a client event from the subscriber on node C
    let (sender, join_ref) = &mut clients[2];
    sender
        .push(Some(join_ref), "90", &topic, "chat", json!({"from": "c"}))
        .await;
    for (client, _) in &mut clients {
        let frame = client.recv_event("chat").await;
        assert_eq!(frame.payload, json!({"from": "c"}));
    }
    for (client, _) in &mut clients {
        let extra = client.try_recv(Duration::from_millis(300)).await;
        assert!(
            extra.as_ref().is_none_or(|f| f.event == "phx_reply"),
            "nothing is delivered twice: {extra:?}"
        );
    }
}

#[tokio::test]
async fn a_node_subscribes_only_to_topics_joined_on_it() {
    let redis = RedisServer::start().await;
    let nodes = nodes(2, &redis.url()).await;
    let one = create_app(&nodes[0], json!({"name": "app-one"})).await;
    create_app(&nodes[0], json!({"name": "app-two"})).await;
    let port = redis.port;
    let numsub = |topic: &'static str| async move {
        let out = cli(port, &["pubsub", "numsub", topic]).await;
        out.lines().nth(1).unwrap_or_default().to_owned()
    };
    let (mut a, a_ref) = joined(&nodes[0], "public:app-one").await;
    let (_b, _) = joined(&nodes[0], "public:app-one").await;
    assert_eq!(
        numsub("public:app-one").await,
        "1",
        "one subscription per node, not per socket"
    );
    assert_eq!(numsub("public:app-two").await, "0");
    let (mut c, c_ref) = joined(&nodes[1], "public:app-one").await;
    assert_eq!(numsub("public:app-one").await, "2");
    // no pattern subscriptions at all
    assert_eq!(cli(redis.port, &["pubsub", "numpat"]).await, "0");
    // the last local subscriber out unsubscribes the node
    c.push(Some(&c_ref), "5", "public:app-one", "phx_leave", json!({}))
        .await;
    c.recv_event("phx_close").await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while numsub("public:app-one").await != "1" {
        assert!(
            Instant::now() < deadline,
            "node B unsubscribed after its last leave"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // and node B's subscriber connection receives nothing more for the topic
    let received_by_b = bus_received(&nodes[1]).await;
    let bytes_of_a = metric(&nodes[0], "pushlite_bus_bytes_received_total").await;
    let padding = "x".repeat(1000);
    assert_eq!(
        trigger(&nodes[0], &one, json!({"n": 2, "pad": padding})).await,
        200
    );
    assert_eq!(a.recv().await.payload, json!({"n": 2, "pad": padding}));
    // the channel name and the envelope, payload included, counted once
    let bytes = metric(&nodes[0], "pushlite_bus_bytes_received_total").await - bytes_of_a;
    assert!(
        (1000.0..1500.0).contains(&bytes),
        "{bytes} bytes for one event"
    );
    assert!(c.try_recv(Duration::from_millis(300)).await.is_none());
    assert_eq!(
        bus_received(&nodes[1]).await,
        received_by_b,
        "node B got no Redis traffic"
    );
    assert!(bus_received(&nodes[0]).await > 0.0);
    drop(a_ref);
}

#[tokio::test]
async fn app_changes_reach_every_node_within_a_second() {
    let nodes = nodes(3, &redis_url()).await;
    let app = create_app(&nodes[0], json!({"name": unique_name("fleet")})).await;
    let slug = app["slug"].as_str().unwrap().to_owned();
    let topic = format!("public:{slug}");
    // every node has the app cached: it served a trigger and a join
    for node in &nodes {
        assert_eq!(trigger(node, &app, json!({})).await, 200);
    }
    let mut b = joined(&nodes[1], &topic).await;
    let mut c = joined(&nodes[2], &topic).await;

    // a rotated secret stops working on every node within 1 s
    let rotated: Value = nodes[0]
        .admin(
            reqwest::Method::POST,
            &format!("/api/admin/apps/{slug}/rotate_secret"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let started = Instant::now();
    for node in &nodes[1..] {
        loop {
            let status = trigger(node, &app, json!({})).await;
            if status == 401 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "old secret still accepted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(trigger(node, &rotated["data"], json!({})).await, 200);
    }
    // drain what the new secret delivered
    b.0.recv_event("t:e").await;
    c.0.recv_event("t:e").await;

    // deactivating on node A closes the sockets on B and C within 1 s
    let started = Instant::now();
    nodes[0]
        .admin(reqwest::Method::PATCH, &format!("/api/admin/apps/{slug}"))
        .json(&json!({"app": {"active": false}}))
        .send()
        .await
        .unwrap();
    for (client, join_ref) in [&mut b, &mut c] {
        let close = client.recv_event("phx_close").await;
        assert_eq!(close.join_ref, json!(join_ref));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for node in &nodes {
        assert_eq!(trigger(node, &rotated["data"], json!({})).await, 404);
    }
}

#[tokio::test]
async fn redis_restart_loses_no_accepted_trigger() {
    let mut redis = RedisServer::start().await;
    let nodes = Arc::new(nodes(2, &redis.url()).await);
    let app = create_app(&nodes[0], json!({"name": "fault-app"})).await;
    let (mut a, _) = joined(&nodes[0], "public:fault-app").await;
    let (mut b, _) = joined(&nodes[1], "public:fault-app").await;

    // triggers every 20 ms on alternating nodes, recording which were accepted
    let accepted = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let refused = Arc::new(Mutex::new(Vec::<u16>::new()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let producer = {
        let (nodes, app, accepted, refused, stop) = (
            nodes.clone(),
            app.clone(),
            accepted.clone(),
            refused.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            for seq in 0u64.. {
                let node = &nodes[(seq % 2) as usize];
                let status = trigger(node, &app, json!({"seq": seq})).await;
                if status == 200 {
                    accepted.lock().unwrap().push((seq, Instant::now()));
                } else {
                    refused.lock().unwrap().push(status.as_u16());
                }
                tokio::select! {
                    () = stop.notified() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill9();
    // while Redis is down: triggers refused, sockets open, /readyz says so
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ready = nodes[0]
        .http
        .get(nodes[0].url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<Value>().await.unwrap()["checks"]["bus"], false);
    let up_at = redis.restart().await;
    // both nodes re-subscribe within 2 s of Redis accepting connections, with no client action
    loop {
        let out = cli(redis.port, &["pubsub", "numsub", "public:fault-app"]).await;
        if out.lines().nth(1) == Some("2") {
            break;
        }
        assert!(
            up_at.elapsed() < Duration::from_secs(2),
            "re-subscribed within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resubscribed_after = up_at.elapsed();
    // delivery resumes: wait for an accepted trigger after the restart
    loop {
        let resumed = accepted.lock().unwrap().iter().any(|(_, at)| *at > up_at);
        if resumed {
            break;
        }
        assert!(
            up_at.elapsed() < Duration::from_secs(4),
            "triggers accepted again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_accepted_after = accepted
        .lock()
        .unwrap()
        .iter()
        .find(|(_, at)| *at > up_at)
        .map(|(_, at)| *at - up_at);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    producer.await.unwrap();

    let reconnects = nodes[0].metrics().await["pushlite_bus_reconnects_total"];
    assert!(reconnects >= 1.0, "reconnects are counted");
    let refused = refused.lock().unwrap().clone();
    assert!(
        !refused.is_empty(),
        "some triggers were refused while Redis was down"
    );
    assert!(
        refused.iter().all(|s| *s == 503),
        "refusals are 503: {refused:?}"
    );
    let accepted: BTreeSet<u64> = accepted.lock().unwrap().iter().map(|(s, _)| *s).collect();
    let mut report = Vec::new();
    for client in [&mut a, &mut b] {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        while let Some(frame) = client.try_recv(Duration::from_millis(500)).await {
            if let Some(seq) = frame.payload["seq"].as_u64() {
                *seen.entry(seq).or_default() += 1;
            }
        }
        let missing: Vec<_> = accepted
            .iter()
            .filter(|s| !seen.contains_key(s))
            .copied()
            .collect();
        let mut seen_sorted: Vec<_> = seen.keys().copied().collect();
        seen_sorted.sort_unstable();
        report.push((missing, seen_sorted, seen));
    }
    for (missing, seen_sorted, seen) in &report {
        assert!(
            missing.is_empty(),
            "accepted triggers lost: {missing:?}; accepted {accepted:?}; seen {seen_sorted:?}"
        );
        assert!(seen.values().all(|n| *n == 1), "duplicates: {seen:?}");
    }
    eprintln!(
        "re-subscribed {resubscribed_after:?} and accepting {first_accepted_after:?} after Redis restarted; {} accepted, {} refused",
        accepted.len(),
        refused.len()
    );
}

#[tokio::test]
async fn redis_cluster_uses_sharded_pubsub() {
    let mut servers: Vec<RedisServer> = Vec::new();
    for _ in 0..3 {
        servers.push(
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
            ])
            .await,
        );
    }
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let addrs = form_cluster(&[], &ports).await;
    let url = format!(
        "redis-cluster://{}?node={}&node={}",
        addrs[0], addrs[1], addrs[2]
    );
    let nodes = nodes(2, &url).await;
    let app = create_app(&nodes[0], json!({"name": "shard-app"})).await;
    let (mut a, _) = joined(&nodes[0], "public:shard-app").await;
    let (mut b, _) = joined(&nodes[1], "public:shard-app").await;
    for s in &servers {
        cli(s.port, &["config", "resetstat"]).await;
    }
    assert_eq!(trigger(&nodes[0], &app, json!({"n": 7})).await, 200);
    assert_eq!(a.recv().await.payload, json!({"n": 7}));
    assert_eq!(b.recv().await.payload, json!({"n": 7}));

    let owner_port = {
        let slot = cli(servers[0].port, &["cluster", "keyslot", "public:shard-app"]).await;
        let owner = cli(servers[0].port, &["cluster", "nodes"])
            .await
            .lines()
            .find(|line| {
                line.split_whitespace().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let slot: u32 = slot.parse().unwrap_or(u32::MAX);
                    lo.parse::<u32>().is_ok_and(|lo| lo <= slot)
                        && hi.parse::<u32>().is_ok_and(|hi| slot <= hi)
                })
            })
            .expect("a node owns the slot")
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        owner
            .split(['@', ':'])
            .nth(1)
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    for s in &servers {
        let stats = cli(s.port, &["info", "commandstats"]).await;
        let spublished = stats.contains("cmdstat_spublish:");
        assert_eq!(
            spublished,
            s.port == owner_port,
            "only the owning shard saw SPUBLISH"
        );
        assert!(
            !stats.contains("cmdstat_publish:"),
            "no cluster-wide PUBLISH for events"
        );
        let shard_subs = cli(s.port, &["pubsub", "shardnumsub", "public:shard-app"]).await;
        let count = shard_subs.lines().nth(1).unwrap_or("0").to_owned();
        let expected = if s.port == owner_port { "2" } else { "0" };
        assert_eq!(
            count, expected,
            "shard subscriptions live on the owner only"
        );
    }

    // presence: the scripts run on the shard of the channel's hash tag and announce there
    let topic = "presence-shard:shard-app";
    let member = |sub: &str| {
        let claims = pushlite::token::Claims {
            exp: chrono::Utc::now().timestamp() + 600,
            sub: Some(sub.to_owned()),
            subscribe: vec!["presence-*".to_owned()],
            ..Default::default()
        };
        pushlite::token::mint(app["secret"].as_str().unwrap(), &claims)
    };
    let mut first = phx::connect(
        nodes[0].addr,
        Vsn::V2,
        &format!("token={}", member("u1")),
        None,
    )
    .await;
    assert_eq!(first.join(topic).await.1.payload["status"], "ok");
    first.recv_event("presence_state").await;
    let mut second = phx::connect(
        nodes[1].addr,
        Vsn::V2,
        &format!("token={}", member("u2")),
        None,
    )
    .await;
    assert_eq!(second.join(topic).await.1.payload["status"], "ok");
    let state = second.recv_event("presence_state").await;
    let mut users: Vec<&String> = state.payload.as_object().unwrap().keys().collect();
    users.sort();
    assert_eq!(users, ["u1", "u2"]);
    let diff = first.recv_event("presence_diff").await;
    assert!(diff.payload["joins"]["u2"].is_object(), "{diff:?}");
    drop(second);
    let diff = first.recv_event("presence_diff").await;
    assert!(diff.payload["leaves"]["u2"].is_object(), "{diff:?}");

    // history: one script stores and publishes, on the shard of the channel's hash tag
    let patched = nodes[0]
        .admin(reqwest::Method::PATCH, "/api/admin/apps/shard-app")
        .json(&json!({"app": {"history_size": 5}}))
        .send()
        .await
        .expect("update");
    assert_eq!(patched.status(), 200);
    // Every node has dropped its cached copy once the change was announced (within a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response: Value = nodes[1]
            .http
            .post(nodes[1].url("/api/apps/shard-app/events"))
            .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
            .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {"n": 8}}))
            .send()
            .await
            .expect("trigger")
            .json()
            .await
            .expect("JSON");
        let kept = response["offset"].is_u64();
        // The frames of this trigger reach both clients either way.
        for client in [&mut a, &mut b] {
            let frame = client.recv_event("t:e").await;
            assert_eq!(frame.payload, json!({"n": 8}));
            assert_eq!(
                frame.msg_ref,
                json!(kept.then(|| format!("+{}", response["offset"])))
            );
        }
        if kept {
            break;
        }
        assert!(Instant::now() < deadline, "history never switched on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut late = phx::connect(nodes[0].addr, Vsn::V2, "", None).await;
    let r = late.make_ref();
    late.push(
        Some(&r),
        &r,
        "public:shard-app",
        "phx_join",
        json!({"history": 1}),
    )
    .await;
    let reply = late.recv_reply(&r).await;
    assert_eq!(reply.payload["response"]["offset"], 1, "{reply:?}");
    let replayed = late.recv_event("t:e").await;
    assert_eq!(
        (replayed.payload, replayed.msg_ref),
        (json!({"n": 8}), json!("+1"))
    );
}

#[tokio::test]
async fn a_cluster_url_for_a_single_redis_is_a_startup_error() {
    let database = fresh_postgres_database().await;
    let mut config = test_config(database);
    let single = RedisServer::start().await;
    config.redis.url = Some(format!("redis-cluster://127.0.0.1:{}", single.port));
    assert!(pushlite::Server::build(config).await.is_err());
}

#[tokio::test]
async fn a_plain_url_for_a_cluster_node_is_a_startup_error() {
    let database = fresh_postgres_database().await;
    let mut config = test_config(database);
    let node = RedisServer::start_with(&["--cluster-enabled", "yes"]).await;
    config.redis.url = Some(node.url());
    let error = pushlite::Server::build(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("redis-cluster://"), "{error}");
}
