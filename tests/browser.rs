//! Presence as a new user tries it: browser tabs in a real headless Chromium (Debian's, driven by
//! Playwright for Python, both installed by `make test`), two pusher-js tabs on two nodes and a
//! phoenix.js tab, list each other; the node of one tab is killed with SIGKILL and the other tabs
//! drop its member within the node timeout.

mod common;

use common::process::NodeProcess;
use common::redis::RedisServer;
use common::{fresh_postgres_database, run_client};
use serde_json::json;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python");

#[tokio::test]
async fn browser_tabs_on_two_nodes_list_each_other_and_drop_a_killed_node() {
    assert!(
        std::path::Path::new(PYTHON).exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "run `make test`, which installs Chromium and Playwright (target/test-venv)"
    );
    let redis = RedisServer::start().await;
    let database = fresh_postgres_database().await;
    let timeout_ms: u64 = 3000;
    let env = [
        ("REDIS_URL", redis.url()),
        ("DATABASE_URL", database),
        ("PUSHLITE_PRESENCE__NODE_TIMEOUT_MS", timeout_ms.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = NodeProcess::spawn(&env).await;
    let b = NodeProcess::spawn(&env).await;
    let name = format!("tabs-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let app = a.create_app(&name).await;
    let secret = app["secret"].as_str().unwrap();
    let token = pushlite::token::mint(
        secret,
        &pushlite::token::Claims {
            exp: chrono::Utc::now().timestamp() + 600,
            sub: Some("phoebe".to_owned()),
            presence: Some(json!({"name": "Phoebe"})),
            subscribe: vec!["presence-*".to_owned()],
            ..Default::default()
        },
    );
    let args = json!({
        "a": a.addr.to_string(),
        "b": b.addr.to_string(),
        "bPid": b.pid(),
        "key": app["key"],
        "secret": secret,
        "topicApp": app["slug"],
        "phoenixToken": token,
        "waitMs": timeout_ms + 2000,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/presence.py");
    let r = run_client(
        PYTHON,
        &[script.to_owned(), args.to_string()],
        env!("CARGO_MANIFEST_DIR"),
    )
    .await;
    let everyone = json!(["ann", "bob", "phoebe"]);
    assert_eq!(
        r["before"],
        json!({"ann": everyone, "bob": everyone, "phoebe": everyone})
    );
    assert_eq!(
        r["after"],
        json!({"ann": ["ann", "phoebe"], "phoebe": ["ann", "phoebe"]})
    );
    let took = r["annDroppedBobMs"].as_u64().expect("a duration");
    assert!(took <= timeout_ms + 500, "dropped after {took} ms");
    eprintln!(
        "the surviving tab dropped the killed node's member after {took} ms (timeout {timeout_ms} ms)"
    );
    drop(a);
}
