//! The server-wide budget for request bodies held in memory at once: each connection takes
//! from it as its body grows and gives it back when the handler is done with the request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// One request's share of the server-wide body budget; released on drop.
pub(crate) struct BodyBudget<'a> {
    pool: &'a AtomicUsize,
    max: usize,
    held: usize,
}

impl<'a> BodyBudget<'a> {
    pub(crate) fn new(pool: &'a AtomicUsize, max: usize) -> BodyBudget<'a> {
        BodyBudget { pool, max, held: 0 }
    }

    /// Take `n` more bytes; false (and nothing taken) if the server is over budget.
    pub(crate) fn take(&mut self, n: usize) -> bool {
        let mut cur = self.pool.load(Ordering::SeqCst);
        loop {
            let Some(next) = cur.checked_add(n).filter(|v| *v <= self.max) else {
                return false;
            };
            match self
                .pool
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.held += n;
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for BodyBudget<'_> {
    fn drop(&mut self) {
        self.pool.fetch_sub(self.held, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_shared_and_given_back() {
        let pool = AtomicUsize::new(0);
        let mut a = BodyBudget::new(&pool, 10);
        assert!(a.take(6));
        {
            let mut b = BodyBudget::new(&pool, 10);
            assert!(!b.take(5));
            assert!(b.take(4));
            assert_eq!(pool.load(Ordering::SeqCst), 10);
        }
        assert_eq!(pool.load(Ordering::SeqCst), 6);
        drop(a);
        assert_eq!(pool.load(Ordering::SeqCst), 0);
    }
}
