//! The in-process bus of a single node (no `REDIS_URL`): publishing hands the event straight to
//! the sink when the topic is subscribed, and topics with history keep it in this process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Bus, BusError, BusSink, Control};
use crate::domain::event::Event;
use crate::domain::history::{Keep, Page, Position, Read, new_epoch};
use crate::metrics::Metrics;

/// Expired histories are swept after this many history operations.
const SWEEP_EVERY: u32 = 1024;

pub struct LocalBus {
    sink: Arc<dyn BusSink>,
    metrics: Metrics,
    topics: Mutex<HashSet<String>>,
    histories: Mutex<Histories>,
    /// Per key: the second counted and its total (one entry per key, so as many as apps).
    tallies: Mutex<HashMap<String, (i64, u64)>>,
}

#[derive(Default)]
struct Histories {
    topics: HashMap<String, History>,
    /// Operations since the last sweep.
    since_sweep: u32,
}

/// One topic's history: the same model as the Redis bus's stream and meta keys.
struct History {
    epoch: String,
    top: u64,
    /// The last events, oldest first, each with its position.
    events: VecDeque<Event>,
    /// The events are dropped at this instant (the time to live after the latest one).
    events_until: Instant,
    /// The whole history, epoch and offset included, is forgotten at this instant.
    meta_until: Instant,
}

impl Histories {
    /// The live history of `topic`, started afresh (new epoch, offset 0, kept `meta_ttl`)
    /// when there is none.
    fn of(&mut self, topic: &str, meta_ttl: u32, now: Instant) -> &mut History {
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.topics.retain(|_, history| {
                if history.events_until <= now {
                    history.events.clear();
                }
                history.meta_until > now
            });
        }
        let history = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| History::start(meta_ttl, now));
        if history.meta_until <= now {
            *history = History::start(meta_ttl, now);
        } else if history.events_until <= now {
            history.events.clear();
        }
        history
    }
}

impl History {
    fn start(meta_ttl: u32, now: Instant) -> History {
        History {
            epoch: new_epoch(),
            top: 0,
            events: VecDeque::new(),
            events_until: now,
            meta_until: now + Duration::from_secs(meta_ttl.into()),
        }
    }

    fn top(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

impl LocalBus {
    #[must_use]
    pub fn new(sink: Arc<dyn BusSink>, metrics: Metrics) -> LocalBus {
        LocalBus {
            sink,
            metrics,
            topics: Mutex::new(HashSet::new()),
            histories: Mutex::new(Histories::default()),
            tallies: Mutex::new(HashMap::new()),
        }
    }

    fn subscribed(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    }

    fn hand_over(&self, event: Event) {
        self.metrics.bus_received();
        self.sink.deliver(event);
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(
        &self,
        event: &Event,
        keep: Option<Keep>,
    ) -> Result<Option<Position>, BusError> {
        let started = Instant::now();
        let Some(keep) = keep else {
            let subscribed = self.subscribed(&event.topic);
            self.metrics.bus_published(started.elapsed().as_secs_f64());
            if subscribed {
                self.hand_over(event.clone());
            }
            return Ok(None);
        };
        // Held while the event is handed to the sink: events of a topic reach it in offset
        // order even when two tasks publish at once.
        let mut histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let history = histories.of(&event.topic, keep.meta_ttl_secs, started);
        history.top += 1;
        let position = history.top();
        let mut stored = event.clone();
        stored.position = Some(position.clone());
        history.events.push_back(stored.clone());
        while history.events.len() > usize::try_from(keep.size).unwrap_or(usize::MAX) {
            history.events.pop_front();
        }
        history.events_until = started + Duration::from_secs(keep.ttl_secs.into());
        history.meta_until = started + Duration::from_secs(keep.meta_ttl_secs.into());
        self.metrics.bus_published(started.elapsed().as_secs_f64());
        if self.subscribed(&event.topic) {
            self.hand_over(stored);
        }
        Ok(Some(position))
    }

    async fn history(&self, topic: &str, keep: Keep, read: Read<'_>) -> Result<Page, BusError> {
        let mut histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // A read alone keeps a new history only as long as events would be kept.
        let history = histories.of(topic, keep.ttl_secs, now);
        let events = &history.events;
        let take = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let after = |offset: u64, limit: u32| -> Vec<Event> {
            events
                .iter()
                .filter(|e| e.position.as_ref().is_some_and(|p| p.offset > offset))
                .take(take(limit))
                .cloned()
                .collect()
        };
        let first_kept = events
            .front()
            .and_then(|e| e.position.as_ref())
            .map(|p| p.offset);
        let events = match read {
            Read::Top => Vec::new(),
            Read::Since { offset, limit } => after(offset, limit),
            Read::Recover { since, limit } => {
                let recoverable = since.epoch == history.epoch
                    && since.offset < history.top
                    && first_kept.is_some_and(|first| first <= since.offset + 1);
                if recoverable {
                    after(since.offset, limit)
                } else {
                    Vec::new()
                }
            }
            Read::Last(count) => events
                .iter()
                .skip(events.len().saturating_sub(take(count)))
                .cloned()
                .collect(),
        };
        let ttl_secs = (!history.events.is_empty()).then(|| {
            history
                .events_until
                .saturating_duration_since(now)
                .as_secs()
        });
        Ok(Page {
            top: history.top(),
            events,
            ttl_secs,
        })
    }

    async fn publish_control(&self, control: &Control) -> Result<(), BusError> {
        self.sink.control(control.clone());
        Ok(())
    }

    async fn take(&self, key: &str, count: u64, max: u64) -> Result<bool, BusError> {
        let second = chrono::Utc::now().timestamp();
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = tallies.entry(key.to_owned()).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        let total = entry.1.saturating_add(count);
        if total > max {
            return Ok(false);
        }
        entry.1 = total;
        Ok(true)
    }

    fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn subscribe(&self, topics: &[String]) -> Result<(), BusError> {
        let mut set = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        set.extend(topics.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BusError> {
        let mut set = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        for topic in topics {
            set.remove(topic);
        }
        Ok(())
    }
}
