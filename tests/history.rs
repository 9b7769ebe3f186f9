//! Channel history and recovery against real parts: nodes sharing a real Redis (or a throwaway
//! one the test kills), the official `phoenix` and `pusher-js` clients, raw WebSocket clients,
//! and the HTTP read. `make test` installs `tests/js/node_modules` with `npm ci`.

mod common;

use std::time::{Duration, Instant};

use common::phx::{self, Vsn};
use common::redis::{RedisServer, cli};
use common::{
    Db, TestApp, cluster, create_app, fresh_postgres_database, redis_url, run_client,
    spawn_app_with, spawn_config, test_config,
};
use serde_json::{Value, json};

const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

fn has_js_clients() {
    assert!(
        std::path::Path::new(JS_DIR)
            .join("node_modules/phoenix")
            .exists(),
        "run `npm ci --prefix tests/js` (make test does) before this test"
    );
}

/// Triggers `payload` on `public:<slug>` as event `feed:msg`; returns the response body.
async fn trigger(node: &TestApp, app: &Value, payload: Value) -> (u16, Value) {
    let slug = app["slug"].as_str().unwrap();
    let response = node
        .http
        .post(node.url(&format!("/api/apps/{slug}/events")))
        .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
        .json(&json!({"topic": "feed", "event": "msg", "scope": "public", "payload": payload}))
        .send()
        .await
        .expect("trigger");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Joins with `params`; returns the join reply's response.
async fn join(client: &mut phx::Client, topic: &str, params: Value) -> Value {
    let r = client.make_ref();
    client.push(Some(&r), &r, topic, "phx_join", params).await;
    let reply = client.recv_reply(&r).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    reply.payload["response"].clone()
}

/// The `seq` of the next `feed:msg` broadcasts, with their refs.
async fn next_events(client: &mut phx::Client, count: usize) -> Vec<(u64, Value)> {
    let mut events = Vec::new();
    while events.len() < count {
        let frame = client.recv().await;
        if frame.event == "feed:msg" {
            events.push((frame.payload["seq"].as_u64().expect("seq"), frame.msg_ref));
        }
    }
    events
}

fn refs(offsets: std::ops::RangeInclusive<u64>) -> Vec<Value> {
    offsets.map(|o| json!(format!("+{o}"))).collect()
}

/// Runs `history_e2e.mjs`: phoenix.js on node A of two, cut off while `missed` events are
/// triggered on node B, for an app keeping `history_size` events per channel.
async fn cut_off(history_size: u32, before: u32, missed: u32, after: u32) -> Value {
    has_js_clients();
    let nodes = cluster(2, &redis_url()).await;
    let app = create_app(
        &nodes[0],
        json!({ "name": unique("cut"), "history_size": history_size }),
    )
    .await;
    assert_eq!(app["history_size"], history_size);
    let args = json!({
        "a": nodes[0].addr.to_string(),
        "b": nodes[1].addr.to_string(),
        "slug": app["slug"], "key": app["key"], "secret": app["secret"],
        "before": before, "missed": missed, "after": after,
    });
    run_client(
        "node",
        &["history_e2e.mjs".to_owned(), args.to_string()],
        JS_DIR,
    )
    .await
}

/// The article's flow with a phone losing its connection: phoenix.js on node A is cut off while
/// 100 events are triggered on node B, then comes back with the README's join params and gets
/// exactly those 100, in order, then live events, with nothing twice.
#[tokio::test]
async fn phoenix_js_recovers_what_it_missed_across_two_nodes() {
    let r = cut_off(200, 3, 100, 5).await;
    let replies = r["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 2, "{r}");
    assert_eq!(replies[0]["offset"], 0, "a fresh channel: {r}");
    let epoch = replies[0]["epoch"].as_str().expect("an epoch");
    assert_eq!(
        replies[1],
        json!({"recovered": true, "offset": 103, "epoch": epoch}),
        "{r}"
    );
    let seqs: Vec<u64> = serde_json::from_value(r["seqs"].clone()).unwrap();
    assert_eq!(seqs, (1..=109).collect::<Vec<_>>(), "in order, once each");
    assert_eq!(r["refs"], json!(refs(1..=109)));
}

/// More missed than the channel keeps: `recovered: false` with the new position, and none of
/// the missed events (recovery is never partial).
#[tokio::test]
async fn a_gap_beyond_the_history_is_not_recovered() {
    let r = cut_off(10, 2, 20, 0).await;
    let epoch = r["replies"][0]["epoch"].clone();
    assert_eq!(
        r["replies"][1],
        json!({"recovered": false, "offset": 22, "epoch": epoch}),
        "{r}"
    );
    // The two live ones, then only the last event triggered after the rejoin.
    assert_eq!(r["seqs"], json!([1, 2, 23]), "{r}");
}

/// `{"history": N}` gives a late joiner the last N events (at most what the channel keeps),
/// on both serializers, with offsets as refs; events go on live after them.
#[tokio::test]
async fn a_late_joiner_gets_the_last_events() {
    let node = spawn_redis_node(&redis_url()).await;
    let app = create_app(&node, json!({ "name": unique("late"), "history_size": 6 })).await;
    for seq in 1..=8 {
        let (status, body) = trigger(&node, &app, json!({ "seq": seq })).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["offset"], seq,
            "the events API tells the position: {body}"
        );
    }
    let topic = format!("public:{}", app["slug"].as_str().unwrap());
    let mut v2 = phx::connect(node.addr, Vsn::V2, "", None).await;
    let reply = join(&mut v2, &topic, json!({"history": 5})).await;
    assert_eq!(reply["offset"], 8);
    let events = next_events(&mut v2, 5).await;
    assert_eq!(
        events,
        (4..=8).zip(refs(4..=8)).collect::<Vec<_>>(),
        "the last five, oldest first"
    );
    let mut v1 = phx::connect(node.addr, Vsn::V1, "", None).await;
    join(&mut v1, &topic, json!({"history": 50})).await;
    let events = next_events(&mut v1, 6).await;
    assert_eq!(
        events.first().map(|e| e.0),
        Some(3),
        "capped at history_size"
    );
    assert_eq!(events.last().map(|e| e.1.clone()), Some(json!("+8")));
    trigger(&node, &app, json!({ "seq": 9 })).await;
    assert_eq!(next_events(&mut v2, 1).await, vec![(9, json!("+9"))]);
    assert_eq!(next_events(&mut v1, 1).await, vec![(9, json!("+9"))]);
    // A bad `since` is refused with a reason, and the channel is not joined.
    let r = v2.make_ref();
    v2.push(
        Some(&r),
        &r,
        &topic,
        "phx_join",
        json!({"since": {"offset": -1}}),
    )
    .await;
    let reply = v2.recv_reply(&r).await;
    assert_eq!(reply.payload["status"], "error");
    assert!(
        reply.payload["response"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("since must be")),
        "{reply:?}"
    );
}

/// A channel without history says it cannot recover; its broadcasts keep a null ref.
#[tokio::test]
async fn a_channel_without_history_cannot_recover() {
    let node = spawn_redis_node(&redis_url()).await;
    let app = create_app(&node, json!({ "name": unique("plain") })).await;
    assert_eq!(app["history_size"], 0);
    let topic = format!("public:{}", app["slug"].as_str().unwrap());
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let since = json!({"since": {"offset": 3, "epoch": "abc"}});
    assert_eq!(
        join(&mut client, &topic, since).await,
        json!({"recovered": false})
    );
    let (status, body) = trigger(&node, &app, json!({ "seq": 1 })).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(next_events(&mut client, 1).await, vec![(1, Value::Null)]);
}

/// A Redis restarted from its append-only file still holds the channel's history, but cannot
/// vouch for it (a restart from disk or a failover may lose the last writes clients were
/// sent): the channel gets a new epoch, and a client holding the old one is told
/// `recovered: false`; a connected one rejoins.
#[tokio::test]
async fn a_redis_restart_starts_a_new_epoch() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let node = spawn_redis_node(&redis.url()).await;
    let app = create_app(
        &node,
        json!({ "name": unique("epoch"), "history_size": 10 }),
    )
    .await;
    let topic = format!("public:{}", app["slug"].as_str().unwrap());
    let mut live = phx::connect(node.addr, Vsn::V2, "", None).await;
    let r = live.make_ref();
    live.push(Some(&r), &r, &topic, "phx_join", json!({})).await;
    assert_eq!(live.recv_reply(&r).await.payload["status"], "ok");
    let mut before = Value::Null;
    for seq in 1..=3 {
        before = trigger(&node, &app, json!({ "seq": seq })).await.1;
    }
    assert_eq!(before["offset"], 3);
    assert_eq!(next_events(&mut live, 3).await.len(), 3);
    redis.kill9();
    redis.restart().await;
    // Publishing is refused until every node had time to subscribe again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (status, body) = trigger(&node, &app, json!({ "seq": 4 })).await;
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "redis did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after["offset"], 1, "numbering starts again: {after}");
    assert_ne!(after["epoch"], before["epoch"]);
    // The connected client is not handed an event of a numbering it does not hold: its channel
    // errors, so that phoenix.js rejoins with its position and learns what happened.
    let errored = live.recv().await;
    assert_eq!(
        (errored.event.as_str(), &errored.join_ref),
        ("phx_error", &json!(r))
    );
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let since = json!({"since": {"offset": 3, "epoch": before["epoch"]}});
    assert_eq!(
        join(&mut client, &topic, since).await,
        json!({"recovered": false, "offset": 1, "epoch": after["epoch"]})
    );
    // Nothing replayed: the next frame is the next live event.
    trigger(&node, &app, json!({ "seq": 5 })).await;
    assert_eq!(next_events(&mut client, 1).await, vec![(5, json!("+2"))]);
}

/// A broadcast that does not follow what a client holds (events lost on the way to its node;
/// here a forged envelope published straight to Redis with a later offset) is not sent: the
/// channel errors, and the client's rejoin with its position recovers what the history holds.
#[tokio::test]
async fn a_gap_in_live_delivery_makes_the_client_rejoin() {
    let redis = RedisServer::start().await;
    let node = spawn_redis_node(&redis.url()).await;
    let app = create_app(&node, json!({ "name": unique("hole"), "history_size": 10 })).await;
    let topic = format!("public:{}", app["slug"].as_str().unwrap());
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let r = client.make_ref();
    client
        .push(Some(&r), &r, &topic, "phx_join", json!({}))
        .await;
    let joined = client.recv_reply(&r).await.payload["response"].clone();
    let epoch = joined["epoch"].as_str().expect("an epoch").to_owned();
    trigger(&node, &app, json!({ "seq": 1 })).await;
    assert_eq!(next_events(&mut client, 1).await, vec![(1, json!("+1"))]);
    let forged = json!({"offset": 3, "epoch": epoch, "v": 1, "event": "feed:msg",
                        "payload": {"seq": 3}});
    assert_eq!(
        cli(redis.port, &["publish", &topic, &forged.to_string()]).await,
        "1"
    );
    let errored = client.recv().await;
    assert_eq!(
        (errored.event.as_str(), &errored.join_ref),
        ("phx_error", &json!(r)),
        "{errored:?}"
    );
    // Until the rejoin, nothing more of the channel is sent.
    trigger(&node, &app, json!({ "seq": 2 })).await;
    let since = json!({"since": {"offset": 1, "epoch": epoch}});
    assert_eq!(
        join(&mut client, &topic, since).await,
        json!({"recovered": true, "offset": 2, "epoch": epoch})
    );
    assert_eq!(next_events(&mut client, 1).await, vec![(2, json!("+2"))]);
    trigger(&node, &app, json!({ "seq": 4 })).await;
    assert_eq!(next_events(&mut client, 1).await, vec![(4, json!("+3"))]);
}

/// pusher-js on an empty cache channel gets `pusher:cache_miss`; after a trigger through the
/// Node SDK on the other node, a new subscriber gets the last event first, and the SDK reads
/// it with `info=cache`.
#[tokio::test]
async fn pusher_js_cache_channels_across_two_nodes() {
    has_js_clients();
    let nodes = cluster(2, &redis_url()).await;
    let app = create_app(&nodes[0], json!({ "name": unique("cache") })).await;
    let args = json!({
        "a": nodes[0].addr.to_string(),
        "b": nodes[1].addr.to_string(),
        "appId": app["id"].to_string(),
        "key": app["key"], "secret": app["secret"],
    });
    let r = run_client(
        "node",
        &["cache_e2e.mjs".to_owned(), args.to_string()],
        JS_DIR,
    )
    .await;
    assert_eq!(r["empty"]["event"], "pusher:cache_miss", "{r}");
    assert_eq!(r["triggerStatus"], 200);
    assert_eq!(r["live"], json!({"usd": 42}));
    assert_eq!(r["cached"], json!({"event": "price", "data": {"usd": 42}}));
    // Occupancy comes from the nodes' periodic reports: only its presence is certain here.
    assert!(r["info"]["occupied"].is_boolean(), "{r}");
    assert_eq!(r["info"]["cache"]["event"], "price");
    assert_eq!(r["info"]["cache"]["data"], r#"{"usd":42}"#);
    let ttl = r["info"]["cache"]["ttl"].as_u64().expect("a ttl");
    assert!((1700..=1800).contains(&ttl), "kept for 30 minutes: {ttl}");
    assert_eq!(r["infoOnPlainChannel"], 400);
}

/// The app server's read: the last events, events after a position with whether none is
/// missing, and clear refusals; the same in embedded mode and with Redis.
#[tokio::test]
async fn app_servers_read_history_over_http() {
    let embedded = spawn_app_with(Db::Sqlite, |_| {}).await;
    let clustered = spawn_redis_node(&redis_url()).await;
    for node in [&embedded, &clustered] {
        let app = create_app(
            node,
            json!({ "name": unique("read"), "history_size": 5, "history_ttl_secs": 600 }),
        )
        .await;
        let other = create_app(node, json!({ "name": unique("none") })).await;
        for seq in 1..=7 {
            trigger(node, &app, json!({ "seq": seq })).await;
        }
        let slug = app["slug"].as_str().unwrap();
        let read = |app: &Value, query: &str| {
            let slug = app["slug"].as_str().unwrap();
            node.http
                .get(node.url(&format!("/api/apps/{slug}/history?{query}")))
                .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
                .send()
        };
        let body = |query: String| {
            let response = read(&app, &query);
            async move {
                let response = response.await.expect("history read");
                assert_eq!(response.status(), 200, "{query}");
                response.json::<Value>().await.expect("JSON")
            }
        };
        let seqs = |body: &Value| -> Vec<u64> {
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["payload"]["seq"].as_u64().unwrap())
                .collect()
        };
        let last = body("topic=public&limit=3".to_owned()).await;
        assert_eq!(seqs(&last), vec![5, 6, 7], "{last}");
        assert_eq!(last["offset"], 7);
        assert_eq!(last["topic"], format!("public:{slug}"));
        assert_eq!(last["events"][0]["event"], "feed:msg");
        assert_eq!(last["events"][0]["offset"], 5);
        let epoch = last["epoch"].as_str().unwrap().to_owned();
        let since = body(format!("topic=public:{slug}&since=4&epoch={epoch}")).await;
        assert_eq!(
            (seqs(&since), &since["complete"]),
            (vec![5, 6, 7], &json!(true))
        );
        let trimmed = body(format!("topic=public&since=1&epoch={epoch}")).await;
        assert_eq!(
            (seqs(&trimmed), &trimmed["complete"]),
            (vec![3, 4, 5, 6, 7], &json!(false)),
            "event 2 is no longer kept"
        );
        let bare = body("topic=public&since=5".to_owned()).await;
        assert_eq!(seqs(&bare), vec![6, 7]);
        assert!(bare.get("complete").is_none(), "no epoch, no claim: {bare}");
        for query in [
            "topic=public&since=4&epoch=other".to_owned(),
            format!("topic=public&since=99&epoch={epoch}"),
        ] {
            let read = body(query.clone()).await;
            assert_eq!(read["complete"], false, "{query}: {read}");
        }
        let huge = body("topic=public&since=18446744073709551615".to_owned()).await;
        assert_eq!(huge["events"], json!([]), "{huge}");
        for (query, status) in [
            ("topic=public&since=x", 422),
            ("topic=public&limit=0", 422),
            ("since=1", 422),
            ("topic=public:someone-else", 422),
            ("topic=bad%20name", 422),
        ] {
            let response = read(&app, query).await.unwrap();
            assert_eq!(response.status(), status, "{query}");
            let body: Value = response.json().await.unwrap();
            assert!(body["errors"]["detail"].is_string(), "{query}: {body}");
        }
        assert_eq!(read(&other, "topic=public").await.unwrap().status(), 404);
        let wrong = node
            .http
            .get(node.url(&format!("/api/apps/{slug}/history?topic=public")))
            .basic_auth(app["key"].as_str().unwrap(), Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
    }
}

/// History is opt-in and costs nothing when off: no Redis key, no stream write, one PUBLISH
/// per event; switched on, each event is one stream entry.
#[tokio::test]
async fn history_off_writes_nothing_to_redis() {
    let redis = RedisServer::start().await;
    let node = spawn_redis_node(&redis.url()).await;
    let plain = create_app(&node, json!({ "name": unique("off") })).await;
    let topic = format!("public:{}", plain["slug"].as_str().unwrap());
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    join(&mut client, &topic, json!({})).await;
    let stats = |name: &'static str| {
        let port = redis.port;
        async move {
            let info = cli(port, &["info", "commandstats"]).await;
            info.lines()
                .find_map(|line| line.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |calls| calls.parse::<u64>().unwrap())
        }
    };
    let published = stats("publish").await;
    for seq in 1..=20 {
        assert_eq!(trigger(&node, &plain, json!({ "seq": seq })).await.0, 200);
    }
    assert_eq!(next_events(&mut client, 20).await.len(), 20);
    assert_eq!(stats("publish").await - published, 20);
    assert_eq!(stats("xadd").await, 0);
    assert_eq!(
        cli(redis.port, &["--scan", "--pattern", "pushlite:history:*"]).await,
        ""
    );
    let kept = create_app(&node, json!({ "name": unique("on"), "history_size": 3 })).await;
    for seq in 1..=5 {
        trigger(&node, &kept, json!({ "seq": seq })).await;
    }
    assert_eq!(stats("xadd").await, 5);
    let stream = format!(
        "pushlite:history:{{public:{}}}:events",
        kept["slug"].as_str().unwrap()
    );
    assert_eq!(cli(redis.port, &["xlen", &stream]).await, "3");
}

/// One node on a fresh Postgres database and the Redis at `redis`.
async fn spawn_redis_node(redis: &str) -> TestApp {
    let mut config = test_config(fresh_postgres_database().await);
    config.redis.url = Some(redis.to_owned());
    spawn_config(config, None).await
}
