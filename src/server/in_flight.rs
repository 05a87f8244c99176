//! The queries in flight on one connection: a set of futures polled as
//! they are woken, whose slots are reused from one query to the next.
//!
//! `FuturesUnordered` allocates a node the size of a query's future for
//! every query (about 1.7 KiB: past glibc's per-thread cache, so each one
//! takes its slow path), plus one more for the set itself. Here a slot,
//! once made, holds one query after another: a busy connection allocates
//! nothing per query. A slot is woken through a waker of its own, made with
//! the slot, which queues the slot's index for the connection's next poll.
//!
//! The set exists only while a query does (the connection drops it when
//! the last is answered, or a moment later), so an idle connection holds no
//! slot.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Slots polled at most per poll of the set before it yields, so that
/// futures that keep waking themselves (a spent cooperative budget) cannot
/// hold the thread.
const POLLS_PER_TURN: usize = 64;

/// The queries in flight. See the module's documentation.
pub(crate) struct InFlight<F> {
    /// Boxed: an idle connection's task holds one pointer, not the set.
    set: Option<Box<Slots<F>>>,
}

impl<F> Default for InFlight<F> {
    fn default() -> Self {
        Self { set: None }
    }
}

impl<F: Future> InFlight<F> {
    pub(crate) fn len(&self) -> usize {
        self.set.as_ref().map_or(0, |set| set.len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn push(&mut self, query: F) {
        self.set
            .get_or_insert_with(|| Box::new(Slots::new()))
            .push(query);
    }

    /// The next output; `None` at once when nothing is in flight.
    pub(crate) async fn next(&mut self) -> Option<F::Output> {
        std::future::poll_fn(|cx| match self.set.as_mut() {
            None => Poll::Ready(None),
            Some(set) => set.poll_next(cx, true),
        })
        .await
    }

    /// An output that is ready now, without waiting.
    pub(crate) fn ready(&mut self) -> Option<F::Output> {
        let set = self.set.as_mut()?;
        let mut cx = Context::from_waker(Waker::noop());
        match set.poll_next(&mut cx, false) {
            Poll::Ready(output) => output,
            Poll::Pending => None,
        }
    }

    /// Gives the set back, dropping whatever is still in flight (nothing,
    /// but after a fatal TLS alert, when no reply may be sent).
    pub(crate) fn release(&mut self) {
        self.set = None;
    }
}

/// The slots, the free ones, and the queue of woken ones.
struct Slots<F> {
    /// One future per slot, or none while the slot is free. Boxed, so a
    /// future stays where it was pinned while the vector grows.
    futures: Vec<Pin<Box<Option<F>>>>,
    /// Each slot's waker, made with the slot, and its state.
    wakers: Vec<(Waker, Arc<SlotWaker>)>,
    free: Vec<usize>,
    /// Slots taken from `woken`, to be polled.
    due: VecDeque<usize>,
    woken: Arc<Woken>,
    /// Slots holding a future.
    len: usize,
}

/// The slots woken since the set last looked, and the connection's waker.
#[derive(Default)]
struct Woken {
    slots: Mutex<Vec<usize>>,
    connection: AtomicWaker,
}

/// Wakes one slot: queues its index (once until it is polled) and wakes
/// the connection.
struct SlotWaker {
    slot: usize,
    /// Set while the slot is queued or due: a second wake adds nothing.
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            // Poisoning is ignored: the vector is changed by pushes and
            // whole swaps only.
            self.woken
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.slot);
            self.woken.connection.wake();
        }
    }
}

impl<F: Future> Slots<F> {
    fn new() -> Self {
        Self {
            futures: Vec::new(),
            wakers: Vec::new(),
            free: Vec::new(),
            due: VecDeque::new(),
            woken: Arc::default(),
            len: 0,
        }
    }

    fn push(&mut self, future: F) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = self.futures.len();
                self.futures.push(Box::pin(None));
                let state = Arc::new(SlotWaker {
                    slot,
                    queued: AtomicBool::new(false),
                    woken: self.woken.clone(),
                });
                self.wakers.push((Waker::from(state.clone()), state));
                slot
            }
        };
        self.futures[slot].as_mut().set(Some(future));
        self.len += 1;
        // A new future is polled at the set's next poll, as if woken.
        if !self.wakers[slot].1.queued.swap(true, Ordering::AcqRel) {
            self.due.push_back(slot);
        }
    }

    /// Polls the woken slots until one finishes; `register`: the
    /// connection's waker is the one to wake when a slot is.
    fn poll_next(&mut self, cx: &mut Context<'_>, register: bool) -> Poll<Option<F::Output>> {
        if self.len == 0 {
            return Poll::Ready(None);
        }
        if register {
            self.woken.connection.register(cx.waker());
        }
        for _ in 0..POLLS_PER_TURN {
            if self.due.is_empty() {
                let mut woken = self.woken.slots.lock().unwrap_or_else(|e| e.into_inner());
                self.due.extend(woken.drain(..));
            }
            let Some(slot) = self.due.pop_front() else {
                return Poll::Pending;
            };
            let (waker, state) = &self.wakers[slot];
            state.queued.store(false, Ordering::Release);
            let Some(future) = self.futures[slot].as_mut().as_pin_mut() else {
                // Finished since it was woken.
                continue;
            };
            let mut slot_cx = Context::from_waker(waker);
            if let Poll::Ready(output) = future.poll(&mut slot_cx) {
                self.futures[slot].as_mut().set(None);
                self.free.push(slot);
                self.len -= 1;
                return Poll::Ready(Some(output));
            }
        }
        // More is due: the connection comes back after others had a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn outputs_come_as_their_futures_finish_in_any_order() {
        let mut set = InFlight::default();
        let mut senders = Vec::new();
        for i in 0..10u32 {
            let (tx, rx) = oneshot::channel::<u32>();
            senders.push(tx);
            set.push(async move { rx.await.unwrap_or(u32::MAX) + i * 100 });
        }
        assert_eq!(set.len(), 10);
        assert!(set.ready().is_none(), "nothing answered yet");
        for (i, tx) in senders.into_iter().enumerate().rev() {
            tx.send(i as u32).unwrap();
            let out = tokio::time::timeout(Duration::from_secs(5), set.next())
                .await
                .expect("the woken future finishes");
            assert_eq!(out, Some(i as u32 * 101));
        }
        assert!(set.is_empty());
        assert_eq!(set.next().await, None);
    }

    #[tokio::test]
    async fn slots_are_reused_not_grown() {
        let mut set = InFlight::default();
        for round in 0..100u32 {
            for i in 0..4 {
                set.push(std::future::ready(round * 4 + i));
            }
            let mut got = Vec::new();
            while let Some(out) = set.ready() {
                got.push(out);
            }
            got.sort_unstable();
            assert_eq!(got, (round * 4..round * 4 + 4).collect::<Vec<_>>());
        }
        let slots = set.set.as_ref().map_or(0, |s| s.futures.len());
        assert_eq!(slots, 4, "four at a time need four slots");
    }

    #[tokio::test]
    async fn a_future_that_keeps_waking_itself_does_not_hold_the_thread() {
        let mut set: InFlight<Pin<Box<dyn Future<Output = u32>>>> = InFlight::default();
        set.push(Box::pin(std::future::poll_fn(|cx: &mut Context<'_>| {
            cx.waker().wake_by_ref();
            Poll::<u32>::Pending
        })));
        let (tx, rx) = oneshot::channel::<u32>();
        set.push(Box::pin(async move { rx.await.unwrap_or(0) }));
        tx.send(7).unwrap();
        // The busy one is polled a bounded number of times per turn: the
        // other's output still comes.
        let out = tokio::time::timeout(Duration::from_secs(5), set.next())
            .await
            .expect("not stuck behind the busy future");
        assert_eq!(out, Some(7));
    }
}
