//! What a node does with what the bus hands it: events go to the hub, control messages
//! invalidate the app cache and close channels.

use std::sync::Arc;

use crate::bus::{BusSink, Control};
use crate::debug::Debug;
use crate::domain::event::Event;
use crate::domain::topic::Topic;
use crate::hub::Hub;
use crate::presence::TopicChange;
use crate::registry::{AppCache, AppRegistry};

pub struct NodeSink {
    pub hub: Arc<Hub>,
    pub cache: AppCache,
    /// The cached registry, to load an app once per change for every socket to recheck.
    pub registry: Arc<dyn AppRegistry>,
    pub debug: Arc<Debug>,
}

impl BusSink for NodeSink {
    fn deliver(&self, event: Event) {
        self.hub.deliver(&event);
    }

    fn presence(&self, change: TopicChange) {
        self.hub.presence(change);
    }

    fn control(&self, control: Control) {
        match control {
            Control::DebugWatch { slug, node, on } => self.debug.lease(&slug, &node, on),
            Control::DebugRecord { slug, record } => self.debug.show(&slug, &record),
            Control::TerminateUser { slug, user_id } => {
                if let Ok(topic) = Topic::user(&user_id, &slug) {
                    self.hub.terminate_topic(topic.as_str());
                }
            }
            Control::AppChanged { slug, close } => {
                self.cache.invalidate(&slug);
                let topics = self.hub.topics_of(&slug);
                if close {
                    for topic in &topics {
                        self.hub.close_topic(topic);
                    }
                    return;
                }
                if topics.is_empty() {
                    return;
                }
                // A rotated secret or narrowed origins must reach sockets that joined under
                // the old rules: load the app once, and let each socket check its channels.
                let (hub, registry) = (self.hub.clone(), self.registry.clone());
                tokio::spawn(async move {
                    match registry.by_slug(&slug).await {
                        Ok(Some(app)) if app.active => {
                            for topic in &topics {
                                hub.recheck_topic(topic, &app);
                            }
                        }
                        Ok(_) => {
                            for topic in &topics {
                                hub.close_topic(topic);
                            }
                        }
                        Err(error) => tracing::warn!(
                            %error,
                            %slug,
                            "app changed but cannot be reloaded: joined sockets keep their rights"
                        ),
                    }
                });
            }
        }
    }
}
