//! The in-process bus of a single node (no `REDIS_URL`): publishing hands the event straight to
//! the sink when the topic is subscribed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{Bus, BusError, BusSink, Control};
use crate::domain::event::Event;
use crate::metrics::Metrics;

pub struct LocalBus {
    sink: Arc<dyn BusSink>,
    metrics: Metrics,
    topics: Mutex<HashSet<String>>,
}

impl LocalBus {
    #[must_use]
    pub fn new(sink: Arc<dyn BusSink>, metrics: Metrics) -> LocalBus {
        LocalBus {
            sink,
            metrics,
            topics: Mutex::new(HashSet::new()),
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let started = std::time::Instant::now();
        let subscribed = self
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&event.topic);
        self.metrics.bus_published(started.elapsed().as_secs_f64());
        if subscribed {
            self.metrics.bus_received();
            self.sink.deliver(event.clone());
        }
        Ok(())
    }

    async fn publish_control(&self, control: &Control) -> Result<(), BusError> {
        self.sink.control(control.clone());
        Ok(())
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
