//! Issue 10: one regression test per defect of the wave-1 review, each against real sockets,
//! real Postgres or SQLite files, and real Redis processes (frozen with SIGSTOP where the
//! defect needs it).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::phx::{self, Client, Vsn};
use common::process::NodeProcess;
use common::redis::{RedisServer, cli};
use common::{
    ADMIN, Db, TestApp, create_app, parse_metrics, spawn_app, spawn_app_with, trigger_form,
};
use futures_util::{SinkExt, StreamExt};
use pushlite::token::{self, Claims};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Reads until the peer closes; `Some(bytes)` if it closed within `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length`; returns the status line and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
                return (head.lines().next().unwrap_or_default().to_owned(), body);
            }
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a response within the timeout")
            .expect("read");
        assert!(n > 0, "connection closed before a full response");
        data.extend_from_slice(&buf[..n]);
    }
}

/// Waits until `check` holds for the node's metrics.
async fn metrics_until(app: &TestApp, what: &str, check: impl Fn(&HashMap<String, f64>) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = app.metrics().await;
        if check(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn joined(app: &TestApp, topic: &str, query: &str, origin: Option<&str>) -> Client {
    let mut client = phx::connect(app.addr, Vsn::V2, query, origin).await;
    let (_, reply) = client.join(topic).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    client
}

/// D1: extension methods are one `other` label and never reach the exposition or the logs.
#[tokio::test]
async fn extension_methods_share_one_metric_label() {
    let app = spawn_app(Db::Sqlite).await;
    for i in 0..50 {
        let method = format!("{}{i}", "X".repeat(900));
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let request = format!("{method} /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        read_to_close(&mut stream, WAIT).await.expect("answered");
    }
    let text = app.metrics_text().await;
    assert!(!text.contains("XXXX"), "a raw method became a label");
    let other: f64 = parse_metrics(&text)
        .iter()
        .filter(|(k, _)| {
            k.starts_with("pushlite_http_requests_total") && k.contains(r#"method="other""#)
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(other, 50.0);
}

fn timeouts(c: &mut pushlite::Config) {
    c.server.header_timeout_ms = 300;
    c.server.body_timeout_ms = 300;
    c.server.keepalive_timeout_ms = 1200;
}

/// D2: a connection that sends nothing, half a head, half a body, or idles on keep-alive is
/// closed; keep-alive outlives the header timeout.
#[tokio::test]
async fn http_connections_are_bounded_in_time() {
    let app = spawn_app_with(Db::Sqlite, timeouts).await;
    let bound = Duration::from_secs(4);

    // a silent connection owes a head at once; half a head is cut at the header timeout,
    // well before the keep-alive one
    for (what, sent) in [
        ("silent", &b""[..]),
        ("half head", b"GET /healthz HTTP/1.1\r\nHost:"),
    ] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let started = Instant::now();
        assert!(
            read_to_close(&mut stream, bound).await.is_some(),
            "{what} closed"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1100),
            "{what}: header timeout"
        );
    }

    let mut half_body = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/admin/apps HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\nAuthorization: Basic {}\r\n\r\n{{\"app\":",
        base64_admin()
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut half_body).await;
    assert!(status.contains(" 408 "), "{status}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["errors"]["detail"].is_string());

    // keep-alive: a second request after longer than the header timeout still works
    let mut keep = TcpStream::connect(app.addr).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    keep.write_all(get).await.unwrap();
    assert!(read_response(&mut keep).await.0.contains(" 200 "));
    tokio::time::sleep(Duration::from_millis(600)).await;
    keep.write_all(get).await.unwrap();
    assert!(read_response(&mut keep).await.0.contains(" 200 "));
    assert!(
        read_to_close(&mut keep, bound).await.is_some(),
        "idle keep-alive closed"
    );
}

/// D2: running out of file descriptors is counted, and once the header timeout has closed the
/// silent connections that took them, the node serves again.
#[tokio::test]
async fn accept_errors_are_counted_and_the_node_recovers() {
    let node = NodeProcess::spawn_via(
        &["prlimit", "--nofile=64:64", "--"],
        &[("PUSHLITE_SERVER__HEADER_TIMEOUT_MS", "500")],
    )
    .await;
    // more connections than the node has descriptors; none of them sends a byte
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(
            TcpStream::connect(node.addr)
                .await
                .expect("the backlog takes it"),
        );
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = http.get(node.url("/metrics")).send().await
            && let Ok(text) = response.text().await
        {
            let errors = parse_metrics(&text)
                .get("pushlite_http_accept_errors_total")
                .copied()
                .unwrap_or(0.0);
            if errors > 0.0 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "{}", node.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // every held connection was closed by the node
    for mut stream in held {
        assert!(
            read_to_close(&mut stream, Duration::from_secs(10))
                .await
                .is_some()
        );
    }
}

fn base64_admin() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ADMIN.0, ADMIN.1))
}

/// D2: on shutdown, idle keep-alive connections and half-sent requests do not hold the
/// process: it exits long before the header and keep-alive timeouts.
#[tokio::test]
async fn shutdown_cuts_idle_and_half_sent_connections() {
    let (url, dir) = common::fresh_database(Db::Sqlite).await;
    let mut config = common::test_config(url);
    config.server.header_timeout_ms = 60_000;
    config.server.keepalive_timeout_ms = 60_000;
    config.server.drain_delay_ms = 100;
    config.server.shutdown_timeout_ms = 30_000;
    let server = pushlite::Server::build(config).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut idle).await.0.contains(" 200 "));
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("shutdown does not wait for idle or half-sent connections")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(read_to_close(&mut idle, WAIT).await.is_some());
    assert!(read_to_close(&mut half, WAIT).await.is_some());
    drop(dir);
}

/// A WebSocket client whose receive buffer is tiny, so the server's writes block soon.
async fn small_window_client(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws
}

/// Pushes frames that each earn a 60 KB reply, never reading; returns how long until the
/// server dropped the connection (a send fails), or `None` if it never did within `within`.
async fn flood_without_reading(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    within: Duration,
) -> Option<Duration> {
    use tokio_tungstenite::tungstenite::Message;
    let started = Instant::now();
    // An unjoined topic is answered with an error reply that repeats the topic.
    let topic = "t".repeat(60_000);
    let frame = json!([null, "1", topic, "x", {}]).to_string();
    while started.elapsed() < within {
        match tokio::time::timeout(
            Duration::from_millis(500),
            ws.send(Message::Text(frame.clone().into())),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(started.elapsed()),
            Err(_) => {} // blocked: the server is not reading either
        }
    }
    None
}

/// D3: a client that sends but never reads is closed once a write blocks past the write
/// timeout, and counted as a slow consumer.
#[tokio::test]
async fn a_client_that_never_reads_is_closed() {
    let app = spawn_app_with(Db::Sqlite, |c| c.limits.write_timeout_secs = 1).await;
    create_app(&app, json!({"name": "foo-app"})).await;
    let mut ws = small_window_client(app.addr).await;
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(
        json!(["1", "1", "public:foo-app", "phx_join", {}])
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.to_text().unwrap().contains("\"ok\""), "{reply:?}");
    assert!(
        flood_without_reading(&mut ws, Duration::from_secs(20))
            .await
            .is_some(),
        "the server never gave up on a client that does not read"
    );
    metrics_until(&app, "counted as a slow consumer", |m| {
        m.get(r#"pushlite_connections_closed_total{app="foo-app",protocol="phoenix",reason="slow_consumer"}"#)
            == Some(&1.0)
    })
    .await;
}

/// D3: a write blocked on a client that does not read does not hold SIGTERM.
#[tokio::test]
async fn a_blocked_write_does_not_hold_shutdown() {
    let mut node = NodeProcess::spawn(&[
        ("PUSHLITE_LIMITS__WRITE_TIMEOUT_SECS", "600"),
        ("PUSHLITE_SERVER__DRAIN_DELAY_MS", "100"),
        ("PUSHLITE_SERVER__SHUTDOWN_TIMEOUT_MS", "60000"),
    ])
    .await;
    let mut ws = small_window_client(node.addr).await;
    // fill every buffer between the two, then keep the writes blocked
    assert!(
        flood_without_reading(&mut ws, Duration::from_secs(3))
            .await
            .is_none()
    );
    let started = Instant::now();
    node.signal("TERM");
    let status = node.wait(Duration::from_secs(10)).await.expect("exits");
    assert!(status.success(), "{}", node.logs());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// D5: with Redis frozen (SIGSTOP keeps every TCP connection open), a join of a new topic is
/// refused rather than acknowledged, readiness turns 503, and then joins of topics the node
/// already subscribes are refused too; all of it recovers after SIGCONT.
#[tokio::test]
async fn a_frozen_redis_is_noticed() {
    let redis = RedisServer::start().await;
    let app = spawn_app_with(Db::Sqlite, |c| {
        c.redis.url = Some(redis.url());
        c.redis.command_timeout_ms = 500;
        c.redis.health_interval_ms = 200;
    })
    .await;
    create_app(&app, json!({"name": "cold-app"})).await;
    create_app(&app, json!({"name": "warm-app"})).await;
    let _warm = joined(&app, "public:warm-app", "", None).await;
    let ready = |app: &TestApp| {
        let request = app.http.get(app.url("/readyz"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&app).await, 200);
    redis.signal("STOP");
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (_, reply) = client.join("public:cold-app").await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    let deadline = Instant::now() + WAIT;
    while ready(&app).await != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness stayed 200 with Redis frozen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, reply) = client.join("public:warm-app").await;
    assert_eq!(
        reply.payload["response"]["reason"], "unavailable",
        "a subscribed topic is no excuse"
    );
    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&app).await != 200 {
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for topic in ["public:cold-app", "public:warm-app"] {
        let (_, reply) = client.join(topic).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    }
}

/// D6: a slug holding a NUL byte (or anything no app could have) is a 404 or a refused join,
/// never a 503 from Postgres.
#[tokio::test]
async fn invalid_slugs_are_refused_before_postgres() {
    let app = spawn_app(Db::Postgres).await;
    let data = create_app(&app, json!({"name": "foo-app"})).await;
    for path in ["%00", "foo%00app", "Foo-App"] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PATCH,
            reqwest::Method::DELETE,
        ] {
            let response = app
                .admin(method.clone(), &format!("/api/admin/apps/{path}"))
                .json(&json!({"app": {"active": false}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "{method} {path}");
        }
        let rotate = app
            .admin(
                reqwest::Method::POST,
                &format!("/api/admin/apps/{path}/rotate_secret"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(rotate.status(), 404);
        let trigger = app
            .http
            .post(app.url(&format!("/api/apps/{path}/events")))
            .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
            .json(&json!({"topic": "t", "event": "e", "scope": "public"}))
            .send()
            .await
            .unwrap();
        assert_eq!(trigger.status(), 404);
        assert!(trigger.json::<Value>().await.unwrap()["errors"]["detail"].is_string());
    }
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (_, reply) = client.join("public:\u{0}").await;
    assert_eq!(reply.payload["response"]["reason"], "app not found");
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// D7: client events are rate limited per socket (error replies, then a 1008 close), and an
/// app can switch them off.
#[tokio::test]
async fn client_events_are_rate_limited_and_can_be_switched_off() {
    let app = spawn_app_with(Db::Sqlite, |c| c.limits.client_events_per_sec = 5).await;
    create_app(&app, json!({"name": "chatty-app"})).await;
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = client.join("public:chatty-app").await;
    for i in 0..40 {
        let r = format!("m{i}");
        client
            .push(
                Some(&join_ref),
                &r,
                "public:chatty-app",
                "typing",
                json!({"i": i}),
            )
            .await;
    }
    let (mut ok, mut limited) = (0, 0);
    let code = loop {
        match tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("frames or a close")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                let frame = phx::parse(Vsn::V2, &text);
                if frame.event == "phx_reply" {
                    match frame.payload["status"].as_str() {
                        Some("ok") => ok += 1,
                        _ => {
                            let reason = frame.payload["response"]["reason"].as_str().unwrap();
                            assert!(reason.starts_with("rate limit exceeded"), "{reason}");
                            limited += 1;
                        }
                    }
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                break frame.map(|f| u16::from(f.code));
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!((5..=6).contains(&ok), "{ok} accepted");
    assert!(limited >= 1, "excess events get an error reply");
    assert_eq!(code, Some(1008));

    let switched = app
        .admin(reqwest::Method::PATCH, "/api/admin/apps/chatty-app")
        .json(&json!({"app": {"client_events": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(switched.status(), 200);
    assert_eq!(
        switched.json::<Value>().await.unwrap()["data"]["client_events"],
        false
    );
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = client.join("public:chatty-app").await;
    client
        .push(
            Some(&join_ref),
            "9",
            "public:chatty-app",
            "typing",
            json!({}),
        )
        .await;
    let reply = client.recv_reply("9").await;
    assert_eq!(
        reply.payload["response"]["reason"],
        "client events are disabled for this app"
    );
}

/// D8: a password that looks like a number is a password, and logs in as typed.
#[tokio::test]
async fn a_numeric_looking_admin_password_logs_in() {
    let node = NodeProcess::spawn(&[("PUSHER_ADMIN_PASSWORD", "0012345")]).await;
    let http = reqwest::Client::new();
    let status = |password: &'static str| {
        let request = http
            .get(node.url("/api/admin/apps"))
            .basic_auth(ADMIN.0, Some(password));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("0012345").await, 200);
    assert_eq!(status("12345").await, 401);
}

/// D10: joins of apps that do not exist take no label slot, and no raw byte of theirs
/// reaches the exposition.
#[tokio::test]
async fn only_registered_apps_get_a_metric_label() {
    let app = spawn_app_with(Db::Sqlite, |c| c.metrics.max_app_labels = 1).await;
    let mut client = phx::connect(app.addr, Vsn::V2, "", None).await;
    let long = format!("public:{}", "n".repeat(2048));
    for topic in [
        "public:nope-one",
        "public:nope-two",
        "private:nope",
        &long,
        "public:\u{0}",
    ] {
        let (_, reply) = client.join(topic).await;
        assert_eq!(reply.payload["status"], "error");
    }
    create_app(&app, json!({"name": "real-app"})).await;
    client.join("public:real-app").await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"pushlite_connections{app="real-app",protocol="phoenix"} 1"#),
        "{text}"
    );
    assert!(!text.contains("nope") && !text.contains("nnnn") && !text.contains('\u{0}'));
    assert!(
        text.contains(r#"pushlite_joins_total{app="none",result="not_found",scope="public"} 4"#)
    );
}

/// D11: reserved event names are refused over HTTP and dropped from the bus.
#[tokio::test]
async fn reserved_event_names_are_refused_everywhere() {
    let redis = RedisServer::start().await;
    let app = spawn_app_with(Db::Sqlite, |c| c.redis.url = Some(redis.url())).await;
    let data = create_app(&app, json!({"name": "foo-app"})).await;
    let mut client = joined(&app, "public:foo-app", "", None).await;
    for (topic, event) in [
        ("#general", "phx_close"),
        ("#general", "phx_reply"),
        ("t", "phx_error"),
    ] {
        let response = trigger_form(
            &app,
            &data,
            &[
                ("topic", topic),
                ("event", event),
                ("scope", "public"),
                ("payload", "{}"),
            ],
        )
        .await;
        assert_eq!(response.status(), 422, "{topic} {event}");
    }
    // straight onto the Redis channel, as any producer may
    cli(
        redis.port,
        &[
            "publish",
            "public:foo-app",
            r#"{"v":1,"event":"phx_close","payload":{}}"#,
        ],
    )
    .await;
    let ok = trigger_form(
        &app,
        &data,
        &[
            ("topic", "#general"),
            ("event", "after"),
            ("scope", "public"),
            ("payload", "{}"),
        ],
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        client.recv().await.event,
        "after",
        "the phx_close envelope was dropped"
    );
}

fn claims(subscribe: &str, exp_in: i64) -> Claims {
    Claims {
        exp: chrono::Utc::now().timestamp() + exp_in,
        nbf: None,
        sub: None,
        presence: None,
        subscribe: vec![subscribe.to_owned()],
        publish: vec![subscribe.to_owned()],
    }
}

/// D12: rotation, narrowed origins and token expiry reach sockets that already joined.
#[tokio::test]
async fn joined_sockets_lose_rights_that_lapse() {
    let app = spawn_app(Db::Postgres).await;
    let data = create_app(&app, json!({"name": "vault-app"})).await;
    let secret = data["secret"].as_str().unwrap();

    // a rotated secret closes private channels joined with the old one; public ones stay
    let token = token::mint(secret, &claims("private:vault-app", 600));
    let query = format!("token={token}");
    let mut client = joined(&app, "private:vault-app", &query, None).await;
    let (public_ref, _) = client.join("public:vault-app").await;
    let rotated = app
        .admin(
            reqwest::Method::POST,
            "/api/admin/apps/vault-app/rotate_secret",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let close = client.recv_event("phx_close").await;
    assert_eq!(close.topic, "private:vault-app");
    client
        .push(
            Some(&public_ref),
            "p1",
            "private:vault-app",
            "chat",
            json!({}),
        )
        .await;
    assert_eq!(
        client.recv_reply("p1").await.payload["response"]["reason"],
        "unmatched topic",
        "the closed channel can no longer publish"
    );
    let fields = [
        ("topic", "t"),
        ("event", "still"),
        ("scope", "public"),
        ("payload", "{}"),
    ];
    assert_eq!(
        trigger_form(&app, &rotated["data"], &fields).await.status(),
        200
    );
    assert_eq!(client.recv_event("t:still").await.topic, "public:vault-app");

    // a narrowed origin list closes channels joined from an origin no longer allowed
    let mut from_a = joined(&app, "public:vault-app", "", Some("https://a.example")).await;
    let patched = app
        .admin(reqwest::Method::PATCH, "/api/admin/apps/vault-app")
        .json(&json!({"app": {"allowed_origins": ["https://b.example"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(
        from_a.recv_event("phx_close").await.topic,
        "public:vault-app"
    );

    // a token that expires after the join stops working then
    let secret = rotated["data"]["secret"].as_str().unwrap();
    let token = token::mint(secret, &claims("private:vault-app", 2));
    let origin = Some("https://b.example");
    let mut short = joined(&app, "private:vault-app", &format!("token={token}"), origin).await;
    let started = Instant::now();
    assert_eq!(
        short.recv_event("phx_close").await.topic,
        "private:vault-app"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // nbf in the future is refused
    let mut early = claims("private:vault-app", 600);
    early.nbf = Some(chrono::Utc::now().timestamp() + 300);
    let token = token::mint(secret, &early);
    let mut client = phx::connect(app.addr, Vsn::V2, &format!("token={token}"), origin).await;
    let (_, reply) = client.join("private:vault-app").await;
    assert_eq!(reply.payload["response"]["reason"], "unauthorized");
}

/// D15: form bodies that are not UTF-8 once decoded are refused, as JSON ones are.
#[tokio::test]
async fn form_bodies_must_be_utf8() {
    let app = spawn_app(Db::Sqlite).await;
    let data = create_app(&app, json!({"name": "foo-app"})).await;
    for body in [
        &b"app[name]=bad%FF%FEname"[..],
        b"app[name]=raw\xff\xfebytes",
    ] {
        let response = app
            .admin(reqwest::Method::POST, "/api/admin/apps")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert!(response.json::<Value>().await.unwrap()["errors"]["detail"].is_string());
    }
    let listed: Value = app
        .admin(reqwest::Method::GET, "/api/admin/apps")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        1,
        "nothing stored"
    );
    let response = app
        .http
        .post(app.url("/api/apps/foo-app/events"))
        .basic_auth(data["key"].as_str().unwrap(), data["secret"].as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=t&event=e&scope=public&payload=%7B%22a%22%3A%22%FF%22%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// A WebSocket spoken by hand, to send frames no well-behaved client library would.
struct RawSocket(TcpStream);

impl RawSocket {
    async fn connect(addr: std::net::SocketAddr) -> RawSocket {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawSocket(stream)
    }

    /// One frame: `first` is FIN/RSV/opcode, `masked` says whether to mask the payload.
    async fn frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        assert!(payload.len() < 126);
        frame.push(mask_bit | u8::try_from(payload.len()).unwrap());
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.0.write_all(&frame).await.unwrap();
    }

    /// Server frames until a close; returns its code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let mut head = [0u8; 2];
            tokio::time::timeout(WAIT, self.0.read_exact(&mut head))
                .await
                .ok()?
                .ok()?;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                self.0.read_exact(&mut ext).await.ok()?;
                len = u64::from(u16::from_be_bytes(ext));
            } else if len == 127 {
                let mut ext = [0u8; 8];
                self.0.read_exact(&mut ext).await.ok()?;
                len = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            self.0.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// D16: protocol violations get the close code RFC 6455 names and count as `protocol`.
#[tokio::test]
async fn websocket_protocol_violations_close_with_their_codes() {
    let app = spawn_app(Db::Sqlite).await;
    create_app(&app, json!({"name": "foo-app"})).await;
    let join = br#"["1","1","public:foo-app","phx_join",{}]"#;
    let cases: [(&str, u8, &[u8], bool, u16); 4] = [
        ("invalid UTF-8 text", 0x81, b"\xff\xfe\xfd", true, 1007),
        ("unmasked frame", 0x81, b"{}", false, 1002),
        ("RSV1 without an extension", 0xC1, b"{}", true, 1002),
        ("reserved opcode", 0x83, b"{}", true, 1002),
    ];
    for (what, first, payload, masked, code) in cases {
        let mut socket = RawSocket::connect(app.addr).await;
        socket.frame(0x81, join, true).await;
        socket.frame(first, payload, masked).await;
        assert_eq!(socket.close_code().await, Some(code), "{what}");
    }
    metrics_until(&app, "violations are counted as protocol closes", |m| {
        m.get(r#"pushlite_connections_closed_total{app="foo-app",protocol="phoenix",reason="protocol"}"#) == Some(&4.0)
    })
    .await;
}

/// Review: `pushlite apps delete` tells running nodes, which close the app's channels at
/// once instead of serving the deleted app until the cache expires.
#[tokio::test]
async fn cli_delete_reaches_running_nodes() {
    let redis = RedisServer::start().await;
    let database = common::fresh_postgres_database().await;
    let app = common::spawn_config(
        {
            let mut c = common::test_config(database.clone());
            c.redis.url = Some(redis.url());
            c
        },
        None,
    )
    .await;
    let data = create_app(&app, json!({"name": "doomed-app"})).await;
    let mut client = joined(&app, "public:doomed-app", "", None).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushlite"))
        .args(["apps", "delete", "doomed-app"])
        .env_clear()
        .env("DATABASE_URL", &database)
        .env("REDIS_URL", redis.url())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        client.recv_event("phx_close").await.topic,
        "public:doomed-app"
    );
    let fields = [
        ("topic", "t"),
        ("event", "e"),
        ("scope", "public"),
        ("payload", "{}"),
    ];
    assert_eq!(trigger_form(&app, &data, &fields).await.status(), 404);
}

/// Review: logs never carry payloads, even at RUST_LOG=trace, and no colour codes when
/// stderr is a file.
#[tokio::test]
async fn trace_logs_carry_no_payloads_or_colour() {
    let node = NodeProcess::spawn(&[("RUST_LOG", "trace")]).await;
    let app = node.create_app("marker-app").await;
    let mut client = phx::connect(node.addr, Vsn::V2, "", None).await;
    let (join_ref, _) = client.join("public:marker-app").await;
    client
        .push(
            Some(&join_ref),
            "2",
            "public:marker-app",
            "note",
            json!({"m": "frame-marker-5150"}),
        )
        .await;
    client.recv_reply("2").await;
    let response = reqwest::Client::new()
        .post(node.url("/api/apps/marker-app/events"))
        .basic_auth(app["key"].as_str().unwrap(), app["secret"].as_str())
        .json(&json!({"topic": "t", "event": "e", "scope": "public", "payload": {"m": "http-marker-6160"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    client.recv_event("t:e").await;
    let logs = node.logs();
    assert!(logs.contains("http request"), "the node logged");
    for marker in [
        "frame-marker-5150",
        "http-marker-6160",
        app["secret"].as_str().unwrap(),
    ] {
        assert!(!logs.contains(marker), "{marker} in the logs");
    }
    assert!(!logs.contains('\u{1b}'), "ANSI escapes in a log file");
}
