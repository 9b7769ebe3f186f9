//! Graceful shutdown state shared by the HTTP layer and every session.
//!
//! Sequence on the first SIGTERM/SIGINT: `/readyz` answers 503 at once (draining); after the
//! drain delay new WebSocket upgrades are refused and every session sends a close frame so
//! clients reconnect elsewhere; in-flight HTTP requests finish; the process exits once every
//! session has ended or the shutdown timeout has passed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

pub struct Shutdown {
    draining: AtomicBool,
    closing: watch::Sender<bool>,
    sessions: AtomicUsize,
    ended: Notify,
}

/// Counts one live session; dropping it ends the count.
pub struct SessionGuard<'a>(&'a Shutdown);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            draining: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            sessions: AtomicUsize::new(0),
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

    /// Refuses new upgrades and tells every session to close.
    pub fn close_sessions(&self) {
        self.closing.send_replace(true);
    }

    #[must_use]
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once [`Shutdown::close_sessions`] has been called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    #[must_use]
    pub fn session_started(&self) -> SessionGuard<'_> {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self)
    }

    #[must_use]
    pub fn live_sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
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
