//! The transfer queue: a fixed number of slots handed out by priority, and the bandwidth cap
//! of `Low` transfers.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use upkeep_types::DownloadPriority;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few assignments; a poisoned lock is still sound.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rank(p: DownloadPriority) -> u8 {
    match p {
        DownloadPriority::Low => 0,
        DownloadPriority::Normal => 1,
        DownloadPriority::High => 2,
        DownloadPriority::ExtraHigh => 3,
    }
}

struct Waiter {
    rank: u8,
    seq: u64,
    tx: oneshot::Sender<Slot>,
}

impl PartialEq for Waiter {
    fn eq(&self, o: &Self) -> bool {
        self.rank == o.rank && self.seq == o.seq
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiter {
    /// Higher priority first; within a priority, first come first served.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.rank.cmp(&o.rank).then_with(|| o.seq.cmp(&self.seq))
    }
}

struct State {
    free: usize,
    seq: u64,
    waiting: BinaryHeap<Waiter>,
}

/// Slots for concurrent transfers, granted highest priority first, then in request order.
pub(crate) struct Scheduler {
    st: Mutex<State>,
}

/// A granted slot; dropping it hands the slot to the best waiter.
pub(crate) struct Slot {
    sched: Arc<Scheduler>,
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.sched.release();
        }
    }
}

impl Scheduler {
    pub(crate) fn new(slots: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            st: Mutex::new(State {
                free: slots.max(1),
                seq: 0,
                waiting: BinaryHeap::new(),
            }),
        })
    }

    /// Waits for a slot. Dropping the future gives up the place in the queue (and a slot
    /// granted in the meantime goes to the next waiter).
    pub(crate) async fn acquire(self: &Arc<Self>, priority: DownloadPriority) -> Slot {
        let rx = {
            let mut st = lock(&self.st);
            if st.free > 0 && st.waiting.is_empty() {
                st.free -= 1;
                return Slot {
                    sched: self.clone(),
                    armed: true,
                };
            }
            let (tx, rx) = oneshot::channel();
            st.seq += 1;
            let seq = st.seq;
            st.waiting.push(Waiter {
                rank: rank(priority),
                seq,
                tx,
            });
            rx
        };
        // The sender lives in the queue until a slot is sent, so this cannot fail while
        // the scheduler exists; the scheduler outlives every acquire (callers hold an Arc).
        rx.await.expect("the scheduler keeps its waiters")
    }

    /// Transfers waiting for a slot.
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.st)
            .waiting
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
    }

    fn release(self: &Arc<Self>) {
        let mut st = lock(&self.st);
        while let Some(w) = st.waiting.pop() {
            let slot = Slot {
                sched: self.clone(),
                armed: true,
            };
            match w.tx.send(slot) {
                Ok(()) => return,
                // That waiter gave up; disarm the returned slot (it was never granted).
                Err(mut s) => s.armed = false,
            }
        }
        st.free += 1;
    }
}

/// A shared byte-rate cap: each chunk reserves its share of time; the caller waits until
/// the returned instant.
pub(crate) struct RateLimiter {
    bytes_per_second: u64,
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(bytes_per_second: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_second: bytes_per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Reserves `n` bytes; returns when they may be taken.
    pub(crate) fn reserve(&self, n: u64) -> Instant {
        let mut next = lock(&self.next);
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_second as f64);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_to_the_highest_priority_then_the_first_to_ask() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let s = Scheduler::new(1);
            let held = s.acquire(DownloadPriority::Normal).await;
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for (name, p) in [
                ("low", DownloadPriority::Low),
                ("normal-1", DownloadPriority::Normal),
                ("extra-high", DownloadPriority::ExtraHigh),
                ("normal-2", DownloadPriority::Normal),
                ("high", DownloadPriority::High),
            ] {
                let (s2, order) = (s.clone(), order.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let _slot = s2.acquire(p).await;
                    order.lock().unwrap().push(name);
                }));
                // Queue them in this order.
                while s.waiting() < tasks.len() {
                    tokio::task::yield_now().await;
                }
            }
            drop(held);
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(
                *order.lock().unwrap(),
                ["extra-high", "high", "normal-1", "normal-2", "low"]
            );
        });
    }

    #[test]
    fn a_waiter_that_gives_up_does_not_lose_the_slot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Scheduler::new(1);
            let held = s.acquire(DownloadPriority::Normal).await;
            let gave_up =
                tokio::time::timeout(Duration::from_millis(1), s.acquire(DownloadPriority::High))
                    .await;
            assert!(gave_up.is_err());
            drop(held);
            let again =
                tokio::time::timeout(Duration::from_secs(5), s.acquire(DownloadPriority::Low))
                    .await;
            assert!(again.is_ok(), "the slot came back");
        });
    }

    #[test]
    fn the_rate_limiter_spaces_reservations_by_their_size() {
        let r = RateLimiter::new(1_000_000);
        let a = r.reserve(500_000);
        let b = r.reserve(500_000);
        let c = r.reserve(1);
        assert!(b.duration_since(a) >= Duration::from_millis(499));
        assert!(c.duration_since(a) >= Duration::from_millis(999));
    }
}
