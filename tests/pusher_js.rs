//! The unmodified Pusher clients against two nodes sharing Redis and Postgres: pusher-js 8 and
//! Laravel Echo in Node, the `pusher` Node SDK for the HTTP API, and the official `phoenix`
//! client on the same channels. `make test` installs `tests/js/node_modules` with `npm ci`.

mod common;

use common::{cluster, create_app, redis_url, run_client};
use serde_json::json;

#[tokio::test]
async fn pusher_clients_and_sdk_across_two_nodes() {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    assert!(
        std::path::Path::new(js)
            .join("node_modules/pusher-js")
            .exists(),
        "run `npm ci --prefix tests/js` (make test does) before this test"
    );
    let nodes = cluster(2, &redis_url()).await;
    let name = format!(
        "pusher-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let app = create_app(&nodes[0], json!({ "name": name })).await;
    let args = json!({
        "a": nodes[0].addr.to_string(),
        "b": nodes[1].addr.to_string(),
        "appId": app["id"].to_string(),
        "slug": app["slug"],
        "key": app["key"],
        "secret": app["secret"],
    });
    let r = run_client("node", &["pusher_e2e.mjs".to_owned(), args.to_string()], js).await;
    let socket_id = r["socketId"].as_str().expect("a socket id");
    let (left, right) = socket_id.split_once('.').expect("two integers");
    assert!(
        [left, right]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "{socket_id}"
    );
    assert_eq!(r["publicHello"], json!({"text": "from the node SDK"}));
    assert_eq!(r["seedStatus"], 200);
    assert_eq!(r["seedEvent"], json!({"name": "curl", "message": "hi"}));
    assert_eq!(r["phoenixHello"], json!({"text": "to phoenix"}));
    assert_eq!(r["phoenixPlain"], json!({"data": "just text"}));
    assert_eq!(r["excludedReachedBob"], json!({"n": 1}));
    assert_eq!(r["excludedSkippedAlice"], true);
    assert_eq!(r["clientTriggered"], true);
    assert_eq!(r["clientEvent"], json!({"who": "alice"}));
    assert_eq!(r["clientNotEchoed"], true);
    assert_eq!(
        r["forgedRefusal"],
        json!({"type": "AuthError", "error": "invalid or missing auth signature", "status": 401})
    );
    assert_eq!(r["decrypted"], json!({"secret": 42}));
    assert_eq!(r["userEvent"], json!({"hi": "alice"}));
    assert_eq!(
        r["batchResponse"],
        json!({"batch": [{}, {"subscription_count": 2}]})
    );
    assert_eq!(r["batchSeen"], json!([{"i": 1}, {"i": 2}]));
    assert_eq!(
        r["channels"]["channels"]["private-chat"],
        json!({"subscription_count": 2})
    );
    // alice (pusher-js) and the phoenix client on public:<slug>
    assert_eq!(
        r["channels"]["channels"]["public"],
        json!({"subscription_count": 2})
    );
    assert_eq!(
        r["channel"],
        json!({"occupied": true, "subscription_count": 2})
    );
    assert_eq!(r["emptyChannel"], json!({"occupied": false}));
    assert_eq!(r["usersOfPublic"], 400);
    assert_eq!(r["echoPublic"], json!({"order": {"id": 7}}));
    assert_eq!(r["echoPrivate"], json!({"ok": true}));
    assert_eq!(r["terminateResponse"], json!({}));
    assert_eq!(r["terminatedWith"], 4009);
}
