//! Two nodes through Redis: triggers posted to node A at a fixed rate, received by WebSocket
//! subscribers on node B; reports trigger-to-receive latency percentiles.
//!
//! Both nodes are `pushlite serve` processes sharing one SQLite registry file and the Redis
//! at `REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! ```sh
//! cargo bench --bench cross_node -- [--rate 1000] [--seconds 10] [--subscribers 10]
//! ```

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: (&str, &str) = ("bench-admin", "bench-admin-password");

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

async fn node(database: &str, redis: &str) -> (Child, SocketAddr) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pushlite"))
        .arg("serve")
        .env_clear()
        .env("PORT", port.to_string())
        .env("DATABASE_URL", database)
        .env("REDIS_URL", redis)
        .env("PUSHER_ADMIN_USERNAME", ADMIN.0)
        .env("PUSHER_ADMIN_PASSWORD", ADMIN.1)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pushlite serve");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let rate = arg("--rate", 1000);
    let seconds = arg("--seconds", 10);
    let subscribers = arg("--subscribers", 10);
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}/bench.db", dir.path().display());
    let (_a, a) = node(&database, &redis).await;
    let (_b, b) = node(&database, &redis).await;
    let http = reqwest::Client::new();
    let name = format!("xnode-{}", now_micros());
    let created: Value = http
        .post(format!("http://{a}/api/admin/apps"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"app": {"name": name}}))
        .send()
        .await
        .expect("create app")
        .json()
        .await
        .expect("JSON");
    let data = created["data"].clone();
    let slug = data["slug"].as_str().expect("slug").to_owned();

    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, u64)>();
    for i in 0..subscribers {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{b}/socket/websocket?vsn=2.0.0"))
                .await
                .expect("connect to node B");
        let join = json!([
            i.to_string(),
            i.to_string(),
            format!("public:{slug}"),
            "phx_join",
            {}
        ]);
        ws.send(Message::Text(join.to_string().into()))
            .await
            .expect("join");
        let _ = ws.next().await;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                let received = now_micros();
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                if let (Some(seq), Some(sent)) =
                    (frame[4]["seq"].as_u64(), frame[4]["sent"].as_u64())
                {
                    let _ = tx.send((seq, received.saturating_sub(sent)));
                }
            }
        });
    }
    drop(tx);

    let total = rate * seconds;
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let mut ticker = tokio::time::interval(interval);
    let started = Instant::now();
    let mut failures = 0u64;
    let mut requests = tokio::task::JoinSet::new();
    for seq in 0..total {
        ticker.tick().await;
        let (http, key, secret, slug) = (
            http.clone(),
            data["key"].as_str().unwrap_or_default().to_owned(),
            data["secret"].as_str().unwrap_or_default().to_owned(),
            slug.clone(),
        );
        requests.spawn(async move {
            http.post(format!("http://{a}/api/apps/{slug}/events"))
                .basic_auth(key, Some(secret))
                .json(&json!({"topic": "t", "event": "e", "scope": "public",
                              "payload": {"seq": seq, "sent": now_micros()}}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        });
    }
    while let Some(ok) = requests.join_next().await {
        if !ok.unwrap_or(false) {
            failures += 1;
        }
    }
    let send_time = started.elapsed();
    let expected = (total - failures) * subscribers;
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut seen = std::collections::HashMap::<u64, u64>::new();
    while (latencies.len() as u64) < expected {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((seq, latency))) => {
                *seen.entry(seq).or_default() += 1;
                latencies.push(latency);
            }
            _ => break,
        }
    }
    latencies.sort_unstable();
    let duplicates = seen.values().filter(|n| **n > subscribers).count();
    println!(
        "## two nodes through Redis: {rate} events/s for {seconds} s, {subscribers} subscribers on node B\n"
    );
    println!("| metric | value |\n|---|---|");
    println!(
        "| achieved trigger rate | {:.0} events/s |",
        total as f64 / send_time.as_secs_f64()
    );
    println!("| triggers refused | {failures} |");
    println!(
        "| deliveries expected / received | {expected} / {} |",
        latencies.len()
    );
    println!("| events delivered more than once | {duplicates} |");
    if !latencies.is_empty() {
        println!("| latency p50 | {:.2} ms |", pct(&latencies, 0.5));
        println!("| latency p90 | {:.2} ms |", pct(&latencies, 0.9));
        println!("| latency p99 | {:.2} ms |", pct(&latencies, 0.99));
        println!("| latency p99.9 | {:.2} ms |", pct(&latencies, 0.999));
        println!("| latency max | {:.2} ms |", pct(&latencies, 1.0));
    }
    if (latencies.len() as u64) < expected || duplicates > 0 || failures > 0 {
        println!("\n**LOSS, DUPLICATES OR REFUSALS: the run is not clean**");
    }
}
