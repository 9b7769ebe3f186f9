//! A connection's outbound queue: bounded, with many senders (the hub, the session's own
//! fetches) and one receiver (the session). It also carries the connection's alarm: the queue
//! overflowed (a slow consumer), or the node is closing sockets. Both wake the session through
//! the queue's one waker, so a session waits on one thing and nothing it polls is shared with
//! other connections (tokio's `Notify` under a watch channel takes a lock every session shares
//! on every poll).
//!
//! Not tokio's `mpsc`: its channel holds at least one block of 32 slots for its whole life and
//! keeps up to four after a burst, so every socket carried about 1.5 KiB for its queue while
//! idle, and about 6 KiB for good once a burst had backed it up (the chaos soak's survivors
//! ended above their starting memory by that much after Redis thawed). This one holds a few
//! slots once used and gives back what a burst took as soon as it is drained.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Slots a drained queue keeps; more are given back. One: a socket that gets an event at a time
/// never reallocates, and an idle one holds 48 bytes for its queue.
const KEEP: usize = 1;

/// Why [`Sender::try_send`] did not queue the item (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds its capacity.
    Full,
    /// The receiver is gone.
    Closed,
}

/// Why the receiving side must stop, whatever it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// The queue was full when an item came: the receiver fell behind.
    Overflow = 1,
    /// The node is shutting down.
    Shutdown = 2,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    waker: AtomicWaker,
    /// The raised [`Alarm`], or 0.
    alarm: AtomicU8,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The part of a queue that does not depend on its items: its alarm and its waker.
trait Ring: Send + Sync {
    fn raise(&self, alarm: Alarm);
    fn poll_alarm(&self, cx: &mut Context<'_>) -> Poll<Alarm>;
}

impl<T: Send> Ring for Shared<T> {
    fn raise(&self, alarm: Alarm) {
        // The first alarm stands: a session told to go for falling behind keeps that reason.
        let _ = self
            .alarm
            .compare_exchange(0, alarm as u8, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    fn poll_alarm(&self, cx: &mut Context<'_>) -> Poll<Alarm> {
        let raised = |alarm: u8| match alarm {
            1 => Some(Alarm::Overflow),
            2 => Some(Alarm::Shutdown),
            _ => None,
        };
        if let Some(alarm) = raised(self.alarm.load(Ordering::Acquire)) {
            return Poll::Ready(alarm);
        }
        self.waker.register(cx.waker());
        raised(self.alarm.load(Ordering::Acquire)).map_or(Poll::Pending, Poll::Ready)
    }
}

/// A queue's alarm without its items: to raise it from elsewhere (the node's shutdown), or to
/// watch it while the receiver is busy.
#[derive(Clone)]
pub struct Bell(Arc<dyn Ring>);

impl Bell {
    pub fn raise(&self, alarm: Alarm) {
        self.0.raise(alarm);
    }

    /// Ready once an alarm is raised; registers the waker the receiver also uses.
    pub fn poll_alarm(&self, cx: &mut Context<'_>) -> Poll<Alarm> {
        self.0.poll_alarm(cx)
    }
}

/// The sending side; clones share the queue.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

/// The receiving side. Dropping it closes the queue and drops what it holds.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue of at most `capacity` items.
#[must_use]
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
        }),
        waker: AtomicWaker::new(),
        alarm: AtomicU8::new(0),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T: Send> Sender<T> {
    /// Queues `item` without waiting.
    ///
    /// # Errors
    /// The queue is full or its receiver gone; `item` is dropped. A full queue raises
    /// [`Alarm::Overflow`].
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        {
            let mut state = self.0.state();
            if state.closed {
                return Err(TrySendError::Closed);
            }
            if state.items.len() >= self.0.capacity {
                drop(state);
                self.0.raise(Alarm::Overflow);
                return Err(TrySendError::Full);
            }
            state.items.push_back(item);
        }
        self.0.waker.wake();
        Ok(())
    }
}

impl<T: Send + 'static> Receiver<T> {
    /// The queue's alarm, for others to raise or for the receiver to watch while busy.
    #[must_use]
    pub fn bell(&self) -> Bell {
        Bell(self.0.clone())
    }
}

impl<T> Receiver<T> {
    /// The next item, if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.0.state();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items.shrink_to(KEEP);
        }
        item
    }

    /// The next item, registering the waker when there is none.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(item);
        }
        self.0.waker.register(cx.waker());
        // An item queued between the first look and the registration woke nobody.
        self.try_recv().map_or(Poll::Pending, Poll::Ready)
    }

    /// Waits for the next item. The receiver holds no sender, so this waits for as long as
    /// nothing is sent; dropping the future loses nothing.
    pub async fn recv(&mut self) -> T {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.0.state();
            state.closed = true;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock: an item may own more than memory.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_in_order_and_closed_by_the_receiver() {
        let (tx, mut rx) = bounded(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.clone().try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(tx.try_send(4), Ok(()));
        assert_eq!(
            (rx.try_recv(), rx.try_recv(), rx.try_recv()),
            (Some(2), Some(4), None)
        );
        drop(rx);
        assert_eq!(tx.try_send(5), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn an_overflow_or_a_shutdown_raises_the_alarm_once() {
        let (tx, rx) = bounded(1);
        let bell = rx.bell();
        let pending = std::future::poll_fn(|cx| Poll::Ready(bell.poll_alarm(cx))).await;
        assert!(pending.is_pending());
        let waiting = tokio::spawn({
            let bell = bell.clone();
            async move { std::future::poll_fn(|cx| bell.poll_alarm(cx)).await }
        });
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(TrySendError::Full));
        let raised = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(raised.unwrap().unwrap(), Alarm::Overflow);
        // The first reason stands.
        bell.raise(Alarm::Shutdown);
        let first = std::future::poll_fn(|cx| bell.poll_alarm(cx)).await;
        assert_eq!(first, Alarm::Overflow);
    }

    #[test]
    fn a_drained_queue_gives_back_what_a_burst_took() {
        let (tx, mut rx) = bounded(1024);
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        assert!(rx.0.state().items.capacity() >= 1000);
        while rx.try_recv().is_some() {}
        assert!(rx.0.state().items.capacity() <= KEEP);
    }

    #[tokio::test]
    async fn recv_wakes_on_a_send_from_another_task() {
        let (tx, mut rx) = bounded(8);
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.try_send("hello").unwrap();
            tx
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got, Ok("hello"));
        let _tx = sender.await.unwrap();
    }
}
