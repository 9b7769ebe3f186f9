//! Micro-benchmarks of the hot paths: encoding a broadcast frame in both serializers, and one
//! hub dispatch to 10,000 local subscribers (encode once, 10,000 queue pushes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pushlite::Config;
use pushlite::bus::{Bus, LocalBus};
use pushlite::control::NodeSink;
use pushlite::debug::Debug;
use pushlite::domain::event::{Data, Event};
use pushlite::hub::{Hub, Subscriber, run_subscriptions};
use pushlite::metrics::Metrics;
use pushlite::protocol::Wire;
use pushlite::protocol::phoenix::{Vsn, encode_raw};
use pushlite::queue;
use pushlite::registry::{AppCache, AppRegistry, SqliteRegistry};
use pushlite::webhooks::{LocalWebhookStore, Webhooks};
use serde_json::value::RawValue;

fn payload() -> Box<RawValue> {
    let text = format!(r#"{{"name":"Akita","message":"{}"}}"#, "x".repeat(160));
    RawValue::from_string(text).expect("valid JSON")
}

fn encoding(c: &mut Criterion) {
    let payload = payload();
    for (name, vsn) in [
        ("encode v1 (objects)", Vsn::V1),
        ("encode v2 (arrays)", Vsn::V2),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                encode_raw(
                    vsn,
                    None,
                    None,
                    "public:foo-app",
                    "foo-topic:msg",
                    payload.get(),
                )
            });
        });
    }
}

fn dispatch(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let metrics = Metrics::new(100);
    let (hub, ops) = Hub::new(metrics.clone(), 1);
    // The sink reloads apps on control messages only; dispatch never touches it.
    let registry = runtime
        .block_on(SqliteRegistry::connect(
            "sqlite::memory:",
            1,
            Duration::from_secs(5),
        ))
        .expect("in-memory registry");
    let registry: Arc<dyn AppRegistry> = Arc::new(registry);
    let sink = Arc::new(NodeSink {
        hub: hub.clone(),
        cache: AppCache::new(10, Duration::from_secs(60)),
        registry: registry.clone(),
        debug: Debug::new(
            "bench".to_owned(),
            Config::default().console.debug_limits(),
            metrics.clone(),
        )
        .0,
    });
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(sink, metrics.clone()));
    let webhooks = runtime.block_on(async {
        let store = Arc::new(LocalWebhookStore::new(Duration::from_secs(3), 1000));
        Webhooks::start(store, registry, metrics, 0)
    });
    runtime.spawn(run_subscriptions(hub.clone(), bus, webhooks, ops));
    let mut receivers = Vec::with_capacity(SUBSCRIBERS);
    runtime.block_on(async {
        for conn in 0..SUBSCRIBERS {
            let (tx, rx) = queue::bounded(16);
            let wire = match conn % 3 {
                0 => Wire::Phoenix(Vsn::V2),
                1 => Wire::Phoenix(Vsn::V1),
                _ => Wire::Pusher,
            };
            let subscriber = Subscriber { wire, tx };
            hub.join("public:foo-app", conn as u64, subscriber)
                .await
                .expect("join");
            receivers.push(rx);
        }
    });
    let event = Event {
        topic: "public:foo-app".into(),
        event: "foo-topic:msg".into(),
        data: Data::Object(payload()),
        exclude: None,
        user_id: None,
        position: None,
    };
    c.bench_function(
        "hub dispatch to 10,000 subscribers (a third each of Phoenix v1, v2 and Pusher)",
        |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let started = Instant::now();
                    hub.deliver(&event);
                    total += started.elapsed();
                    for rx in &mut receivers {
                        while rx.try_recv().is_some() {}
                    }
                }
                total
            });
        },
    );
}

/// What the debug stream's probe costs a publish or a join: nobody watching (the usual case),
/// and another app watched (the probe takes the lock and finds no watch for this one).
fn debug_probe(c: &mut Criterion) {
    use pushlite::debug::{Kind, Record};
    let metrics = Metrics::new(100);
    let limits = Config::default().console.debug_limits();
    let (debug, _outbox) = Debug::new("bench".to_owned(), limits, metrics);
    let probe = |debug: &Debug| {
        debug.record("foo-app", || {
            Record::new(Kind::Event)
                .channel("public")
                .event("msg")
                .data("{}")
        });
    };
    c.bench_function("debug probe, nobody watching", |b| b.iter(|| probe(&debug)));
    debug.lease("other-app", "another-node", true);
    c.bench_function("debug probe, another app watched", |b| {
        b.iter(|| probe(&debug));
    });
}

criterion_group!(benches, encoding, dispatch, debug_probe);
criterion_main!(benches);
