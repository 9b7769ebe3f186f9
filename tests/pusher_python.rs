//! The official Python `pusher` SDK (PyPI) against a real node: triggers, batches, channel
//! queries, users, sendToUser and terminate_connections, checked on raw Pusher sockets.
//! `make test` installs the SDK into `target/test-venv`.

mod common;

use std::time::Duration;

use common::pusher;
use common::{Db, create_app, redis_url, run_client, spawn_app_with};
use pushlite::domain::signature;
use serde_json::{Value, json};

/// The frames a client holds for `event`, with their data parsed when it is JSON text.
fn events(frames: &[Value], event: &str) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter(|f| f["event"] == event)
        .map(|f| {
            let data = match &f["data"] {
                Value::String(text) => serde_json::from_str(text).unwrap_or(json!(text)),
                other => other.clone(),
            };
            (f["channel"].as_str().unwrap_or_default().to_owned(), data)
        })
        .collect()
}

#[tokio::test]
async fn python_sdk_drives_the_http_api() {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python");
    assert!(
        std::path::Path::new(python).exists(),
        "run `make test-venv` (make test does) before this test"
    );
    let node = spawn_app_with(Db::Postgres, |c| c.redis.url = Some(redis_url())).await;
    let app = create_app(&node, json!({"name": "python-sdk-app"})).await;
    let (key, secret) = (
        app["key"].as_str().unwrap(),
        app["secret"].as_str().unwrap(),
    );

    let mut watcher = pusher::connect(node.addr, key).await;
    watcher.subscribed("py-public", None).await;
    watcher.subscribed("py-other", None).await;
    let user_data = r#"{"id":"py-user"}"#;
    let signed = signature::sign(
        secret,
        &signature::user_string(&watcher.socket_id, user_data),
    );
    watcher
        .send(json!({"event": "pusher:signin", "data": {"auth": format!("{key}:{signed}"), "user_data": user_data}}))
        .await;
    assert_eq!(watcher.recv().await["event"], "pusher:signin_success");
    let mut excluded = pusher::connect(node.addr, key).await;
    excluded.subscribed("py-public", None).await;

    let args = json!({
        "host": "127.0.0.1",
        "port": node.addr.port(),
        "appId": app["id"].to_string(),
        "key": key,
        "secret": secret,
        "socketId": excluded.socket_id,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk.py");
    let r = run_client(python, &[script.to_owned(), args.to_string()], ".").await;
    for call in ["trigger", "multi", "excluded", "sendToUser", "terminate"] {
        assert_eq!(r[call], json!({"ok": {}}), "{call}");
    }
    assert_eq!(r["batch"], json!({"ok": {}}));
    assert_eq!(
        r["channels"]["ok"]["channels"],
        json!({"py-public": {"subscription_count": 2}, "py-other": {"subscription_count": 1}})
    );
    assert_eq!(r["prefixed"]["ok"], json!({"channels": {"py-other": {}}}));
    assert_eq!(
        r["channel"]["ok"],
        json!({"occupied": true, "subscription_count": 2})
    );
    assert_eq!(r["users"], json!({"error": "PusherBadRequest"}));
    assert_eq!(r["badAuth"], json!({"error": "PusherBadAuth"}));
    assert_eq!(r["tooBig"], json!({"error": "PusherBadStatus"}));

    // terminate_connections closed the signed-in user's socket, after everything else arrived
    let (code, frames) = watcher.closed_with().await;
    assert_eq!(code, Some(4009));
    assert_eq!(
        events(&frames, "hello"),
        vec![("py-public".to_owned(), json!({"from": "python"}))]
    );
    assert_eq!(
        events(&frames, "both"),
        vec![
            ("py-public".to_owned(), json!("plain text")),
            ("py-other".to_owned(), json!("plain text"))
        ]
    );
    assert_eq!(events(&frames, "not-for-you").len(), 1);
    assert_eq!(
        events(&frames, "b1"),
        vec![("py-public".to_owned(), json!({"i": 1}))]
    );
    assert_eq!(
        events(&frames, "b2"),
        vec![("py-other".to_owned(), json!({"i": 2}))]
    );
    assert_eq!(
        events(&frames, "notice"),
        vec![("#server-to-user-py-user".to_owned(), json!({"hi": 1}))]
    );
    // the excluded socket got the rest, but not the event that named it
    let mut seen = Vec::new();
    while let Some(frame) = excluded.try_recv(Duration::from_millis(300)).await {
        seen.push(frame["event"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, ["hello", "both", "b1"]);
}
