//! The load generator: starts the servers it measures, drives them over real WebSockets and
//! HTTP, and reports per scenario.
//!
//! It has two drivers: Phoenix Channels v2 (pushlite's `/socket/websocket` and the seed's events
//! API) and Pusher protocol 7 (`/app/:key` WebSocket, HMAC-signed HTTP API), which it speaks to
//! pushlite (`pushlite-pusher`), Sockudo and Soketi alike. Every payload carries a sequence
//! number and a send time, so each run reports publish-to-receive latency (HDR histogram),
//! deliveries per second, losses and duplicates, errors, connect time and the server's RSS.
//!
//! ```sh
//! cargo build --release --bin pushlite
//! cargo run --release -p pushlite-loadgen -- [--pushlite target/release/pushlite] [--peers] [--only pushlite-pusher,soketi] [--scenario all|fanout|topics|idle|trigger|cross-node|history] [--quick]
//! ```
//! Results: `target/bench/results.json` and `target/bench/results.md`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpSocket;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const ADMIN: (&str, &str) = ("bench-admin", "bench-admin-password");
/// The one app configured on the peers (Sockudo, Soketi).
const PEER_APP: (&str, &str, &str) = ("app-id", "app-key", "app-secret");
/// Client sockets are spread over these source addresses so many fit in the port range.
const SOURCES: u8 = 8;
/// The pushlite binary under test (`--pushlite`), set once by `main`.
static PUSHLITE: OnceLock<PathBuf> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    All,
    Fanout,
    Topics,
    Idle,
    Trigger,
    CrossNode,
    History,
}

#[derive(Parser, Debug)]
#[command(about = "pushlite load generator")]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioArg,
    /// Also run every scenario against Sockudo and Soketi (installed by
    /// scripts/install-sockudo.sh and scripts/install-soketi.sh), and print the ratios of
    /// pushlite's Pusher driver to each.
    #[arg(long)]
    peers: bool,
    /// Run only these servers (pushlite, pushlite-pusher, sockudo, soketi).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Peer>,
    /// Smaller sizes and shorter steps, for a quick check.
    #[arg(long)]
    quick: bool,
    /// Subscribers of the fan-out scenario.
    #[arg(long)]
    fanout_subscribers: Option<usize>,
    /// The fan-out scenario's trigger rates (events/s), one step each, until one falls behind.
    #[arg(long, value_delimiter = ',')]
    fanout_rates: Vec<f64>,
    /// Sockets of the idle-memory scenario.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Subscribers on node B in the cross-node scenario.
    #[arg(long)]
    cross_subscribers: Option<usize>,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also write PNG charts (latency percentiles, fan-out throughput over time) to this
    /// directory. Needs a TrueType font (Debian: fonts-dejavu-core).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The pushlite binary to measure (a release build).
    #[arg(long, default_value = "target/release/pushlite")]
    pushlite: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    /// pushlite through its Phoenix Channels endpoint and the seed's events API.
    Pushlite,
    /// pushlite through its Pusher protocol endpoint and HTTP API.
    PushlitePusher,
    Sockudo,
    Soketi,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Pushlite => "pushlite",
            Peer::PushlitePusher => "pushlite-pusher",
            Peer::Sockudo => "sockudo",
            Peer::Soketi => "soketi",
        }
    }

    /// Whether the load generator speaks the Pusher protocol to it.
    fn pusher(self) -> bool {
        self != Peer::Pushlite
    }

    fn is_pushlite(self) -> bool {
        matches!(self, Peer::Pushlite | Peer::PushlitePusher)
    }
}

fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
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

/// The first run of digits after `name` (works on escaped JSON inside Pusher's `data` too).
fn number_after(text: &str, name: &str) -> Option<u64> {
    let start = text.find(name)? + name.len();
    let rest = &text[start..];
    let digits_at = rest.find(|c: char| c.is_ascii_digit())?;
    if digits_at > 4 {
        return None;
    }
    let digits: String = rest[digits_at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One app (Phoenix driver) or one channel of one app (Pusher driver) that events go to.
#[derive(Debug, Clone)]
struct Target {
    /// Phoenix driver: the app slug; Pusher driver: the channel name.
    name: String,
    app_id: String,
    key: String,
    secret: String,
}

struct Server {
    peer: Peer,
    addr: SocketAddr,
    child: Child,
    pid: u32,
    targets: Vec<Target>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(peer: Peer, redis: Option<&str>, shared_db: Option<&Path>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = match peer {
            Peer::Pushlite | Peer::PushlitePusher => {
                let db = shared_db.map_or_else(|| dir.path().join("bench.db"), Path::to_path_buf);
                let mut command = Command::new(PUSHLITE.get().expect("set by main"));
                command
                    .arg("serve")
                    .env_clear()
                    .env("PORT", port.to_string())
                    .env("DATABASE_URL", format!("sqlite://{}", db.display()))
                    .env("PUSHER_ADMIN_USERNAME", ADMIN.0)
                    .env("PUSHER_ADMIN_PASSWORD", ADMIN.1)
                    // Thousands of clients from one address, by design.
                    .env("PUSHLITE_LIMITS__UPGRADES_PER_SEC_PER_IP", "0")
                    .env("RUST_LOG", "warn");
                if let Some(redis) = redis {
                    command.env("REDIS_URL", redis);
                }
                command
            }
            Peer::Sockudo => {
                let bin = PathBuf::from("target/peers/sockudo/bin/sockudo");
                assert!(
                    bin.exists(),
                    "run scripts/install-sockudo.sh first (make bench-peers does)"
                );
                let config = dir.path().join("sockudo.toml");
                std::fs::write(&config, sockudo_config(port, free_port(), redis)).expect("config");
                let mut command = Command::new(std::fs::canonicalize(bin).expect("sockudo path"));
                command
                    .arg("-c")
                    .arg(&config)
                    .current_dir(dir.path())
                    .env_clear();
                command
            }
            Peer::Soketi => {
                let home = PathBuf::from("target/peers/soketi");
                assert!(
                    home.join("node_modules/.bin/node").exists(),
                    "run scripts/install-soketi.sh first (make bench-peers does)"
                );
                let home = std::fs::canonicalize(home).expect("soketi path");
                let config = dir.path().join("soketi.json");
                std::fs::write(&config, soketi_config(port, redis)).expect("config");
                let mut command = Command::new(home.join("node_modules/.bin/node"));
                command
                    .arg(home.join("node_modules/@soketi/soketi/bin/server.js"))
                    .arg("start")
                    .arg(format!("--config={}", config.display()))
                    .current_dir(dir.path())
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default());
                command
            }
        };
        let mut child = {
            let mut command = child;
            command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            command.spawn().expect("start the server")
        };
        let pid = child.id().expect("pid");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let health = match peer {
            Peer::Pushlite | Peer::PushlitePusher => format!("http://{addr}/readyz"),
            Peer::Sockudo => format!("http://{addr}/up/{}", PEER_APP.0),
            Peer::Soketi => format!("http://{addr}/ready"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited during startup: {status}", peer.name());
            }
            assert!(Instant::now() < deadline, "{} did not start", peer.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            peer,
            addr,
            child,
            pid,
            targets: Vec::new(),
            _dir: dir,
        }
    }

    /// Makes `count` event targets: apps on pushlite's Phoenix driver (a topic is
    /// `public:<slug>`), channels of one app with the Pusher driver.
    async fn prepare_targets(&mut self, count: usize, http: &reqwest::Client) {
        self.targets.clear();
        let pusher_app = match self.peer {
            Peer::PushlitePusher => Some(self.create_app("bench-pusher", http).await),
            Peer::Sockudo | Peer::Soketi => Some(Target {
                name: String::new(),
                app_id: PEER_APP.0.to_owned(),
                key: PEER_APP.1.to_owned(),
                secret: PEER_APP.2.to_owned(),
            }),
            Peer::Pushlite => None,
        };
        for i in 0..count {
            let name = format!("bench-t{i}");
            let target = match &pusher_app {
                Some(app) => Target {
                    name,
                    ..app.clone()
                },
                None => self.create_app(&name, http).await,
            };
            self.targets.push(target);
        }
    }

    /// Creates a pushlite app (or finds it, on a registry an earlier scenario shared).
    async fn create_app(&self, name: &str, http: &reqwest::Client) -> Target {
        let url = format!("http://{}/api/admin/apps", self.addr);
        let response = http
            .post(&url)
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&json!({"app": {"name": name}}))
            .send()
            .await
            .expect("create app");
        let body: Value = response.json().await.expect("app JSON");
        let data = if body["data"].is_object() {
            body["data"].clone()
        } else {
            let shown: Value = http
                .get(format!("{url}/{name}"))
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .send()
                .await
                .expect("show app")
                .json()
                .await
                .expect("app JSON");
            shown["data"].clone()
        };
        Target {
            name: name.to_owned(),
            app_id: data["id"].to_string(),
            key: data["key"].as_str().unwrap_or_default().to_owned(),
            secret: data["secret"].as_str().unwrap_or_default().to_owned(),
        }
    }

    fn ws_url(&self) -> String {
        if self.peer.pusher() {
            let key = self.targets.first().map_or(PEER_APP.1, |t| t.key.as_str());
            format!(
                "ws://{}/app/{key}?protocol=7&client=bench&version=1.0",
                self.addr
            )
        } else {
            format!("ws://{}/socket/websocket?vsn=2.0.0", self.addr)
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn soketi_config(port: u16, redis: Option<&str>) -> String {
    let mut config = json!({
        "host": "127.0.0.1",
        "port": port,
        "appManager.array.apps.0.id": PEER_APP.0,
        "appManager.array.apps.0.key": PEER_APP.1,
        "appManager.array.apps.0.secret": PEER_APP.2,
        "appManager.array.apps.0.enableClientMessages": true,
        "metrics.enabled": false,
        // Loopback only: Soketi's node discovery otherwise broadcasts to the network.
        "cluster.address": "127.0.0.1",
        "cluster.hostname": "127.0.0.1",
        "cluster.unicast": "127.0.0.1",
        "cluster.port": free_port(),
    });
    if let Some((host, redis_port)) = redis
        .and_then(|url| url.strip_prefix("redis://"))
        .and_then(|hp| hp.trim_end_matches('/').split_once(':'))
    {
        config["adapter.driver"] = json!("redis");
        config["database.redis.host"] = json!(host);
        config["database.redis.port"] = json!(redis_port.parse::<u16>().unwrap_or(6379));
    }
    config.to_string()
}

fn sockudo_config(port: u16, metrics_port: u16, redis: Option<&str>) -> String {
    let (host, redis_port) = redis
        .and_then(|url| url.strip_prefix("redis://"))
        .and_then(|hp| hp.trim_end_matches('/').split_once(':'))
        .map_or(("127.0.0.1".to_owned(), "6379".to_owned()), |(h, p)| {
            (h.to_owned(), p.to_owned())
        });
    let adapter = if redis.is_some() {
        format!(
            "[adapter]\ndriver = \"redis\"\n[adapter.redis]\nprefix = \"sockudo_bench:\"\n\
             [database.redis]\nhost = \"{host}\"\nport = {redis_port}\n[cache]\ndriver = \"redis\"\n"
        )
    } else {
        "[adapter]\ndriver = \"local\"\n[cache]\ndriver = \"memory\"\n".to_owned()
    };
    format!(
        "debug = false\nhost = \"127.0.0.1\"\nport = {port}\nmode = \"production\"\n\
         [app_manager]\ndriver = \"memory\"\n\
         [[app_manager.array.apps]]\nid = \"{}\"\nkey = \"{}\"\nsecret = \"{}\"\nenabled = true\n\
         max_connections = 0\nenable_client_messages = true\nmax_client_events_per_second = 0\n\
         {adapter}[queue]\ndriver = \"memory\"\n[rate_limiter]\nenabled = false\n\
         [metrics]\nenabled = false\nhost = \"127.0.0.1\"\nport = {metrics_port}\n",
        PEER_APP.0, PEER_APP.1, PEER_APP.2
    )
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// `(seq, latency µs)` per received event.
    events: Vec<(u64, u32)>,
    errors: u64,
}

struct Subscribers {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    tasks: Vec<(usize, tokio::task::JoinHandle<Seen>)>,
    connect_time: Duration,
    failed: usize,
}

/// Opens `count` sockets, each joined to target `i % targets` (or to nothing when `join` is
/// false), and keeps reading.
async fn subscribe(server: &Server, count: usize, targets: usize, join: bool) -> Subscribers {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    let mut failed = 0;
    let limit = Arc::new(Semaphore::new(256));
    let mut pending = Vec::new();
    for i in 0..count {
        let target = i % targets.max(1);
        let channel = if server.peer.pusher() {
            server.targets[target].name.clone()
        } else {
            format!("public:{}", server.targets[target].name)
        };
        let (peer, url, addr) = (server.peer, server.ws_url(), server.addr);
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % usize::from(SOURCES)) as u8,
        ));
        let (stop, received, limit) = (stop.clone(), received.clone(), limit.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
        let task = tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let ws = connect(peer, &url, addr, source, &channel, join).await;
            drop(permit);
            let Some(mut ws) = ws else {
                let _ = ready_tx.send(false);
                return Seen {
                    errors: 1,
                    ..Seen::default()
                };
            };
            let _ = ready_tx.send(true);
            let mut seen = Seen::default();
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match next {
                    Err(_) => {}
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let at = now_micros();
                        if let (Some(seq), Some(sent)) =
                            (number_after(&text, "seq"), number_after(&text, "sent"))
                        {
                            received.fetch_add(1, Ordering::Relaxed);
                            let latency =
                                u32::try_from(at.saturating_sub(sent)).unwrap_or(u32::MAX);
                            seen.events.push((seq, latency));
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) => {
                        seen.errors += 1;
                        break;
                    }
                }
            }
            seen
        });
        tasks.push((target, task));
        pending.push(ready_rx);
    }
    let mut done = 0usize;
    for ready in pending {
        if !ready.await.unwrap_or(false) {
            failed += 1;
        }
        done += 1;
        if done.is_multiple_of(1000) {
            eprint!("\r  connected {done}/{count}");
        }
    }
    if count >= 1000 {
        eprintln!();
    }
    Subscribers {
        stop,
        received,
        tasks,
        connect_time: started.elapsed(),
        failed,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(
    peer: Peer,
    url: &str,
    addr: SocketAddr,
    source: IpAddr,
    channel: &str,
    join: bool,
) -> Option<Ws> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let stream = socket.connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    // tungstenite zero-fills its whole read buffer before every read: with its default of
    // 128 KiB, that memset was a fifth of the machine's CPU while 5,000 clients took 200,000
    // deliveries/s (perf), stolen from the server under test. A server's batch of frames
    // fits in 8 KiB.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .ok()?;
    match peer {
        Peer::Pushlite => {
            if join {
                let frame = json!(["1", "1", channel, "phx_join", {}]).to_string();
                ws.send(Message::Text(frame.into())).await.ok()?;
                let reply = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await
                    .ok()??
                    .ok()?;
                if !reply.to_text().ok()?.contains("\"ok\"") {
                    return None;
                }
            }
        }
        Peer::PushlitePusher | Peer::Sockudo | Peer::Soketi => {
            let hello = tokio::time::timeout(Duration::from_secs(30), ws.next())
                .await
                .ok()??
                .ok()?;
            if !hello.to_text().ok()?.contains("connection_established") {
                return None;
            }
            if join {
                let frame =
                    json!({"event": "pusher:subscribe", "data": {"channel": channel}}).to_string();
                ws.send(Message::Text(frame.into())).await.ok()?;
                let reply = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await
                    .ok()??
                    .ok()?;
                if !reply.to_text().ok()?.contains("subscription_succeeded") {
                    return None;
                }
            }
        }
    }
    Some(ws)
}

impl Subscribers {
    async fn finish(self) -> Vec<(usize, Seen)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::with_capacity(self.tasks.len());
        for (target, task) in self.tasks {
            out.push((target, task.await.unwrap_or_default()));
        }
        out
    }

    /// Waits until deliveries stop arriving (or `max` passes).
    async fn settle(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let mut last = self.received.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.received.load(Ordering::Relaxed);
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
    }
}

/// A one-line progress bar on stderr for a phase of known length; stops when dropped.
struct Progress {
    done: Arc<AtomicBool>,
}

impl Progress {
    fn start(label: String, length: Duration) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            const WIDTH: usize = 30;
            while !stop.load(Ordering::Relaxed) {
                let fraction = (started.elapsed().as_secs_f64() / length.as_secs_f64()).min(1.0);
                let filled = (fraction * WIDTH as f64) as usize;
                eprint!(
                    "\r  {label} [{}{}] {:3.0}%",
                    "#".repeat(filled),
                    ".".repeat(WIDTH - filled),
                    fraction * 100.0
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            eprintln!("\r  {label} [{}] done", "#".repeat(WIDTH));
        });
        Progress { done }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Signs and sends one event.
fn trigger_request(
    http: &reqwest::Client,
    server_peer: Peer,
    addr: SocketAddr,
    target: &Target,
    seq: u64,
) -> reqwest::RequestBuilder {
    let payload = json!({"seq": seq, "sent": now_micros()});
    match server_peer {
        Peer::Pushlite => http
            .post(format!("http://{addr}/api/apps/{}/events", target.name))
            .basic_auth(&target.key, Some(&target.secret))
            .json(
                &json!({"topic": "bench", "event": "tick", "scope": "public", "payload": payload}),
            ),
        Peer::PushlitePusher | Peer::Sockudo | Peer::Soketi => {
            let body =
                json!({"name": "tick", "channels": [target.name], "data": payload.to_string()})
                    .to_string();
            let md5: String = Md5::digest(body.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = format!("/apps/{}/events", target.app_id);
            let query = format!(
                "auth_key={}&auth_timestamp={}&auth_version=1.0&body_md5={md5}",
                target.key,
                now_micros() / 1_000_000
            );
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(target.secret.as_bytes())
                .expect("any key length");
            mac.update(format!("POST\n{path}\n{query}").as_bytes());
            let signature: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            http.post(format!(
                "http://{addr}{path}?{query}&auth_signature={signature}"
            ))
            .header("content-type", "application/json")
            .body(body)
        }
    }
}

/// Triggers at `rate` events/s for `duration`, round-robin over the targets; returns the
/// accepted sequence numbers per target and the number of failures.
async fn drive(
    http: &reqwest::Client,
    server: &Server,
    first_seq: u64,
    rate: f64,
    duration: Duration,
    concurrency: usize,
) -> (Vec<Vec<u64>>, u64, Duration) {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let _progress = Progress::start(
        format!("{} at {rate} events/s", server.peer.name()),
        duration,
    );
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let seq = first_seq + n;
        let target_index = (n as usize) % server.targets.len();
        let request = trigger_request(
            http,
            server.peer,
            server.addr,
            &server.targets[target_index],
            seq,
        );
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        handles.push((
            target_index,
            seq,
            tokio::spawn(async move {
                let ok = request.send().await.is_ok_and(|r| r.status().is_success());
                drop(permit);
                ok
            }),
        ));
    }
    let mut accepted = vec![Vec::new(); server.targets.len()];
    let mut failures = 0;
    for (target, seq, handle) in handles {
        if handle.await.unwrap_or(false) {
            accepted[target].push(seq);
        } else {
            failures += 1;
        }
    }
    (accepted, failures, started.elapsed())
}

/// Latency histogram, losses and duplicates over a set of subscribers.
struct Tally {
    histogram: Histogram<u64>,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    errors: u64,
}

fn tally(seen: &[(usize, Seen)], accepted: &[Vec<u64>], seq_range: std::ops::Range<u64>) -> Tally {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut delivered, mut lost, mut duplicates, mut errors) = (0, 0, 0, 0);
    for (target, s) in seen {
        errors += s.errors;
        let mut got: HashMap<u64, u32> = HashMap::new();
        for (seq, latency) in &s.events {
            if !seq_range.contains(seq) {
                continue;
            }
            *got.entry(*seq).or_default() += 1;
            let _ = histogram.record(u64::from((*latency).max(1)));
            delivered += 1;
        }
        duplicates += got
            .values()
            .filter(|n| **n > 1)
            .map(|n| u64::from(*n - 1))
            .sum::<u64>();
        lost += accepted[*target]
            .iter()
            .filter(|seq| seq_range.contains(seq) && !got.contains_key(seq))
            .count() as u64;
    }
    Tally {
        histogram,
        delivered,
        lost,
        duplicates,
        errors,
    }
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 100.0).round() / 100.0;
    json!({
        "p50_ms": ms(h.value_at_quantile(0.5)), "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)), "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()), "samples": h.len(),
    })
}

struct Sizes {
    fanout_subscribers: usize,
    fanout_rates: Vec<f64>,
    topics: usize,
    per_topic: usize,
    idle: usize,
    cross_subscribers: usize,
    step: Duration,
}

/// (a) one topic, many subscribers, rising trigger rate until delivery falls behind.
async fn fanout(peer: Peer, sizes: &Sizes, http: &reqwest::Client) -> Value {
    let mut server = Server::start(peer, None, None).await;
    server.prepare_targets(1, http).await;
    let subs = subscribe(&server, sizes.fanout_subscribers, 1, true).await;
    let n = sizes.fanout_subscribers as f64;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (received, sampling) = (subs.received.clone(), sampling.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut series = Vec::new();
            let mut last = received.load(Ordering::Relaxed);
            while sampling.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = received.load(Ordering::Relaxed);
                series.push((started.elapsed().as_secs_f64(), (now - last) as f64 * 2.0));
                last = now;
            }
            series
        })
    };
    let mut steps = Vec::new();
    let mut seq = 0;
    let mut all_accepted = vec![Vec::new()];
    let mut ranges = Vec::new();
    for &rate in &sizes.fanout_rates {
        let before = subs.received.load(Ordering::Relaxed);
        let started = Instant::now();
        let (accepted, failures, _) = drive(http, &server, seq, rate, sizes.step, 64).await;
        let sent: u64 = accepted.iter().map(|a| a.len() as u64).sum();
        subs.settle(Duration::from_secs(10)).await;
        let elapsed = started.elapsed();
        let delivered = subs.received.load(Ordering::Relaxed) - before;
        let expected = sent as f64 * n;
        let deliveries_per_sec = delivered as f64 / sizes.step.as_secs_f64();
        let kept_up =
            delivered as f64 >= expected * 0.99 && elapsed < sizes.step + Duration::from_secs(2);
        eprintln!(
            "  {} fan-out: {rate} events/s → {deliveries_per_sec:.0} deliveries/s{}",
            peer.name(),
            if kept_up { "" } else { " (fell behind)" }
        );
        steps.push(
            json!({"events_per_sec": rate, "deliveries_per_sec": deliveries_per_sec.round(),
                          "kept_up": kept_up, "trigger_failures": failures,
                          "drain_ms": elapsed.saturating_sub(sizes.step).as_millis()}),
        );
        ranges.push(seq..seq + (rate * sizes.step.as_secs_f64()) as u64);
        all_accepted[0].extend(accepted[0].iter().copied());
        seq += (rate * sizes.step.as_secs_f64()) as u64;
        if !kept_up {
            break;
        }
    }
    let rss = rss_kib(server.pid);
    sampling.store(false, Ordering::Relaxed);
    let series = sampler.await.unwrap_or_default();
    let (connect_time, failed) = (subs.connect_time, subs.failed);
    let seen = subs.finish().await;
    let t = tally(&seen, &all_accepted, 0..seq);
    // A rate is sustained when every event arrived and the step's p99 latency stayed under
    // a second: a backlog that keeps growing shows up as latency, not as loss.
    let mut best = 0.0f64;
    let mut delivered_best = 0.0f64;
    for (step, range) in steps.iter_mut().zip(ranges) {
        let per_step = tally(&seen, &all_accepted, range);
        let p99_ms = per_step.histogram.value_at_quantile(0.99) as f64 / 1000.0;
        let sustained = per_step.lost == 0 && p99_ms < 1000.0 && step["kept_up"] == true;
        step["p99_ms"] = json!(p99_ms);
        step["sustained"] = json!(sustained);
        let offered = step["events_per_sec"].as_f64().unwrap_or(0.0) * n;
        if sustained {
            best = best.max(offered);
        }
        if per_step.lost == 0 && step["kept_up"] == true {
            delivered_best = delivered_best.max(offered);
        }
    }
    server.stop().await;
    json!({"subscribers": sizes.fanout_subscribers, "connect_ms": connect_time.as_millis(),
           "connect_failures": failed, "steps": steps, "sustained_deliveries_per_sec": best,
           "delivered_deliveries_per_sec": delivered_best, "throughput_series": series,
           "latency": latency_json(&t.histogram), "lost": t.lost, "duplicates": t.duplicates,
           "socket_errors": t.errors, "server_rss_kib": rss})
}

/// (b) many topics with a few subscribers each, a steady trigger rate over all topics.
async fn topics(peer: Peer, sizes: &Sizes, http: &reqwest::Client) -> Value {
    let mut server = Server::start(peer, None, None).await;
    server.prepare_targets(sizes.topics, http).await;
    let subs = subscribe(&server, sizes.topics * sizes.per_topic, sizes.topics, true).await;
    let rate = 1000.0;
    let (accepted, failures, took) = drive(http, &server, 0, rate, sizes.step, 128).await;
    subs.settle(Duration::from_secs(10)).await;
    let sent: u64 = accepted.iter().map(|a| a.len() as u64).sum();
    let rss = rss_kib(server.pid);
    let (connect_time, failed) = (subs.connect_time, subs.failed);
    let seen = subs.finish().await;
    let t = tally(&seen, &accepted, 0..u64::MAX);
    server.stop().await;
    json!({"topics": sizes.topics, "subscribers_per_topic": sizes.per_topic, "events_per_sec": rate,
           "events_sent": sent, "trigger_failures": failures, "connect_ms": connect_time.as_millis(),
           "connect_failures": failed,
           "deliveries_per_sec": (t.delivered as f64 / took.as_secs_f64()).round(),
           "latency": latency_json(&t.histogram), "lost": t.lost, "duplicates": t.duplicates,
           "socket_errors": t.errors, "server_rss_kib": rss})
}

/// (c) idle memory: many joined, silent sockets.
async fn idle(peer: Peer, sizes: &Sizes, http: &reqwest::Client) -> Value {
    let mut server = Server::start(peer, None, None).await;
    server.prepare_targets(1, http).await;
    let before = rss_kib(server.pid);
    let subs = subscribe(&server, sizes.idle, 1, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(server.pid);
    let (connect_time, failed) = (subs.connect_time, subs.failed);
    let _ = subs.finish().await;
    server.stop().await;
    json!({"connections": sizes.idle, "connect_ms": connect_time.as_millis(), "connect_failures": failed,
           "server_rss_before_kib": before, "server_rss_after_kib": after,
           "kib_per_connection": ((after.saturating_sub(before)) as f64 / sizes.idle as f64 * 10.0).round() / 10.0})
}

/// What a closed loop of triggers measured.
struct Hammered {
    accepted: u64,
    failed: u64,
    took: Duration,
    /// Request latency of accepted triggers, µs.
    latency: Histogram<u64>,
}

impl Hammered {
    fn per_sec(&self) -> f64 {
        (self.accepted as f64 / self.took.as_secs_f64()).round()
    }
}

/// `concurrency` workers, each sending its next trigger as soon as the last one is answered,
/// for `length`.
async fn hammer(
    http: &reqwest::Client,
    server: &Server,
    target: &Target,
    concurrency: u64,
    length: Duration,
) -> Hammered {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (http, target, addr, peer, stop) = (
            http.clone(),
            target.clone(),
            server.addr,
            server.peer,
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seq = w << 40;
            let (mut accepted, mut failed) = (0, 0);
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let ok = trigger_request(&http, peer, addr, &target, seq)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    accepted += 1;
                    let _ = latency.record(sent.elapsed().as_micros() as u64);
                } else {
                    failed += 1;
                }
                seq += 1;
            }
            (accepted, failed, latency)
        }));
    }
    {
        let _progress = Progress::start(format!("{} triggers", server.peer.name()), length);
        tokio::time::sleep(length).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Hammered {
        accepted: 0,
        failed: 0,
        took: Duration::ZERO,
        latency: Histogram::<u64>::new(3).expect("histogram"),
    };
    for w in workers {
        if let Ok((accepted, failed, latency)) = w.await {
            total.accepted += accepted;
            total.failed += failed;
            let _ = total.latency.add(&latency);
        }
    }
    total.took = started.elapsed();
    total
}

/// (d) trigger throughput: as many HTTP events as the server accepts, keep-alive where offered.
async fn trigger(peer: Peer, sizes: &Sizes, http: &reqwest::Client) -> Value {
    let mut server = Server::start(peer, None, None).await;
    server.prepare_targets(1, http).await;
    let subs = subscribe(&server, 1, 1, true).await;
    let run = hammer(http, &server, &server.targets[0].clone(), 64, sizes.step).await;
    let _ = subs.finish().await;
    // What the events endpoint itself says about keep-alive.
    let keep_alive = trigger_request(http, peer, server.addr, &server.targets[0], u64::MAX >> 1)
        .send()
        .await
        .ok()
        .and_then(|r| {
            r.headers()
                .get("connection")
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        })
        .unwrap_or_else(|| "keep-alive (no Connection header)".to_owned());
    server.stop().await;
    json!({"concurrency": 64, "seconds": run.took.as_secs_f64(),
           "accepted_per_sec": run.per_sec(), "failures": run.failed,
           "latency": latency_json(&run.latency), "connection_header": keep_alive})
}

/// (f) the cost of history: the seed's events API on an app without history and on one that
/// keeps 100 events per channel (one Redis script storing and publishing), with one joined
/// subscriber each, through Redis and in embedded mode. Pushlite only: the peers keep none.
async fn history(sizes: &Sizes, http: &reqwest::Client, redis: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (mode, redis) in [("redis", Some(redis)), ("embedded", None)] {
        let mut server = Server::start(Peer::Pushlite, redis, None).await;
        server.prepare_targets(2, http).await;
        let kept = server.targets[1].clone();
        let patched = http
            .patch(format!(
                "http://{}/api/admin/apps/{}",
                server.addr, kept.name
            ))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&json!({"app": {"history_size": 100}}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        assert!(patched, "switch history on");
        let subs = subscribe(&server, 2, 2, true).await;
        let mut by_setting = serde_json::Map::new();
        // Off, on, off, on: neither setting always runs on a warmer process.
        for (setting, target) in [
            ("off", &server.targets[0]),
            ("on", &kept),
            ("off", &server.targets[0]),
            ("on", &kept),
        ] {
            let run = hammer(http, &server, &target.clone(), 64, sizes.step).await;
            eprintln!("   history {mode} {setting}: {} req/s", run.per_sec());
            let entry = by_setting
                .entry(setting)
                .or_insert_with(|| json!({"runs": []}));
            entry["runs"].as_array_mut().expect("runs").push(
                json!({"accepted_per_sec": run.per_sec(), "failures": run.failed,
                             "latency": latency_json(&run.latency)}),
            );
        }
        let _ = subs.finish().await;
        server.stop().await;
        out.insert(mode.to_owned(), Value::Object(by_setting));
    }
    Value::Object(out)
}

/// The history scenario as a table: per mode and setting, the better of its runs.
fn history_markdown(history: &Value) -> String {
    let mut md = String::from(
        "\n| history (seed events API, 64 concurrent) | requests/s | p50 ms | p99 ms |\n|---|---|---|---|\n",
    );
    for mode in ["redis", "embedded"] {
        for setting in ["off", "on"] {
            let runs = history[mode][setting]["runs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let best = runs.iter().max_by(|a, b| {
                let rate = |r: &Value| r["accepted_per_sec"].as_f64().unwrap_or(0.0);
                rate(a).total_cmp(&rate(b))
            });
            if let Some(best) = best {
                md.push_str(&format!(
                    "| {mode}, history {setting} | {} | {} | {} |\n",
                    best["accepted_per_sec"], best["latency"]["p50_ms"], best["latency"]["p99_ms"]
                ));
            }
        }
    }
    md
}

/// (e) two nodes through Redis: subscribers on node B, triggers to node A at 1,000 events/s.
async fn cross_node(peer: Peer, sizes: &Sizes, http: &reqwest::Client, redis: &str) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("shared.db");
    let mut a = Server::start(peer, Some(redis), Some(&db)).await;
    let mut b = Server::start(peer, Some(redis), Some(&db)).await;
    a.prepare_targets(1, http).await;
    b.targets = a.targets.clone();
    let subs = subscribe(&b, sizes.cross_subscribers, 1, true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (accepted, failures, took) = drive(http, &a, 0, 1000.0, sizes.step, 128).await;
    subs.settle(Duration::from_secs(10)).await;
    let (connect_time, failed) = (subs.connect_time, subs.failed);
    let seen = subs.finish().await;
    let t = tally(&seen, &accepted, 0..u64::MAX);
    a.stop().await;
    b.stop().await;
    json!({"subscribers_on_b": sizes.cross_subscribers, "events_per_sec": 1000,
           "events_sent": accepted[0].len(), "trigger_failures": failures,
           "connect_ms": connect_time.as_millis(), "connect_failures": failed,
           "deliveries_per_sec": (t.delivered as f64 / took.as_secs_f64()).round(),
           "latency": latency_json(&t.histogram), "lost": t.lost, "duplicates": t.duplicates,
           "socket_errors": t.errors})
}

fn clean(result: &Value) -> bool {
    result.get("lost").is_none_or(|v| v == 0) && result.get("duplicates").is_none_or(|v| v == 0)
}

fn headline(scenario: &str, r: &Value) -> Vec<(String, f64, bool)> {
    // (metric, value, higher is better)
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    match scenario {
        "fanout" => vec![
            (
                "deliveries/s, all delivered ≤ 2 s after the step".into(),
                f(&r["delivered_deliveries_per_sec"]),
                true,
            ),
            (
                "deliveries/s with p99 < 1 s".into(),
                f(&r["sustained_deliveries_per_sec"]),
                true,
            ),
            ("p99 latency ms".into(), f(&r["latency"]["p99_ms"]), false),
        ],
        "topics" => vec![
            ("deliveries/s".into(), f(&r["deliveries_per_sec"]), true),
            ("p99 latency ms".into(), f(&r["latency"]["p99_ms"]), false),
        ],
        "idle" => vec![(
            "KiB per connection".into(),
            f(&r["kib_per_connection"]),
            false,
        )],
        "trigger" => vec![("HTTP events/s".into(), f(&r["accepted_per_sec"]), true)],
        _ => vec![
            ("p50 latency ms".into(), f(&r["latency"]["p50_ms"]), false),
            ("p99 latency ms".into(), f(&r["latency"]["p99_ms"]), false),
        ],
    }
}

/// The pairs compared in ratio columns: pushlite's Pusher driver against each Pusher peer.
fn ratio_pairs(peers: &[Peer]) -> Vec<(Peer, Peer)> {
    if !peers.contains(&Peer::PushlitePusher) {
        return Vec::new();
    }
    peers
        .iter()
        .filter(|p| !p.is_pushlite())
        .map(|p| (Peer::PushlitePusher, *p))
        .collect()
}

fn markdown(results: &Value, peers: &[Peer]) -> String {
    let pairs = ratio_pairs(peers);
    let mut md = String::from("| scenario | metric |");
    for p in peers {
        md.push_str(&format!(" {} |", p.name()));
    }
    for (a, b) in &pairs {
        md.push_str(&format!(" {}/{} |", a.name(), b.name()));
    }
    md.push_str("\n|---|---|");
    for _ in 0..peers.len() + pairs.len() {
        md.push_str("---|");
    }
    md.push('\n');
    let mut loud = String::new();
    for (scenario, by_peer) in results.as_object().into_iter().flatten() {
        let first = &by_peer[peers[0].name()];
        for (i, (metric, _, higher)) in headline(scenario, first).iter().enumerate() {
            md.push_str(&format!("| {scenario} | {metric} |"));
            let value = |p: Peer| headline(scenario, &by_peer[p.name()])[i].1;
            for p in peers {
                md.push_str(&format!(" {} |", value(*p)));
            }
            for (a, b) in &pairs {
                let ratio = value(*a) / value(*b);
                let better = if *higher { ratio >= 1.0 } else { ratio <= 1.0 };
                md.push_str(&format!(
                    " {ratio:.2}{} |",
                    if better { "" } else { " (behind)" }
                ));
            }
            md.push('\n');
        }
        for p in peers {
            if !clean(&by_peer[p.name()]) {
                loud.push_str(&format!(
                    "\n**{scenario} on {}: LOSSES OR DUPLICATES: {}**\n",
                    p.name(),
                    by_peer[p.name()]
                ));
            }
        }
    }
    md + &loud
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = std::fs::canonicalize(&args.pushlite).unwrap_or_else(|e| {
        panic!(
            "no pushlite binary at {} ({e}): cargo build --release --bin pushlite",
            args.pushlite.display()
        )
    });
    let version = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = PUSHLITE.set(binary);
    let fanout_rates = if args.fanout_rates.is_empty() {
        vec![2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    } else {
        args.fanout_rates.clone()
    };
    let sizes = if args.quick {
        Sizes {
            fanout_subscribers: 1000,
            fanout_rates: fanout_rates.clone(),
            topics: 100,
            per_topic: 10,
            idle: 2000,
            cross_subscribers: 100,
            step: Duration::from_secs(2),
        }
    } else {
        Sizes {
            fanout_subscribers: 10_000,
            fanout_rates,
            topics: 1000,
            per_topic: 10,
            idle: 15_000,
            cross_subscribers: 1000,
            step: Duration::from_secs(5),
        }
    };
    let mut sizes = sizes;
    if let Some(n) = args.fanout_subscribers {
        sizes.fanout_subscribers = n;
    }
    if let Some(n) = args.idle_connections {
        sizes.idle = n;
    }
    if let Some(n) = args.cross_subscribers {
        sizes.cross_subscribers = n;
    }
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("http client");
    let peers: Vec<Peer> = if !args.only.is_empty() {
        args.only.clone()
    } else if args.peers {
        vec![
            Peer::Pushlite,
            Peer::PushlitePusher,
            Peer::Sockudo,
            Peer::Soketi,
        ]
    } else {
        vec![Peer::Pushlite, Peer::PushlitePusher]
    };
    let scenarios: Vec<&str> = match args.scenario {
        ScenarioArg::All => vec!["fanout", "topics", "idle", "trigger", "cross-node"],
        ScenarioArg::History => Vec::new(),
        ScenarioArg::Fanout => vec!["fanout"],
        ScenarioArg::Topics => vec!["topics"],
        ScenarioArg::Idle => vec!["idle"],
        ScenarioArg::Trigger => vec!["trigger"],
        ScenarioArg::CrossNode => vec!["cross-node"],
    };
    let mut results = serde_json::Map::new();
    for scenario in &scenarios {
        let mut by_peer = serde_json::Map::new();
        // Alternate the order per scenario so neither peer always runs on a warmer machine.
        let order: Vec<Peer> = if results.len().is_multiple_of(2) {
            peers.clone()
        } else {
            peers.iter().rev().copied().collect()
        };
        for peer in order {
            eprintln!("== {scenario} on {}", peer.name());
            let result = match *scenario {
                "fanout" => fanout(peer, &sizes, &http).await,
                "topics" => topics(peer, &sizes, &http).await,
                "idle" => idle(peer, &sizes, &http).await,
                "trigger" => trigger(peer, &sizes, &http).await,
                _ => cross_node(peer, &sizes, &http, &redis).await,
            };
            eprintln!("   {result}");
            by_peer.insert(peer.name().to_owned(), result);
        }
        results.insert((*scenario).to_owned(), Value::Object(by_peer));
    }
    let results = Value::Object(results);
    let history = if matches!(args.scenario, ScenarioArg::All | ScenarioArg::History) {
        eprintln!("== history on pushlite");
        history(&sizes, &http, &redis).await
    } else {
        Value::Null
    };
    std::fs::create_dir_all(&args.out).expect("output directory");
    let record = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "pushlite": version,
        "sockudo": if peers.contains(&Peer::Sockudo) { "5.2.0" } else { "not run" },
        "soketi": if peers.contains(&Peer::Soketi) { "1.6.1" } else { "not run" },
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "results": results,
        "history": history,
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&record).unwrap_or_default(),
    )
    .expect("write JSON");
    if let Some(dir) = &args.plot {
        plot(dir, &results, &peers);
    }
    let mut md = markdown(&results, &peers);
    if history.is_object() {
        md.push_str(&history_markdown(&history));
    }
    std::fs::write(args.out.join("results.md"), &md).expect("write Markdown");
    println!("{md}");
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn plot(dir: &Path, results: &Value, peers: &[Peer]) {
    use plotters::prelude::*;
    let font = std::fs::read(FONT).unwrap_or_else(|e| {
        panic!("--plot needs the font {FONT} (Debian: fonts-dejavu-core): {e}")
    });
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .unwrap_or_else(|_| panic!("{FONT} is not a usable TrueType font"));
    std::fs::create_dir_all(dir).expect("plot directory");
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];

    let fanout = &results["fanout"];
    if fanout.is_object() {
        let path = dir.join("fanout-throughput.png");
        let root = BitMapBackend::new(&path, (1000, 500)).into_drawing_area();
        root.fill(&WHITE).expect("draw");
        let series: Vec<Vec<(f64, f64)>> = peers
            .iter()
            .map(|p| {
                fanout[p.name()]["throughput_series"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|pt| Some((pt[0].as_f64()?, pt[1].as_f64()?)))
                    .collect()
            })
            .collect();
        let max_t = series.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
        let max_y = series.iter().flatten().map(|p| p.1).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "fan-out: deliveries per second, rising trigger rate",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..max_t, 0.0..max_y * 1.1)
            .expect("chart");
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("deliveries/s")
            .draw()
            .expect("mesh");
        for (i, (peer, points)) in peers.iter().zip(series).enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .expect("series")
                .label(peer.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .expect("legend");
        root.present().expect("write PNG");
    }

    for scenario in ["fanout", "topics", "cross-node"] {
        let by_peer = &results[scenario];
        if !by_peer.is_object() {
            continue;
        }
        let path = dir.join(format!("latency-{scenario}.png"));
        let root = BitMapBackend::new(&path, (800, 450)).into_drawing_area();
        root.fill(&WHITE).expect("draw");
        let keys = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"];
        let max_y = peers
            .iter()
            .flat_map(|p| {
                keys.iter()
                    .map(move |k| by_peer[p.name()]["latency"][k].as_f64().unwrap_or(0.0))
            })
            .fold(0.1, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{scenario}: publish-to-receive latency (ms, log scale)"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..keys.len() - 1, (0.05f64..max_y * 2.0).log_scale())
            .expect("chart");
        chart
            .configure_mesh()
            .x_labels(keys.len())
            .x_label_formatter(&|i| {
                ["p50", "p90", "p99", "p99.9", "max"]
                    .get(*i)
                    .copied()
                    .unwrap_or("")
                    .to_owned()
            })
            .y_desc("ms")
            .draw()
            .expect("mesh");
        for (i, peer) in peers.iter().enumerate() {
            let color = colors[i % colors.len()];
            let points: Vec<(usize, f64)> = keys
                .iter()
                .enumerate()
                .map(|(x, k)| {
                    (
                        x,
                        by_peer[peer.name()]["latency"][k]
                            .as_f64()
                            .unwrap_or(0.0)
                            .max(0.05),
                    )
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .expect("series")
                .label(peer.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .expect("legend");
        root.present().expect("write PNG");
    }
    eprintln!("charts written to {}", dir.display());
}
