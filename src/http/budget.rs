//! The budgets for request bodies held in memory at once: one server-wide pool and one per
//! client (a TCP peer address, or a Unix listener as a whole). A connection takes from both
//! as body bytes actually arrive, and gives everything back when the handler is done with the
//! request, so a client that declares a huge body and sends nothing holds nothing, and one
//! client can never take the whole pool.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Add `n` to `pool` unless that passes `max`; false (and nothing taken) if it would.
fn take_from(pool: &AtomicUsize, max: usize, n: usize) -> bool {
    let mut cur = pool.load(Ordering::SeqCst);
    loop {
        let Some(next) = cur.checked_add(n).filter(|v| *v <= max) else {
            return false;
        };
        match pool.compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// One pool of body bytes and its cap.
#[derive(Clone, Copy)]
pub(crate) struct Pool<'a> {
    pub held: &'a AtomicUsize,
    pub max: usize,
}

/// One request's share of the server's and its client's body budgets; released on drop.
pub(crate) struct BodyBudget<'a> {
    server: Pool<'a>,
    client: Pool<'a>,
    held: usize,
}

impl<'a> BodyBudget<'a> {
    pub(crate) fn new(server: Pool<'a>, client: Pool<'a>) -> BodyBudget<'a> {
        BodyBudget {
            server,
            client,
            held: 0,
        }
    }

    /// Take `n` more bytes from both pools; false (and nothing taken) if either is full.
    pub(crate) fn take(&mut self, n: usize) -> bool {
        if !take_from(self.client.held, self.client.max, n) {
            return false;
        }
        if !take_from(self.server.held, self.server.max, n) {
            self.client.held.fetch_sub(n, Ordering::SeqCst);
            return false;
        }
        self.held += n;
        true
    }

    /// Bytes this request holds.
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

impl Drop for BodyBudget<'_> {
    fn drop(&mut self) {
        self.client.held.fetch_sub(self.held, Ordering::SeqCst);
        self.server.held.fetch_sub(self.held, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_given_back() {
        let (pool, c1, c2) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let server = Pool {
            held: &pool,
            max: 10,
        };
        let mut a = BodyBudget::new(server, Pool { held: &c1, max: 10 });
        assert!(a.take(6));
        {
            let mut b = BodyBudget::new(server, Pool { held: &c2, max: 10 });
            assert!(!b.take(5));
            assert_eq!(
                c2.load(Ordering::SeqCst),
                0,
                "a refused take leaves nothing"
            );
            assert!(b.take(4));
            assert_eq!(pool.load(Ordering::SeqCst), 10);
        }
        assert_eq!(pool.load(Ordering::SeqCst), 6);
        drop(a);
        assert_eq!(pool.load(Ordering::SeqCst), 0);
        assert_eq!(c1.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn one_client_cannot_take_the_whole_pool() {
        let (pool, c1, c2) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let server = Pool {
            held: &pool,
            max: 10,
        };
        let mut a = BodyBudget::new(server, Pool { held: &c1, max: 4 });
        let mut a2 = BodyBudget::new(server, Pool { held: &c1, max: 4 });
        assert!(a.take(3));
        assert!(!a2.take(2), "the client's share is spent");
        assert!(a2.take(1));
        let mut b = BodyBudget::new(server, Pool { held: &c2, max: 10 });
        assert!(b.take(6), "another client still has the rest");
        assert_eq!(a.held() + a2.held() + b.held(), 10);
    }
}
