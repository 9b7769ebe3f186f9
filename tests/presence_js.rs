//! Presence with the unmodified clients across three nodes sharing Redis and Postgres:
//! pusher-js members, phoenix.js's `Presence` over a WebSocket and phoenix.js over its LongPoll
//! transport on the same channel, and the LongPoll fallback of a page whose WebSockets are
//! blocked. `make test` installs `tests/js/node_modules` with `npm ci`.

mod common;

use common::{cluster, create_app, redis_url, run_client};
use serde_json::json;

fn token(secret: &str, sub: &str, name: &str) -> String {
    pushlite::token::mint(
        secret,
        &pushlite::token::Claims {
            exp: chrono::Utc::now().timestamp() + 600,
            sub: Some(sub.to_owned()),
            presence: Some(json!({ "name": name })),
            subscribe: vec!["presence-room:*".to_owned()],
            publish: vec!["presence-room:*".to_owned()],
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn pusher_js_phoenix_presence_and_longpoll_members_see_each_other() {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    assert!(
        std::path::Path::new(js)
            .join("node_modules/phoenix")
            .exists(),
        "run `npm ci --prefix tests/js` (make test does) before this test"
    );
    let nodes = cluster(3, &redis_url()).await;
    let name = format!("room-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let app = create_app(&nodes[0], json!({ "name": name })).await;
    let secret = app["secret"].as_str().unwrap();
    let args = json!({
        "a": nodes[0].addr.to_string(),
        "b": nodes[1].addr.to_string(),
        "c": nodes[2].addr.to_string(),
        "appId": app["id"].to_string(),
        "slug": app["slug"],
        "key": app["key"],
        "secret": secret,
        "phxToken": token(secret, "phx-user", "Phoebe"),
        "lpToken": token(secret, "lp-user", "Lou"),
    });
    let r = run_client(
        "node",
        &["presence_e2e.mjs".to_owned(), args.to_string()],
        js,
    )
    .await;
    assert_eq!(r["aliceFirst"], 1);
    assert_eq!(
        r["aliceSawPhoenix"],
        json!({"id": "phx-user", "info": {"name": "Phoebe"}})
    );
    assert_eq!(
        r["phoenixSawAliceMeta"],
        json!({"name": "Alice", "hasRef": true})
    );
    assert_eq!(r["aliceMembers"], json!(["alice", "lp-user", "phx-user"]));
    assert_eq!(
        r["longPollReceived"],
        json!({"headline": "over long polling"})
    );
    assert_eq!(r["shoutAtPhoenix"], json!({"from": "lp"}));
    assert_eq!(r["shoutAtAlice"], json!({"from": "lp"}));
    assert_eq!(r["users"], json!(["alice", "lp-user", "phx-user"]));
    assert_eq!(r["phoenixJoins"], json!(["alice", "lp-user", "phx-user"]));
    assert_eq!(r["phoenixLeaves"], json!(["lp-user"]));
    assert_eq!(r["aliceLast"], 1);
    assert_eq!(r["fallbackTransport"], "LongPoll");
    assert_eq!(r["fallbackReceived"], json!({"via": "fallback"}));
}
