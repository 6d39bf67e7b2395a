//! Waiting for a wall-clock instant to within a fraction of a millisecond.
//!
//! tokio's timer counts whole milliseconds and rounds a deadline up, so `tokio::time::sleep`
//! wakes 0-1 ms after it; for a run handed over before its tick, that is most of what is lost
//! between the tick and the job's start. [`until_ms`] sleeps on tokio's timer until shortly
//! before the instant and leaves the rest to one thread of the process, which waits on a
//! condition variable (the kernel's high-resolution timers: some tens of microseconds late) and
//! wakes every waiter whose instant has come at once, however many there are.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// What is left to the clock's thread: tokio's timer covers the rest, waking up to 1 ms late.
const FINE: Duration = Duration::from_millis(2);

/// Sleeps until the instant `at_ms` (Unix time in milliseconds), if it is still to come.
/// Cancel-safe: dropping the future forgets the wait.
pub async fn until_ms(at_ms: i64) {
    let Ok(at) = u64::try_from(at_ms) else {
        return;
    };
    let target = UNIX_EPOCH + Duration::from_millis(at);
    let Ok(left) = target.duration_since(SystemTime::now()) else {
        return;
    };
    let deadline = Instant::now() + left;
    if left > FINE {
        tokio::time::sleep_until((deadline - FINE).into()).await;
    }
    if Instant::now() < deadline {
        let (tx, rx) = oneshot::channel();
        clock().wake_at(deadline, tx);
        // The sender is never dropped unsent: the thread sends, then drops it.
        let _ = rx.await;
    }
}

struct Waiter {
    at: Instant,
    /// Orders waiters with the same instant (a heap needs a total order; senders have none).
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Waiters {
    heap: BinaryHeap<Reverse<Waiter>>,
    seq: u64,
}

struct Clock {
    waiters: Mutex<Waiters>,
    changed: Condvar,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<&'static Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let clock: &'static Clock = Box::leak(Box::new(Clock {
            waiters: Mutex::new(Waiters::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("gocron-clock".into())
            .spawn(move || clock.serve())
            .expect("the clock's thread starts");
        clock
    })
}

impl Clock {
    fn wake_at(&self, at: Instant, tx: oneshot::Sender<()>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.seq += 1;
        let seq = waiters.seq;
        let first = waiters.heap.peek().is_none_or(|Reverse(w)| at < w.at);
        waiters.heap.push(Reverse(Waiter { at, seq, tx }));
        if first {
            self.changed.notify_one();
        }
    }

    fn serve(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while waiters.heap.peek().is_some_and(|Reverse(w)| w.at <= now) {
                if let Some(Reverse(w)) = waiters.heap.pop() {
                    // A waiter that was dropped meanwhile no longer listens: nothing to do.
                    let _ = w.tx.send(());
                }
            }
            waiters = match waiters.heap.peek() {
                Some(Reverse(w)) => {
                    let wait = w.at - now;
                    self.changed
                        .wait_timeout(waiters, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .changed
                    .wait(waiters)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn now_us() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
    }

    #[tokio::test]
    async fn it_wakes_at_the_instant_never_before_it() {
        // Ten waits on instants out of order, a few milliseconds apart; each wakes at or after
        // its instant (never before: the wall clock is what the jobs read), whatever the others.
        let base = now_ms() + 30;
        let offsets = [7, 0, 3, 3, 12, 1, 9, 5, 0, 20];
        let waits: Vec<_> = offsets
            .iter()
            .map(|&o| {
                let at = base + o;
                tokio::spawn(async move {
                    until_ms(at).await;
                    (at, now_us())
                })
            })
            .collect();
        let mut woke = Vec::new();
        for wait in waits {
            woke.push(wait.await.expect("the wait does not panic"));
        }
        for (at, woke_us) in woke {
            assert!(woke_us >= at * 1000, "woke at {woke_us} us, before {at} ms");
        }
    }

    #[tokio::test]
    async fn a_dropped_wait_does_not_stop_the_others() {
        let at = now_ms() + 20;
        let dropped = tokio::time::timeout(Duration::from_millis(5), until_ms(at + 5)).await;
        assert!(dropped.is_err(), "the wait ended 25 ms early");
        until_ms(at).await;
        assert!(now_us() >= at * 1000);
        // An instant already past returns at once.
        until_ms(at - 1000).await;
    }
}
