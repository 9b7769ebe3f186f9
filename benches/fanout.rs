//! Fan-out on one node: N WebSocket subscribers of one topic, one HTTP trigger at a time, and
//! the time from sending the trigger until the last subscriber has the event.
//!
//! The node runs as a separate `pushlite serve` process (release build, SQLite registry,
//! in-process bus) so that client and server sockets do not share one process's file limit.
//!
//! ```sh
//! cargo bench --bench fanout -- [--subscribers 10000] [--rounds 30]
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: (&str, &str) = ("bench-admin", "bench-admin-password");

struct Args {
    subscribers: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut args = Args {
        subscribers: 10_000,
        rounds: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} takes a number"))
        };
        match arg.as_str() {
            "--subscribers" => args.subscribers = value(),
            "--rounds" => args.rounds = value(),
            // cargo bench passes --bench; anything else is a mistake worth seeing
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, from /proc (clock ticks of 10 ms).
fn cpu_ms(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some((user + system) * 10)
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn round_of(text: &str) -> Option<u64> {
    let start = text.find("\"round\":")? + "\"round\":".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushlite"))
        .arg("serve")
        .env_clear()
        .env("PORT", port.to_string())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/bench.db", dir.path().display()),
        )
        .env("PUSHER_ADMIN_USERNAME", ADMIN.0)
        .env("PUSHER_ADMIN_PASSWORD", ADMIN.1)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pushlite serve");
    let pid = server.id().expect("server pid");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created: Value = http
        .post(format!("{base}/api/admin/apps"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"app": {"name": "bench-app"}}))
        .send()
        .await
        .expect("create app")
        .json()
        .await
        .expect("app JSON");
    let key = created["data"]["key"].as_str().expect("key").to_owned();
    let secret = created["data"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let rss_before = rss_kib(pid);

    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let connect_started = Instant::now();
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..args.subscribers {
        let tx = tx.clone();
        joins.spawn(async move {
            let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let join = json!([
                i.to_string(),
                i.to_string(),
                "public:bench-app",
                "phx_join",
                {}
            ]);
            ws.send(Message::Text(join.to_string().into()))
                .await
                .expect("join");
            let reply = ws.next().await.expect("reply").expect("frame");
            assert!(
                reply.to_text().unwrap_or_default().contains("\"ok\""),
                "joined"
            );
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let at = Instant::now();
                        // A string search, not a JSON parse: the client's own CPU time shares
                        // the two cores with the server and would inflate the figure.
                        if let Some(round) = round_of(&text) {
                            let _ = tx.send((round, at));
                        }
                    }
                }
            });
        });
        // keep the accept backlog reasonable
        if joins.len() >= 500 {
            joins
                .join_next()
                .await
                .expect("task")
                .expect("subscriber joined");
        }
    }
    while let Some(joined) = joins.join_next().await {
        joined.expect("subscriber joined");
    }
    drop(tx);
    let connect_time = connect_started.elapsed();
    let rss_joined = rss_kib(pid);

    let cpu_before = cpu_ms(pid);
    let mut to_all = Vec::new();
    let mut each = Vec::new();
    for round in 0..args.rounds as u64 {
        let started = Instant::now();
        let response = http
            .post(format!("{base}/api/apps/bench-app/events"))
            .basic_auth(&key, Some(&secret))
            .json(
                &json!({"topic": "bench", "event": "tick", "scope": "public",
                          "payload": {"round": round}}),
            )
            .send()
            .await
            .expect("trigger");
        assert_eq!(response.status(), 200);
        let mut last = started;
        for _ in 0..args.subscribers {
            let (got_round, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("every subscriber receives within 30 s")
                .expect("receivers alive");
            assert_eq!(got_round, round, "no loss, no duplicates, in order");
            each.push(at - started);
            last = last.max(at);
        }
        to_all.push(last - started);
    }
    to_all.sort();
    each.sort();
    let rss_after = rss_kib(pid);
    let server_cpu = cpu_ms(pid).saturating_sub(cpu_before) as f64 / args.rounds as f64;
    println!(
        "## fan-out on one node: {} subscribers, {} rounds\n",
        args.subscribers, args.rounds
    );
    println!("| metric | value |\n|---|---|");
    println!("| connect + join all subscribers | {} |", ms(connect_time));
    println!(
        "| trigger → last subscriber, p50 | {} |",
        ms(percentile(&to_all, 0.5))
    );
    println!(
        "| trigger → last subscriber, p90 | {} |",
        ms(percentile(&to_all, 0.9))
    );
    println!(
        "| trigger → last subscriber, max | {} |",
        ms(percentile(&to_all, 1.0))
    );
    println!(
        "| trigger → each subscriber, p50 | {} |",
        ms(percentile(&each, 0.5))
    );
    println!(
        "| trigger → each subscriber, p99 | {} |",
        ms(percentile(&each, 0.99))
    );
    println!("| server CPU per event (user + system) | {server_cpu:.1} ms |");
    println!(
        "| server RSS idle / joined / after | {} / {} / {} KiB |",
        rss_before, rss_joined, rss_after
    );
    println!(
        "| server RSS per joined subscriber | {:.1} KiB |",
        (rss_joined.saturating_sub(rss_before)) as f64 / args.subscribers as f64
    );
    let _ = server.kill().await;
}
