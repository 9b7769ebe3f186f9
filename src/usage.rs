//! Per-app usage counted on this node, reported to the cluster for the admin stats API:
//! connections now, events published and messages delivered since start, over the last minute
//! (sixty one-second buckets), and over the last five minutes in ten-second buckets of wall
//! clock time, so that every node's buckets line up for the console's chart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

const WINDOW_SECS: usize = 60;

/// The chart's resolution and span.
pub const SERIES_BUCKET_SECS: i64 = 10;
pub const SERIES_BUCKETS: usize = 30;

struct AppUsage {
    connections: i64,
    published_total: u64,
    delivered_total: u64,
    /// `(second, published, delivered)` per bucket, indexed by `second % 60`.
    window: [(u64, u64, u64); WINDOW_SECS],
    /// `(unix second the bucket starts, published, delivered)`, indexed by bucket number modulo
    /// [`SERIES_BUCKETS`].
    series: [(i64, u64, u64); SERIES_BUCKETS],
}

impl Default for AppUsage {
    fn default() -> Self {
        AppUsage {
            connections: 0,
            published_total: 0,
            delivered_total: 0,
            // Second u64::MAX is never current, so every bucket starts empty.
            window: [(u64::MAX, 0, 0); WINDOW_SECS],
            series: [(i64::MIN, 0, 0); SERIES_BUCKETS],
        }
    }
}

impl AppUsage {
    fn bucket(&mut self, second: u64) -> &mut (u64, u64, u64) {
        let slot = &mut self.window[usize::try_from(second).unwrap_or(0) % WINDOW_SECS];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot
    }

    fn series_bucket(&mut self, unix: i64) -> &mut (i64, u64, u64) {
        let start = unix - unix.rem_euclid(SERIES_BUCKET_SECS);
        let index = usize::try_from(start / SERIES_BUCKET_SECS).unwrap_or(0) % SERIES_BUCKETS;
        let slot = &mut self.series[index];
        if slot.0 != start {
            *slot = (start, 0, 0);
        }
        slot
    }

    /// The non-empty buckets of the last [`SERIES_BUCKETS`], oldest first.
    fn recent(&self, unix: i64) -> Vec<[i64; 3]> {
        let oldest = unix - SERIES_BUCKET_SECS * SERIES_BUCKETS as i64;
        let mut recent: Vec<[i64; 3]> = self
            .series
            .iter()
            .filter(|(start, p, d)| *start > oldest && (*p, *d) != (0, 0))
            .map(|&(start, p, d)| {
                let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                [start, count(p), count(d)]
            })
            .collect();
        recent.sort_unstable_by_key(|bucket| bucket[0]);
        recent
    }

    fn last_minute(&self, now: u64) -> (u64, u64) {
        self.window
            .iter()
            .filter(|(second, _, _)| now.saturating_sub(*second) < WINDOW_SECS as u64)
            .fold((0, 0), |(p, d), (_, bp, bd)| (p + bp, d + bd))
    }
}

/// One app's figures on one node, as reported to the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    pub connections: i64,
    /// Local subscribers per joined topic.
    pub topics: BTreeMap<String, usize>,
    pub published_last_minute: u64,
    pub published_total: u64,
    pub delivered_last_minute: u64,
    pub delivered_total: u64,
    /// `[unix second the bucket starts, published, delivered]` for the non-empty buckets of
    /// the last five minutes (see [`SERIES_BUCKET_SECS`]).
    #[serde(default)]
    pub recent: Vec<[i64; 3]>,
}

pub struct Usage {
    started: Instant,
    /// The wall clock at `started`, in Unix milliseconds: the series' buckets follow it from
    /// the one monotonic reading each count takes anyway.
    started_unix_ms: i64,
    apps: Mutex<HashMap<String, AppUsage>>,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            started: Instant::now(),
            started_unix_ms: chrono::Utc::now().timestamp_millis(),
            apps: Mutex::new(HashMap::new()),
        }
    }
}

impl Usage {
    /// Seconds since start, and the Unix second now.
    fn now(&self) -> (u64, i64) {
        let elapsed = self.started.elapsed();
        let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX / 2);
        (
            elapsed.as_secs(),
            self.started_unix_ms.saturating_add(elapsed_ms) / 1000,
        )
    }

    fn with_app(&self, slug: &str, f: impl FnOnce(&mut AppUsage, u64, i64)) {
        let (second, unix) = self.now();
        let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(app) = apps.get_mut(slug) {
            f(app, second, unix);
        } else {
            let mut app = AppUsage::default();
            f(&mut app, second, unix);
            apps.insert(slug.to_owned(), app);
        }
    }

    pub fn connection(&self, slug: &str, delta: i64) {
        self.with_app(slug, |app, _, _| app.connections += delta);
    }

    /// This node's connections of `slug`.
    #[must_use]
    pub fn connections(&self, slug: &str) -> i64 {
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.get(slug).map_or(0, |app| app.connections)
    }

    pub fn published(&self, slug: &str) {
        self.with_app(slug, |app, second, unix| {
            app.published_total += 1;
            app.bucket(second).1 += 1;
            app.series_bucket(unix).1 += 1;
        });
    }

    pub fn delivered(&self, slug: &str, count: u64) {
        self.with_app(slug, |app, second, unix| {
            app.delivered_total += count;
            app.bucket(second).2 += count;
            app.series_bucket(unix).2 += count;
        });
    }

    /// Every app this node has seen; `topics` is filled in by the caller, who owns the hub.
    #[must_use]
    pub fn report(&self) -> BTreeMap<String, AppReport> {
        let (now, unix) = self.now();
        let apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
        apps.iter()
            .map(|(slug, app)| {
                let (published, delivered) = app.last_minute(now);
                let report = AppReport {
                    connections: app.connections,
                    topics: BTreeMap::new(),
                    published_last_minute: published,
                    published_total: app.published_total,
                    delivered_last_minute: delivered,
                    delivered_total: app.delivered_total,
                    recent: app.recent(unix),
                };
                (slug.clone(), report)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_forgets_old_seconds() {
        let mut app = AppUsage::default();
        app.bucket(5).1 += 2;
        app.bucket(64).2 += 3;
        assert_eq!(app.last_minute(64), (2, 3));
        assert_eq!(app.last_minute(65), (0, 3));
        // slot 5 was reused by second 65
        app.bucket(65).1 += 1;
        assert_eq!(app.last_minute(65), (1, 3));
        assert_eq!(app.last_minute(200), (0, 0));
    }

    #[test]
    fn series_buckets_follow_the_wall_clock() {
        let mut app = AppUsage::default();
        app.series_bucket(1_000_003).1 += 2;
        app.series_bucket(1_000_009).2 += 5;
        app.series_bucket(1_000_021).1 += 1;
        assert_eq!(
            app.recent(1_000_025),
            vec![[1_000_000, 2, 5], [1_000_020, 1, 0]]
        );
        // Five minutes later the first bucket is gone, and its slot reused.
        app.series_bucket(1_000_300).1 += 7;
        assert_eq!(
            app.recent(1_000_305),
            vec![[1_000_020, 1, 0], [1_000_300, 7, 0]]
        );
    }
}
