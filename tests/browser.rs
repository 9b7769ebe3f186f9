//! Features as a new user tries them, in browser tabs in a real headless Chromium (Debian's,
//! driven by Playwright for Python, both installed by `make test`):
//! - presence: two pusher-js tabs on two nodes and a phoenix.js tab list each other; the node of
//!   one tab is killed with SIGKILL and the other tabs drop its member within the node timeout;
//! - history: a phoenix.js tab whose socket is closed for a few seconds while messages are
//!   triggered on the other node shows every missed message once, in order, when it reconnects;
//! - the web console: an operator logs in, creates an app, watches its debug console while the
//!   article's curl triggers on another node, rotates, deactivates and deletes it.

mod common;

use common::process::NodeProcess;
use common::redis::RedisServer;
use common::{fresh_postgres_database, redis_url, run_client};
use serde_json::json;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python");

fn has_browser() {
    assert!(
        std::path::Path::new(PYTHON).exists() && std::path::Path::new("/usr/bin/chromium").exists(),
        "run `make test`, which installs Chromium and Playwright (target/test-venv)"
    );
}

#[tokio::test]
async fn browser_tabs_on_two_nodes_list_each_other_and_drop_a_killed_node() {
    has_browser();
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

#[tokio::test]
async fn a_browser_tab_that_lost_its_socket_shows_every_missed_message_once() {
    has_browser();
    let database = fresh_postgres_database().await;
    let env = [("REDIS_URL", redis_url()), ("DATABASE_URL", database)];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = NodeProcess::spawn(&env).await;
    let b = NodeProcess::spawn(&env).await;
    let name = format!("tab-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let app = a.create_app(&name).await;
    let slug = app["slug"].as_str().unwrap();
    // As an operator would: switch history on for the app through the admin API.
    let enabled = reqwest::Client::new()
        .patch(a.url(&format!("/api/admin/apps/{slug}")))
        .basic_auth(common::ADMIN.0, Some(common::ADMIN.1))
        .json(&json!({"app": {"history_size": 100}}))
        .send()
        .await
        .expect("update");
    assert_eq!(enabled.status(), 200);
    let args = json!({
        "a": a.addr.to_string(),
        "b": b.addr.to_string(),
        "slug": slug,
        "key": app["key"],
        "secret": app["secret"],
        "offMs": 3000,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/history.py");
    let r = run_client(
        PYTHON,
        &[script.to_owned(), args.to_string()],
        env!("CARGO_MANIFEST_DIR"),
    )
    .await;
    let expected: Vec<String> = (1..=24).map(|n| format!("message {n}")).collect();
    assert_eq!(
        r["messages"],
        json!(expected),
        "every message once, in order"
    );
    assert_eq!(r["status"], "recovered");
}

/// The development pair, as `make run` has it: the console warns about it.
const DEV_ENV: [(&str, &str); 2] = [
    ("PUSHER_ADMIN_USERNAME", "pusher_admin_username"),
    ("PUSHER_ADMIN_PASSWORD", "pusher_admin_password"),
];

#[tokio::test]
async fn an_operator_manages_an_app_and_watches_its_traffic_in_the_console() {
    has_browser();
    // A Redis of its own: the nodes page must list exactly these two nodes.
    let redis = RedisServer::start().await;
    let database = fresh_postgres_database().await;
    let (redis_url, database) = (redis.url(), database);
    let mut env = vec![
        ("REDIS_URL", redis_url.as_str()),
        ("DATABASE_URL", database.as_str()),
    ];
    env.extend(DEV_ENV);
    let a = NodeProcess::spawn(&env).await;
    let b = NodeProcess::spawn(&env).await;
    console_flow(&a, &b, 2, "console-screenshots").await;
}

/// The "done when", as a new user tries it: `make run` (SQLite, the in-process bus, no
/// Redis), the console, `foo-app`, its debug console and the article's curl, on one node.
#[tokio::test]
async fn the_console_works_on_one_embedded_node_as_make_run_starts_it() {
    has_browser();
    let node = NodeProcess::spawn(&DEV_ENV).await;
    console_flow(&node, &node, 1, "console-screenshots-embedded").await;
}

/// Runs `tests/browser/console.py` with the debug console on `a` and the triggers and sockets
/// on `b`, and checks what it saw.
async fn console_flow(a: &NodeProcess, b: &NodeProcess, nodes: usize, shots: &str) {
    let shots = format!("{}/target/{shots}", env!("CARGO_MANIFEST_DIR"));
    let args = json!({
        "a": a.addr.to_string(),
        "b": b.addr.to_string(),
        "user": "pusher_admin_username",
        "password": "pusher_admin_password",
        "name": "Foo App",
        "shots": shots,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py");
    let r = run_client(
        PYTHON,
        &[script.to_owned(), args.to_string()],
        env!("CARGO_MANIFEST_DIR"),
    )
    .await;
    eprintln!("{r:#}");
    let login = "/console/login";
    assert_eq!(
        r["guarded"],
        json!({"/console": login, "/console/nodes": login, "/console/apps/new": login,
               "/console/apps/x/debug": login, "/console/api/apps": 401})
    );
    assert_eq!(r["wrongPassword"]["error"], "Wrong username or password.");
    assert_eq!(r["wrongPassword"]["path"], login);
    let slowed = r["wrongPassword"]["ms"].as_u64().unwrap();
    assert!(
        slowed >= 1000,
        "a failed login is answered after the delay, took {slowed} ms"
    );
    assert_eq!(
        r["bannerOnLogin"], true,
        "the development credentials are flagged"
    );
    assert_eq!(r["loggedIn"], true);
    assert_eq!(r["app"]["slug"], "foo-app");
    assert_eq!(r["app"]["key"].as_str().unwrap().len(), 36);
    assert_eq!(r["app"]["secretShown"], true);
    assert_eq!(r["labelsMissing"], json!([]), "every control has a label");
    assert_eq!(r["curlStatus"], 200);
    let took = r["curlToConsoleMs"].as_u64().unwrap();
    assert!(took < 1000, "the event reached the console in {took} ms");
    assert!(r["eventRow"].as_str().unwrap().contains("hello from curl"));
    let refused = r["refusedRow"].as_str().unwrap();
    assert!(
        refused.contains("private") && refused.contains("unauthorized"),
        "{refused}"
    );
    assert_eq!(r["filtered"], json!(["kind-refused"]));
    assert_eq!(
        r["rotation"],
        json!({"changed": true, "old": 401, "new": 200})
    );
    assert_eq!(r["csrfMissing"]["status"], 403);
    assert_eq!(
        r["csrfMissing"]["body"]["errors"]["detail"],
        "missing or wrong CSRF token"
    );
    assert_eq!(r["csrfWrong"], 403);
    assert_eq!(
        r["deactivated"], 404,
        "an inactive app's triggers are refused"
    );
    assert_eq!(r["deleted"], 404);
    assert_eq!(r["nodes"], nodes);
    assert_eq!(r["afterLogout"], login);
    for page in [
        "newAppFits",
        "debugFits",
        "appFits",
        "appsFits",
        "nodesFits",
    ] {
        assert_eq!(r[page], true, "{page}: wider than a 375 px phone");
    }
    for shot in ["login", "new-app", "debug-console", "app", "apps", "nodes"] {
        assert!(
            std::path::Path::new(&format!("{shots}/{shot}.png")).exists(),
            "{shot}.png"
        );
    }
}
