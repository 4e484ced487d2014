//! The event broker: a bounded ring of the latest [`EventBatch`]es the committer published,
//! and the subscriptions reading it. Publishing appends under a short lock and wakes the
//! readers; it never waits for a subscriber. Each subscription is a cursor into the ring, so
//! a subscriber's backlog is bounded by the ring: one that falls so far behind that the batch
//! it needs next was dropped is told so ([`Next::Dropped`]) and ends, as in Nomad.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::events::EventBatch;

/// Events the ring retains (the newest batch is kept whole even when it alone is larger).
/// Together with [`MAX_RETAINED_BATCHES`] this bounds both replay (`index=`) and how far a
/// subscriber may fall behind before it is dropped.
pub const MAX_RETAINED_EVENTS: usize = 4096;
/// Batches (one per command that made events) the ring retains.
pub const MAX_RETAINED_BATCHES: usize = 1024;
/// Batches a subscriber takes out of the ring at once (the lock is held only to copy these
/// pointers; rendering and writing happen after it is released).
pub const MAX_BATCHES_PER_READ: usize = 64;

/// The ring: batches numbered by a sequence that only grows.
#[derive(Default)]
struct Ring {
    batches: VecDeque<Arc<EventBatch>>,
    /// Sequence number of `batches[0]`.
    first_seq: u64,
    /// Events in `batches`.
    events: usize,
    closed: bool,
}

impl Ring {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.batches.len() as u64
    }
}

/// The broker (one per server state).
#[derive(Default)]
pub struct EventBroker {
    ring: Mutex<Ring>,
    published: Condvar,
    subscribers: Arc<AtomicUsize>,
}

impl std::fmt::Debug for EventBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBroker").finish_non_exhaustive()
    }
}

/// What [`Subscription::next`] found.
#[derive(Debug)]
pub enum Next {
    /// Batches in index order (at least one).
    Batches(Vec<Arc<EventBatch>>),
    /// Nothing new before the deadline.
    Timeout,
    /// The subscriber fell behind: the batch it needed next left the ring.
    Dropped,
    /// The broker is shut down.
    Closed,
}

impl EventBroker {
    pub fn new() -> EventBroker {
        EventBroker::default()
    }

    /// Append one command's events (none: nothing happens) and wake the subscribers. Called by
    /// the committer only after the command is durable and its state published.
    pub fn publish(&self, batch: EventBatch) {
        if batch.events.is_empty() {
            return;
        }
        {
            let mut ring = self.ring.lock();
            ring.events += batch.events.len();
            ring.batches.push_back(Arc::new(batch));
            while ring.batches.len() > 1
                && (ring.events > MAX_RETAINED_EVENTS || ring.batches.len() > MAX_RETAINED_BATCHES)
            {
                if let Some(old) = ring.batches.pop_front() {
                    ring.events -= old.events.len();
                    ring.first_seq += 1;
                }
            }
        }
        self.published.notify_all();
    }

    /// Stop: every subscription's next read answers [`Next::Closed`].
    pub fn close(&self) {
        self.ring.lock().closed = true;
        self.published.notify_all();
    }

    /// A subscription from the first retained batch whose index is at least `index` (0: all
    /// retained; older than the ring: its oldest, as Nomad).
    pub fn subscribe(self: &Arc<Self>, index: u64) -> Subscription {
        let cursor = {
            let ring = self.ring.lock();
            let skip = ring.batches.iter().take_while(|b| b.index < index).count();
            ring.first_seq + skip as u64
        };
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        Subscription {
            broker: self.clone(),
            cursor,
        }
    }

    /// Open subscriptions.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    /// Events retained now.
    pub fn retained_events(&self) -> usize {
        self.ring.lock().events
    }
}

/// One subscriber's place in the ring. Dropping it ends the subscription.
pub struct Subscription {
    broker: Arc<EventBroker>,
    /// Sequence number of the next batch to read.
    cursor: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl Subscription {
    /// The next batches, waiting for them until `deadline` at the latest.
    pub fn next(&mut self, deadline: Instant) -> Next {
        let mut ring = self.broker.ring.lock();
        loop {
            if ring.closed {
                return Next::Closed;
            }
            if self.cursor < ring.first_seq {
                return Next::Dropped;
            }
            if self.cursor < ring.end_seq() {
                let from = (self.cursor - ring.first_seq) as usize;
                let out: Vec<Arc<EventBatch>> = ring
                    .batches
                    .iter()
                    .skip(from)
                    .take(MAX_BATCHES_PER_READ)
                    .cloned()
                    .collect();
                self.cursor += out.len() as u64;
                return Next::Batches(out);
            }
            if self
                .broker
                .published
                .wait_until(&mut ring, deadline)
                .timed_out()
            {
                return Next::Timeout;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.broker.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::events::{Event, Payload, Topic};
    use std::time::Duration;

    fn batch(index: u64, n: usize) -> EventBatch {
        let job = crate::state::jobs::spec::Job::default();
        let eval = crate::state::jobs::eval::EvalRecord::new_at(&job, "t", index, "e", 0);
        EventBatch {
            index,
            events: (0..n)
                .map(|_| Event {
                    topic: Topic::Evaluation,
                    kind: "EvaluationUpdated",
                    key: "e".into(),
                    namespace: String::new(),
                    filter_keys: Vec::new(),
                    index,
                    payload: Payload::Evaluation(Arc::new(eval.clone())),
                })
                .collect(),
        }
    }

    fn indexes(next: Next) -> Vec<u64> {
        match next {
            Next::Batches(b) => b.iter().map(|b| b.index).collect(),
            other => panic!("no batches: {other:?}"),
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[test]
    fn a_subscription_replays_from_its_index_then_waits_for_new_batches() {
        let broker = Arc::new(EventBroker::new());
        for i in [3, 5, 9] {
            broker.publish(batch(i, 1));
        }
        broker.publish(batch(10, 0));
        assert_eq!(indexes(broker.subscribe(0).next(soon())), [3, 5, 9]);
        assert_eq!(indexes(broker.subscribe(5).next(soon())), [5, 9]);
        assert_eq!(indexes(broker.subscribe(4).next(soon())), [5, 9]);
        let mut late = broker.subscribe(10);
        assert!(matches!(late.next(soon()), Next::Timeout));
        broker.publish(batch(11, 2));
        assert_eq!(indexes(late.next(soon())), [11]);
        assert_eq!(
            broker.subscribers(),
            1,
            "dropped subscriptions are not counted"
        );
        broker.close();
        assert!(matches!(late.next(soon()), Next::Closed));
    }

    #[test]
    fn the_ring_is_bounded_and_a_reader_left_behind_is_dropped() {
        let broker = Arc::new(EventBroker::new());
        let mut slow = broker.subscribe(0);
        for i in 1..=(MAX_RETAINED_EVENTS as u64 / 4 + 10) {
            broker.publish(batch(i, 4));
        }
        assert!(broker.retained_events() <= MAX_RETAINED_EVENTS);
        assert!(matches!(slow.next(soon()), Next::Dropped));
        // A new subscriber from an index older than the ring starts at its oldest batch.
        match broker.subscribe(1).next(soon()) {
            Next::Batches(b) => assert_eq!(b[0].index, 11),
            other => panic!("{other:?}"),
        }
        // One batch larger than the bound is kept whole.
        broker.publish(batch(100_000, MAX_RETAINED_EVENTS + 1));
        assert_eq!(broker.retained_events(), MAX_RETAINED_EVENTS + 1);
        assert_eq!(indexes(broker.subscribe(0).next(soon())), [100_000]);
    }
}
