//! Runs handed to one executor together.
//!
//! At a tick of a thousand jobs, a dispatcher hands a thousand runs to a few executors within
//! a millisecond or two. Each run's offer is queued for its executor, and one call
//! ([`gocron_shared::rpc::ExecutorRpc::start_runs_json`]) carries every offer queued while the
//! previous call to that executor was on the wire: the first offer goes at once (nothing waits
//! for company), and under a burst the calls fill up by themselves. Each run is still answered
//! on its own, as if it had gone alone.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;

use gocron_shared::rpc::{Accepted, MAX_BATCH_BYTES, MAX_BATCH_RUNS, Refused};
use tokio::sync::oneshot;

/// What an offer got: the executor's answer, or why there was none.
pub type Answer = Result<Result<Accepted, Refused>, Failed>;

/// Why a call carrying runs got no answer from the executor.
#[derive(Debug, Clone)]
pub enum Failed {
    /// No connection to it.
    Connect(String),
    /// The call failed.
    Rpc {
        /// Whether it never left this process (a dead cached connection: worth redialling
        /// once).
        never_sent: bool,
        /// What failed.
        error: String,
    },
}

/// A run waiting to be sent.
pub struct Queued {
    /// The request, as JSON.
    pub json: String,
    /// Where its answer goes.
    pub answer: oneshot::Sender<Answer>,
}

/// The runs waiting to be sent, by executor address.
#[derive(Default)]
pub struct Batches {
    queues: Mutex<HashMap<SocketAddr, Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    /// Whether a sender is working through this queue.
    sending: bool,
}

impl Batches {
    /// Queues `run` for `address`; `true` when no sender works on that queue: the caller must
    /// start one (which calls [`Batches::next`] until it is empty).
    pub fn push(&self, address: SocketAddr, run: Queued) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(address).or_default();
        queue.waiting.push_back(run);
        !std::mem::replace(&mut queue.sending, true)
    }

    /// The runs of the next call to `address`, oldest first: at least one, at most
    /// [`MAX_BATCH_RUNS`] and (but for a single large one) [`MAX_BATCH_BYTES`] of requests,
    /// leaving out runs whose caller no longer waits. Empty when none is left: the queue then
    /// has no sender, and the next [`Batches::push`] starts one.
    pub fn next(&self, address: SocketAddr) -> Vec<Queued> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get_mut(&address) else {
            return Vec::new();
        };
        let mut batch: Vec<Queued> = Vec::new();
        let mut bytes = 0;
        while let Some(run) = queue.waiting.pop_front() {
            if run.answer.is_closed() {
                continue;
            }
            if !batch.is_empty()
                && (batch.len() >= MAX_BATCH_RUNS || bytes + run.json.len() > MAX_BATCH_BYTES)
            {
                queue.waiting.push_front(run);
                break;
            }
            bytes += run.json.len();
            batch.push(run);
        }
        if batch.is_empty() {
            queues.remove(&address);
        }
        batch
    }

    /// Drops the queue of `address` and every run waiting in it (their callers get no
    /// answer, which they take as a failed call): for a sender that stopped before the queue
    /// was empty, so that the next [`Batches::push`] starts another.
    pub fn abandon(&self, address: SocketAddr) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(bytes: usize) -> (Queued, oneshot::Receiver<Answer>) {
        let (answer, rx) = oneshot::channel();
        let json = "x".repeat(bytes);
        (Queued { json, answer }, rx)
    }

    #[test]
    fn a_queue_has_one_sender_and_calls_are_bounded() {
        let batches = Batches::default();
        let at: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut waiting = Vec::new();
        for i in 0..MAX_BATCH_RUNS + 10 {
            let (run, rx) = queued(10);
            // The first push starts the sender; the others join its queue.
            assert_eq!(batches.push(at, run), i == 0);
            waiting.push(rx);
        }
        assert_eq!(batches.next(at).len(), MAX_BATCH_RUNS);
        // A caller that gave up is not sent.
        drop(waiting.pop());
        assert_eq!(batches.next(at).len(), 9);
        // Empty: the sender is done, and the next push starts another.
        assert!(batches.next(at).is_empty());
        let (run, _rx) = queued(10);
        assert!(batches.push(at, run));
        // A sender that stops early leaves no queue without one: its waiting callers are
        // answered (by the dropped sender) and the next push starts a new sender.
        let (run, mut rx) = queued(10);
        assert!(!batches.push(at, run));
        batches.abandon(at);
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        let (run, _rx) = queued(10);
        assert!(batches.push(at, run));
    }

    #[test]
    fn a_call_holds_what_fits_and_a_large_run_goes_alone() {
        let batches = Batches::default();
        let at: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut keep = Vec::new();
        for bytes in [
            MAX_BATCH_BYTES / 2,
            MAX_BATCH_BYTES / 2,
            1,
            MAX_BATCH_BYTES + 1,
            1,
        ] {
            let (run, rx) = queued(bytes);
            batches.push(at, run);
            keep.push(rx);
        }
        let sizes = |batch: Vec<Queued>| batch.iter().map(|r| r.json.len()).collect::<Vec<_>>();
        assert_eq!(
            sizes(batches.next(at)),
            [MAX_BATCH_BYTES / 2, MAX_BATCH_BYTES / 2]
        );
        assert_eq!(sizes(batches.next(at)), [1]);
        assert_eq!(sizes(batches.next(at)), [MAX_BATCH_BYTES + 1]);
        assert_eq!(sizes(batches.next(at)), [1]);
        assert!(batches.next(at).is_empty());
    }
}
