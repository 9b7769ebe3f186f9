//! The real-time path on one node, over real TCP with a real WebSocket client, both vsn.

mod common;

use std::time::Duration;

use common::phx::{self, Client, Vsn};
use common::{Db, TestApp, create_app, spawn_app, spawn_app_with, trigger_form};
use pushlite::token::{self, Claims};
use serde_json::{Value, json};

async fn app_and_data(db: Db) -> (TestApp, Value) {
    let app = spawn_app(db).await;
    let data = create_app(&app, json!({"name": "foo-app"})).await;
    (app, data)
}

async fn joined(app: &TestApp, vsn: Vsn, topic: &str) -> Client {
    let mut client = phx::connect(app.addr, vsn, "", None).await;
    let (_, reply) = client.join(topic).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    client
}

fn article_form<'a>(topic: &'a str, payload: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("topic", topic),
        ("event", "msg"),
        ("scope", "public"),
        ("payload", payload),
    ]
}

#[tokio::test]
async fn form_trigger_reaches_v1_and_v2_subscribers() {
    let (app, data) = app_and_data(Db::Postgres).await;
    let mut v1 = joined(&app, Vsn::V1, "public:foo-app").await;
    let mut v2 = joined(&app, Vsn::V2, "public:foo-app").await;
    let payload = r#"{"name":"Akita","message":"hello"}"#;
    let response = trigger_form(&app, &data, &article_form("foo-topic", payload)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    for client in [&mut v1, &mut v2] {
        let frame = client.recv().await;
        assert_eq!(frame.topic, "public:foo-app");
        assert_eq!(frame.event, "foo-topic:msg");
        assert_eq!(frame.payload, json!({"name": "Akita", "message": "hello"}));
        assert_eq!(frame.msg_ref, Value::Null);
        assert_eq!(frame.join_ref, Value::Null);
    }
    // #general is an app-wide broadcast named just by the event
    trigger_form(&app, &data, &article_form("#general", payload)).await;
    assert_eq!(v1.recv().await.event, "msg");
    assert_eq!(v2.recv().await.event, "msg");
}

#[tokio::test]
async fn json_trigger_with_object_payload() {
    let (app, data) = app_and_data(Db::Sqlite).await;
    let mut client = joined(&app, Vsn::V2, "public:foo-app").await;
    let response = app
        .http
        .post(app.url("/api/apps/foo-app/events"))
        .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
        .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let frame = client.recv().await;
    assert_eq!(
        (frame.event.as_str(), frame.payload.clone()),
        ("t:e", json!({"n": 1}))
    );
    // a private trigger does not reach public subscribers
    let mut fields = article_form("t", "{}");
    fields[2] = ("scope", "private");
    assert_eq!(trigger_form(&app, &data, &fields).await.status(), 200);
    assert!(client.try_recv(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn events_api_errors() {
    let (app, data) = app_and_data(Db::Sqlite).await;
    let url = app.url("/api/apps/foo-app/events");
    let key = data["key"].as_str().unwrap();
    let secret = data["secret"].as_str().unwrap();
    let ok_form = article_form("t", "{}");

    let missing = app.http.post(&url).form(&ok_form).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = app
        .http
        .post(&url)
        .basic_auth(key, Some("nope"))
        .form(&ok_form)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.json::<Value>().await.unwrap()["errors"]["detail"].is_string());
    let unknown = app
        .http
        .post(app.url("/api/apps/nope-app/events"))
        .basic_auth(key, Some(secret))
        .form(&ok_form)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let long = "x".repeat(201);
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![("event", "msg"), ("scope", "public")], 422),
        (vec![("topic", "t"), ("scope", "public")], 422),
        (vec![("topic", "t"), ("event", "msg")], 422),
        (
            vec![("topic", "t"), ("event", "msg"), ("scope", "secret")],
            422,
        ),
        (
            vec![
                ("topic", "t"),
                ("event", "msg"),
                ("scope", "public"),
                ("payload", "[1]"),
            ],
            422,
        ),
        (
            vec![
                ("topic", "t"),
                ("event", "msg"),
                ("scope", "public"),
                ("payload", "{bad"),
            ],
            422,
        ),
        (
            vec![("topic", &long), ("event", "msg"), ("scope", "public")],
            422,
        ),
        (
            vec![("topic", "t"), ("event", "a\u{7}b"), ("scope", "public")],
            422,
        ),
    ];
    for (fields, status) in cases {
        let response = app
            .http
            .post(&url)
            .basic_auth(key, Some(secret))
            .form(&fields)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{fields:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["errors"]["detail"].is_string(), "{body}");
    }
    let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(11 * 1024));
    let too_big = app
        .http
        .post(&url)
        .basic_auth(key, Some(secret))
        .form(&article_form("t", &big))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    assert!(too_big.json::<Value>().await.unwrap()["errors"].is_object());
    let wrong_type = app
        .http
        .post(&url)
        .basic_auth(key, Some(secret))
        .header("content-type", "text/plain")
        .body("topic=t")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);

    // inactive apps are unknown to the events API
    app.admin(reqwest::Method::PATCH, "/api/admin/apps/foo-app")
        .json(&json!({"app": {"active": false}}))
        .send()
        .await
        .unwrap();
    let inactive = app
        .http
        .post(&url)
        .basic_auth(key, Some(secret))
        .form(&ok_form)
        .send()
        .await
        .unwrap();
    assert_eq!(inactive.status(), 404);
}

#[tokio::test]
async fn heartbeat_and_join_errors() {
    let (app, _data) = app_and_data(Db::Sqlite).await;
    create_app(&app, json!({"name": "sleepy-app", "active": false})).await;
    for vsn in [Vsn::V1, Vsn::V2] {
        let mut client = phx::connect(app.addr, vsn, "", None).await;
        client
            .push(None, "7", "phoenix", "heartbeat", json!({}))
            .await;
        let reply = client.recv().await;
        assert_eq!(
            (reply.topic.as_str(), reply.event.as_str()),
            ("phoenix", "phx_reply")
        );
        assert_eq!(reply.msg_ref, json!("7"));
        assert_eq!(reply.payload, json!({"status": "ok", "response": {}}));

        for (topic, reason) in [
            ("room:lobby", "unmatched topic"),
            ("public:", "unmatched topic"),
            ("public:nope-app", "app not found"),
            ("public:sleepy-app", "app not found"),
            ("private:foo-app", "unauthorized"),
        ] {
            let (_, reply) = client.join(topic).await;
            assert_eq!(reply.payload["status"], "error", "{topic}");
            assert_eq!(
                reply.payload["response"],
                json!({"reason": reason}),
                "{topic}"
            );
        }
        // a push to a topic that was never joined
        client
            .push(Some("99"), "100", "public:foo-app", "msg", json!({}))
            .await;
        let reply = client.recv_reply("100").await;
        assert_eq!(reply.payload["response"]["reason"], "unmatched topic");
    }
}

#[tokio::test]
async fn unsupported_vsn_is_refused_at_upgrade() {
    let (app, _data) = app_and_data(Db::Sqlite).await;
    for vsn in ["3.0.0", "2.1.0", "banana"] {
        let url = format!("ws://{}/socket/websocket?vsn={vsn}", app.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{vsn}");
            }
            other => panic!("vsn {vsn} was not refused: {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn origin_rules() {
    let app = spawn_app(Db::Sqlite).await;
    create_app(
        &app,
        json!({"name": "shop-app", "allowed_origins": ["https://shop.example"]}),
    )
    .await;
    create_app(&app, json!({"name": "open-app"})).await;
    let mut good = phx::connect(app.addr, Vsn::V2, "", Some("https://shop.example")).await;
    assert_eq!(good.join("public:shop-app").await.1.payload["status"], "ok");
    let mut bad = phx::connect(app.addr, Vsn::V2, "", Some("https://evil.example")).await;
    let (_, reply) = bad.join("public:shop-app").await;
    assert_eq!(
        reply.payload["response"],
        json!({"reason": "origin not allowed"})
    );
    let mut none = phx::connect(app.addr, Vsn::V2, "", None).await;
    assert_eq!(
        none.join("public:shop-app").await.1.payload["status"],
        "error"
    );
    // an empty list accepts any origin
    assert_eq!(bad.join("public:open-app").await.1.payload["status"], "ok");
}

fn claims(subscribe: &[&str], publish: &[&str], exp_in: i64) -> Claims {
    Claims {
        exp: chrono::Utc::now().timestamp() + exp_in,
        nbf: None,
        sub: Some("user-1".into()),
        presence: None,
        subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
        publish: publish.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[tokio::test]
async fn private_topics_need_a_valid_token() {
    let (app, data) = app_and_data(Db::Postgres).await;
    let secret = data["secret"].as_str().unwrap();
    let reader = token::mint(secret, &claims(&["private:foo-app"], &[], 600));
    let writer = token::mint(secret, &claims(&["private:*"], &["private:*"], 600));
    let expired = token::mint(secret, &claims(&["private:*"], &["private:*"], -5));
    let forged = token::mint(
        "not-the-secret",
        &claims(&["private:*"], &["private:*"], 600),
    );
    let elsewhere = token::mint(secret, &claims(&["private:other-app"], &[], 600));

    for (query, ok) in [
        (format!("token={reader}"), true),
        (format!("guardian_token={writer}"), true),
        (format!("token={expired}"), false),
        (format!("token={forged}"), false),
        (format!("token={elsewhere}"), false),
        ("token=garbage".to_owned(), false),
    ] {
        let mut client = phx::connect(app.addr, Vsn::V2, &query, None).await;
        let (_, reply) = client.join("private:foo-app").await;
        if ok {
            assert_eq!(reply.payload["status"], "ok", "{query}");
        } else {
            assert_eq!(
                reply.payload["response"],
                json!({"reason": "unauthorized"}),
                "{query}"
            );
        }
    }

    let mut reader_client = phx::connect(app.addr, Vsn::V2, &format!("token={reader}"), None).await;
    let (join_ref, _) = reader_client.join("private:foo-app").await;
    let mut writer_client = phx::connect(app.addr, Vsn::V2, &format!("token={writer}"), None).await;
    let (writer_join, _) = writer_client.join("private:foo-app").await;

    // triggers with scope=private reach private subscribers
    let mut fields = article_form("t", r#"{"a":1}"#);
    fields[2] = ("scope", "private");
    assert_eq!(trigger_form(&app, &data, &fields).await.status(), 200);
    assert_eq!(reader_client.recv().await.event, "t:msg");
    assert_eq!(writer_client.recv().await.event, "t:msg");

    // publishing needs the grant
    reader_client
        .push(
            Some(&join_ref),
            "50",
            "private:foo-app",
            "chat",
            json!({"x": 1}),
        )
        .await;
    let reply = reader_client.recv_reply("50").await;
    assert_eq!(reply.payload["response"], json!({"reason": "unauthorized"}));
    writer_client
        .push(
            Some(&writer_join),
            "51",
            "private:foo-app",
            "chat",
            json!({"x": 2}),
        )
        .await;
    assert_eq!(writer_client.recv_reply("51").await.payload["status"], "ok");
    assert_eq!(
        reader_client.recv_event("chat").await.payload,
        json!({"x": 2})
    );
}

#[tokio::test]
async fn client_events_reach_everyone_including_the_sender() {
    let (app, _data) = app_and_data(Db::Sqlite).await;
    let mut sender = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = sender.join("public:foo-app").await;
    let mut other = joined(&app, Vsn::V1, "public:foo-app").await;
    sender
        .push(
            Some(&join_ref),
            "9",
            "public:foo-app",
            "foo-topic:msg",
            json!({"m": "hi"}),
        )
        .await;
    let mut got_reply = false;
    let mut got_event = false;
    while !(got_reply && got_event) {
        let frame = sender.recv().await;
        if frame.event == "phx_reply" {
            assert_eq!(frame.msg_ref, json!("9"));
            assert_eq!(frame.payload["status"], "ok");
            got_reply = true;
        } else {
            assert_eq!(frame.event, "foo-topic:msg");
            assert_eq!(frame.payload, json!({"m": "hi"}));
            got_event = true;
        }
    }
    let frame = other.recv().await;
    assert_eq!(
        (frame.event.as_str(), frame.payload),
        ("foo-topic:msg", json!({"m": "hi"}))
    );
    assert!(
        sender.try_recv(Duration::from_millis(200)).await.is_none(),
        "delivered once"
    );

    // bad client events get error replies, not broadcasts
    sender
        .push(Some(&join_ref), "10", "public:foo-app", "x", json!([1]))
        .await;
    assert_eq!(sender.recv_reply("10").await.payload["status"], "error");
    sender
        .push(
            Some(&join_ref),
            "11",
            "public:foo-app",
            "phx_fake",
            json!({}),
        )
        .await;
    assert_eq!(sender.recv_reply("11").await.payload["status"], "error");
    assert!(other.try_recv(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn join_ref_semantics() {
    let (app, data) = app_and_data(Db::Sqlite).await;
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (first, _) = client.join("public:foo-app").await;
    // a duplicate join closes the old instance, then succeeds
    let second = client.make_ref();
    client
        .push(
            Some(&second),
            &second,
            "public:foo-app",
            "phx_join",
            json!({}),
        )
        .await;
    let close = client.recv().await;
    assert_eq!(close.event, "phx_close");
    assert_eq!(close.join_ref, json!(first));
    let reply = client.recv().await;
    assert_eq!(
        (reply.event.as_str(), reply.join_ref.clone()),
        ("phx_reply", json!(second))
    );
    // a stale join_ref is ignored: no reply, no broadcast
    client
        .push(Some(&first), "20", "public:foo-app", "msg", json!({}))
        .await;
    client
        .push(Some(&first), "21", "public:foo-app", "phx_leave", json!({}))
        .await;
    assert!(client.try_recv(Duration::from_millis(300)).await.is_none());
    // still joined, delivered exactly once
    trigger_form(&app, &data, &article_form("t", "{}")).await;
    assert_eq!(client.recv().await.event, "t:msg");
    assert!(client.try_recv(Duration::from_millis(200)).await.is_none());
    // leave: ok reply, then phx_close, then nothing more arrives
    client
        .push(
            Some(&second),
            "22",
            "public:foo-app",
            "phx_leave",
            json!({}),
        )
        .await;
    let reply = client.recv().await;
    assert_eq!(
        (reply.event.as_str(), reply.payload["status"].clone()),
        ("phx_reply", json!("ok"))
    );
    assert_eq!(client.recv().await.event, "phx_close");
    trigger_form(&app, &data, &article_form("t", "{}")).await;
    assert!(client.try_recv(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn limits_and_bad_frames() {
    let app = spawn_app_with(Db::Sqlite, |c| {
        c.limits.channels_per_socket = 2;
        c.limits.ws_frame_bytes = 1024;
    })
    .await;
    for name in ["app-one", "app-two", "app-three"] {
        create_app(&app, json!({ "name": name })).await;
    }
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    assert_eq!(
        client.join("public:app-one").await.1.payload["status"],
        "ok"
    );
    assert_eq!(
        client.join("public:app-two").await.1.payload["status"],
        "ok"
    );
    let (_, reply) = client.join("public:app-three").await;
    assert_eq!(
        reply.payload["response"],
        json!({"reason": "too many channels joined"})
    );

    let mut big = phx::connect(app.addr, Vsn::V2, "", None).await;
    big.send_raw(format!(
        r#"[null,"1","phoenix","heartbeat",{{"x":"{}"}}]"#,
        "y".repeat(2000)
    ))
    .await;
    assert_eq!(big.closed_with().await, Some(1009));

    for garbage in ["{not json", r#"{"an":"object"}"#, "[1,2]"] {
        let mut bad = phx::connect(app.addr, Vsn::V2, "", None).await;
        bad.send_raw(garbage.to_owned()).await;
        assert_eq!(bad.closed_with().await, Some(1003), "{garbage}");
    }
    let mut binary = phx::connect(app.addr, Vsn::V2, "", None).await;
    use futures_util::SinkExt;
    binary
        .ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0, 1, 2].into(),
        ))
        .await
        .unwrap();
    assert_eq!(binary.closed_with().await, Some(1003));
    // the server is still fine
    assert_eq!(
        client.join("public:app-one").await.1.payload["status"],
        "ok"
    );
}

#[tokio::test]
async fn idle_sockets_are_closed() {
    let app = spawn_app_with(Db::Sqlite, |c| c.limits.idle_timeout_secs = 1).await;
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    assert_eq!(client.closed_with().await, Some(1001));
}

#[tokio::test]
async fn deactivating_or_deleting_an_app_closes_its_channels() {
    let (app, _data) = app_and_data(Db::Postgres).await;
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = client.join("public:foo-app").await;
    app.admin(reqwest::Method::PATCH, "/api/admin/apps/foo-app")
        .json(&json!({"app": {"active": false}}))
        .send()
        .await
        .unwrap();
    let close = client.recv().await;
    assert_eq!(
        (close.event.as_str(), close.join_ref),
        ("phx_close", json!(join_ref))
    );
    let (_, reply) = client.join("public:foo-app").await;
    assert_eq!(reply.payload["response"]["reason"], "app not found");

    create_app(&app, json!({"name": "doomed-app"})).await;
    let (join_ref, _) = client.join("public:doomed-app").await;
    app.admin(reqwest::Method::DELETE, "/api/admin/apps/doomed-app")
        .send()
        .await
        .unwrap();
    let close = client.recv().await;
    assert_eq!(
        (close.event.as_str(), close.join_ref),
        ("phx_close", json!(join_ref))
    );
}

#[tokio::test]
async fn a_stalled_consumer_does_not_delay_the_others() {
    let app = spawn_app_with(Db::Sqlite, |c| c.limits.outbound_queue = 16).await;
    let data = create_app(&app, json!({"name": "foo-app"})).await;
    // connected and joined, then never reads again
    let stalled = joined(&app, Vsn::V2, "public:foo-app").await;
    // The server gives a stalled socket one second to take its close frame. Start reading
    // it as soon as the node drops a frame for it, so that frame can get through: the test
    // then requires the close code, it does not merely check it when one happens to arrive.
    let metrics_url = app.url("/metrics");
    let http = app.http.clone();
    let drain = tokio::spawn(async move {
        let mut stalled = stalled;
        loop {
            let text = http
                .get(&metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains(r#"reason="slow_consumer""#) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut received = 0;
        let code = tokio::time::timeout(Duration::from_secs(20), async {
            use futures_util::StreamExt;
            while let Some(Ok(message)) = stalled.ws.next().await {
                match message {
                    tokio_tungstenite::tungstenite::Message::Close(frame) => {
                        return frame.map(|f| u16::from(f.code));
                    }
                    _ => received += 1,
                }
            }
            None
        })
        .await
        .expect("the stalled socket is closed by the server");
        (code, received)
    });
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(joined(&app, Vsn::V2, "public:foo-app").await);
    }
    let fill = "z".repeat(8 * 1024);
    // More than loopback socket buffers can hold, so the stalled reader really blocks writes.
    let events = 1500;
    let reading = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                for i in 0..events {
                    let frame = reader.recv().await;
                    assert_eq!(frame.payload["n"], json!(i), "in order, none skipped");
                }
                reader
            })
        })
        .collect::<Vec<_>>();
    for i in 0..events {
        let body = json!({"topic": "t", "event": "e", "scope": "public",
                          "payload": {"n": i, "fill": fill.clone()}});
        let response = app
            .http
            .post(app.url("/api/apps/foo-app/events"))
            .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for task in reading {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("readers are not held back")
            .expect("reader task");
    }
    let (code, received) = tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("the stalled consumer is cut off")
        .expect("drain task");
    assert!(
        received < events,
        "the stalled consumer was cut off ({received} frames)"
    );
    assert_eq!(code, Some(1008), "a slow consumer is closed with 1008");
}

#[tokio::test]
async fn frames_larger_than_the_read_buffer_arrive_whole() {
    let (app, _data) = app_and_data(Db::Sqlite).await;
    let mut sender = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = sender.join("public:foo-app").await;
    // 9 KiB: many times the 512-byte initial read buffer, under the 10 KiB payload limit
    let big = "b".repeat(9 * 1024);
    sender
        .push(
            Some(&join_ref),
            "3",
            "public:foo-app",
            "big",
            json!({ "x": big }),
        )
        .await;
    let frame = sender.recv_event("big").await;
    assert_eq!(frame.payload["x"].as_str().map(str::len), Some(9 * 1024));
}

#[tokio::test]
async fn bad_upgrades_get_json_errors() {
    let (app, _data) = app_and_data(Db::Sqlite).await;
    let plain = app
        .http
        .get(app.url("/socket/websocket"))
        .send()
        .await
        .unwrap();
    assert!(plain.status().is_client_error(), "{}", plain.status());
    assert!(plain.json::<Value>().await.unwrap()["errors"]["detail"].is_string());
    let bad_path = app
        .http
        .post(app.url("/api/apps/%FF%FE/events"))
        .basic_auth("k", Some("s"))
        .form(&[("topic", "t")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_path.status(), 400);
    assert!(bad_path.json::<Value>().await.unwrap()["errors"]["detail"].is_string());
}
