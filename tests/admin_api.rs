//! The admin Apps API over real HTTP, on Postgres and on SQLite.

mod common;

use common::{ADMIN, Db, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Db::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
    };
}

on_both!(
    article_curl_creates_an_app,
    validation_errors,
    credentials_are_required,
    show_update_rotate_delete,
    bad_bodies_get_clear_errors,
    json_bodies_and_origins,
);

async fn create_form(app: &common::TestApp, body: &str) -> reqwest::Response {
    app.admin(Method::POST, "/api/admin/apps")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn article_curl_creates_an_app(db: Db) {
    let app = spawn_app(db).await;
    let response = create_form(&app, "app[name]=foo-app").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        "/api/admin/apps/foo-app"
    );
    let body: Value = response.json().await.unwrap();
    let data = &body["data"];
    assert_eq!(data["name"], "foo-app");
    assert_eq!(data["slug"], "foo-app");
    assert_eq!(data["active"], true);
    assert_eq!(data["allowed_origins"], json!([]));
    for field in ["id", "key", "secret", "inserted_at", "updated_at"] {
        assert!(!data[field].is_null(), "{field} is present");
    }
    assert_eq!(data["key"].as_str().unwrap().len(), 36);
    assert_ne!(data["key"], data["secret"]);

    let list: Value = app
        .admin(Method::GET, "/api/admin/apps")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["slug"], "foo-app");
}

async fn validation_errors(db: Db) {
    let app = spawn_app(db).await;
    assert_eq!(create_form(&app, "app[name]=foo-app").await.status(), 201);
    let again = create_form(&app, "app[name]=foo-app").await;
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body,
        json!({"errors": {"name": ["has already been taken"]}})
    );
    let short = create_form(&app, "app[name]=abc").await;
    assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = short.json().await.unwrap();
    assert_eq!(
        body["errors"]["name"][0],
        "should be at least 5 character(s)"
    );
    let blank = create_form(&app, "app[active]=true").await;
    assert_eq!(blank.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = blank.json().await.unwrap();
    assert_eq!(body["errors"]["name"][0], "can't be blank");
    let bad_active = create_form(&app, "app[name]=other-app&app[active]=maybe").await;
    assert_eq!(bad_active.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // the key and secret of a request are never used
    let chosen = create_form(&app, "app[name]=chosen-app&app[key]=mine&app[secret]=mine").await;
    let body: Value = chosen.json().await.unwrap();
    assert_ne!(body["data"]["key"], "mine");
    assert_ne!(body["data"]["secret"], "mine");
}

async fn credentials_are_required(db: Db) {
    let app = spawn_app(db).await;
    for auth in [None, Some((ADMIN.0, "wrong")), Some(("wrong", ADMIN.1))] {
        let mut request = app.http.get(app.url("/api/admin/apps"));
        if let Some((user, password)) = auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"].to_str().unwrap(),
            "Basic realm=\"pushlite\""
        );
        let body: Value = response.json().await.unwrap();
        assert!(body["errors"]["detail"].is_string());
    }
    let response = app
        .http
        .post(app.url("/api/admin/apps"))
        .header("authorization", "Basic not-base64!!")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn show_update_rotate_delete(db: Db) {
    let app = spawn_app(db).await;
    let created: Value = create_form(&app, "app[name]=foo-app")
        .await
        .json()
        .await
        .unwrap();
    let shown = app
        .admin(Method::GET, "/api/admin/apps/foo-app")
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    assert_eq!(shown.json::<Value>().await.unwrap(), created);
    let missing = app
        .admin(Method::GET, "/api/admin/apps/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.json::<Value>().await.unwrap()["errors"]["detail"].is_string());

    for method in [Method::PATCH, Method::PUT] {
        let updated = app
            .admin(method, "/api/admin/apps/foo-app")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("app[active]=false")
            .send()
            .await
            .unwrap();
        assert_eq!(updated.status(), 200);
        let body: Value = updated.json().await.unwrap();
        assert_eq!(body["data"]["active"], false);
        assert_eq!(body["data"]["secret"], created["data"]["secret"]);
    }
    let renamed: Value = app
        .admin(Method::PATCH, "/api/admin/apps/foo-app")
        .json(&json!({"app": {"name": "Shiny New App"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["data"]["slug"], "shiny-new-app");
    let old = app
        .admin(Method::GET, "/api/admin/apps/foo-app")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);

    let rotated = app
        .admin(Method::POST, "/api/admin/apps/shiny-new-app/rotate_secret")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    assert_ne!(rotated["data"]["secret"], created["data"]["secret"]);
    assert_eq!(rotated["data"]["key"], created["data"]["key"]);

    let deleted = app
        .admin(Method::DELETE, "/api/admin/apps/shiny-new-app")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let again = app
        .admin(Method::DELETE, "/api/admin/apps/shiny-new-app")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let patch_missing = app
        .admin(Method::PATCH, "/api/admin/apps/shiny-new-app")
        .json(&json!({"app": {"active": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch_missing.status(), StatusCode::NOT_FOUND);
}

async fn bad_bodies_get_clear_errors(db: Db) {
    let app = spawn_app(db).await;
    let cases: Vec<(Option<&str>, String, StatusCode)> = vec![
        (
            Some("application/json"),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("application/json"),
            "[1,2]".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("application/json"),
            r#"{"name":"x"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("application/json"),
            r#"{"app":"x"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Some("text/plain"),
            "app[name]=foo-app".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            None,
            "app[name]=foo-app".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            Some("application/x-www-form-urlencoded"),
            format!("app[name]={}", "x".repeat(20_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Some("application/json"),
            r#"{"app":{"name":"foo-app","allowed_origins":[1]}}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (content_type, body, expected) in cases {
        let mut request = app.admin(Method::POST, "/api/admin/apps").body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "content type {content_type:?}");
        let body: Value = response.json().await.expect("a JSON error body");
        assert!(body["errors"].is_object());
    }
    let list: Value = app
        .admin(Method::GET, "/api/admin/apps")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["data"],
        json!([]),
        "nothing was created by bad requests"
    );
}

async fn json_bodies_and_origins(db: Db) {
    let app = spawn_app(db).await;
    let response = app
        .admin(Method::POST, "/api/admin/apps")
        .json(&json!({"app": {"name": "Json App", "active": false,
                               "allowed_origins": ["https://Shop.Example/"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["slug"], "json-app");
    assert_eq!(body["data"]["active"], false);
    assert_eq!(
        body["data"]["allowed_origins"],
        json!(["https://shop.example"])
    );
    let form = app
        .admin(Method::PATCH, "/api/admin/apps/json-app")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("app[allowed_origins][]=https://a.test&app[allowed_origins][]=http://b.test:8080")
        .send()
        .await
        .unwrap();
    let body: Value = form.json().await.unwrap();
    assert_eq!(
        body["data"]["allowed_origins"],
        json!(["https://a.test", "http://b.test:8080"])
    );
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let app = spawn_app(Db::Sqlite).await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let unknown = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.json::<Value>().await.unwrap()["errors"].is_object());
    let request_id = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(request_id.headers()["x-request-id"], "abc-123");
}
