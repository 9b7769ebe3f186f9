//! The OpenAPI description at `/api/openapi.json` stays true: every route the router declares
//! is described, every described operation is routed (a request reaches a handler, not the
//! fallback), and schemathesis (`tests/python/schemathesis.sh`, run by `make test`) checks
//! the answers against the schemas.

mod common;

use std::collections::BTreeSet;

use common::{Db, spawn_app};
use serde_json::Value;

/// The route paths in `src/http/mod.rs`, with the admin routes under their prefix.
fn declared_routes() -> BTreeSet<String> {
    let source = include_str!("../src/http/mod.rs");
    let mut routes = BTreeSet::new();
    for (i, _) in source.match_indices(".route(") {
        let rest = &source[i + ".route(".len()..];
        let Some(start) = rest.find('"') else {
            continue;
        };
        let Some(len) = rest[start + 1..].find('"') else {
            continue;
        };
        let path = &rest[start + 1..start + 1 + len];
        let full = if path.starts_with("/api")
            || path.starts_with("/apps")
            || path.starts_with("/users")
            || path.starts_with("/socket")
            || path.starts_with("/app/")
            || path == "/healthz"
            || path == "/readyz"
            || path == "/metrics"
        {
            path.to_owned()
        } else {
            // nested under /api/admin/apps
            format!("/api/admin/apps{}", path.trim_end_matches('/'))
        };
        routes.insert(full);
    }
    routes
}

#[tokio::test]
async fn the_description_covers_every_route_and_every_route_is_described() {
    let node = spawn_app(Db::Sqlite).await;
    let response = node
        .http
        .get(node.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let spec: Value = response.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("paths");
    let described: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(described, declared_routes(), "spec paths vs router");

    // every described operation reaches a handler: the fallback answers "no such route"
    for (path, item) in paths {
        let concrete = path
            .replace("{slug}", "no-such-app")
            .replace("{app_slug}", "no-such-app")
            .replace("{app_id}", "999999")
            .replace("{key}", "no-such-key")
            .replace("{channel}", "public")
            .replace("{user_id}", "u1");
        for method in item.as_object().expect("path item").keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = node
                .http
                .request(method.clone(), node.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert!(
                !(status == 404 && body.contains("no such route")) && status != 405,
                "{method} {concrete}: {status} {body}"
            );
            assert!(
                status.as_u16() < 500 || status == 503,
                "{method} {concrete}: {status} {body}"
            );
            let documented = &item[method.as_str().to_lowercase()]["responses"];
            assert!(
                documented.get(status.as_str()).is_some() || documented.get("default").is_some(),
                "{method} {concrete}: {status} is not documented"
            );
        }
    }
}

/// `schemathesis run` against the live node; returns the cases it generated.
async fn schemathesis(node: &common::TestApp, config: &std::path::Path, args: &[&str]) -> u64 {
    let bin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/test-venv/bin/schemathesis"
    );
    let out = tokio::process::Command::new(bin)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(node.url("/api/openapi.json"))
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "50", "--seed", "1"])
        .args(args)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis is installed (make test installs it into target/test-venv)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    let summary = text
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    let words: Vec<&str> = summary.split_whitespace().collect();
    let generated: u64 = words[0].parse().expect("count");
    assert_eq!(
        words.get(2).and_then(|w| w.parse::<u64>().ok()),
        Some(generated),
        "{summary}"
    );
    println!("schemathesis {args:?}: {summary}");
    generated
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let database = common::fresh_postgres_database().await;
    let mut config = common::test_config(database);
    config.redis.url = Some(common::redis_url());
    // Generated requests include wrong credentials; they must not lock the run out.
    config.limits.admin_login_failures_per_min = 0;
    let node = common::spawn_config(config, None).await;
    let app = common::create_app(
        &node,
        serde_json::json!({"name": "schema-app", "history_size": 10}),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("schemathesis.toml");
    // The app routes get a real app: otherwise nearly every case would stop at 404.
    std::fs::write(
        &config,
        "[[operations]]\ninclude-path-regex = \"^/api/apps/\"\nparameters = { app_slug = \"schema-app\" }\n",
    )
    .expect("write config");
    let admin = format!("{}:{}", common::ADMIN.0, common::ADMIN.1);
    let mut cases = schemathesis(&node, &config, &["--auth", &admin]).await;
    let app_auth = format!(
        "{}:{}",
        app["key"].as_str().unwrap(),
        app["secret"].as_str().unwrap()
    );
    cases += schemathesis(
        &node,
        &config,
        &["--auth", &app_auth, "--include-path-regex", "^/api/apps/"],
    )
    .await;
    assert!(cases > 1000, "{cases} cases");
}
