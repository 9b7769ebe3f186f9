//! Quotas and rate limits that need memory: WebSocket upgrades and failed admin logins per
//! client address, HTTP triggers per app, and the connections an app holds across the cluster.
//! The size limits live in the configuration and are checked where input is read.
//!
//! Each client-address table is a bounded cache: an attacker rotating addresses evicts old
//! entries instead of growing the table, and IPv6 addresses count per /64 (one subscriber's
//! usual allocation), so rotating within it buys nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::config::LimitsConfig;
use crate::domain::app::App;

/// Client addresses remembered per table; the least recently used are forgotten first.
const TABLE_CAPACITY: u64 = 100_000;

/// Which limit refused something: the `limit` label of `pushlite_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.upgrades_per_sec_per_ip`.
    Upgrades,
    /// `limits.admin_login_failures_per_min`.
    AdminLogin,
    /// An app's `max_connections` or `limits.connections_per_app`.
    Connections,
    /// An app's `max_triggers_per_sec` or `limits.triggers_per_sec_per_app`.
    Triggers,
    /// An app's `max_presence_members`.
    PresenceMembers,
    /// `webhooks.max_queue`.
    WebhookQueue,
}

impl Limit {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Limit::Upgrades => "upgrades",
            Limit::AdminLogin => "admin_login",
            Limit::Connections => "connections",
            Limit::Triggers => "triggers",
            Limit::PresenceMembers => "presence_members",
            Limit::WebhookQueue => "webhook_queue",
        }
    }
}

/// A refusal's advice: retry after this many whole seconds (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RetryAfter {
    fn of(wait: Duration) -> RetryAfter {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        RetryAfter(secs.max(1))
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    /// How long until a token is there, or `None` when one is there now.
    fn wait(&self, rate: f64) -> Option<Duration> {
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

/// Buckets per client address.
struct Table {
    rate: f64,
    burst: f64,
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

impl Table {
    fn new(rate: f64, burst: f64) -> Table {
        Table {
            rate,
            burst,
            buckets: moka::sync::Cache::builder()
                .max_capacity(TABLE_CAPACITY)
                // A full bucket is the same as no bucket.
                .time_to_idle(Duration::from_secs_f64((burst / rate).max(1.0)))
                .build(),
        }
    }

    fn with<T>(&self, ip: IpAddr, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let now = Instant::now();
        let bucket = self.buckets.get_with(bucket_key(ip), || {
            Arc::new(Mutex::new(Bucket::full(self.burst, now)))
        });
        let mut bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.refill(self.rate, self.burst, now);
        f(&mut bucket)
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.with(ip, |bucket| match bucket.wait(self.rate) {
            Some(wait) => Err(RetryAfter::of(wait)),
            None => {
                bucket.tokens -= 1.0;
                Ok(())
            }
        })
    }

    /// Whether a token is there, without taking it.
    fn check(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.with(ip, |bucket| {
            bucket
                .wait(self.rate)
                .map_or(Ok(()), |w| Err(RetryAfter::of(w)))
        })
    }

    /// Takes a token if there is one.
    fn spend(&self, ip: IpAddr) {
        self.with(ip, |bucket| bucket.tokens = (bucket.tokens - 1.0).max(0.0));
    }
}

/// IPv6 clients count per /64; IPv4-mapped addresses as the IPv4 address they are.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One `addr/prefix` of `limits.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (the whole address).
    ///
    /// # Errors
    /// What is wrong with `text`.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `limits.trusted_proxies`, parsed.
///
/// # Errors
/// The first entry that is not an address or CIDR block.
pub fn parse_cidrs(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter().map(|c| Cidr::parse(c)).collect()
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` that is not one (proxies append, so only the entries that
/// trusted proxies added can be believed; what the client wrote itself is further left).
#[must_use]
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_forwarded(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The node's limit state, shared by every handler and session.
pub struct Limits {
    trusted: Vec<Cidr>,
    upgrades: Option<Table>,
    logins: Option<Table>,
    connections_per_app: u32,
    triggers_per_sec_per_app: u32,
    /// Connections per app on the other nodes, from their latest reports.
    elsewhere: RwLock<HashMap<String, i64>>,
    /// Set once a connection quota is met: from then on the heartbeat gathers the others'
    /// counts (a cluster without quotas never reads them).
    quotas_used: AtomicBool,
}

impl Limits {
    /// # Errors
    /// An entry of `limits.trusted_proxies` that is not an address or CIDR block.
    pub fn new(config: &LimitsConfig) -> Result<Limits, String> {
        let trusted = parse_cidrs(&config.trusted_proxies)?;
        let table =
            |per_sec: f64, burst: u32| (burst > 0).then(|| Table::new(per_sec, f64::from(burst)));
        Ok(Limits {
            trusted,
            upgrades: table(
                f64::from(config.upgrades_per_sec_per_ip),
                config.upgrades_per_sec_per_ip,
            ),
            logins: table(
                f64::from(config.admin_login_failures_per_min) / 60.0,
                config.admin_login_failures_per_min,
            ),
            connections_per_app: config.connections_per_app,
            triggers_per_sec_per_app: config.triggers_per_sec_per_app,
            elsewhere: RwLock::new(HashMap::new()),
            quotas_used: AtomicBool::new(false),
        })
    }

    /// See [`client_ip`].
    #[must_use]
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// One WebSocket upgrade (or long-poll session) from `ip`.
    ///
    /// # Errors
    /// Over `limits.upgrades_per_sec_per_ip`.
    pub fn upgrade(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.upgrades.as_ref().map_or(Ok(()), |t| t.take(ip))
    }

    /// Before checking admin credentials from `ip`.
    ///
    /// # Errors
    /// `ip` used up `limits.admin_login_failures_per_min`.
    pub fn login_allowed(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.logins.as_ref().map_or(Ok(()), |t| t.check(ip))
    }

    /// Wrong admin credentials from `ip`.
    pub fn login_failed(&self, ip: IpAddr) {
        if let Some(table) = &self.logins {
            table.spend(ip);
        }
    }

    /// The app's connection quota: its own setting, else the global one; 0 is none.
    #[must_use]
    pub fn max_connections(&self, app: &App) -> u32 {
        app.max_connections
            .map_or(self.connections_per_app, |v| u32::try_from(v).unwrap_or(0))
    }

    /// The app's trigger rate: its own setting, else the global one; 0 is none.
    #[must_use]
    pub fn max_triggers_per_sec(&self, app: &App) -> u32 {
        app.max_triggers_per_sec
            .map_or(self.triggers_per_sec_per_app, |v| {
                u32::try_from(v).unwrap_or(0)
            })
    }

    /// Whether one more connection of `app` fits, given `local` on this node. Across nodes
    /// the count is as fresh as the last heartbeat (`stats.heartbeat_ms`).
    #[must_use]
    pub fn connection_fits(&self, app: &App, local: i64) -> bool {
        let max = self.max_connections(app);
        if max == 0 {
            return true;
        }
        self.quotas_used.store(true, Ordering::Relaxed);
        let elsewhere = self
            .elsewhere
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&app.slug)
            .copied()
            .unwrap_or(0);
        local.saturating_add(elsewhere) < i64::from(max)
    }

    /// Whether the heartbeat should gather the other nodes' connection counts.
    #[must_use]
    pub fn wants_cluster_counts(&self) -> bool {
        self.connections_per_app > 0 || self.quotas_used.load(Ordering::Relaxed)
    }

    /// The other nodes' connections per app, from their reports.
    pub fn set_elsewhere(&self, counts: HashMap<String, i64>) {
        *self
            .elsewhere
            .write()
            .unwrap_or_else(PoisonError::into_inner) = counts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.200.3.4")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.2"),
        );
        // a direct client cannot pick its address
        assert_eq!(client_ip(ip("5.5.5.5"), &headers, &trusted), ip("5.5.5.5"));
        // through two trusted proxies: the first address they did not add themselves
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &trusted), ip("1.2.3.4"));
        // garbage stops the walk at the last believable address
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("junk, 10.0.0.3"),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.3")
        );
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("2001:db8::1")
        );
        // no header: the proxy itself
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let table = Table::new(2.0, 2.0);
        let a = ip("1.1.1.1");
        assert!(table.take(a).is_ok());
        assert!(table.take(a).is_ok());
        assert_eq!(table.take(a), Err(RetryAfter(1)));
        // another address has its own bucket; IPv6 neighbours in one /64 share one
        assert!(table.take(ip("2.2.2.2")).is_ok());
        assert!(table.take(ip("2001:db8::1")).is_ok());
        assert!(table.take(ip("2001:db8::2")).is_ok());
        assert!(table.take(ip("2001:db8::3")).is_err());
        assert!(table.take(ip("2001:db8:0:1::3")).is_ok());
        std::thread::sleep(Duration::from_millis(600));
        assert!(table.take(a).is_ok());
    }

    #[test]
    fn failed_logins_spend_and_checks_do_not() {
        let mut config = crate::config::Config::default().limits;
        config.admin_login_failures_per_min = 2;
        let limits = Limits::new(&config).unwrap();
        let a = ip("3.3.3.3");
        for _ in 0..5 {
            assert!(limits.login_allowed(a).is_ok());
        }
        limits.login_failed(a);
        limits.login_failed(a);
        let RetryAfter(secs) = limits.login_allowed(a).unwrap_err();
        assert!((1..=30).contains(&secs), "{secs}");
        assert!(limits.login_allowed(ip("3.3.3.4")).is_ok());
    }

    #[test]
    fn zero_switches_a_rate_off() {
        let mut config = crate::config::Config::default().limits;
        config.upgrades_per_sec_per_ip = 0;
        config.admin_login_failures_per_min = 0;
        let limits = Limits::new(&config).unwrap();
        for _ in 0..1000 {
            assert!(limits.upgrade(ip("4.4.4.4")).is_ok());
            limits.login_failed(ip("4.4.4.4"));
        }
        assert!(limits.login_allowed(ip("4.4.4.4")).is_ok());
    }
}
