//! Phoenix's LongPoll transport (`/socket/longpoll`) with raw HTTP requests against a real node:
//! the session handshake, polls and posts, every status phoenix.js acts on, the session
//! timeout, and the connection metrics under `protocol="longpoll"`.

mod common;

use std::time::Duration;

use common::{Db, TestApp, create_app, spawn_app_with, trigger_form};
use serde_json::{Value, json};

async fn get(node: &TestApp, query: &str) -> (reqwest::header::HeaderMap, Value) {
    let response = node
        .http
        .get(node.url(&format!("/socket/longpoll?{query}")))
        .send()
        .await
        .expect("poll");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.json().await.expect("JSON"))
}

async fn post(node: &TestApp, token: &str, lines: &[String]) -> Value {
    node.http
        .post(node.url(&format!("/socket/longpoll?vsn=2.0.0&token={token}")))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("JSON")
}

/// Polls until a message arrives; returns the decoded frames.
async fn messages(node: &TestApp, token: &str) -> Vec<Value> {
    for _ in 0..20 {
        let (_, body) = get(node, &format!("vsn=2.0.0&token={token}")).await;
        match body["status"].as_u64() {
            Some(200) => {
                return body["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| {
                        serde_json::from_str(m.as_str().expect("frame text")).expect("JSON frame")
                    })
                    .collect();
            }
            Some(204) => {}
            other => panic!("poll answered {other:?}: {body}"),
        }
    }
    panic!("no message within 20 polls");
}

#[tokio::test]
async fn longpoll_sessions_join_receive_push_and_time_out() {
    let node = spawn_app_with(Db::Sqlite, |config| {
        config.longpoll.window_ms = 300;
        config.longpoll.session_timeout_ms = 1500;
        config.longpoll.max_frames = 5;
    })
    .await;
    let app = create_app(&node, json!({"name": "poll-app"})).await;

    // a refused vsn, an unknown session
    let (_, body) = get(&node, "vsn=3.0.0").await;
    assert_eq!(body["status"], 403);
    let (_, body) = get(&node, "vsn=2.0.0&token=lp.0123456789abcdef").await;
    assert_eq!(body["status"], 410);
    assert_eq!(body["token"], Value::Null);

    // a new session: 410 with its token, which phoenix.js takes as "open"
    let (headers, body) = get(&node, "vsn=2.0.0").await;
    assert_eq!(body["status"], 410);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let token = body["token"].as_str().expect("a session token").to_owned();
    assert!(token.starts_with("lp."), "{token}");

    // an idle poll answers 204 after the window
    let (_, body) = get(&node, &format!("vsn=2.0.0&token={token}")).await;
    assert_eq!(body["status"], 204);

    // join and a client event in one POST; the replies come with the next poll
    let join = json!(["1", "1", "public:poll-app", "phx_join", {}]).to_string();
    let push = json!(["1", "2", "public:poll-app", "shout", {"n": 1}]).to_string();
    assert_eq!(post(&node, &token, &[join, push]).await["status"], 200);
    let mut frames = Vec::new();
    while frames.len() < 3 {
        frames.extend(messages(&node, &token).await);
    }
    assert_eq!(
        frames[0],
        json!(["1", "1", "public:poll-app", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert!(
        frames.contains(&json!([null, null, "public:poll-app", "shout", {"n": 1}])),
        "{frames:?}"
    );
    assert!(
        frames.contains(
            &json!(["1", "2", "public:poll-app", "phx_reply", {"status": "ok", "response": {}}])
        ),
        "{frames:?}"
    );

    // a server event, and the session token in the header instead of the query
    let response = trigger_form(
        &node,
        &app,
        &[
            ("topic", "t"),
            ("event", "msg"),
            ("scope", "public"),
            ("payload", r#"{"a":1}"#),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let response = node
        .http
        .get(node.url("/socket/longpoll?vsn=2.0.0"))
        .header("x-phoenix-longpoll-token", &token)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 200);
    let frame: Value = serde_json::from_str(body["messages"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        frame,
        json!([null, null, "public:poll-app", "t:msg", {"a": 1}])
    );

    // too many frames in one POST
    let lines: Vec<String> = (0..6)
        .map(|i| json!([null, i.to_string(), "phoenix", "heartbeat", {}]).to_string())
        .collect();
    assert_eq!(post(&node, &token, &lines).await["status"], 400);

    // the connection counts under protocol="longpoll"
    let metrics = node.metrics().await;
    assert_eq!(
        metrics.get(r#"pushlite_connections{app="poll-app",protocol="longpoll"}"#),
        Some(&1.0)
    );

    // the CORS preflight of cross-origin pages
    let response = node
        .http
        .request(reqwest::Method::OPTIONS, node.url("/socket/longpoll"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-phoenix-longpoll-token")
    );

    // no polls for the session timeout: the session ends (watched on the metrics, as a poll
    // would keep it alive) and its token is gone
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = node.metrics().await;
        if metrics.get(r#"pushlite_connections{app="poll-app",protocol="longpoll"}"#) == Some(&0.0)
        {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, body) = get(&node, &format!("vsn=2.0.0&token={token}")).await;
    assert_eq!(body["status"], 410);
    assert_eq!(
        metrics.get(
            r#"pushlite_connections_closed_total{app="poll-app",protocol="longpoll",reason="idle"}"#
        ),
        Some(&1.0)
    );
}
