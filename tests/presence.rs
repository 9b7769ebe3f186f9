//! Presence channels against real nodes, Redis and Postgres, with raw Pusher and Phoenix
//! clients: one membership per channel across nodes and protocols, limits, the users API, a
//! node killed with `kill -9` and a Redis restart.

mod common;

use std::time::{Duration, Instant};

use common::process::NodeProcess;
use common::pusher::{self, signed_query};
use common::redis::RedisServer;
use common::{Db, cluster, create_app, fresh_postgres_database, redis_url, spawn_app};
use pushlite::domain::signature;
use serde_json::{Value, json};

fn creds(app: &Value) -> (String, String) {
    (
        app["key"].as_str().unwrap().to_owned(),
        app["secret"].as_str().unwrap().to_owned(),
    )
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Subscribes to a presence channel as `user` and returns the server's answer.
async fn join(
    client: &mut pusher::Client,
    app: &Value,
    channel: &str,
    user: &str,
    info: Value,
) -> Value {
    let (key, secret) = creds(app);
    let channel_data = json!({"user_id": user, "user_info": info}).to_string();
    let signed = signature::sign(
        &secret,
        &signature::channel_string(&client.socket_id, channel, Some(&channel_data)),
    );
    client
        .send(json!({"event": "pusher:subscribe", "data": {
            "channel": channel, "auth": format!("{key}:{signed}"), "channel_data": channel_data,
        }}))
        .await;
    loop {
        let frame = client.recv().await;
        if frame["channel"] == channel
            && (frame["event"] == "pusher_internal:subscription_succeeded"
                || frame["event"] == "pusher:subscription_error")
        {
            return frame;
        }
    }
}

/// The members a presence `subscription_succeeded` lists: `{"ids", "hash", "count"}`.
fn members(answer: &Value) -> Value {
    assert_eq!(
        answer["event"], "pusher_internal:subscription_succeeded",
        "{answer}"
    );
    let data: Value = serde_json::from_str(answer["data"].as_str().expect("string data")).unwrap();
    let mut presence = data["presence"].clone();
    let mut ids: Vec<String> = serde_json::from_value(presence["ids"].clone()).unwrap();
    ids.sort();
    presence["ids"] = json!(ids);
    presence
}

/// The `data` of an internal event, decoded from its string.
fn data(frame: &Value) -> Value {
    serde_json::from_str(frame["data"].as_str().expect("string data")).unwrap()
}

/// A signed HTTP API GET on `addr`.
async fn api_get(
    addr: std::net::SocketAddr,
    app: &Value,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let (key, secret) = creds(app);
    let query = signed_query(
        &key,
        &secret,
        "GET",
        path,
        extra,
        b"",
        chrono::Utc::now().timestamp(),
    );
    let response = reqwest::get(format!("http://{addr}{path}?{query}"))
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Triggers `event` on `channel` through the HTTP API of `addr`, retrying while the node
/// answers 503 (a bus settling after a Redis restart).
async fn trigger(addr: std::net::SocketAddr, app: &Value, channel: &str, event: &str) {
    let body = json!({"name": event, "channel": channel, "data": "{}"}).to_string();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = pusher::signed_trigger(&http, &format!("http://{addr}"), app, body.clone())
            .send()
            .await
            .expect("trigger");
        if response.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trigger kept failing: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts the next frames of `client` bring no presence event before the marker `event`.
async fn next_is_marker(client: &mut pusher::Client, event: &str) {
    let frame = client.recv().await;
    assert_eq!(frame["event"], event, "expected the marker, got {frame}");
}

#[tokio::test]
async fn pusher_members_across_three_nodes() {
    let nodes = cluster(3, &redis_url()).await;
    let name = unique("presence");
    let app = create_app(&nodes[0], json!({"name": name, "max_presence_members": 2})).await;
    assert_eq!(app["max_presence_members"], 2);
    let key = app["key"].as_str().unwrap().to_owned();
    let channel = "presence-room";

    let mut alice = pusher::connect(nodes[0].addr, &key).await;
    let answer = join(&mut alice, &app, channel, "alice", json!({"name": "Alice"})).await;
    assert_eq!(
        members(&answer),
        json!({"ids": ["alice"], "hash": {"alice": {"name": "Alice"}}, "count": 1})
    );

    // bob on another node: both see each other
    let mut bob = pusher::connect(nodes[1].addr, &key).await;
    let answer = join(&mut bob, &app, channel, "bob", json!({"name": "Bob"})).await;
    assert_eq!(
        members(&answer),
        json!({"ids": ["alice", "bob"], "hash": {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}}, "count": 2})
    );
    let added = alice.recv_event("pusher_internal:member_added").await;
    assert_eq!(added["channel"], channel);
    assert_eq!(
        data(&added),
        json!({"user_id": "bob", "user_info": {"name": "Bob"}})
    );

    // bob's second connection, on the third node: one member, no second member_added
    let mut bob2 = pusher::connect(nodes[2].addr, &key).await;
    let answer = join(&mut bob2, &app, channel, "bob", json!({"name": "Bob"})).await;
    assert_eq!(members(&answer)["count"], 2);
    trigger(nodes[2].addr, &app, channel, "marker-1").await;
    next_is_marker(&mut alice, "marker-1").await;

    // a third user is one too many
    let mut carol = pusher::connect(nodes[0].addr, &key).await;
    let answer = join(&mut carol, &app, channel, "carol", json!(null)).await;
    assert_eq!(answer["event"], "pusher:subscription_error");
    assert_eq!(
        answer["data"],
        json!({"type": "LimitReached", "error": "the maximum members per presence channel limit was reached", "status": 403})
    );
    let refused = nodes[0].metrics().await;
    assert_eq!(
        refused.get("pushlite_limit_refusals_total{limit=\"presence_members\"}"),
        Some(&1.0)
    );

    // the users API and user_count, from any node
    let id = app["id"].to_string();
    for node in &nodes {
        let (status, body) = api_get(
            node.addr,
            &app,
            &format!("/apps/{id}/channels/{channel}/users"),
            &[],
        )
        .await;
        assert_eq!(
            (status, body),
            (200, json!({"users": [{"id": "alice"}, {"id": "bob"}]}))
        );
    }
    // subscription counts come from the nodes' 1 s usage reports: wait for them
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = api_get(
            nodes[1].addr,
            &app,
            &format!("/apps/{id}/channels/{channel}"),
            &[("info", "user_count,subscription_count")],
        )
        .await;
        if body == json!({"occupied": true, "user_count": 2, "subscription_count": 3}) {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = api_get(
        nodes[2].addr,
        &app,
        &format!("/apps/{id}/channels"),
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
    )
    .await;
    assert_eq!(body, json!({"channels": {channel: {"user_count": 2}}}));

    // client events on a presence channel carry the sender's user id
    bob.send(json!({"event": "client-wave", "channel": channel, "data": {"hi": 1}}))
        .await;
    let wave = alice.recv_event("client-wave").await;
    assert_eq!(wave["user_id"], "bob");
    assert_eq!(wave["data"], json!({"hi": 1}));

    // bob's second connection goes: bob is still there
    drop(bob2);
    trigger(nodes[0].addr, &app, channel, "marker-2").await;
    next_is_marker(&mut alice, "marker-2").await;
    // bob's last connection leaves: member_removed, on every node
    bob.send(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
        .await;
    let removed = alice.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "bob"}));
    let (_, body) = api_get(
        nodes[2].addr,
        &app,
        &format!("/apps/{id}/channels/{channel}/users"),
        &[],
    )
    .await;
    assert_eq!(body, json!({"users": [{"id": "alice"}]}));

    // bad channel_data is refused before anything is joined
    let (key, secret) = creds(&app);
    for bad in [
        r#"{"user_info":{}}"#.to_owned(),
        format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129)),
        format!(r#"{{"user_id":"u","user_info":"{}"}}"#, "x".repeat(1100)),
        r#"{"user_id":"u","user_info":{"name":"\ud800"}}"#.to_owned(),
    ] {
        let signed = signature::sign(
            &secret,
            &signature::channel_string(&carol.socket_id, channel, Some(&bad)),
        );
        carol.send(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": format!("{key}:{signed}"), "channel_data": bad}})).await;
        let answer = carol.recv_event("pusher:subscription_error").await;
        assert_eq!(answer["data"]["type"], "InvalidChannelData", "{answer}");
    }
}

#[tokio::test]
async fn phoenix_presence_and_pusher_members_share_a_channel_on_one_node() {
    // no Redis: the embedded store
    let node = spawn_app(Db::Sqlite).await;
    let app = create_app(&node, json!({"name": "meet-presence"})).await;
    let (key, secret) = creds(&app);
    let topic = "presence-lobby:meet-presence";
    let claims = pushlite::token::Claims {
        exp: chrono::Utc::now().timestamp() + 600,
        sub: Some("phx-user".to_owned()),
        presence: Some(json!({"name": "Phoebe"})),
        subscribe: vec!["presence-*".to_owned()],
        ..Default::default()
    };
    let token = pushlite::token::mint(&secret, &claims);
    let mut phoenix = common::phx::connect(
        node.addr,
        common::phx::Vsn::V2,
        &format!("token={token}"),
        None,
    )
    .await;
    let (join_ref, reply) = phoenix.join(topic).await;
    assert_eq!(reply.payload["status"], "ok");
    let state = phoenix.recv_event("presence_state").await;
    assert_eq!(state.join_ref, json!(join_ref));
    let metas = &state.payload["phx-user"]["metas"];
    assert_eq!(metas[0]["name"], "Phoebe");
    assert!(metas[0]["phx_ref"].is_string());

    // a token without `sub` cannot join a presence channel
    let no_sub = pushlite::token::mint(
        &secret,
        &pushlite::token::Claims {
            sub: None,
            ..claims.clone()
        },
    );
    let mut anonymous = common::phx::connect(
        node.addr,
        common::phx::Vsn::V2,
        &format!("token={no_sub}"),
        None,
    )
    .await;
    assert_eq!(
        anonymous.join(topic).await.1.payload["response"]["reason"],
        "unauthorized"
    );

    // a Pusher member: Phoenix sees a presence_diff join, Pusher sees the Phoenix member
    let mut client = pusher::connect(node.addr, &key).await;
    let answer = join(
        &mut client,
        &app,
        "presence-lobby",
        "pusher-user",
        json!({"name": "Pat"}),
    )
    .await;
    assert_eq!(
        members(&answer),
        json!({"ids": ["phx-user", "pusher-user"], "hash": {"phx-user": {"name": "Phoebe"}, "pusher-user": {"name": "Pat"}}, "count": 2})
    );
    let diff = phoenix.recv_event("presence_diff").await;
    assert_eq!(diff.payload["leaves"], json!({}));
    let joined = &diff.payload["joins"]["pusher-user"]["metas"][0];
    assert_eq!(joined["name"], "Pat");
    let pusher_ref = joined["phx_ref"].clone();

    // the Phoenix member leaves: Pusher hears member_removed
    let r = phoenix.make_ref();
    phoenix
        .push(Some(&join_ref), &r, topic, "phx_leave", json!({}))
        .await;
    let removed = client.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "phx-user"}));
    // and rejoins, then the Pusher member disconnects: a diff with its meta in leaves
    let (_, reply) = phoenix.join(topic).await;
    assert_eq!(reply.payload["status"], "ok");
    let state = phoenix.recv_event("presence_state").await;
    assert_eq!(
        state.payload["pusher-user"]["metas"][0]["phx_ref"],
        pusher_ref
    );
    drop(client);
    let diff = phoenix.recv_event("presence_diff").await;
    assert_eq!(
        diff.payload["leaves"]["pusher-user"]["metas"][0]["phx_ref"],
        pusher_ref
    );
    let (status, body) = api_get(
        node.addr,
        &app,
        &format!("/apps/{}/channels/presence-lobby/users", app["id"]),
        &[],
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"users": [{"id": "phx-user"}]}))
    );
}

/// Waits until the users API of `addr` lists exactly `users`.
async fn users_become(
    addr: std::net::SocketAddr,
    app: &Value,
    channel: &str,
    users: &[&str],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let want: Vec<Value> = users.iter().map(|u| json!({"id": u})).collect();
    loop {
        let (status, body) = api_get(
            addr,
            app,
            &format!("/apps/{}/channels/{channel}/users", app["id"]),
            &[],
        )
        .await;
        if status == 200 && body["users"] == json!(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "users never became {users:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn members_of_a_killed_node_are_removed_within_the_timeout() {
    let redis = RedisServer::start().await;
    let database = fresh_postgres_database().await;
    let timeout_ms: u32 = 3000;
    let env = [
        ("REDIS_URL", redis.url()),
        ("DATABASE_URL", database),
        ("PUSHLITE_PRESENCE__NODE_TIMEOUT_MS", timeout_ms.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let survivor = NodeProcess::spawn(&env).await;
    let doomed = NodeProcess::spawn(&env).await;
    let app = survivor.create_app(&unique("crash")).await;
    let key = app["key"].as_str().unwrap().to_owned();
    let mut alice = pusher::connect(survivor.addr, &key).await;
    join(&mut alice, &app, "presence-x", "alice", json!(null)).await;
    let mut bob = pusher::connect(doomed.addr, &key).await;
    let answer = join(&mut bob, &app, "presence-x", "bob", json!(null)).await;
    assert_eq!(members(&answer)["count"], 2);
    alice.recv_event("pusher_internal:member_added").await;

    doomed.signal("KILL");
    let killed = Instant::now();
    let removed = loop {
        let frame = alice
            .try_recv(Duration::from_millis(u64::from(timeout_ms) + 3000))
            .await
            .expect("member_removed after the node died");
        if frame["event"] == "pusher_internal:member_removed" {
            break frame;
        }
    };
    let took = killed.elapsed();
    assert_eq!(data(&removed), json!({"user_id": "bob"}));
    assert!(
        took <= Duration::from_millis(u64::from(timeout_ms) + 500),
        "removed after {took:?}, timeout {timeout_ms} ms"
    );
    eprintln!("member of a killed node removed after {took:?} (timeout {timeout_ms} ms)");
    users_become(
        survivor.addr,
        &app,
        "presence-x",
        &["alice"],
        Duration::from_secs(1),
    )
    .await;
    // a new member sees only the living
    let mut carol = pusher::connect(survivor.addr, &key).await;
    let answer = join(&mut carol, &app, "presence-x", "carol", json!(null)).await;
    assert_eq!(members(&answer)["ids"], json!(["alice", "carol"]));
}

#[tokio::test]
async fn a_redis_restart_announces_no_spurious_leaves_or_joins() {
    let mut redis = RedisServer::start().await;
    let nodes = cluster(2, &redis.url()).await;
    let app = create_app(&nodes[0], json!({"name": unique("restart")})).await;
    let key = app["key"].as_str().unwrap().to_owned();
    let mut alice = pusher::connect(nodes[0].addr, &key).await;
    join(&mut alice, &app, "presence-r", "alice", json!(null)).await;
    let mut bob = pusher::connect(nodes[1].addr, &key).await;
    join(&mut bob, &app, "presence-r", "bob", json!(null)).await;
    let mut carol = pusher::connect(nodes[1].addr, &key).await;
    join(&mut carol, &app, "presence-r", "carol", json!(null)).await;
    for user in ["bob", "carol"] {
        let added = alice.recv_event("pusher_internal:member_added").await;
        assert_eq!(data(&added)["user_id"], user);
    }
    bob.recv_event("pusher_internal:member_added").await;

    redis.kill9();
    // carol leaves while Redis is down: her leave waits for Redis to come back
    carol
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-r"}}))
        .await;
    redis.restart().await;
    // the nodes put their members back (Redis forgot them) without telling anyone, and
    // carol's leave is announced once
    let took = users_become(
        nodes[0].addr,
        &app,
        "presence-r",
        &["alice", "bob"],
        Duration::from_secs(10),
    )
    .await;
    eprintln!("members re-asserted {took:?} after the restart");
    trigger(nodes[1].addr, &app, "presence-r", "marker").await;
    for client in [&mut alice, &mut bob] {
        let mut seen = Vec::new();
        while !(seen.contains(&"marker".to_owned()) && seen.contains(&"removed carol".to_owned())) {
            let Some(frame) = client.try_recv(Duration::from_secs(5)).await else {
                panic!("expected the marker and carol's removal, got {seen:?}");
            };
            let event = frame["event"].as_str().unwrap_or_default();
            seen.push(match event {
                "pusher_internal:member_removed" => {
                    format!("removed {}", data(&frame)["user_id"].as_str().unwrap())
                }
                "pusher_internal:member_added" => {
                    format!("added {}", data(&frame)["user_id"].as_str().unwrap())
                }
                other => other.to_owned(),
            });
        }
        seen.sort();
        assert_eq!(
            seen,
            ["marker", "removed carol"],
            "no spurious presence events"
        );
    }

    // and the membership works on: a new member, then a real leave
    let mut dave = pusher::connect(nodes[1].addr, &key).await;
    let answer = join(&mut dave, &app, "presence-r", "dave", json!(null)).await;
    assert_eq!(members(&answer)["ids"], json!(["alice", "bob", "dave"]));
    let added = alice.recv_event("pusher_internal:member_added").await;
    assert_eq!(data(&added)["user_id"], "dave");
    // a change lost on the way (a version skipped): the sessions fetch the membership again
    let meta = format!(
        "pushlite:presence:{{presence-r:{}}}:m",
        app["slug"].as_str().unwrap()
    );
    let epoch = common::redis::cli(redis.port, &["hget", &meta, "epoch"]).await;
    let ver: u64 = common::redis::cli(redis.port, &["hget", &meta, "ver"])
        .await
        .parse()
        .unwrap();
    let skipped = json!({"v": 1, "presence": {"op": "leave", "edge": false, "epoch": epoch, "ver": ver + 3,
        "member": {"ref": "0.0.0", "user_id": "ghost"}}});
    let topic = format!("presence-r:{}", app["slug"].as_str().unwrap());
    common::redis::cli(redis.port, &["publish", &topic, &skipped.to_string()]).await;
    // the forged version is ahead of the store's, so the first snapshot looks stale and one
    // more follows; both list the members as they are
    for _ in 0..2 {
        let resynced = alice
            .recv_event("pusher_internal:subscription_succeeded")
            .await;
        assert_eq!(members(&resynced)["ids"], json!(["alice", "bob", "dave"]));
    }

    drop(bob);
    let removed = alice.recv_event("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "bob"}));
}
