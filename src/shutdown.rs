//! Graceful shutdown state shared by the HTTP layer and every session.
//!
//! Sequence on the first SIGTERM/SIGINT: `/readyz` answers 503 at once (draining); after the
//! drain delay new WebSocket upgrades are refused and every session sends a close frame so
//! clients reconnect elsewhere; in-flight HTTP requests finish; the process exits once every
//! session has ended or the shutdown timeout has passed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};

use crate::hub::ConnId;
use crate::queue::{Alarm, Bell};

pub struct Shutdown {
    draining: AtomicBool,
    /// For the few long-lived tasks that are not sessions (the heartbeat, console streams).
    closing: watch::Sender<bool>,
    /// Every live session's alarm. A session waits on its own queue only; closing rings each
    /// bell once, instead of every session polling one shared signal on every wake-up.
    sessions: Mutex<HashMap<ConnId, Bell>>,
    ended: Notify,
}

/// Counts one live session; dropping it ends the count.
pub struct SessionGuard<'a>(&'a Shutdown, ConnId);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut sessions = self.0.sessions();
        sessions.remove(&self.1);
        if sessions.is_empty() {
            self.0.ended.notify_waiters();
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            draining: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            sessions: Mutex::default(),
            ended: Notify::new(),
        }
    }
}

impl Shutdown {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<ConnId, Bell>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses new upgrades and tells every session to close.
    pub fn close_sessions(&self) {
        let sessions = self.sessions();
        // Set under the lock: a session registering after this sees it and closes at once.
        self.closing.send_replace(true);
        for bell in sessions.values() {
            bell.raise(Alarm::Shutdown);
        }
    }

    #[must_use]
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once [`Shutdown::close_sessions`] has been called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Counts a session as live until the guard drops; `bell` is raised when the node closes
    /// sessions (at once, if it already has).
    #[must_use]
    pub fn session_started(&self, id: ConnId, bell: Bell) -> SessionGuard<'_> {
        let mut sessions = self.sessions();
        if self.is_closing() {
            bell.raise(Alarm::Shutdown);
        }
        sessions.insert(id, bell);
        SessionGuard(self, id)
    }

    #[must_use]
    pub fn live_sessions(&self) -> usize {
        self.sessions().len()
    }

    /// Resolves when no session is left.
    pub async fn sessions_ended(&self) {
        loop {
            let ended = self.ended.notified();
            if self.live_sessions() == 0 {
                return;
            }
            ended.await;
        }
    }
}
