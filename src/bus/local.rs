//! The in-process bus of a single node (no `REDIS_URL`): publishing hands the event straight to
//! the sink when the topic is subscribed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{Bus, BusError, BusSink, Control};
use crate::domain::event::Event;

pub struct LocalBus {
    sink: Arc<dyn BusSink>,
    topics: Mutex<HashSet<String>>,
}

impl LocalBus {
    #[must_use]
    pub fn new(sink: Arc<dyn BusSink>) -> LocalBus {
        LocalBus {
            sink,
            topics: Mutex::new(HashSet::new()),
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let subscribed = self
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&event.topic);
        if subscribed {
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
