//! The console's live debug stream: what happens to one app (events, joins, refusals,
//! connects and disconnects), on every node, for whoever watches it in the web console.
//!
//! Nobody watching costs one atomic load per probe: a node only builds and sends records for
//! apps some node has announced a watch for. A node with a viewer announces the watch to every
//! node on the bus ([`Control::DebugWatch`]) and renews it every third of
//! `console.debug_lease_secs`; a watch that is not renewed lapses, so a node that died with a
//! viewer stops nobody's records for long. While an app is watched, each node sends at most
//! `console.debug_rate` records a second for it and counts the rest as skipped; the next record
//! it sends carries that count, and the console shows it. Records travel on the bus's control
//! channel ([`Control::DebugRecord`]), and each node hands them to its local viewers, each
//! through a bounded queue: a viewer that cannot keep up loses records, counted and shown too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::bus::{Bus, Control};
use crate::metrics::Metrics;

/// Longest payload text a record shows, in bytes; longer ones are cut (and marked so).
pub const DATA_MAX_BYTES: usize = 1024;

/// Longest channel name a record shows, in bytes.
const NAME_MAX_BYTES: usize = 200;

/// Records queued for one viewer before it starts losing them.
const VIEWER_QUEUE: usize = 256;

/// Records and announcements waiting for the bus.
const OUTBOX: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An event triggered over HTTP (the events API or the Pusher HTTP API).
    Event,
    /// An event a client sent on its socket.
    ClientEvent,
    /// A test event sent from the console.
    ConsoleEvent,
    /// A channel joined or subscribed.
    Join,
    /// A channel left or closed.
    Leave,
    /// A join, subscription or connection refused; `reason` says why.
    Refused,
    /// A socket began to count for the app (its first channel of the app, or a Pusher
    /// connection to it).
    Connect,
    /// A socket stopped counting for the app; `reason` says why.
    Disconnect,
}

/// One line of the debug stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in milliseconds, on the node it happened on.
    pub at: i64,
    /// The node it happened on.
    pub node: String,
    pub kind: Kind,
    /// The channel as clients name it (`public`, `presence-room`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The payload text, cut at [`DATA_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The connection (a Pusher socket id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// `phoenix`, `pusher` or `longpoll`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Records of this app the node skipped (over `console.debug_rate`) since its previous one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's signature")]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    /// A record of `kind`; the rest is filled in with the builder methods, and the time and
    /// node by [`Debug::record`].
    #[must_use]
    pub fn new(kind: Kind) -> Record {
        Record {
            at: 0,
            node: String::new(),
            kind,
            channel: None,
            event: None,
            data: None,
            socket: None,
            protocol: None,
            reason: None,
            skipped: 0,
        }
    }

    /// The channel, cut at [`NAME_MAX_BYTES`] (a refused one can be anything a client sent).
    #[must_use]
    pub fn channel(mut self, channel: &str) -> Record {
        self.channel = Some(cut(channel, NAME_MAX_BYTES));
        self
    }

    #[must_use]
    pub fn event(mut self, event: &str) -> Record {
        self.event = Some(event.to_owned());
        self
    }

    /// The payload, cut at [`DATA_MAX_BYTES`].
    #[must_use]
    pub fn data(mut self, text: &str) -> Record {
        self.data = Some(cut(text, DATA_MAX_BYTES));
        self
    }

    #[must_use]
    pub fn socket(mut self, socket: String) -> Record {
        self.socket = Some(socket);
        self
    }

    #[must_use]
    pub fn protocol(mut self, protocol: &str) -> Record {
        self.protocol = Some(protocol.to_owned());
        self
    }

    #[must_use]
    pub fn reason(mut self, reason: &str) -> Record {
        self.reason = Some(cut(reason, DATA_MAX_BYTES));
        self
    }
}

/// `text` cut on a character boundary at `max` bytes, and marked so.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The debug stream's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records a node sends per watched app per second.
    pub rate: u32,
    /// How long a watch lasts without renewal.
    pub lease: Duration,
    /// Viewers one node serves at once.
    pub max_viewers: usize,
}

/// This node's end of the debug stream. See the module documentation.
pub struct Debug {
    node: String,
    limits: Limits,
    metrics: Metrics,
    /// Apps with a live watch as far as this node knows: zero makes every probe one load.
    watched: AtomicUsize,
    state: Mutex<Watches>,
    outbox: mpsc::Sender<Out>,
}

#[derive(Default)]
struct Watches {
    /// Per app, the nodes watching it and until when.
    leases: HashMap<String, HashMap<String, Instant>>,
    /// Per watched app, this second's budget: (second, sent, skipped since the last sent).
    budget: HashMap<String, (i64, u32, u64)>,
    /// Per app, this node's viewers.
    viewers: HashMap<String, Vec<ViewerSlot>>,
    next_viewer: u64,
    viewer_count: usize,
}

struct ViewerSlot {
    id: u64,
    tx: mpsc::Sender<Arc<str>>,
    lost: Arc<AtomicU64>,
}

enum Out {
    Record(String, Record),
    /// A watch of this node begins or ends; `done` hears once it has been published.
    Watch {
        slug: String,
        on: bool,
        done: Option<oneshot::Sender<()>>,
    },
}

/// Too many viewers on this node.
#[derive(Debug, thiserror::Error)]
#[error("this node already serves {0} debug viewers (console.debug_max_viewers)")]
pub struct TooManyViewers(pub usize);

impl Debug {
    /// The debug stream of node `node`; [`Debug::run`] must then be spawned with the bus.
    #[must_use]
    pub fn new(node: String, limits: Limits, metrics: Metrics) -> (Arc<Debug>, Outbox) {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let debug = Arc::new(Debug {
            node,
            limits,
            metrics,
            watched: AtomicUsize::new(0),
            state: Mutex::new(Watches::default()),
            outbox,
        });
        (debug, Outbox(rx))
    }

    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what `make` describes, if `slug` is watched anywhere and within its budget.
    /// `make` only runs then.
    #[inline]
    pub fn record(&self, slug: &str, make: impl FnOnce() -> Record) {
        if self.watched.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.record_watched(slug, make);
    }

    fn record_watched(&self, slug: &str, make: impl FnOnce() -> Record) {
        let skipped = {
            let mut state = self.state();
            if !self.live(&mut state, slug, Instant::now()) {
                return;
            }
            let second = unix_ms() / 1000;
            let Some(budget) = state.budget.get_mut(slug) else {
                return;
            };
            if budget.0 != second {
                *budget = (second, 0, budget.2);
            }
            if budget.1 >= self.limits.rate {
                budget.2 += 1;
                self.metrics.debug_record("skipped");
                return;
            }
            budget.1 += 1;
            std::mem::take(&mut budget.2)
        };
        let mut record = make();
        record.at = unix_ms();
        record.node.clone_from(&self.node);
        record.skipped = skipped;
        if self
            .outbox
            .try_send(Out::Record(slug.to_owned(), record))
            .is_ok()
        {
            self.metrics.debug_record("sent");
        } else {
            // The bus is behind: this one and what it carried travel with the next record.
            if let Some(budget) = self.state().budget.get_mut(slug) {
                budget.2 += skipped + 1;
            }
            self.metrics.debug_record("skipped");
        }
    }

    /// Whether `slug` has a live watch; forgets lapsed ones.
    fn live(&self, state: &mut Watches, slug: &str, now: Instant) -> bool {
        let Some(nodes) = state.leases.get_mut(slug) else {
            return false;
        };
        nodes.retain(|_, until| *until > now);
        if nodes.is_empty() {
            state.leases.remove(slug);
            state.budget.remove(slug);
            self.watched.store(state.leases.len(), Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Forgets every lapsed watch (a node that died watching), so that probes for apps
    /// nobody watches go back to one atomic load.
    fn sweep(&self) {
        let now = Instant::now();
        let mut state = self.state();
        let state = &mut *state;
        state.leases.retain(|_, nodes| {
            nodes.retain(|_, until| *until > now);
            !nodes.is_empty()
        });
        let leases = &state.leases;
        state.budget.retain(|slug, _| leases.contains_key(slug));
        self.watched.store(state.leases.len(), Ordering::Relaxed);
    }

    /// A watch announcement from another node. This node's own come back too, and are
    /// ignored: it keeps its own watches in step with its viewers (see [`Debug::view`]).
    pub fn lease(&self, slug: &str, node: &str, on: bool) {
        if node == self.node {
            return;
        }
        self.set_lease(&mut self.state(), slug, node, on);
    }

    fn set_lease(&self, state: &mut Watches, slug: &str, node: &str, on: bool) {
        if on {
            let second = unix_ms() / 1000;
            state
                .leases
                .entry(slug.to_owned())
                .or_default()
                .insert(node.to_owned(), Instant::now() + self.limits.lease);
            state
                .budget
                .entry(slug.to_owned())
                .or_insert((second, 0, 0));
        } else if let Some(nodes) = state.leases.get_mut(slug) {
            nodes.remove(node);
            if nodes.is_empty() {
                state.leases.remove(slug);
                state.budget.remove(slug);
            }
        }
        self.watched.store(state.leases.len(), Ordering::Relaxed);
    }

    /// A record from any node: to this node's viewers of the app.
    pub fn show(&self, slug: &str, record: &Record) {
        if !self.state().viewers.contains_key(slug) {
            return;
        }
        // Serialized outside the lock, which the probes of every session share.
        let Ok(text) = serde_json::to_string(record) else {
            return;
        };
        let text: Arc<str> = Arc::from(text);
        let state = self.state();
        for viewer in state.viewers.get(slug).into_iter().flatten() {
            if viewer.tx.try_send(text.clone()).is_err() {
                viewer.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A new viewer of `slug` on this node. This node records at once; the others once the
    /// announcement reaches them, which `announced` tells.
    ///
    /// # Errors
    /// This node already serves `console.debug_max_viewers` viewers.
    pub fn view(self: &Arc<Debug>, slug: &str) -> Result<(Viewer, Announced), TooManyViewers> {
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE);
        let (done, announced) = oneshot::channel();
        let lost = Arc::new(AtomicU64::new(0));
        let id = {
            let mut state = self.state();
            if state.viewer_count >= self.limits.max_viewers {
                return Err(TooManyViewers(self.limits.max_viewers));
            }
            state.viewer_count += 1;
            state.next_viewer += 1;
            let id = state.next_viewer;
            state
                .viewers
                .entry(slug.to_owned())
                .or_default()
                .push(ViewerSlot {
                    id,
                    tx,
                    lost: lost.clone(),
                });
            // Under the same lock as the viewers, so announcements leave in the order the
            // viewers came and went: a quick reload cannot end up announced as "off".
            self.set_lease(&mut state, slug, &self.node, true);
            let _ = self.outbox.try_send(Out::Watch {
                slug: slug.to_owned(),
                on: true,
                done: Some(done),
            });
            id
        };
        let viewer = Viewer {
            rx,
            lost,
            guard: ViewerGuard {
                debug: self.clone(),
                slug: slug.to_owned(),
                id,
            },
        };
        Ok((viewer, Announced(announced)))
    }

    fn unview(&self, slug: &str, id: u64) {
        let mut state = self.state();
        let Some(viewers) = state.viewers.get_mut(slug) else {
            return;
        };
        viewers.retain(|v| v.id != id);
        let last = viewers.is_empty();
        state.viewer_count = state.viewer_count.saturating_sub(1);
        if last {
            state.viewers.remove(slug);
            self.set_lease(&mut state, slug, &self.node, false);
            let _ = self.outbox.try_send(Out::Watch {
                slug: slug.to_owned(),
                on: false,
                done: None,
            });
        }
    }

    /// Renews this node's watches, here and (returned) for the others.
    fn renew(&self) -> Vec<String> {
        let mut state = self.state();
        let slugs: Vec<String> = state.viewers.keys().cloned().collect();
        for slug in &slugs {
            self.set_lease(&mut state, slug, &self.node, true);
        }
        slugs
    }

    /// Sends records and watch announcements on the bus, renews this node's watches and
    /// forgets lapsed ones, until the process ends. Does no I/O while nobody watches.
    pub async fn run(self: Arc<Debug>, Outbox(mut rx): Outbox, bus: Arc<dyn Bus>) {
        let mut renew = tokio::time::interval(self.limits.lease / 3);
        loop {
            let out = tokio::select! {
                out = rx.recv() => match out {
                    Some(out) => out,
                    None => return,
                },
                _ = renew.tick() => {
                    self.sweep();
                    for slug in self.renew() {
                        self.announce(&*bus, &slug, true).await;
                    }
                    continue;
                }
            };
            match out {
                Out::Watch { slug, on, done } => {
                    self.announce(&*bus, &slug, on).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Out::Record(slug, record) => {
                    let control = Control::DebugRecord { slug, record };
                    if let Err(error) = bus.publish_control(&control).await {
                        tracing::debug!(%error, "debug record not sent: shown on this node only");
                        if let Control::DebugRecord { slug, record } = control {
                            self.show(&slug, &record);
                        }
                    }
                }
            }
        }
    }

    async fn announce(&self, bus: &dyn Bus, slug: &str, on: bool) {
        let control = Control::DebugWatch {
            slug: slug.to_owned(),
            node: self.node.clone(),
            on,
        };
        if let Err(error) = bus.publish_control(&control).await {
            tracing::debug!(%error, %slug, "debug watch not announced");
        }
    }
}

/// The receiving end of [`Debug`]'s queue to the bus; see [`Debug::run`].
pub struct Outbox(mpsc::Receiver<Out>);

/// Resolves once a new viewer's watch has been announced to every node (or could not be).
pub struct Announced(oneshot::Receiver<()>);

impl Announced {
    /// Waits at most `limit`.
    pub async fn wait(self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0).await;
    }
}

/// One console viewer of an app's debug stream; leaving drops the watch when it was the last.
pub struct Viewer {
    /// Records as JSON text.
    pub rx: mpsc::Receiver<Arc<str>>,
    /// Records this viewer lost because its queue was full.
    pub lost: Arc<AtomicU64>,
    guard: ViewerGuard,
}

impl Viewer {
    #[must_use]
    pub fn slug(&self) -> &str {
        &self.guard.slug
    }
}

struct ViewerGuard {
    debug: Arc<Debug>,
    slug: String,
    id: u64,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.debug.unview(&self.slug, self.id);
    }
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debug(rate: u32) -> (Arc<Debug>, Outbox) {
        let limits = Limits {
            rate,
            lease: Duration::from_secs(30),
            max_viewers: 2,
        };
        Debug::new("n1".to_owned(), limits, Metrics::new(10))
    }

    #[tokio::test]
    async fn nothing_is_built_while_nobody_watches() {
        let (debug, Outbox(mut rx)) = debug(10);
        debug.record("foo", || unreachable!("not watched"));
        debug.lease("bar", "n2", true);
        debug.record("foo", || unreachable!("another app is watched"));
        debug.record("bar", || Record::new(Kind::Join));
        assert!(matches!(rx.try_recv(), Ok(Out::Record(slug, _)) if slug == "bar"));
        debug.lease("bar", "n2", false);
        debug.record("bar", || unreachable!("the watch ended"));
        assert_eq!(debug.watched.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_watched_app_is_capped_and_the_skipped_count_travels() {
        let (debug, Outbox(mut rx)) = debug(3);
        debug.lease("foo", "n2", true);
        let mut sent = Vec::new();
        for _ in 0..10 {
            debug.record("foo", || Record::new(Kind::Event));
            while let Ok(Out::Record(_, record)) = rx.try_recv() {
                sent.push(record.skipped);
            }
        }
        // Wait for the next second's budget: its first record carries what was skipped.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        debug.record("foo", || Record::new(Kind::Event));
        while let Ok(Out::Record(_, record)) = rx.try_recv() {
            sent.push(record.skipped);
        }
        let shown = sent.len() as u64;
        let skipped: u64 = sent.iter().sum();
        assert_eq!(shown + skipped, 11, "{sent:?}");
        assert!(skipped >= 4, "at most 3 a second: {sent:?}");
        assert!(sent.iter().any(|&n| n > 0), "the count travels: {sent:?}");
    }

    #[tokio::test]
    async fn watches_lapse_without_renewal_and_own_echoes_are_ignored() {
        let limits = Limits {
            rate: 10,
            lease: Duration::from_millis(100),
            max_viewers: 2,
        };
        let (debug, _outbox) = Debug::new("n1".to_owned(), limits, Metrics::new(10));
        debug.lease("foo", "n2", true);
        assert_eq!(debug.watched.load(Ordering::Relaxed), 1);
        // The lease running out is the behaviour under test: time must pass.
        tokio::time::sleep(Duration::from_millis(150)).await;
        debug.sweep();
        assert_eq!(
            debug.watched.load(Ordering::Relaxed),
            0,
            "a dead node's watch lapses"
        );
        // An echo of this node's own "off" does not end the watch of a viewer that is here.
        let (_viewer, _announced) = debug.view("foo").expect("viewer");
        debug.lease("foo", "n1", false);
        assert_eq!(debug.watched.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(debug.renew(), vec!["foo".to_owned()]);
        debug.sweep();
        assert_eq!(
            debug.watched.load(Ordering::Relaxed),
            1,
            "renewed while viewed"
        );
    }

    #[tokio::test]
    async fn viewers_are_bounded_and_the_last_one_ends_the_watch() {
        let (debug, _outbox) = debug(10);
        let (mut a, _) = debug.view("foo").expect("first");
        let (b, _) = debug.view("foo").expect("second");
        assert!(debug.view("bar").is_err(), "max_viewers is 2");
        debug.show("foo", &Record::new(Kind::Join).channel("public"));
        let text = a.rx.try_recv().expect("shown");
        assert!(text.contains("\"channel\":\"public\""), "{text}");
        drop(b);
        assert_eq!(debug.watched.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(debug.watched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn long_payloads_are_cut_on_a_character_boundary() {
        let text = "é".repeat(DATA_MAX_BYTES);
        let record = Record::new(Kind::Event).data(&text);
        let shown = record.data.expect("data");
        assert!(shown.len() <= DATA_MAX_BYTES + '…'.len_utf8());
        assert!(shown.ends_with('…'));
    }
}
