//! The official `phoenix` npm client (under Node, with `ws`) against a real node.
//! `make test` installs `tests/js/node_modules` with `npm ci` first.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Db, create_app, spawn_app};
use serde_json::{Value, json};

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
    let child = tokio::process::Command::new("node")
        .arg("e2e.mjs")
        .arg(app.addr.to_string())
        .arg(data["slug"].as_str().unwrap())
        .arg(data["key"].as_str().unwrap())
        .arg(data["secret"].as_str().unwrap())
        .current_dir(js)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the node script finishes")
        .expect("node runs");
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Value = serde_json::from_slice(&output.stdout).expect("JSON results");
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
