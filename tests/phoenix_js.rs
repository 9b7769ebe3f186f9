//! The official `phoenix` npm client (under Node, with `ws`) against a real node.
//! `make test` installs `tests/js/node_modules` with `npm ci` first.

mod common;

use common::{Db, create_app, run_client, spawn_app};
use serde_json::json;

#[tokio::test]
async fn official_phoenix_client_joins_receives_and_pushes() {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    assert!(
        std::path::Path::new(js)
            .join("node_modules/phoenix")
            .exists(),
        "run `npm ci --prefix tests/js` (make test does) before this test"
    );
    let app = spawn_app(Db::Sqlite).await;
    let data = create_app(&app, json!({"name": "foo-app"})).await;
    let args = [
        "e2e.mjs".to_owned(),
        app.addr.to_string(),
        data["slug"].as_str().unwrap().to_owned(),
        data["key"].as_str().unwrap().to_owned(),
        data["secret"].as_str().unwrap().to_owned(),
    ];
    let results = run_client("node", &args, js).await;
    assert_eq!(results["joined"], true);
    assert_eq!(
        results["scoped"],
        json!({"name": "node", "message": "scoped"})
    );
    assert_eq!(
        results["general"],
        json!({"name": "node", "message": "everyone"})
    );
    assert_eq!(results["pushReply"], "ok");
    assert_eq!(results["echoed"], json!({"text": "from node"}));
    assert_eq!(results["privateJoined"], true);
}
