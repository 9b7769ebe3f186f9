//! The scale simulation (`make bench-scale`): 1, 2, 4 and 8 node processes on loopback, first on
//! one Redis and then on a three-master Redis Cluster (all started here and thrown away after),
//! 1,000 topics whose subscribers are spread so that node i (from 0) holds a share of the topics
//! proportional to i + 1; then, with the most nodes, once more with the subscribers of every topic
//! spread over every node (the worst case for Redis: each message goes to every node). A steady
//! trigger rate goes to the topics in turn, through the Pusher HTTP API (batches of 10, spread
//! over the nodes).
//!
//! Per node it measures what Redis sends the node per published event (messages and bytes, from
//! the node's own counters: these must follow the share of topics the node holds, not the number
//! of nodes), the CPU the node spends per delivery and its deliveries/s; per Redis process the CPU
//! per published event. With eight nodes it then kills the node with the largest share (`kill
//! -9`) and measures the reconnect storm: how long until every one of its clients has joined
//! again on the others, at what rate they connected, and that one more event per topic reaches
//! every subscriber.
//!
//! It prints Markdown tables (the README keeps them) and writes `target/bench/scale.json`; it
//! exits 1 when a delivery was lost or a client did not come back. `SCALE_NODES` (`1,2,4,8`),
//! `SCALE_SUBSCRIBERS` (per topic, 10), `SCALE_RATE` (events/s, 2000) and `SCALE_SECS` (10)
//! change the shape. Postgres comes from `DATABASE_URL` (the wrapper provides one).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::bench::{App, env_or};
use common::process::NodeProcess;
use common::pusher::signed_post;
use common::redis::{RedisServer, form_cluster};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TOPICS: usize = 1000;
/// Events per `batch_events` request (Pusher's own limit).
const BATCH: usize = 10;
const STEP: Duration = Duration::from_secs(10);

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn channel(topic: usize) -> String {
    format!("scale-{topic}")
}

/// How the subscribers of the topics spread over the nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spread {
    /// Each topic on one node; node i holds a share in proportion i + 1.
    Weighted,
    /// The subscribers of every topic spread over every node.
    Everywhere,
}

impl Spread {
    fn name(self) -> &'static str {
        match self {
            Spread::Weighted => "1 : 2 : … : n",
            Spread::Everywhere => "all on every node",
        }
    }

    /// The node that subscriber `s` of `topic` joins.
    fn home(self, topic: usize, s: usize, nodes: usize, subscribers: usize) -> usize {
        match self {
            Spread::Weighted => owner(topic, nodes),
            Spread::Everywhere => (topic * subscribers + s) % nodes,
        }
    }
}

/// The node that holds `topic` when `nodes` share the topics in proportion 1 : 2 : … : nodes.
fn owner(topic: usize, nodes: usize) -> usize {
    let total: usize = (1..=nodes).sum();
    let point = topic * total / TOPICS;
    let mut upto = 0;
    for node in 0..nodes {
        upto += node + 1;
        if point < upto {
            return node;
        }
    }
    nodes - 1
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Redis,
    Cluster,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redis => "one Redis",
            Backend::Cluster => "Redis Cluster, 3 masters",
        }
    }
}

/// The Redis processes of one run: one server, or the masters of a cluster.
struct Redis {
    servers: Vec<RedisServer>,
    url: String,
}

impl Redis {
    async fn start(backend: Backend) -> Redis {
        match backend {
            Backend::Redis => {
                let server = RedisServer::start().await;
                let url = server.url();
                Redis {
                    servers: vec![server],
                    url,
                }
            }
            Backend::Cluster => {
                let mut servers = Vec::new();
                for _ in 0..3 {
                    servers.push(RedisServer::start_with(&["--cluster-enabled", "yes"]).await);
                }
                let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
                let addrs = form_cluster(&[], &ports).await;
                let url = format!(
                    "redis-cluster://{}?node={}&node={}",
                    addrs[0], addrs[1], addrs[2]
                );
                Redis { servers, url }
            }
        }
    }

    fn cpu(&self) -> Vec<f64> {
        self.servers
            .iter()
            .map(|s| s.pid().map_or(0.0, cpu_seconds))
            .collect()
    }
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// What the subscribers of one run saw.
#[derive(Default)]
struct Tally {
    /// Deliveries by the node the subscriber first joined.
    delivered: Vec<AtomicU64>,
    /// Microseconds from trigger to delivery.
    latencies: Mutex<Vec<u32>>,
    /// Subscribers joined at least once.
    joined: AtomicUsize,
    /// How long each rejoin after a dropped socket took.
    rejoins: Mutex<Vec<(Instant, Duration)>>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.delivered
            .iter()
            .map(|d| d.load(Ordering::SeqCst))
            .sum()
    }
}

/// Opens a Phoenix v2 socket on `addr` and joins `topic`; `None` if that fails within [`STEP`].
async fn join(addr: SocketAddr, topic: &str) -> Option<Ws> {
    let steps = async {
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        // tungstenite zero-fills its read buffer before every read: keep it small (see loadgen).
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .ok()?;
        let frame = json!(["1", "1", topic, "phx_join", {}]);
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .ok()?;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).ok()?;
                if frame[3] == "phx_reply" && frame[1] == "1" {
                    return (frame[4]["status"] == "ok").then_some(ws);
                }
            }
        }
        None
    };
    tokio::time::timeout(STEP, steps).await.ok().flatten()
}

/// Reads events until the socket drops (true) or the run ends (false).
async fn read(ws: Ws, home: usize, tally: &Tally, stop: &mut watch::Receiver<bool>) -> bool {
    let (mut sink, mut stream) = ws.split();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    if frame[3] == "tick"
                        && let Some(sent) = frame[4]["sent"].as_u64()
                    {
                        let micros = now_micros().saturating_sub(sent);
                        tally.delivered[home].fetch_add(1, Ordering::SeqCst);
                        tally.latencies.lock().expect("latencies").push(micros.min(u32::MAX.into()) as u32);
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return true,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                let beat = json!([null, "hb", "phoenix", "heartbeat", {}]).to_string();
                if sink.send(Message::Text(beat.into())).await.is_err() {
                    return true;
                }
            }
            _ = stop.changed() => {
                let _ = sink.send(Message::Close(None)).await;
                return false;
            }
        }
    }
}

/// One subscriber: joined on `home`; after a drop, on the other nodes in turn from a place
/// that spreads the clients of a dead node as a load balancer would.
async fn subscriber(
    nodes: Arc<Vec<SocketAddr>>,
    home: usize,
    index: usize,
    topic: String,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
    connects: Arc<Semaphore>,
) {
    let mut node = home;
    let mut dropped_at: Option<Instant> = None;
    loop {
        let permit = connects.acquire().await.expect("semaphore");
        let joined = join(nodes[node], &topic).await;
        drop(permit);
        let Some(ws) = joined else {
            if *stop.borrow() {
                return;
            }
            node = (node + 1) % nodes.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match dropped_at.take() {
            None => {
                tally.joined.fetch_add(1, Ordering::SeqCst);
            }
            Some(at) => {
                let now = Instant::now();
                tally.rejoins.lock().expect("rejoins").push((now, now - at));
            }
        }
        if !read(ws, home, &tally, &mut stop).await {
            return;
        }
        dropped_at = Some(Instant::now());
        let others = nodes.len() - 1;
        node = (node + 1 + index % others.max(1)) % nodes.len();
    }
}

/// Sends `count` events, one per topic in turn, in batches spread over `nodes`, at `rate`
/// events/s. Returns the events accepted (200) and the requests that failed.
async fn drive(
    http: &reqwest::Client,
    nodes: &[SocketAddr],
    app: &App,
    count: usize,
    rate: f64,
) -> (u64, u64) {
    let batches = count.div_ceil(BATCH);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let limit = Arc::new(Semaphore::new(64));
    let mut handles = Vec::with_capacity(batches);
    for b in 0..batches {
        ticker.tick().await;
        let events: Vec<Value> = (b * BATCH..((b + 1) * BATCH).min(count))
            .map(|k| {
                let data = json!({"sent": now_micros()}).to_string();
                json!({"name": "tick", "channel": channel(k % TOPICS), "data": data})
            })
            .collect();
        let size = events.len() as u64;
        let body = json!({ "batch": events }).to_string();
        let request = signed_post(
            http,
            &format!("http://{}", nodes[b % nodes.len()]),
            &app.key,
            &app.secret,
            &format!("/apps/{}/batch_events", app.id),
            body,
        );
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        handles.push(tokio::spawn(async move {
            let ok = request.send().await.is_ok_and(|r| r.status().is_success());
            drop(permit);
            if ok { (size, 0) } else { (0, 1) }
        }));
    }
    let mut totals = (0, 0);
    for handle in handles {
        let (accepted, failed) = handle.await.unwrap_or((0, 1));
        totals.0 += accepted;
        totals.1 += failed;
    }
    totals
}

/// Waits until `tally` holds `expected` deliveries, at most `wait`.
async fn settle(tally: &Tally, expected: u64, wait: Duration) {
    let deadline = Instant::now() + wait;
    while tally.total() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(http: &reqwest::Client, node: SocketAddr, name: &str) -> f64 {
    let Ok(response) = http.get(format!("http://{node}/metrics")).send().await else {
        return f64::NAN;
    };
    let text = response.text().await.unwrap_or_default();
    common::parse_metrics(&text)
        .get(name)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Per node, before and after the measured window.
struct Sample {
    messages: Vec<f64>,
    bytes: Vec<f64>,
    cpu: Vec<f64>,
    redis_cpu: Vec<f64>,
}

async fn sample(http: &reqwest::Client, nodes: &[NodeProcess], redis: &Redis) -> Sample {
    let mut s = Sample {
        messages: Vec::new(),
        bytes: Vec::new(),
        cpu: Vec::new(),
        redis_cpu: redis.cpu(),
    };
    for node in nodes {
        s.cpu.push(cpu_seconds(node.pid()));
        s.messages
            .push(metric(http, node.addr, "pushlite_bus_messages_received_total").await);
        s.bytes
            .push(metric(http, node.addr, "pushlite_bus_bytes_received_total").await);
    }
    s
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

struct Shape {
    subscribers: usize,
    rate: f64,
    secs: u64,
}

/// One run: `count` nodes on `backend`; returns its record, with the storm when `storm`.
#[allow(clippy::too_many_arguments)]
async fn run(
    backend: Backend,
    count: usize,
    spread: Spread,
    storm: bool,
    shape: &Shape,
    database: &str,
    failed: &mut bool,
) -> Value {
    let redis = Redis::start(backend).await;
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(
            NodeProcess::spawn(&[
                ("DATABASE_URL", database),
                ("REDIS_URL", redis.url.as_str()),
                ("RUST_LOG", "warn"),
            ])
            .await,
        );
    }
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(nodes.iter().map(|n| n.addr).collect());
    let created = nodes[0]
        .create_app(&format!("scale-{}", uuid::Uuid::new_v4().simple()))
        .await;
    let app = App::from_created(&created);
    let tally = Arc::new(Tally {
        delivered: (0..count).map(|_| AtomicU64::new(0)).collect(),
        ..Tally::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let connects = Arc::new(Semaphore::new(256));
    let mut clients = Vec::new();
    // Topics with a subscriber on each node, and the subscribers homed there.
    let mut held = vec![0usize; count];
    let mut homed = vec![0usize; count];
    let started = Instant::now();
    for topic in 0..TOPICS {
        let mut holds = vec![false; count];
        for s in 0..shape.subscribers {
            let home = spread.home(topic, s, count, shape.subscribers);
            holds[home] = true;
            homed[home] += 1;
            clients.push(tokio::spawn(subscriber(
                addrs.clone(),
                home,
                topic * shape.subscribers + s,
                format!("{}:{}", channel(topic), app.slug),
                tally.clone(),
                stop_rx.clone(),
                connects.clone(),
            )));
        }
        for (node, holds) in holds.into_iter().enumerate() {
            held[node] += usize::from(holds);
        }
    }
    let sockets = TOPICS * shape.subscribers;
    while tally.joined.load(Ordering::SeqCst) < sockets {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} of {sockets} subscribers joined",
            tally.joined.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined_in = started.elapsed();
    let http = reqwest::Client::new();
    let before = sample(&http, &nodes, &redis).await;
    let events = (shape.rate * shape.secs as f64) as usize;
    let window = Instant::now();
    let (accepted, refused) = drive(&http, &addrs, &app, events, shape.rate).await;
    let expected = accepted * shape.subscribers as u64;
    settle(&tally, expected, Duration::from_secs(10)).await;
    let took = window.elapsed().as_secs_f64();
    let after = sample(&http, &nodes, &redis).await;
    let delivered = tally.total();
    let mut latencies = std::mem::take(&mut *tally.latencies.lock().expect("latencies"));
    latencies.sort_unstable();
    let lost = expected.saturating_sub(delivered);
    if lost > 0 || refused > 0 {
        *failed = true;
    }
    let per_node: Vec<Value> = (0..count)
        .map(|i| {
            let node_delivered = tally.delivered[i].load(Ordering::SeqCst);
            let cpu = after.cpu[i] - before.cpu[i];
            json!({
                "node": i,
                "topics": held[i],
                "share": held[i] as f64 / TOPICS as f64,
                "bus_messages_per_event": (after.messages[i] - before.messages[i]) / accepted as f64,
                "bus_bytes_per_event": (after.bytes[i] - before.bytes[i]) / accepted as f64,
                "deliveries_per_sec": node_delivered as f64 / took,
                "cpu_share": cpu / took,
                "cpu_us_per_delivery": cpu * 1e6 / node_delivered.max(1) as f64,
            })
        })
        .collect();
    let redis_cpu: Vec<f64> = before
        .redis_cpu
        .iter()
        .zip(&after.redis_cpu)
        .map(|(b, a)| (a - b) * 1e6 / accepted.max(1) as f64)
        .collect();
    let mut record = json!({
        "backend": backend.name(),
        "nodes": count,
        "spread": spread.name(),
        "subscribers": sockets,
        "joined_secs": joined_in.as_secs_f64(),
        "events": accepted,
        "refused_requests": refused,
        "events_per_sec": accepted as f64 / took,
        "deliveries": delivered,
        "lost": lost,
        "deliveries_per_sec": delivered as f64 / took,
        "latency_p50_ms": percentile(&latencies, 0.5),
        "latency_p99_ms": percentile(&latencies, 0.99),
        "redis_cpu_us_per_event": redis_cpu,
        "per_node": per_node,
    });
    if storm {
        record["storm"] = reconnect_storm(
            &http,
            &mut nodes,
            &addrs,
            &app,
            &tally,
            homed[count - 1],
            shape,
            failed,
        )
        .await;
    }
    let _ = stop_tx.send(true);
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), client).await;
    }
    drop(nodes);
    drop(redis);
    record
}

/// Kills the last node (the largest share) and waits for its clients on the others.
#[allow(clippy::too_many_arguments)]
async fn reconnect_storm(
    http: &reqwest::Client,
    nodes: &mut [NodeProcess],
    addrs: &[SocketAddr],
    app: &App,
    tally: &Tally,
    moving: usize,
    shape: &Shape,
    failed: &mut bool,
) -> Value {
    let victim = nodes.len() - 1;
    let killed_at = Instant::now();
    nodes[victim].signal("KILL");
    let deadline = killed_at + Duration::from_secs(60);
    while tally.rejoins.lock().expect("rejoins").len() < moving && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejoins = std::mem::take(&mut *tally.rejoins.lock().expect("rejoins"));
    let back = rejoins.len();
    let all_back = rejoins
        .iter()
        .map(|(at, _)| *at - killed_at)
        .max()
        .unwrap_or_default();
    let mut each: Vec<u32> = rejoins
        .iter()
        .map(|(_, took)| took.as_micros().min(u32::MAX.into()) as u32)
        .collect();
    each.sort_unstable();
    // One more event per topic, through the survivors: everyone, moved or not, must get it.
    let before = tally.total();
    let survivors = &addrs[..victim];
    let (accepted, refused) = drive(http, survivors, app, TOPICS, 2000.0).await;
    let expected = accepted * shape.subscribers as u64;
    settle(tally, before + expected, Duration::from_secs(10)).await;
    let after = tally.total() - before;
    if back < moving || refused > 0 || after < expected || accepted < TOPICS as u64 {
        *failed = true;
    }
    json!({
        "clients_moved": moving,
        "clients_back": back,
        "all_back_secs": all_back.as_secs_f64(),
        "connects_per_sec": back as f64 / all_back.as_secs_f64().max(1e-3),
        "rejoin_p50_ms": percentile(&each, 0.5),
        "rejoin_p99_ms": percentile(&each, 0.99),
        "event_after_storm_delivered": after,
        "event_after_storm_expected": expected,
    })
}

fn tables(records: &[Value]) -> String {
    let mut md = String::from(
        "| backend | nodes | topics spread | sockets | events/s | deliveries/s | lost | p50 / p99 ms | Redis CPU µs per event (each process) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        let redis: Vec<String> = r["redis_cpu_us_per_event"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| format!("{:.1}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect()
            })
            .unwrap_or_default();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.2} / {:.2} | {} |\n",
            r["backend"].as_str().unwrap_or_default(),
            r["nodes"],
            r["spread"].as_str().unwrap_or_default(),
            r["subscribers"],
            r["events_per_sec"].as_f64().unwrap_or(f64::NAN),
            r["deliveries_per_sec"].as_f64().unwrap_or(f64::NAN),
            r["lost"],
            r["latency_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["latency_p99_ms"].as_f64().unwrap_or(f64::NAN),
            redis.join(" / "),
        ));
    }
    md.push_str(
        "\n| backend | nodes | topics spread | node | topics held | Redis messages per event | Redis bytes per event | deliveries/s | CPU | CPU µs per delivery |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        for n in r["per_node"].as_array().into_iter().flatten() {
            let f = |name: &str| n[name].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} ({:.1}%) | {:.3} | {:.0} | {:.0} | {:.1}% | {:.1} |\n",
                r["backend"].as_str().unwrap_or_default(),
                r["nodes"],
                r["spread"].as_str().unwrap_or_default(),
                n["node"],
                n["topics"],
                f("share") * 100.0,
                f("bus_messages_per_event"),
                f("bus_bytes_per_event"),
                f("deliveries_per_sec"),
                f("cpu_share") * 100.0,
                f("cpu_us_per_delivery"),
            ));
        }
    }
    let storms: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("storm").is_some())
        .collect();
    if !storms.is_empty() {
        md.push_str(
            "\n| backend | clients moved | all back after | connects/s | rejoin p50 / p99 ms | next event delivered |\n|---|---|---|---|---|---|\n",
        );
        for r in storms {
            let s = &r["storm"];
            let f = |name: &str| s[name].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| {} | {} of {} | {:.2} s | {:.0} | {:.0} / {:.0} | {} of {} |\n",
                r["backend"].as_str().unwrap_or_default(),
                s["clients_back"],
                s["clients_moved"],
                f("all_back_secs"),
                f("connects_per_sec"),
                f("rejoin_p50_ms"),
                f("rejoin_p99_ms"),
                s["event_after_storm_delivered"],
                s["event_after_storm_expected"],
            ));
        }
    }
    md
}

#[tokio::main]
async fn main() {
    let counts: Vec<usize> = std::env::var("SCALE_NODES")
        .unwrap_or_else(|_| "1,2,4,8".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let shape = Shape {
        subscribers: env_or("SCALE_SUBSCRIBERS", 10).max(1) as usize,
        rate: env_or("SCALE_RATE", 2000).max(BATCH as u64) as f64,
        secs: env_or("SCALE_SECS", 10).max(1),
    };
    let database = common::fresh_postgres_database().await;
    let biggest = counts.iter().copied().max().unwrap_or(1);
    let mut failed = false;
    let mut records = Vec::new();
    for backend in [Backend::Redis, Backend::Cluster] {
        for &count in &counts {
            eprintln!("scale: {} node(s) on {}", count, backend.name());
            let storm = count == biggest && count > 1;
            let spread = Spread::Weighted;
            records.push(
                run(
                    backend,
                    count,
                    spread,
                    storm,
                    &shape,
                    &database,
                    &mut failed,
                )
                .await,
            );
        }
        if biggest > 1 {
            eprintln!(
                "scale: {biggest} nodes on {}, every topic on every node",
                backend.name()
            );
            let spread = Spread::Everywhere;
            records.push(
                run(
                    backend,
                    biggest,
                    spread,
                    false,
                    &shape,
                    &database,
                    &mut failed,
                )
                .await,
            );
        }
    }
    let md = tables(&records);
    println!("{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let report = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "topics": TOPICS,
        "subscribers_per_topic": shape.subscribers,
        "rate": shape.rate,
        "secs": shape.secs,
        "runs": records,
    });
    let _ = std::fs::write(
        out.join("scale.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    let _ = std::fs::write(out.join("scale.md"), &md);
    if failed {
        eprintln!("scale: a delivery was lost, a trigger refused or a client did not come back");
        std::process::exit(1);
    }
}
