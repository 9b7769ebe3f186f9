//! Configuration precedence and bad values, through the real binary with a clean environment.

use std::path::Path;
use std::process::{Command, Output};

fn pushlite(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pushlite"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run pushlite")
}

fn config(dir: &Path, env: &[(&str, &str)]) -> toml::Value {
    let out = pushlite(dir, &["config"], env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("config prints TOML")
}

fn failure(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = pushlite(dir, args, env);
    assert_eq!(out.status.code(), Some(2), "exit status 2 for {env:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path(), &[]);
    assert_eq!(c["server"]["host"].as_str(), Some("127.0.0.1"));
    assert_eq!(c["server"]["port"].as_integer(), Some(4000));
    assert_eq!(c["database"]["url"].as_str(), Some("sqlite://pushlite.db"));
    assert!(c["redis"].get("url").is_none());
    assert_eq!(
        c["admin"]["username"].as_str(),
        Some("pusher_admin_username")
    );
    assert_eq!(c["admin"]["password"].as_str(), Some("[redacted]"));
    assert!(
        !dir.path().join("pushlite.db").exists(),
        "config does no I/O"
    );
}

#[test]
fn precedence_defaults_file_conventional_prefixed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pushlite.toml"),
        "[server]\nport = 7000\n[admin]\nusername = \"from-file\"\n",
    )
    .unwrap();
    let c = config(dir.path(), &[]);
    assert_eq!(c["server"]["port"].as_integer(), Some(7000));
    assert_eq!(c["admin"]["username"].as_str(), Some("from-file"));
    let c = config(
        dir.path(),
        &[("PORT", "5000"), ("PUSHER_ADMIN_USERNAME", "from-env")],
    );
    assert_eq!(c["server"]["port"].as_integer(), Some(5000));
    assert_eq!(c["admin"]["username"].as_str(), Some("from-env"));
    let c = config(
        dir.path(),
        &[("PORT", "5000"), ("PUSHLITE_SERVER__PORT", "6000")],
    );
    assert_eq!(c["server"]["port"].as_integer(), Some(6000));
    let explicit = dir.path().join("other.toml");
    std::fs::write(&explicit, "[server]\nport = 8000\n").unwrap();
    let out = pushlite(
        dir.path(),
        &["--config", explicit.to_str().unwrap(), "config"],
        &[],
    );
    let c: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(c["server"]["port"].as_integer(), Some(8000));
}

#[test]
fn secrets_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let out = pushlite(
        dir.path(),
        &["config"],
        &[
            ("DATABASE_URL", "postgres://app:db-secret@db:5432/pushlite"),
            ("REDIS_URL", "redis://:redis-secret@redis:6379"),
            ("PUSHER_ADMIN_PASSWORD", "admin-secret"),
            ("PUSHLITE_SERVER__HOST", "0.0.0.0"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["db-secret", "redis-secret", "admin-secret"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("postgres://app:[redacted]@db:5432/pushlite"));
    assert!(text.contains("0.0.0.0"));
}

#[test]
fn bad_values_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let e = failure(dir.path(), &["config"], &[("PORT", "abc")]);
    assert!(e.contains("server.port") || e.contains("PORT"), "{e}");
    let e = failure(
        dir.path(),
        &["config"],
        &[("PUSHLITE_SERVER__HOST", "nowhere")],
    );
    assert!(e.contains("server.host"), "{e}");
    let e = failure(dir.path(), &["config"], &[("DATABASE_URL", "mysql://x/y")]);
    assert!(e.contains("database.url"), "{e}");
    let e = failure(dir.path(), &["config"], &[("REDIS_URL", "http://x")]);
    assert!(e.contains("redis.url"), "{e}");
    let e = failure(
        dir.path(),
        &["config"],
        &[("PUSHLITE_LIMITS__WS_FRAME_BYTES", "0")],
    );
    assert!(e.contains("limits.ws_frame_bytes"), "{e}");
    let e = failure(dir.path(), &["config"], &[("PUSHLITE_SERVER__HOTS", "x")]);
    assert!(e.contains("hots"), "{e}");
    let e = failure(dir.path(), &["--config", "missing.toml", "config"], &[]);
    assert!(e.contains("missing.toml"), "{e}");
    // a bad value stops `serve` before it touches the database
    failure(dir.path(), &["serve"], &[("PORT", "99999")]);
    assert!(!dir.path().join("pushlite.db").exists());
}

#[test]
fn kubernetes_service_links_are_not_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &[
            ("PUSHLITE_PORT", "tcp://10.0.0.1:4000"),
            ("PUSHLITE_SERVICE_HOST", "10.0.0.1"),
        ],
    );
    assert_eq!(c["server"]["port"].as_integer(), Some(4000));
}

#[test]
fn refuses_public_bind_with_development_or_empty_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let e = failure(
        dir.path(),
        &["serve"],
        &[("PUSHLITE_SERVER__HOST", "0.0.0.0"), ("PORT", "0")],
    );
    assert!(e.contains("refusing") && e.contains("development"), "{e}");
    let e = failure(
        dir.path(),
        &["serve"],
        &[
            ("PUSHLITE_SERVER__HOST", "0.0.0.0"),
            ("PUSHER_ADMIN_USERNAME", "ops"),
            ("PUSHER_ADMIN_PASSWORD", ""),
        ],
    );
    assert!(e.contains("empty"), "{e}");
    assert!(!dir.path().join("pushlite.db").exists());
}

/// Issue 10, D8: secrets are strings however they look, and no error shows one.
#[test]
fn numeric_looking_secrets_are_strings() {
    let dir = tempfile::tempdir().unwrap();
    for password in ["123456", "0012345", "true", "[abc]", "1e3", "{x = 1}"] {
        let c = config(dir.path(), &[("PUSHER_ADMIN_PASSWORD", password)]);
        assert_eq!(c["admin"]["password"].as_str(), Some("[redacted]"));
        let c = config(dir.path(), &[("PUSHLITE_ADMIN__PASSWORD", password)]);
        assert_eq!(c["admin"]["password"].as_str(), Some("[redacted]"));
        let c = config(dir.path(), &[("PUSHER_ADMIN_USERNAME", password)]);
        assert_eq!(c["admin"]["username"].as_str(), Some(password));
    }
    // the prefixed name still wins over the conventional one
    let c = config(
        dir.path(),
        &[
            ("PUSHER_ADMIN_USERNAME", "0042"),
            ("PUSHLITE_ADMIN__USERNAME", "0043"),
        ],
    );
    assert_eq!(c["admin"]["username"].as_str(), Some("0043"));
    // names match without regard to case, as for every other key
    let c = config(dir.path(), &[("pushlite_admin__username", "0044")]);
    assert_eq!(c["admin"]["username"].as_str(), Some("0044"));
    // a number where TOML must hold a string is refused without echoing it
    let file = dir.path().join("numeric.toml");
    std::fs::write(&file, "[admin]\npassword = 9876543210\n").unwrap();
    let e = failure(dir.path(), &["--config", "numeric.toml", "config"], &[]);
    assert!(e.contains("admin.password"), "{e}");
    assert!(!e.contains("9876543210"), "{e}");
}

/// Issue 10, D9: `pushlite config` hides query-string passwords, passwords holding `/`, and a
/// TOML syntax error does not quote the line.
#[test]
fn config_output_and_errors_hide_every_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = pushlite(
        dir.path(),
        &["config"],
        &[
            (
                "DATABASE_URL",
                "postgres://app:sl/ash-secret@db:5432/pushlite?sslmode=require&password=query-secret",
            ),
            ("REDIS_URL", "redis://:re/dis-secret@cache:6379/0"),
        ],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in [
        "sl/ash-secret",
        "ash-secret",
        "query-secret",
        "re/dis-secret",
        "dis-secret",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("sslmode=require"), "{text}");
    std::fs::write(
        dir.path().join("pushlite.toml"),
        "[admin]\nusername = \"ops\"\npassword = \"toml-secret-value\n",
    )
    .unwrap();
    let e = failure(dir.path(), &["config"], &[]);
    assert!(e.contains("line 3"), "{e}");
    assert!(!e.contains("toml-secret-value"), "{e}");
}

/// Issue 10, D13: values that parse but would overflow a timer or an allocation are refused
/// at load time, in one line, with exit 2.
#[test]
fn out_of_range_values_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let max = u64::MAX.to_string();
    for key in [
        "LIMITS__IDLE_TIMEOUT_SECS",
        "LIMITS__OUTBOUND_QUEUE",
        "LIMITS__WRITE_TIMEOUT_SECS",
        "CACHE__TTL_SECS",
        "DATABASE__ACQUIRE_TIMEOUT_SECS",
        "SERVER__SHUTDOWN_TIMEOUT_MS",
        "SERVER__HEADER_TIMEOUT_MS",
        "SERVER__BODY_TIMEOUT_MS",
        "SERVER__KEEPALIVE_TIMEOUT_MS",
        "REDIS__COMMAND_TIMEOUT_MS",
        "REDIS__HEALTH_INTERVAL_MS",
        "STATS__NODE_TTL_MS",
    ] {
        let var = format!("PUSHLITE_{key}");
        let e = failure(dir.path(), &["serve"], &[(var.as_str(), max.as_str())]);
        let dotted = key.to_ascii_lowercase().replace("__", ".");
        assert!(e.contains(&dotted), "{var}: {e}");
    }
    let e = failure(
        dir.path(),
        &["serve"],
        &[("PUSHLITE_DATABASE__MAX_CONNECTIONS", &u32::MAX.to_string())],
    );
    assert!(e.contains("database.max_connections"), "{e}");
    let e = failure(
        dir.path(),
        &["serve"],
        &[("PUSHLITE_LIMITS__CLIENT_EVENTS_PER_SEC", "0")],
    );
    assert!(e.contains("limits.client_events_per_sec"), "{e}");
    // an admin name with `:` could never log in over HTTP Basic
    let e = failure(
        dir.path(),
        &["serve"],
        &[("PUSHER_ADMIN_USERNAME", "ops:team")],
    );
    assert!(e.contains("admin.username"), "{e}");
    assert!(!dir.path().join("pushlite.db").exists());
}

/// Issue 10, D14: empty admin credentials are refused on loopback too.
#[test]
fn empty_admin_credentials_are_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [("PUSHER_ADMIN_PASSWORD", ""), ("PUSHER_ADMIN_USERNAME", "")] {
        let e = failure(dir.path(), &["serve"], &[(var, value), ("PORT", "0")]);
        assert!(e.contains("empty"), "{e}");
    }
    assert!(!dir.path().join("pushlite.db").exists());
}
