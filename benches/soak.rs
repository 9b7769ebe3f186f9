//! The chaos soak (`make soak`): three node processes on one Redis and one Postgres (both
//! throwaway, so the soak may kill them), subscribers over both protocols, a steady trigger rate,
//! and a schedule of faults: `kill -9` of a node (its clients reconnect to the others), a Redis
//! crash and restart, a Postgres crash and restart, and Redis frozen with `SIGSTOP`.
//!
//! Afterwards it checks what pushlite promises: every trigger answered 200 reached every
//! subscriber that stayed connected exactly once, every webhook transition of the probe channels
//! was delivered at least once, the survivors' memory is back within 10% of where it started,
//! and no node logged a panic. It prints a summary table (the README keeps one) and exits 1 when
//! a check fails.
//!
//! `SOAK_SUBSCRIBERS` (2000), `SOAK_RATE` (triggers per second, 200) and `SOAK_PHASE_SECS`
//! (seconds between faults, 20) change the shape.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bench::{App, env_or};
use common::phx::{self, Vsn};
use common::postgres::PostgresServer;
use common::process::NodeProcess;
use common::pusher::signed_post;
use common::redis::RedisServer;
use futures_util::{SinkExt, StreamExt};
use pushlite::domain::signature;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Channels the subscribers spread over; channel 0 is `public`, triggered through the seed API,
/// the others through the Pusher HTTP API.
const CHANNELS: usize = 20;
/// How long a connect, join or subscribe may take before the client tries the next node.
const STEP: Duration = Duration::from_secs(5);

fn channel_name(index: usize) -> String {
    if index == 0 {
        "public".to_owned()
    } else {
        format!("soak-{index}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Phoenix(Vsn),
    Pusher,
}

/// One subscriber's record, shared with the checker.
struct Subscriber {
    protocol: Protocol,
    channel: usize,
    /// The seq of every event received, in order.
    seqs: Mutex<Vec<u64>>,
    /// How often its connection dropped.
    drops: AtomicU64,
    /// From each drop to subscribed again on another node.
    reconnects: Mutex<Vec<Duration>>,
    /// 0 or 1: which of the other nodes it tries first after a drop.
    spread: usize,
    /// Set when the client should close its socket and end.
    stop: AtomicBool,
}

/// Opens a socket of `protocol` on `addr` and subscribes to `channel`; the frames of a
/// successful subscription are read up to its confirmation.
async fn subscribe(addr: SocketAddr, app: &App, protocol: Protocol, channel: &str) -> Option<Ws> {
    let steps = async {
        match protocol {
            Protocol::Phoenix(vsn) => {
                let v = if vsn == Vsn::V1 { "1.0.0" } else { "2.0.0" };
                let url = format!("ws://{addr}/socket/websocket?vsn={v}");
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
                let topic = format!("{channel}:{}", app.slug);
                let join = match vsn {
                    Vsn::V2 => json!(["1", "1", topic, "phx_join", {}]),
                    Vsn::V1 => {
                        json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": "1"})
                    }
                };
                ws.send(Message::Text(join.to_string().into())).await.ok()?;
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message {
                        let frame = phx::parse(vsn, &text);
                        if frame.event == "phx_reply" && frame.msg_ref == json!("1") {
                            return (frame.payload["status"] == "ok").then_some(ws);
                        }
                    }
                }
                None
            }
            Protocol::Pusher => {
                let url = format!("ws://{addr}/app/{}?protocol=7&client=soak", app.key);
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
                pusher_subscribe(&mut ws, json!({"channel": channel})).await?;
                Some(ws)
            }
        }
    };
    tokio::time::timeout(STEP, steps).await.ok().flatten()
}

/// Sends `pusher:subscribe` with `data` and reads up to the answer: `Some` when it succeeded.
async fn pusher_subscribe(ws: &mut Ws, data: Value) -> Option<()> {
    let frame = json!({"event": "pusher:subscribe", "data": data});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .ok()?;
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).ok()?;
            match frame["event"].as_str() {
                Some("pusher_internal:subscription_succeeded") => return Some(()),
                Some("pusher:subscription_error" | "pusher:error") => return None,
                _ => {}
            }
        }
    }
    None
}

/// The seq an event frame carries, whichever protocol and API it came through.
fn seq_of(protocol: Protocol, text: &str) -> Option<u64> {
    match protocol {
        Protocol::Phoenix(vsn) => {
            let frame = phx::parse(vsn, text);
            frame.payload["seq"].as_u64()
        }
        Protocol::Pusher => {
            let frame: Value = serde_json::from_str(text).ok()?;
            let data: Value = serde_json::from_str(frame["data"].as_str()?).ok()?;
            data["seq"].as_u64()
        }
    }
}

/// Reads events until the socket drops or the run ends; heartbeats and pongs keep it alive.
/// Returns whether the socket dropped (rather than the run ending).
async fn read(ws: Ws, protocol: Protocol, record: &Subscriber) -> bool {
    let (mut sink, mut stream) = ws.split();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(20));
    heartbeat.tick().await;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(seq) = seq_of(protocol, &text) {
                        record.seqs.lock().expect("seqs").push(seq);
                    } else if protocol == Protocol::Pusher && text.contains("\"pusher:ping\"") {
                        let pong = json!({"event": "pusher:pong", "data": {}}).to_string();
                        if sink.send(Message::Text(pong.into())).await.is_err() {
                            return true;
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return true,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                if let Protocol::Phoenix(vsn) = protocol {
                    let beat = match vsn {
                        Vsn::V2 => json!([null, "hb", "phoenix", "heartbeat", {}]),
                        Vsn::V1 => json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "hb"}),
                    };
                    if sink.send(Message::Text(beat.to_string().into())).await.is_err() {
                        return true;
                    }
                }
            }
            _ = check.tick() => {
                if record.stop.load(Ordering::SeqCst) {
                    let _ = sink.send(Message::Close(None)).await;
                    return false;
                }
            }
        }
    }
}

/// One subscriber for the whole run: subscribed on `home`, and after a drop on the next node
/// that takes it, until the run ends.
async fn subscriber(nodes: Arc<Vec<SocketAddr>>, home: usize, app: App, record: Arc<Subscriber>) {
    let channel = channel_name(record.channel);
    let mut node = home;
    // Clients of a dead node spread over the others, as a load balancer would spread them.
    let mut hop = 1 + record.spread;
    let mut dropped_at: Option<Instant> = None;
    while !record.stop.load(Ordering::SeqCst) {
        let Some(ws) = subscribe(nodes[node], &app, record.protocol, &channel).await else {
            if dropped_at.is_none() {
                panic!("subscriber could not subscribe on its first node");
            }
            node = (node + 1) % nodes.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if let Some(at) = dropped_at.take() {
            record
                .reconnects
                .lock()
                .expect("reconnects")
                .push(at.elapsed());
        }
        if !read(ws, record.protocol, &record).await {
            return;
        }
        record.drops.fetch_add(1, Ordering::SeqCst);
        dropped_at = Some(Instant::now());
        node = (node + hop) % nodes.len();
        hop = 1;
    }
}

/// What one trigger was answered.
struct Sent {
    seq: u64,
    channel: usize,
    /// The HTTP status, or none when the request failed (a dead node, a timeout).
    status: Option<u16>,
}

async fn trigger(
    http: &reqwest::Client,
    node: SocketAddr,
    app: &App,
    seq: u64,
    channel: usize,
) -> Option<u16> {
    let request = if channel == 0 {
        http.post(format!("http://{node}/api/apps/{}/events", app.slug))
            .basic_auth(&app.key, Some(&app.secret))
            .json(&json!({"topic": "soak", "event": "tick", "scope": "public", "payload": {"seq": seq}}))
    } else {
        let body = json!({"name": "tick", "channel": channel_name(channel), "data": json!({"seq": seq}).to_string()})
            .to_string();
        let path = format!("/apps/{}/events", app.id);
        signed_post(
            http,
            &format!("http://{node}"),
            &app.key,
            &app.secret,
            &path,
            body,
        )
    };
    let response = request.send().await.ok()?;
    Some(response.status().as_u16())
}

/// What the webhook receiver got: (event name, channel, user id).
type Hooks = Arc<Mutex<Vec<(String, String, String)>>>;

async fn receiver() -> (SocketAddr, Hooks) {
    let hooks: Hooks = Arc::default();
    let store = hooks.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                if let Ok(body) = serde_json::from_slice::<Value>(&body)
                    && let Some(events) = body["events"].as_array()
                {
                    let mut store = store.lock().expect("hooks");
                    for event in events {
                        let field =
                            |name: &str| event[name].as_str().unwrap_or_default().to_owned();
                        store.push((field("name"), field("channel"), field("user_id")));
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hooks)
}

/// One presence probe on `node`: joins `presence-probe-<n>` as user `probe-<n>`, stays a moment,
/// leaves. Returns whether the join was confirmed (so its four transitions are owed).
async fn probe(node: SocketAddr, app: &App, n: u64) -> bool {
    let steps = async {
        let url = format!("ws://{node}/app/{}?protocol=7&client=soak", app.key);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        let mut socket_id = None;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).ok()?;
                if frame["event"] == "pusher:connection_established" {
                    let data: Value = serde_json::from_str(frame["data"].as_str()?).ok()?;
                    socket_id = data["socket_id"].as_str().map(str::to_owned);
                    break;
                }
            }
        }
        let socket_id = socket_id?;
        let channel = format!("presence-probe-{n}");
        let channel_data = json!({"user_id": format!("probe-{n}")}).to_string();
        let signed = signature::sign(
            &app.secret,
            &signature::channel_string(&socket_id, &channel, Some(&channel_data)),
        );
        pusher_subscribe(
            &mut ws,
            json!({"channel": channel, "auth": format!("{}:{signed}", app.key), "channel_data": channel_data}),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = ws.close(None).await;
        Some(())
    };
    tokio::time::timeout(STEP, steps)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Resident memory of a process, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn log(started: Instant, what: &str) {
    eprintln!("[{:6.1} s] {what}", started.elapsed().as_secs_f64());
}

#[tokio::main]
async fn main() {
    let subscribers = usize::try_from(env_or("SOAK_SUBSCRIBERS", 2000)).unwrap_or(2000);
    let rate = env_or("SOAK_RATE", 200).max(1);
    let phase = Duration::from_secs(env_or("SOAK_PHASE_SECS", 20));
    let started = Instant::now();

    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let postgres = PostgresServer::init("");
    postgres.start();
    let (hook_addr, hooks) = receiver().await;
    let database_url = postgres.url("sslmode=disable");
    let redis_url = redis.url();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("PUSHLITE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ("RUST_LOG", "warn"),
    ];
    let malloc_conf = std::env::var("_RJEM_MALLOC_CONF").unwrap_or_default();
    let mut env = env.to_vec();
    if !malloc_conf.is_empty() {
        env.push(("_RJEM_MALLOC_CONF", malloc_conf.as_str()));
    }
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(NodeProcess::spawn(&env).await);
    }
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(nodes.iter().map(|n| n.addr).collect());
    log(
        started,
        "Redis, Postgres, 3 nodes and a webhook receiver up",
    );

    let created = nodes[0].create_app("Chaos soak").await;
    assert!(created["slug"].is_string(), "app not created: {created}");
    let app = App::from_created(&created);
    let hook_url = format!("http://{hook_addr}/hook");
    let update = reqwest::Client::new()
        .put(nodes[0].url(&format!("/api/admin/apps/{}", app.slug)))
        .basic_auth(common::ADMIN.0, Some(common::ADMIN.1))
        .json(&json!({"app": {"max_presence_members": 10_000, "webhooks": [{"url": hook_url,
            "events": ["channel_occupied", "channel_vacated", "member_added", "member_removed"]}]}}))
        .send()
        .await
        .expect("update app");
    assert!(
        update.status().is_success(),
        "webhook setup: {}",
        update.status()
    );

    // Subscribers: half Phoenix (V1 and V2 alternating), half Pusher, over every node and
    // channel.
    let mut records = Vec::with_capacity(subscribers);
    let mut tasks = Vec::with_capacity(subscribers);
    let mut homes = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let protocol = match i % 4 {
            0 => Protocol::Phoenix(Vsn::V2),
            1 | 3 => Protocol::Pusher,
            _ => Protocol::Phoenix(Vsn::V1),
        };
        let record = Arc::new(Subscriber {
            protocol,
            channel: (i / 4) % CHANNELS,
            seqs: Mutex::default(),
            drops: AtomicU64::new(0),
            reconnects: Mutex::default(),
            stop: AtomicBool::new(false),
            spread: (i / 3) % 2,
        });
        let home = i % 3;
        records.push(record.clone());
        homes.push(home);
        tasks.push(tokio::spawn(subscriber(
            addrs.clone(),
            home,
            app.clone(),
            record,
        )));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Wait until every subscriber gets an event: then all are subscribed.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut warm = 1_000_000_000u64;
    loop {
        for channel in 0..CHANNELS {
            warm += 1;
            let _ = trigger(&http, addrs[0], &app, warm, channel).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if records
            .iter()
            .all(|r| !r.seqs.lock().expect("seqs").is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers did not all subscribe within 60 s"
        );
    }
    log(
        started,
        &format!("{subscribers} subscribers joined (Phoenix V1/V2 and Pusher)"),
    );

    // The steady load: `rate` triggers a second, round robin over nodes and channels.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let load_stop = Arc::new(AtomicBool::new(false));
    // The nodes a load balancer would route to: the first `live`, as a health check sees them.
    let live = Arc::new(AtomicUsize::new(addrs.len()));
    let load = {
        let (sent, stop, http, app, addrs, live) = (
            sent.clone(),
            load_stop.clone(),
            http.clone(),
            app.clone(),
            addrs.clone(),
            live.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                seq += 1;
                let channel = usize::try_from(seq).unwrap_or(0) % CHANNELS;
                let node =
                    addrs[usize::try_from(seq / 7).unwrap_or(0) % live.load(Ordering::SeqCst)];
                let (sent, http, app) = (sent.clone(), http.clone(), app.clone());
                inflight.push(tokio::spawn(async move {
                    let status = trigger(&http, node, &app, seq, channel).await;
                    sent.lock().expect("sent").push(Sent {
                        seq,
                        channel,
                        status,
                    });
                }));
            }
            for task in inflight {
                let _ = task.await;
            }
        })
    };
    // Presence probes on node 0 (never killed), one a second.
    let probes: Arc<Mutex<Vec<u64>>> = Arc::default();
    let probe_stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (probes, stop, app, node) = (probes.clone(), probe_stop.clone(), app.clone(), addrs[0]);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let start = Instant::now();
                if probe(node, &app, n).await {
                    probes.lock().expect("probes").push(n);
                }
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(start.elapsed())).await;
            }
        })
    };

    let survivors = [nodes[0].pid(), nodes[1].pid()];
    let timeline: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let sampler = {
        let timeline = timeline.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                timeline.lock().expect("timeline").push((
                    started.elapsed().as_secs_f64(),
                    rss_bytes(survivors[0]),
                    rss_bytes(survivors[1]),
                ));
            }
        })
    };
    tokio::time::sleep(phase / 2).await;
    let rss_start: Vec<u64> = survivors.iter().map(|pid| rss_bytes(*pid)).collect();
    log(
        started,
        &format!(
            "steady at {rate} triggers/s; survivors' RSS {} / {}",
            mib(rss_start[0]),
            mib(rss_start[1])
        ),
    );

    tokio::time::sleep(phase / 2).await;
    nodes[2].signal("KILL");
    live.store(2, Ordering::SeqCst);
    let kill_at = Instant::now();
    log(started, "kill -9 node 3");
    tokio::time::sleep(phase).await;

    redis.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart().await;
    log(started, "Redis killed and restarted (1 s down)");
    tokio::time::sleep(phase).await;

    postgres.stop_immediate();
    tokio::time::sleep(Duration::from_secs(1)).await;
    postgres.start();
    log(
        started,
        "Postgres stopped (immediate) and restarted (1 s down)",
    );
    tokio::time::sleep(phase).await;

    redis.signal("STOP");
    log(started, "Redis frozen (SIGSTOP)");
    tokio::time::sleep(Duration::from_secs(5)).await;
    redis.signal("CONT");
    log(started, "Redis thawed (SIGCONT)");
    tokio::time::sleep(phase).await;

    load_stop.store(true, Ordering::SeqCst);
    let _ = load.await;
    probe_stop.store(true, Ordering::SeqCst);
    let _ = prober.await;
    log(started, "load stopped");

    // Every continuously connected subscriber is owed every acknowledged event of its channel.
    let sent = std::mem::take(&mut *sent.lock().expect("sent"));
    let mut acked: Vec<Vec<u64>> = vec![Vec::new(); CHANNELS];
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for s in &sent {
        let label = s
            .status
            .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        *statuses.entry(label).or_default() += 1;
        if s.status == Some(200) {
            acked[s.channel].push(s.seq);
        }
    }
    let continuous: Vec<&Arc<Subscriber>> = records
        .iter()
        .filter(|r| r.drops.load(Ordering::SeqCst) == 0)
        .collect();
    let owed: u64 = continuous
        .iter()
        .map(|r| acked[r.channel].len() as u64)
        .sum();
    let deadline = Instant::now() + Duration::from_secs(15);
    let tally = || {
        let (mut delivered, mut lost, mut duplicates) = (0u64, 0u64, 0u64);
        for r in &continuous {
            let mut counts: HashMap<u64, u64> = HashMap::new();
            for seq in r.seqs.lock().expect("seqs").iter() {
                *counts.entry(*seq).or_default() += 1;
            }
            for seq in &acked[r.channel] {
                match counts.get(seq).copied().unwrap_or(0) {
                    0 => lost += 1,
                    1 => delivered += 1,
                    n => {
                        delivered += 1;
                        duplicates += n - 1;
                    }
                }
            }
        }
        (delivered, lost, duplicates)
    };
    let (mut delivered, mut lost, mut duplicates) = tally();
    while lost > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (delivered, lost, duplicates) = tally();
    }

    // Webhooks: every confirmed probe owes four transitions.
    let probes = std::mem::take(&mut *probes.lock().expect("probes"));
    let owed_hooks = |hooks: &[(String, String, String)]| {
        let mut missing = Vec::new();
        for n in &probes {
            let channel = format!("presence-probe-{n}");
            let user = format!("probe-{n}");
            for (name, user_id) in [
                ("channel_occupied", ""),
                ("member_added", user.as_str()),
                ("member_removed", user.as_str()),
                ("channel_vacated", ""),
            ] {
                if !hooks
                    .iter()
                    .any(|(h, c, u)| h == name && *c == channel && u == user_id)
                {
                    missing.push(format!("{name} {channel}"));
                }
            }
        }
        missing
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing = owed_hooks(&hooks.lock().expect("hooks"));
    while !missing.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        missing = owed_hooks(&hooks.lock().expect("hooks"));
    }
    let hooks_received = hooks.lock().expect("hooks").len();

    // Memory: the clients that moved to the survivors leave, as they came; then compare.
    let moved: Vec<usize> = (0..subscribers).filter(|i| homes[*i] == 2).collect();
    for i in &moved {
        records[*i].stop.store(true, Ordering::SeqCst);
    }
    let mut tasks: Vec<Option<tokio::task::JoinHandle<()>>> = tasks.into_iter().map(Some).collect();
    for i in &moved {
        if let Some(task) = tasks[*i].take() {
            let _ = task.await;
        }
    }
    // jemalloc returns freed pages after its 10 s decay.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_end: Vec<u64> = survivors.iter().map(|pid| rss_bytes(*pid)).collect();
    sampler.abort();
    if std::env::var_os("SOAK_TIMELINE").is_some() {
        for (at, a, b) in timeline.lock().expect("timeline").iter() {
            eprintln!("{at:6.1} s  {}  {}", mib(*a), mib(*b));
        }
    }
    for record in &records {
        record.stop.store(true, Ordering::SeqCst);
    }
    for task in tasks.into_iter().flatten() {
        let _ = task.await;
    }

    let reconnects: Vec<Duration> = moved
        .iter()
        .flat_map(|i| records[*i].reconnects.lock().expect("reconnects").clone())
        .collect();
    let mut sorted = reconnects.clone();
    sorted.sort();
    let pct = |p: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .map_or_else(|| "n/a".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    let other_drops: u64 = records
        .iter()
        .enumerate()
        .filter(|(i, _)| homes[*i] != 2)
        .map(|(_, r)| r.drops.load(Ordering::SeqCst))
        .sum();
    let mut panics = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if node.logs().contains("panicked") {
            panics.push(format!("node {}", i + 1));
        }
    }

    let memory_ok = rss_start
        .iter()
        .zip(&rss_end)
        .all(|(start, end)| (*end as f64) <= (*start as f64) * 1.10);
    let moved_back = moved
        .iter()
        .filter(|i| !records[**i].reconnects.lock().expect("r").is_empty())
        .count();
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| subscribers (Phoenix V1 / V2 / Pusher) | {subscribers} ({} / {} / {}) |",
        records
            .iter()
            .filter(|r| r.protocol == Protocol::Phoenix(Vsn::V1))
            .count(),
        records
            .iter()
            .filter(|r| r.protocol == Protocol::Phoenix(Vsn::V2))
            .count(),
        records
            .iter()
            .filter(|r| r.protocol == Protocol::Pusher)
            .count()
    );
    println!("| triggers sent | {} at {rate}/s |", sent.len());
    println!(
        "| answers | {} |",
        statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| subscribers connected throughout | {} |",
        continuous.len()
    );
    println!("| deliveries owed to them | {owed} |");
    println!("| delivered exactly once | {} |", delivered);
    println!("| lost | {lost} |");
    println!("| duplicates | {duplicates} |");
    println!("| drops of clients not on the killed node | {other_drops} |");
    println!(
        "| clients of the killed node back on another | {moved_back} of {} |",
        moved.len()
    );
    println!(
        "| their reconnect time p50 / p99 / max | {} / {} / {} |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("| presence probes confirmed | {} |", probes.len());
    println!(
        "| webhook transitions owed / missing | {} / {} (events received: {hooks_received}) |",
        probes.len() * 4,
        missing.len()
    );
    println!(
        "| survivors' RSS start → end | {} → {}, {} → {} |",
        mib(rss_start[0]),
        mib(rss_end[0]),
        mib(rss_start[1]),
        mib(rss_end[1])
    );
    println!(
        "| panics in logs | {} |",
        if panics.is_empty() {
            "none".to_owned()
        } else {
            panics.join(", ")
        }
    );
    println!(
        "| node killed at | {:.1} s into the run |",
        kill_at.duration_since(started).as_secs_f64()
    );

    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!("{lost} acknowledged deliveries lost"));
    }
    if duplicates > 0 {
        failures.push(format!("{duplicates} duplicate deliveries"));
    }
    if !missing.is_empty() {
        failures.push(format!(
            "webhooks missing: {:?}",
            &missing[..missing.len().min(10)]
        ));
    }
    if !memory_ok {
        failures.push("survivors' memory is not back within 10%".to_owned());
    }
    if !panics.is_empty() {
        failures.push(format!("panics in {panics:?}"));
    }
    if moved_back < moved.len() {
        failures.push("not every client of the killed node came back".to_owned());
    }
    if statuses.get("200").copied().unwrap_or(0) == 0 {
        failures.push("no trigger was answered 200".to_owned());
    }
    if failures.is_empty() {
        println!("\nsoak passed");
    } else {
        println!("\nsoak FAILED:\n- {}", failures.join("\n- "));
        std::process::exit(1);
    }
}
