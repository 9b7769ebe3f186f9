//! The registry contract, run with the same bodies against Postgres and SQLite.

mod common;

use std::sync::Arc;

use common::{Db, fresh_database};
use pushlite::config::DatabaseConfig;
use pushlite::domain::app::{AppChanges, NewApp, random_credential};
use pushlite::registry::{self, AppRegistry, RegistryError};

fn db_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.to_owned(),
        migrate_on_start: true,
        max_connections: 4,
        acquire_timeout_secs: 2,
        query_timeout_secs: 5,
    }
}

async fn open(url: &str) -> Arc<dyn AppRegistry> {
    let registry = registry::connect(&db_config(url)).await.expect("connect");
    registry.migrate().await.expect("migrate");
    registry
}

fn new_app(name: &str, slug: &str) -> NewApp {
    NewApp {
        name: name.to_owned(),
        slug: slug.to_owned(),
        key: random_credential(),
        secret: random_credential(),
        active: true,
        client_events: true,
        allowed_origins: vec!["https://a.example".to_owned()],
        max_presence_members: 100,
        webhooks: Vec::new(),
        history_size: 0,
        history_ttl_secs: pushlite::domain::app::DEFAULT_HISTORY_TTL_SECS,
        max_connections: None,
        max_triggers_per_sec: None,
        webhook_max_queue: None,
    }
}

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
    insert_and_look_up,
    unique_name_slug_and_key,
    update_renames_and_keeps_the_rest,
    rotate_and_delete,
    survives_reconnect,
    migrations_are_idempotent,
    invalid_slugs_never_reach_the_database,
);

/// Issue 10, D6: a slug no app could have (a NUL byte made Postgres fail with an error that
/// read as an outage) is answered "no such app" by both backends without a query.
async fn invalid_slugs_never_reach_the_database(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let registry = open(&url).await;
    registry
        .insert(&new_app("Foo App", "foo-app"))
        .await
        .unwrap();
    for slug in ["foo\0app", "\0", "Foo-App", "foo app", "", &"x".repeat(300)] {
        assert!(registry.by_slug(slug).await.unwrap().is_none(), "{slug:?}");
        assert!(
            registry
                .update(slug, &AppChanges::default())
                .await
                .unwrap()
                .is_none()
        );
        assert!(registry.rotate_secret(slug, "s").await.unwrap().is_none());
        assert!(!registry.delete(slug).await.unwrap());
    }
    assert!(registry.by_key("k\0").await.unwrap().is_none());
    assert!(registry.by_slug("foo-app").await.unwrap().is_some());
}

async fn insert_and_look_up(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let registry = open(&url).await;
    let created = registry
        .insert(&new_app("Foo App", "foo-app"))
        .await
        .unwrap();
    assert!(created.id > 0);
    assert!(created.active);
    assert_eq!(created.allowed_origins, vec!["https://a.example"]);
    assert_eq!(created.inserted_at, created.updated_at);
    let by_slug = registry.by_slug("foo-app").await.unwrap().unwrap();
    assert_eq!(*by_slug, created);
    let by_key = registry.by_key(&created.key).await.unwrap().unwrap();
    assert_eq!(*by_key, created);
    assert!(registry.by_slug("nope").await.unwrap().is_none());
    assert!(registry.by_key("nope").await.unwrap().is_none());
    registry
        .insert(&new_app("Bar App", "bar-app"))
        .await
        .unwrap();
    let slugs: Vec<String> = registry
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.slug)
        .collect();
    assert_eq!(slugs, vec!["foo-app", "bar-app"]);
}

async fn unique_name_slug_and_key(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let registry = open(&url).await;
    let first = registry
        .insert(&new_app("Foo App", "foo-app"))
        .await
        .unwrap();
    let same_name = registry.insert(&new_app("Foo App", "other-slug")).await;
    assert!(matches!(
        same_name,
        Err(RegistryError::Conflict { field: "name" })
    ));
    let same_slug = registry.insert(&new_app("foo app", "foo-app")).await;
    assert!(matches!(
        same_slug,
        Err(RegistryError::Conflict { field: "name" })
    ));
    let mut same_key = new_app("Key Clash", "key-clash");
    same_key.key = first.key.clone();
    let same_key = registry.insert(&same_key).await;
    assert!(matches!(
        same_key,
        Err(RegistryError::Conflict { field: "key" })
    ));
    assert_eq!(
        registry.list().await.unwrap().len(),
        1,
        "a refused write changes nothing"
    );
}

async fn update_renames_and_keeps_the_rest(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let registry = open(&url).await;
    let before = registry
        .insert(&new_app("Foo App", "foo-app"))
        .await
        .unwrap();
    registry
        .insert(&new_app("Taken Name", "taken-name"))
        .await
        .unwrap();
    let renamed = registry
        .update(
            "foo-app",
            &AppChanges {
                name_and_slug: Some(("Shiny App".into(), "shiny-app".into())),
                ..AppChanges::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.slug, "shiny-app");
    assert_eq!(renamed.key, before.key);
    assert_eq!(renamed.secret, before.secret);
    assert_eq!(renamed.allowed_origins, before.allowed_origins);
    assert_eq!(renamed.inserted_at, before.inserted_at);
    assert!(renamed.updated_at >= before.updated_at);
    assert!(registry.by_slug("foo-app").await.unwrap().is_none());

    let deactivated = registry
        .update(
            "shiny-app",
            &AppChanges {
                active: Some(false),
                client_events: Some(false),
                allowed_origins: Some(vec![]),
                ..AppChanges::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!deactivated.active);
    assert!(!deactivated.client_events);
    assert!(deactivated.allowed_origins.is_empty());
    assert_eq!(deactivated.name, "Shiny App");

    let clash = registry
        .update(
            "shiny-app",
            &AppChanges {
                name_and_slug: Some(("Taken Name".into(), "taken-name".into())),
                ..AppChanges::default()
            },
        )
        .await;
    assert!(matches!(
        clash,
        Err(RegistryError::Conflict { field: "name" })
    ));
    assert!(
        registry
            .update("missing", &AppChanges::default())
            .await
            .unwrap()
            .is_none()
    );
}

async fn rotate_and_delete(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let registry = open(&url).await;
    let before = registry
        .insert(&new_app("Foo App", "foo-app"))
        .await
        .unwrap();
    let rotated = registry
        .rotate_secret("foo-app", "new-secret")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.secret, "new-secret");
    assert_eq!(rotated.key, before.key);
    assert!(
        registry
            .rotate_secret("missing", "x")
            .await
            .unwrap()
            .is_none()
    );
    assert!(registry.delete("foo-app").await.unwrap());
    assert!(!registry.delete("foo-app").await.unwrap());
    assert!(registry.by_key(&before.key).await.unwrap().is_none());
}

async fn survives_reconnect(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let created = open(&url)
        .await
        .insert(&new_app("Foo App", "foo-app"))
        .await
        .unwrap();
    let reopened = open(&url).await;
    assert_eq!(
        reopened.by_slug("foo-app").await.unwrap(),
        Some(std::sync::Arc::new(created))
    );
}

async fn migrations_are_idempotent(db: Db) {
    let (url, _guard) = fresh_database(db).await;
    let registry = open(&url).await;
    registry.migrate().await.unwrap();
    registry.ping().await.unwrap();
}

#[tokio::test]
async fn unreachable_postgres_is_an_error_not_a_fallback() {
    let result = registry::connect(&db_config("postgres://postgres@127.0.0.1:1/none")).await;
    assert!(matches!(result, Err(RegistryError::Unavailable(_))));
}

#[tokio::test]
async fn unwritable_sqlite_path_is_an_error() {
    let result = registry::connect(&db_config("sqlite:///nonexistent-dir/x/pushlite.db")).await;
    assert!(result.is_err());
}
