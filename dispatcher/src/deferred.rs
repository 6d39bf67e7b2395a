//! The deferred requests this dispatcher knows of, in order of when to fire them: retries
//! (`{prefix}/retry/{job}/{run}`, put by the monitor when a run ended so that its job runs it
//! again) and events' runs (`{prefix}/event/{job}/{event}`, put by the monitor for each job
//! subscribed to an event it read in `cron_event`) and chained runs (`{prefix}/chain/{job}/{run}`,
//! put by the monitor for each job a run's `on_success` or `on_failure` names).
//!
//! Every dispatcher keeps every request; when one is due, each races for its lock like for a
//! tick (a retry's keyed by the job and the instant it is due, an event's by the job and the
//! event), the winner runs it, and whoever fires it deletes the key. A request whose firing
//! failed (Redis or the database down), was shed, or names a job not known here yet, is fired
//! again a second later, under the same key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use gocron_shared::control::{ChainRequest, EventRequest, RetryRequest};
use gocron_shared::job::Trigger;

/// A request's identity: its kind, its job, and what it comes from (the run a retry follows,
/// the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `Retry`, `Event` or `Chain`.
    pub trigger: Trigger,
    /// The job to run.
    pub job_id: i64,
    /// The run retried, the event, or the parent run.
    pub source_id: i64,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A retry.
    Retry(RetryRequest),
    /// An event's run.
    Event(EventRequest),
    /// A chained run.
    Chain(ChainRequest),
}

impl Request {
    /// When it is due (Unix ms).
    pub fn due_ms(&self) -> i64 {
        match self {
            Request::Retry(r) => r.due_ms,
            Request::Event(e) => e.due_ms,
            Request::Chain(c) => c.due_ms,
        }
    }
}

/// The requests by key, and when to fire each.
#[derive(Default)]
pub struct Deferred {
    pending: HashMap<Key, (Request, i64)>,
    /// `(fire at, unix ms; key)`, earliest first; an entry whose request is gone or was put
    /// again with another time is stale, skipped when met.
    queue: BinaryHeap<Reverse<(i64, Key)>>,
    /// When each request was first fired here (Unix ms).
    first_fired: HashMap<Key, i64>,
}

impl Deferred {
    /// Keeps `request`, to fire at `fire_ms` (its due time, or later when it is fired again).
    pub fn put(&mut self, key: Key, request: Request, fire_ms: i64) {
        if self
            .pending
            .get(&key)
            .is_some_and(|(r, at)| *r == request && *at == fire_ms)
        {
            return;
        }
        self.pending.insert(key, (request, fire_ms));
        self.queue.push(Reverse((fire_ms, key)));
    }

    /// Forgets a request (deleted: fired, here or elsewhere).
    pub fn delete(&mut self, key: &Key) {
        self.pending.remove(key);
        self.first_fired.remove(key);
    }

    /// How long ago (ms) the request was first fired here, `now_ms` being now: 0 the first time.
    pub fn fired_for(&mut self, key: &Key, now_ms: i64) -> i64 {
        now_ms - *self.first_fired.entry(*key).or_insert(now_ms)
    }

    /// When the earliest request is to fire (Unix ms).
    pub fn next_ms(&mut self) -> Option<i64> {
        self.skip_stale();
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes out the requests to fire at `now_ms`.
    pub fn due(&mut self, now_ms: i64) -> Vec<(Key, Request)> {
        let mut due = Vec::new();
        loop {
            self.skip_stale();
            match self.queue.peek() {
                Some(Reverse((at, key))) if *at <= now_ms => {
                    let key = *key;
                    self.queue.pop();
                    if let Some((request, _)) = self.pending.remove(&key) {
                        due.push((key, request));
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
        while let Some(Reverse((at, key))) = self.queue.peek() {
            match self.pending.get(key) {
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
    use gocron_shared::job::EventRef;

    fn retry(job_id: i64, run: i64) -> Key {
        Key {
            trigger: Trigger::Retry,
            job_id,
            source_id: run,
        }
    }

    fn request(due_ms: i64) -> Request {
        Request::Retry(RetryRequest {
            due_ms,
            attempt: 2,
            first_run: 1,
            event: None,
            shard: None,
            parent_run: None,
        })
    }

    #[test]
    fn requests_come_out_when_due_once_each_and_not_after_a_delete() {
        let mut r = Deferred::default();
        r.put(retry(1, 10), request(300), 300);
        r.put(retry(2, 20), request(100), 100);
        r.put(retry(2, 20), request(100), 100);
        r.put(retry(3, 30), request(200), 200);
        r.delete(&retry(3, 30));
        assert_eq!(r.fired_for(&retry(1, 10), 500), 0);
        assert_eq!(r.fired_for(&retry(1, 10), 800), 300);
        assert_eq!(r.next_ms(), Some(100));
        assert!(r.due(99).is_empty());
        assert_eq!(r.due(250), [(retry(2, 20), request(100))]);
        assert_eq!(r.next_ms(), Some(300));
        // Fired again later, under the same request (its due time unchanged).
        r.put(retry(1, 10), request(300), 1300);
        assert!(r.due(1000).is_empty());
        assert_eq!(r.due(1300), [(retry(1, 10), request(300))]);
        assert_eq!((r.next_ms(), r.len(), r.is_empty()), (None, 0, true));
    }

    #[test]
    fn a_retry_and_an_event_with_the_same_job_and_source_are_two_requests() {
        let mut r = Deferred::default();
        let event_key = Key {
            trigger: Trigger::Event,
            job_id: 1,
            source_id: 10,
        };
        let event = Request::Event(EventRequest {
            due_ms: 100,
            event: EventRef {
                id: 10,
                name: "order.paid".into(),
                payload: "{}".into(),
                delayed: false,
                requested_ms: 0,
            },
        });
        r.put(retry(1, 10), request(100), 100);
        r.put(event_key, event.clone(), 100);
        assert_eq!(r.len(), 2);
        let mut due = r.due(100);
        due.sort_by_key(|(k, _)| *k);
        assert_eq!(due, [(retry(1, 10), request(100)), (event_key, event)]);
    }
}
