//! The Pusher protocol 7 endpoint and HTTP API against a real node, with a raw WebSocket
//! client: every refusal, close code and error status the protocol defines.

mod common;

use std::time::Duration;

use common::phx::{self, Vsn};
use common::process::NodeProcess;
use common::pusher::{self, channel_auth, signed_query};
use common::{Db, TestApp, create_app, spawn_app, spawn_app_with};
use pushlite::domain::signature;
use serde_json::{Value, json};

fn creds(app: &Value) -> (&str, &str) {
    (
        app["key"].as_str().unwrap(),
        app["secret"].as_str().unwrap(),
    )
}

/// A signed HTTP API request; returns the status and the JSON body.
async fn api(
    node: &TestApp,
    app: &Value,
    method: reqwest::Method,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let (key, secret) = creds(app);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let query = signed_query(
        key,
        secret,
        method.as_str(),
        path,
        extra,
        body.as_bytes(),
        now,
    );
    raw_api(node, method, &format!("{path}?{query}"), body).await
}

async fn raw_api(
    node: &TestApp,
    method: reqwest::Method,
    path_and_query: &str,
    body: String,
) -> (u16, Value) {
    let response = node
        .http
        .request(method, node.url(path_and_query))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn connections_are_refused_with_pusher_close_codes() {
    let node = spawn_app(Db::Postgres).await;
    let app = create_app(&node, json!({"name": "refusals-app"})).await;
    let sleepy = create_app(&node, json!({"name": "sleepy-app", "active": false})).await;
    let guarded = create_app(
        &node,
        json!({"name": "guarded-app", "allowed_origins": ["https://shop.test"]}),
    )
    .await;
    let key = creds(&app).0;
    let cases = [
        ("no-such-key", "protocol=7", None, 4001),
        (creds(&sleepy).0, "protocol=7", None, 4003),
        (key, "protocol=3", None, 4007),
        (key, "protocol=abc", None, 4006),
        (key, "client=js", None, 4008),
        (
            creds(&guarded).0,
            "protocol=7",
            Some("https://evil.test"),
            4009,
        ),
    ];
    for (key, query, origin, code) in cases {
        let mut client = pusher::open(node.addr, key, query, origin).await;
        let (closed, frames) = client.closed_with().await;
        assert_eq!(closed, Some(code), "{key} {query}");
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["event"], "pusher:error");
        assert_eq!(frames[0]["data"]["code"], code);
    }
    // the guarded app from its own origin is welcome
    let mut client = pusher::open(
        node.addr,
        creds(&guarded).0,
        "protocol=7",
        Some("https://shop.test"),
    )
    .await;
    assert_eq!(
        client.recv().await["event"],
        "pusher:connection_established"
    );
}

#[tokio::test]
async fn handshake_keepalive_and_bad_frames() {
    let node = spawn_app_with(Db::Postgres, |c| c.limits.ws_frame_bytes = 4096).await;
    let app = create_app(&node, json!({"name": "frames-app"})).await;
    let key = creds(&app).0;
    let mut client = pusher::connect(node.addr, key).await;
    assert_eq!(client.activity_timeout, 120);
    let (left, right) = client.socket_id.split_once('.').expect("two integers");
    assert!(left.parse::<u64>().is_ok() && right.parse::<u64>().is_ok());

    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"event": "pusher:pong", "data": "{}"})
    );
    // malformed JSON and unknown events get an error and lose nothing
    client.send_text("{not json".to_owned()).await;
    let error = client.recv().await;
    assert_eq!(error["event"], "pusher:error");
    assert_eq!(error["data"]["code"], Value::Null);
    client
        .send(json!({"event": "pusher:bogus", "data": {}}))
        .await;
    assert_eq!(client.recv().await["event"], "pusher:error");
    client
        .send(json!({"event": "pusher:subscribe", "data": 5}))
        .await;
    assert_eq!(client.recv().await["event"], "pusher:error");
    client.subscribed("still-works", None).await;

    // a frame over the limit closes with 1009
    client
        .send_text(format!(r#"{{"event":"x","data":"{}"}}"#, "y".repeat(5000)))
        .await;
    assert_eq!(client.closed_with().await.0, Some(1009));

    // binary frames are unsupported: 1003
    let mut client = pusher::connect(node.addr, key).await;
    futures_util::SinkExt::send(
        &mut client.ws,
        tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2].into()),
    )
    .await
    .unwrap();
    assert_eq!(client.closed_with().await.0, Some(1003));
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed_with_4201() {
    let node = spawn_app_with(Db::Postgres, |c| {
        c.pusher.activity_timeout_secs = 1;
        c.pusher.pong_timeout_secs = 1;
    })
    .await;
    let app = create_app(&node, json!({"name": "pong-app"})).await;
    // a client that answers every ping stays
    let mut answering = pusher::connect(node.addr, creds(&app).0).await;
    for _ in 0..3 {
        assert_eq!(answering.recv().await["event"], "pusher:ping");
        answering
            .send(json!({"event": "pusher:pong", "data": {}}))
            .await;
    }
    answering.subscribed("alive", None).await;
    drop(answering);
    // one that does not is closed
    let mut silent = pusher::connect(node.addr, creds(&app).0).await;
    assert_eq!(silent.activity_timeout, 1);
    let ping = silent.recv().await;
    assert_eq!(ping["event"], "pusher:ping", "{ping}");
    let (code, frames) = silent.closed_with().await;
    assert_eq!(code, Some(4201));
    assert_eq!(frames[0]["data"]["code"], 4201);
}

#[tokio::test]
async fn subscriptions_need_what_their_channel_kind_needs() {
    let node = spawn_app_with(Db::Postgres, |c| c.limits.channels_per_socket = 7).await;
    let app = create_app(&node, json!({"name": "channels-app"})).await;
    let (key, secret) = creds(&app);
    let mut client = pusher::connect(node.addr, key).await;
    let sid = client.socket_id.clone();
    client.subscribed("public", None).await;
    client.subscribed(&"x".repeat(164), None).await;

    let error = |status: u64, kind: &str| (status, kind.to_owned());
    let refusal = |frame: &Value| {
        assert_eq!(frame["event"], "pusher:subscription_error", "{frame}");
        (
            frame["data"]["status"].as_u64().unwrap(),
            frame["data"]["type"].as_str().unwrap().to_owned(),
        )
    };
    for channel in ["private-a", "private", "private-encrypted-a"] {
        let answer = client.subscribe(channel, None).await;
        assert_eq!(refusal(&answer), error(401, "AuthError"), "{channel}");
        // signed for another socket
        let stolen = channel_auth(key, secret, "1.1", channel);
        let answer = client.subscribe(channel, Some(stolen)).await;
        assert_eq!(refusal(&answer), error(401, "AuthError"), "{channel}");
        // signed with another app's secret
        let forged = channel_auth(key, "not-the-secret", &sid, channel);
        let answer = client.subscribe(channel, Some(forged)).await;
        assert_eq!(refusal(&answer), error(401, "AuthError"), "{channel}");
        client
            .subscribed(channel, Some(channel_auth(key, secret, &sid, channel)))
            .await;
    }
    // a presence channel needs channel_data, signed with the rest
    let auth = channel_auth(key, secret, &sid, "presence-room");
    let answer = client.subscribe("presence-room", Some(auth)).await;
    assert_eq!(refusal(&answer), error(401, "AuthError"));
    for bad in ["x".repeat(165), "a:b".to_owned(), "sp ace".to_owned()] {
        let answer = client.subscribe(&bad, None).await;
        assert_eq!(refusal(&answer), error(400, "InvalidChannel"), "{bad}");
    }
    // the user channel needs a sign-in as that user
    let answer = client.subscribe("#server-to-user-u1", None).await;
    assert_eq!(refusal(&answer), error(401, "AuthError"));
    let user_data = r#"{"id":"u1","user_info":{"name":"U"}}"#;
    client
        .send(json!({"event": "pusher:signin", "data": {"auth": format!("{key}:{}", "0".repeat(64)), "user_data": user_data}}))
        .await;
    let error_frame = client.recv().await;
    assert_eq!(error_frame["event"], "pusher:error");
    assert_eq!(error_frame["data"]["code"], 4009);
    let signed = signature::sign(secret, &signature::user_string(&sid, user_data));
    client
        .send(json!({"event": "pusher:signin", "data": {"auth": format!("{key}:{signed}"), "user_data": user_data}}))
        .await;
    let success = client.recv().await;
    assert_eq!(success["event"], "pusher:signin_success");
    assert_eq!(success["data"]["user_data"], user_data);
    client.subscribed("#server-to-user-u1", None).await;
    // the limit: 6 channels so far, the seventh is the last one allowed
    client.subscribed("eighth", None).await;
    let answer = client.subscribe("ninth", None).await;
    assert_eq!(refusal(&answer), error(400, "LimitReached"));
    client
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "eighth"}}))
        .await;
    client.subscribed("ninth", None).await;

    let m = node.metrics().await;
    let series =
        r#"pushlite_joins_total{app="channels-app",result="unauthorized",scope="private"}"#;
    assert_eq!(m.get(series), Some(&6.0), "{series}");
    assert_eq!(
        m.get(r#"pushlite_connections{app="channels-app",protocol="pusher"}"#),
        Some(&1.0)
    );
}

#[tokio::test]
async fn client_events_follow_the_pusher_rules() {
    let node = spawn_app_with(Db::Postgres, |c| c.limits.client_events_per_sec = 3).await;
    let app = create_app(&node, json!({"name": "whisper-app"})).await;
    let quiet = create_app(&node, json!({"name": "quiet-app", "client_events": false})).await;
    let (key, secret) = creds(&app);
    let mut sender = pusher::connect(node.addr, key).await;
    let mut receiver = pusher::connect(node.addr, key).await;
    for client in [&mut sender, &mut receiver] {
        let sid = client.socket_id.clone();
        client
            .subscribed(
                "private-room",
                Some(channel_auth(key, secret, &sid, "private-room")),
            )
            .await;
        client.subscribed("public-room", None).await;
    }
    // public channels take no client events
    sender
        .send(json!({"event": "client-x", "channel": "public-room", "data": {}}))
        .await;
    assert_eq!(sender.recv().await["event"], "pusher:error");
    // nor channels the sender has not subscribed
    sender
        .send(json!({"event": "client-x", "channel": "private-other", "data": {}}))
        .await;
    assert_eq!(sender.recv().await["event"], "pusher:error");
    // relayed byte for byte, never echoed
    sender
        .send(json!({"event": "client-typing", "channel": "private-room", "data": {"who": "me", "n": [1, 2]}}))
        .await;
    let got = receiver.recv_event("client-typing").await;
    assert_eq!(
        got,
        json!({"event": "client-typing", "channel": "private-room", "data": {"who": "me", "n": [1, 2]}})
    );
    assert!(sender.try_recv(Duration::from_millis(300)).await.is_none());

    // an app with client events off
    let (qkey, qsecret) = creds(&quiet);
    let mut muted = pusher::connect(node.addr, qkey).await;
    let sid = muted.socket_id.clone();
    muted
        .subscribed(
            "private-room",
            Some(channel_auth(qkey, qsecret, &sid, "private-room")),
        )
        .await;
    muted
        .send(json!({"event": "client-x", "channel": "private-room", "data": {}}))
        .await;
    let error = muted.recv().await;
    assert_eq!(error["event"], "pusher:error");
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );

    // past the rate limit the connection closes with 4301
    for n in 0..10 {
        sender
            .send(json!({"event": "client-burst", "channel": "private-room", "data": {"n": n}}))
            .await;
    }
    assert_eq!(sender.closed_with().await.0, Some(4301));
    drop(sender);
    let closed = r#"pushlite_connections_closed_total{app="whisper-app",protocol="pusher",reason="rate_limited"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = node.metrics().await;
        if m.get(closed) == Some(&1.0) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{closed} never reached 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        m.get(r#"pushlite_events_published_total{app="whisper-app",source="client"}"#)
            .is_some_and(|n| *n >= 1.0)
    );
}

#[tokio::test]
async fn http_api_signatures_and_errors() {
    let node = spawn_app(Db::Postgres).await;
    let app = create_app(&node, json!({"name": "api-app"})).await;
    let other = create_app(&node, json!({"name": "other-api-app"})).await;
    let id = app["id"].to_string();
    let events = format!("/apps/{id}/events");
    let (key, secret) = creds(&app);
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let event = json!({"name": "e", "channel": "c", "data": "{}"});

    // the app id may be the numeric id or the slug
    let (status, body) = api(&node, &app, post.clone(), &events, &[], Some(event.clone())).await;
    assert_eq!((status, body), (200, json!({})));
    let by_slug = "/apps/api-app/events";
    let (status, _) = api(&node, &app, post.clone(), by_slug, &[], Some(event.clone())).await;
    assert_eq!(status, 200);

    // signatures
    let body = event.to_string();
    let now = chrono::Utc::now().timestamp();
    let query = |secret: &str, time: i64, body: &[u8]| {
        signed_query(key, secret, "POST", &events, &[], body, time)
    };
    let cases = [
        (query("wrong", now, body.as_bytes()), 401),
        (query(secret, now - 601, body.as_bytes()), 401),
        (query(secret, now + 601, body.as_bytes()), 401),
        (query(secret, now, b"{}"), 401),
        (query(secret, now, b""), 401),
        ("auth_key=x".to_owned(), 401),
    ];
    for (q, expected) in cases {
        let (status, body) =
            raw_api(&node, post.clone(), &format!("{events}?{q}"), body.clone()).await;
        assert_eq!(status, expected, "{q}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    // another app's credentials for this app's id
    let (status, _) = api(
        &node,
        &other,
        post.clone(),
        &events,
        &[],
        Some(event.clone()),
    )
    .await;
    assert_eq!(status, 401);

    // bad parameters
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let bad = [
        (json!({"channel": "c", "data": "{}"}), 400),
        (json!({"name": "e", "channel": "c"}), 400),
        (json!({"name": "e", "data": "{}"}), 400),
        (json!({"name": "e", "channels": many, "data": "{}"}), 400),
        (
            json!({"name": "e", "channel": "bad:name", "data": "{}"}),
            400,
        ),
        (
            json!({"name": "pusher:x", "channel": "c", "data": "{}"}),
            400,
        ),
        (
            json!({"name": "e", "channel": "c", "data": "{}", "socket_id": "abc"}),
            400,
        ),
        (
            json!({"name": "e", "channel": "c", "data": "{}", "info": "user_count"}),
            400,
        ),
        (
            json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024 + 1)}),
            413,
        ),
    ];
    for (body, expected) in bad {
        let (status, answer) =
            api(&node, &app, post.clone(), &events, &[], Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["error"].is_string());
    }
    let (status, _) = api(&node, &app, post.clone(), &events, &[], Some(json!([1]))).await;
    assert_eq!(status, 400);
    // exactly the limit is fine
    let full = json!({"name": "e", "channel": "c", "data": "x".repeat(10 * 1024)});
    let (status, _) = api(&node, &app, post.clone(), &events, &[], Some(full)).await;
    assert_eq!(status, 200);

    // batches: at most 10, all checked before any is sent
    let batch_path = format!("/apps/{id}/batch_events");
    let item = json!({"name": "e", "channel": "c", "data": "{}"});
    let eleven = json!({"batch": vec![item.clone(); 11]});
    let (status, _) = api(&node, &app, post.clone(), &batch_path, &[], Some(eleven)).await;
    assert_eq!(status, 400);
    let mut listener = pusher::connect(node.addr, key).await;
    listener.subscribed("c", None).await;
    let mixed = json!({"batch": [item, {"name": "e", "channel": "bad:name", "data": "{}"}]});
    let (status, _) = api(&node, &app, post.clone(), &batch_path, &[], Some(mixed)).await;
    assert_eq!(status, 400);
    assert!(
        listener
            .try_recv(Duration::from_millis(300))
            .await
            .is_none()
    );

    // queries
    let channel_path = format!("/apps/{id}/channels/c");
    let (status, body) = api(
        &node,
        &app,
        get.clone(),
        &channel_path,
        &[("info", "subscription_count")],
        None,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"occupied": true, "subscription_count": 1}))
    );
    let (status, _) = api(
        &node,
        &app,
        get.clone(),
        &channel_path,
        &[("info", "user_count")],
        None,
    )
    .await;
    assert_eq!(status, 400);
    let list = format!("/apps/{id}/channels");
    let (status, body) = api(
        &node,
        &app,
        get.clone(),
        &list,
        &[("filter_by_prefix", "c")],
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"channels": {"c": {}}})));
    let (status, _) = api(
        &node,
        &app,
        get.clone(),
        &list,
        &[("info", "user_count")],
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = api(
        &node,
        &app,
        get.clone(),
        &list,
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({"channels": {}})));
    let users = format!("/apps/{id}/channels/c/users");
    let (status, _) = api(&node, &app, get.clone(), &users, &[], None).await;
    assert_eq!(status, 400);

    // a disabled app: 403 once the signature is right
    let response = node
        .admin(reqwest::Method::PATCH, "/api/admin/apps/api-app")
        .json(&json!({"app": {"active": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = api(&node, &app, post.clone(), &events, &[], Some(event.clone())).await;
    assert_eq!(status, 403);
    let (status, _) = api(&node, &app, get, &list, &[], None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn draining_closes_pusher_sockets_with_4200() {
    let node = NodeProcess::spawn(&[("PUSHLITE_SERVER__DRAIN_DELAY_MS", "200")]).await;
    let app = node.create_app("drain-app").await;
    let mut client = pusher::connect(node.addr, app["key"].as_str().unwrap()).await;
    client.subscribed("public", None).await;
    node.signal("TERM");
    let (code, frames) = client.closed_with().await;
    assert_eq!(code, Some(4200));
    assert_eq!(frames.last().unwrap()["data"]["code"], 4200);
}

#[tokio::test]
async fn phoenix_and_pusher_clients_meet_on_the_same_channels() {
    let node = spawn_app(Db::Postgres).await;
    let app = create_app(&node, json!({"name": "meet-app"})).await;
    let (key, secret) = creds(&app);
    let id = app["id"].to_string();
    let claims = pushlite::token::Claims {
        exp: chrono::Utc::now().timestamp() + 600,
        subscribe: vec!["private-room:meet-app".to_owned()],
        publish: vec!["private-room:meet-app".to_owned()],
        ..Default::default()
    };
    let token = pushlite::token::mint(secret, &claims);
    let mut phoenix = phx::connect(node.addr, Vsn::V2, &format!("token={token}"), None).await;
    let mut anonymous = phx::connect(node.addr, Vsn::V2, "", None).await;
    // any channel name of a registered app is a public topic for Phoenix too
    assert_eq!(
        phoenix.join("orders:meet-app").await.1.payload["status"],
        "ok"
    );
    for topic in [
        "private-room:meet-app",
        "private-encrypted-x:meet-app",
        "#server-to-user-1:meet-app",
    ] {
        let reply = anonymous.join(topic).await.1;
        assert_eq!(
            reply.payload["response"]["reason"], "unauthorized",
            "{topic}"
        );
    }
    let reply = anonymous.join("presence-room:meet-app").await.1;
    assert_eq!(reply.payload["status"], "error");
    let (phx_ref, reply) = phoenix.join("private-room:meet-app").await;
    assert_eq!(reply.payload["status"], "ok");

    let mut client = pusher::connect(node.addr, key).await;
    let sid = client.socket_id.clone();
    client.subscribed("orders", None).await;
    client
        .subscribed(
            "private-room",
            Some(channel_auth(key, secret, &sid, "private-room")),
        )
        .await;

    // a Pusher trigger: JSON-text data arrives at Phoenix as the object, other data wrapped
    let path = format!("/apps/{id}/events");
    let body = json!({"name": "shipped", "channel": "orders", "data": "{\"id\":7}"});
    assert_eq!(
        api(&node, &app, reqwest::Method::POST, &path, &[], Some(body))
            .await
            .0,
        200
    );
    let frame = phoenix.recv_event("shipped").await;
    assert_eq!(
        (frame.topic.as_str(), frame.payload.clone()),
        ("orders:meet-app", json!({"id": 7}))
    );
    let pushed = client.recv_event("shipped").await;
    assert_eq!(
        pushed["data"], "{\"id\":7}",
        "byte-identical data for Pusher clients"
    );
    let body = json!({"name": "note", "channel": "orders", "data": "hello"});
    assert_eq!(
        api(&node, &app, reqwest::Method::POST, &path, &[], Some(body))
            .await
            .0,
        200
    );
    assert_eq!(
        phoenix.recv_event("note").await.payload,
        json!({"data": "hello"})
    );

    // a Phoenix client event arrives at the Pusher client with the object as JSON text
    phoenix
        .push(
            Some(&phx_ref),
            "p1",
            "private-room:meet-app",
            "client-hi",
            json!({"from": "phoenix"}),
        )
        .await;
    assert_eq!(phoenix.recv_reply("p1").await.payload["status"], "ok");
    let hi = client.recv_event("client-hi").await;
    assert_eq!(hi["channel"], "private-room");
    assert_eq!(
        serde_json::from_str::<Value>(hi["data"].as_str().unwrap()).unwrap(),
        json!({"from": "phoenix"})
    );
    // and a Pusher client event at the Phoenix client as the object
    client
        .send(json!({"event": "client-hey", "channel": "private-room", "data": {"from": "pusher"}}))
        .await;
    assert_eq!(
        phoenix.recv_event("client-hey").await.payload,
        json!({"from": "pusher"})
    );
}

#[tokio::test]
async fn a_pusher_client_that_does_not_read_is_closed_as_a_slow_consumer() {
    let node = spawn_app_with(Db::Postgres, |c| {
        c.limits.outbound_queue = 8;
        c.limits.write_timeout_secs = 1;
    })
    .await;
    let app = create_app(&node, json!({"name": "slow-app"})).await;
    // a small receive window, and nothing read after the subscription
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let url = format!("ws://{}/app/{}?protocol=7", node.addr, creds(&app).0);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let mut client = pusher::Client {
        ws,
        socket_id: String::new(),
        activity_timeout: 0,
    };
    assert_eq!(
        client.recv().await["event"],
        "pusher:connection_established"
    );
    client.subscribed("firehose", None).await;
    let path = format!("/apps/{}/events", app["id"]);
    let data = "x".repeat(10 * 1024);
    let closed = r#"pushlite_connections_closed_total{app="slow-app",protocol="pusher",reason="slow_consumer"}"#;
    for _ in 0..2000 {
        let body = json!({"name": "big", "channel": "firehose", "data": data});
        let (status, _) = api(&node, &app, reqwest::Method::POST, &path, &[], Some(body)).await;
        assert_eq!(status, 200);
        if node.metrics().await.get(closed) == Some(&1.0) {
            return;
        }
    }
    panic!("{closed} never reached 1");
}
