//! The retry requests this dispatcher knows of (`{prefix}/retry/{job}/{run}` in etcd, put by
//! the monitor when a run ended so that its job runs it again), in order of when to fire them.
//!
//! Every dispatcher keeps every request; when one is due, each races for the retry's lock like
//! for a tick (keyed by the job and the instant the request says the retry is due, the same for
//! all), the winner runs it, and whoever fires it deletes the key. A request whose firing failed
//! (Redis or the database down) or was shed is fired again a second later, under the same key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use gocron_shared::control::RetryRequest;

/// Retry requests by (job id, run id), and when to fire each.
#[derive(Default)]
pub struct Retries {
    pending: HashMap<(i64, i64), (RetryRequest, i64)>,
    /// `(fire at, unix ms; job id; run id)`, earliest first; an entry whose request is gone or
    /// was put again with another time is stale, skipped when met.
    queue: BinaryHeap<Reverse<(i64, i64, i64)>>,
}

impl Retries {
    /// Keeps the request to retry run `run_id` of job `job_id`, to fire at `fire_ms` (its due
    /// time, or later when it is fired again).
    pub fn put(&mut self, job_id: i64, run_id: i64, request: RetryRequest, fire_ms: i64) {
        if self.pending.get(&(job_id, run_id)) == Some(&(request, fire_ms)) {
            return;
        }
        self.pending.insert((job_id, run_id), (request, fire_ms));
        self.queue.push(Reverse((fire_ms, job_id, run_id)));
    }

    /// Forgets a request (deleted: fired, here or elsewhere).
    pub fn delete(&mut self, job_id: i64, run_id: i64) {
        self.pending.remove(&(job_id, run_id));
    }

    /// When the earliest request is to fire (Unix ms).
    pub fn next_ms(&mut self) -> Option<i64> {
        self.skip_stale();
        self.queue.peek().map(|Reverse((at, ..))| *at)
    }

    /// Takes out the requests to fire at `now_ms`: (job id, run id, request).
    pub fn due(&mut self, now_ms: i64) -> Vec<(i64, i64, RetryRequest)> {
        let mut due = Vec::new();
        loop {
            self.skip_stale();
            match self.queue.peek() {
                Some(Reverse((at, job_id, run_id))) if *at <= now_ms => {
                    let (job_id, run_id) = (*job_id, *run_id);
                    self.queue.pop();
                    if let Some((request, _)) = self.pending.remove(&(job_id, run_id)) {
                        due.push((job_id, run_id, request));
                    }
                }
                _ => return due,
            }
        }
    }

    /// How many requests are kept.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((at, job_id, run_id))) = self.queue.peek() {
            match self.pending.get(&(*job_id, *run_id)) {
                Some((_, fire_ms)) if fire_ms == at => return,
                _ => {
                    self.queue.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(due_ms: i64) -> RetryRequest {
        RetryRequest {
            due_ms,
            attempt: 2,
            first_run: 1,
        }
    }

    #[test]
    fn requests_come_out_when_due_once_each_and_not_after_a_delete() {
        let mut r = Retries::default();
        r.put(1, 10, request(300), 300);
        r.put(2, 20, request(100), 100);
        r.put(2, 20, request(100), 100);
        r.put(3, 30, request(200), 200);
        r.delete(3, 30);
        assert_eq!(r.next_ms(), Some(100));
        assert!(r.due(99).is_empty());
        assert_eq!(r.due(250), [(2, 20, request(100))]);
        assert_eq!(r.next_ms(), Some(300));
        // Fired again later, under the same request (its due time unchanged).
        r.put(1, 10, request(300), 1300);
        assert!(r.due(1000).is_empty());
        assert_eq!(r.due(1300), [(1, 10, request(300))]);
        assert_eq!((r.next_ms(), r.len(), r.is_empty()), (None, 0, true));
    }
}
