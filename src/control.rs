//! What a node does with what the bus hands it: events go to the hub, control messages
//! invalidate the app cache and close channels.

use std::sync::Arc;

use crate::bus::{BusSink, Control};
use crate::domain::event::{Event, Scope, topic_for};
use crate::hub::Hub;
use crate::registry::AppCache;

pub struct NodeSink {
    pub hub: Arc<Hub>,
    pub cache: AppCache,
}

impl BusSink for NodeSink {
    fn deliver(&self, event: Event) {
        self.hub.deliver(&event);
    }

    fn control(&self, control: Control) {
        match control {
            Control::AppChanged { slug, close } => {
                self.cache.invalidate(&slug);
                if close {
                    for scope in [Scope::Public, Scope::Private] {
                        self.hub.close_topic(&topic_for(scope, &slug));
                    }
                }
            }
        }
    }
}
