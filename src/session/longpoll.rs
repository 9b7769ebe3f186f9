//! LongPoll sessions: the server half of Phoenix's LongPoll transport. Each session is an
//! ordinary Phoenix session task whose transport is two queues: frames POSTed by the client go
//! in, and polls take out what the session sends. Sessions live in the memory of the node that
//! made them, found by their token; behind a load balancer, requests of one session must reach
//! the same node (sticky sessions), or the client is told its session is gone and reconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Message;
use tokio::sync::mpsc;

use super::{PhoenixConnect, run_phoenix_poll};
use crate::node::NodeState;

/// Every session token starts with this, so a stale one is recognised (and answered "gone")
/// among the client's other `token` parameters.
pub const TOKEN_PREFIX: &str = "lp.";

/// One LongPoll session's queues, as the HTTP handlers see them.
pub struct PollSession {
    /// POSTed frames, and a ping per poll (polls are the only sign of a live client).
    pub inbound: mpsc::Sender<Message>,
    /// What the session sent, for the next poll. One poll at a time holds it.
    pub outbound: tokio::sync::Mutex<mpsc::Receiver<Message>>,
}

/// This node's LongPoll sessions by token.
#[derive(Default)]
pub struct LongPolls {
    sessions: Mutex<HashMap<String, Arc<PollSession>>>,
}

impl LongPolls {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PollSession>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a session; returns its token, or `None` when the node holds its maximum.
    pub fn start(self: &Arc<Self>, connect: PhoenixConnect, state: NodeState) -> Option<String> {
        let token = format!("{TOKEN_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let (outbound_tx, outbound_rx) = mpsc::channel(state.config.limits.outbound_queue);
        let (inbound_tx, inbound_rx) = mpsc::channel(state.config.longpoll.max_frames + 1);
        {
            let mut sessions = self.sessions();
            if sessions.len() >= state.config.longpoll.max_sessions {
                return None;
            }
            sessions.insert(
                token.clone(),
                Arc::new(PollSession {
                    inbound: inbound_tx,
                    outbound: tokio::sync::Mutex::new(outbound_rx),
                }),
            );
        }
        let sessions = self.clone();
        let key = token.clone();
        tokio::spawn(async move {
            run_phoenix_poll(outbound_tx, inbound_rx, connect, state).await;
            sessions.sessions().remove(&key);
        });
        Some(token)
    }

    #[must_use]
    pub fn get(&self, token: &str) -> Option<Arc<PollSession>> {
        self.sessions().get(token).cloned()
    }
}
