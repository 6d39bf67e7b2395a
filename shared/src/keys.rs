//! Every key gocron writes in etcd and Redis, in one place.
//!
//! etcd (under `[etcd] prefix`, default `/gocron`):
//! - `{prefix}/executors/{name}`: an executor's [`crate::machine::ExecutorInfo`] (JSON), under its lease.
//! - `{prefix}/instances/{instance}`: an executor process is alive (its `name@address`), under a
//!   lease of its own that outlasts its registration until its drain is over.
//! - `{prefix}/dispatchers/{name}`: a dispatcher's name and start time (JSON), under its lease.
//! - `{prefix}/jobs/{id}`: a valid, enabled job's [`crate::job::JobSpec`] (JSON), kept by the monitor.
//! - `{prefix}/manual/{id}/{requested_ms}`: a request to run job `id` now (see
//!   [`crate::control::run_now`]), under a short lease; the dispatcher that fires it deletes it.
//!
//! Redis (under `[redis] prefix`, default `gocron`):
//! - `{prefix}:tick:{job_id}:{scheduled_ms}`: the tick lock; its value is the winning dispatcher.
//! - `{prefix}:run:{run_id}`: who owns a run: an executor's `name@address`, or `nobody:{dispatcher}`.
//! - `{prefix}:through:{job_id}`: the job's latest tick fired (Unix ms), moved by the tick lock;
//!   the ticks after it that were never fired were missed (see the misfire policy).
//! - `{prefix}:live:{job_id}`: the job's runs in flight, run id → holder (see [`crate::live`]).
//! - `{prefix}:manual:{job_id}:{requested_ms}`: the lock of a run-now request (like a tick's).
//! - `{prefix}:rr:{machine}`: the dispatch counter of a machine group (`*` = any executor), for
//!   round-robin that holds across all dispatchers.

/// etcd key layout.
#[derive(Debug, Clone)]
pub struct EtcdKeys {
    prefix: String,
}

impl EtcdKeys {
    /// Keys under `prefix` (no trailing slash).
    pub fn new(prefix: &str) -> EtcdKeys {
        EtcdKeys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The folder of executor registrations.
    pub fn executors(&self) -> String {
        format!("{}/executors/", self.prefix)
    }

    /// One executor's registration.
    pub fn executor(&self, name: &str) -> String {
        format!("{}{name}", self.executors())
    }

    /// The folder of executor processes alive (see [`crate::live`]).
    pub fn instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    /// One executor process's liveness key.
    pub fn instance(&self, instance: &str) -> String {
        format!("{}{instance}", self.instances())
    }

    /// The folder of dispatcher registrations.
    pub fn dispatchers(&self) -> String {
        format!("{}/dispatchers/", self.prefix)
    }

    /// One dispatcher's registration.
    pub fn dispatcher(&self, name: &str) -> String {
        format!("{}{name}", self.dispatchers())
    }

    /// The folder of published jobs.
    pub fn jobs(&self) -> String {
        format!("{}/jobs/", self.prefix)
    }

    /// One published job.
    pub fn job(&self, id: i64) -> String {
        format!("{}{id}", self.jobs())
    }

    /// The folder of run-now requests.
    pub fn manual(&self) -> String {
        format!("{}/manual/", self.prefix)
    }

    /// The run-now request of job `job_id` made at `requested_ms`.
    pub fn manual_request_key(&self, job_id: i64, requested_ms: i64) -> String {
        format!("{}{job_id}/{requested_ms}", self.manual())
    }

    /// The (job id, requested ms) of a key under [`EtcdKeys::manual`].
    pub fn manual_request(&self, key: &str) -> Option<(i64, i64)> {
        pair_under(&self.manual(), key)
    }

    /// The folder of retry requests.
    pub fn retries(&self) -> String {
        format!("{}/retry/", self.prefix)
    }

    /// The request to retry run `run_id` of job `job_id`.
    pub fn retry_request_key(&self, job_id: i64, run_id: i64) -> String {
        format!("{}{job_id}/{run_id}", self.retries())
    }

    /// The (job id, run id) of a key under [`EtcdKeys::retries`].
    pub fn retry_request(&self, key: &str) -> Option<(i64, i64)> {
        pair_under(&self.retries(), key)
    }

    /// The folder of chain requests.
    pub fn chains(&self) -> String {
        format!("{}/chain/", self.prefix)
    }

    /// The request to run job `job_id` after parent run `parent_run`.
    pub fn chain_request_key(&self, job_id: i64, parent_run: i64) -> String {
        format!("{}{job_id}/{parent_run}", self.chains())
    }

    /// The (job id, parent run id) of a key under [`EtcdKeys::chains`].
    pub fn chain_request(&self, key: &str) -> Option<(i64, i64)> {
        pair_under(&self.chains(), key)
    }

    /// The folder of event requests.
    pub fn events(&self) -> String {
        format!("{}/event/", self.prefix)
    }

    /// The request to run job `job_id` for event `event_id`.
    pub fn event_request_key(&self, job_id: i64, event_id: i64) -> String {
        format!("{}{job_id}/{event_id}", self.events())
    }

    /// The (job id, event id) of a key under [`EtcdKeys::events`].
    pub fn event_request(&self, key: &str) -> Option<(i64, i64)> {
        pair_under(&self.events(), key)
    }

    /// The job id of a key under [`EtcdKeys::jobs`].
    pub fn job_id(&self, key: &str) -> Option<i64> {
        key.strip_prefix(&self.jobs())?.parse().ok()
    }
}

/// The two ids of a key `{folder}{a}/{b}`.
fn pair_under(folder: &str, key: &str) -> Option<(i64, i64)> {
    let (a, b) = key.strip_prefix(folder)?.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Redis key layout.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> RedisKeys {
        RedisKeys {
            prefix: prefix.to_owned(),
        }
    }

    /// The lock of one tick of one job.
    pub fn tick(&self, job_id: i64, scheduled_ms: i64) -> String {
        format!("{}:tick:{job_id}:{scheduled_ms}", self.prefix)
    }

    /// The lock of one run-now request of one job.
    pub fn manual(&self, job_id: i64, requested_ms: i64) -> String {
        format!("{}:manual:{job_id}:{requested_ms}", self.prefix)
    }

    /// The lock of one retry of one job, at the instant it is due: the only retry lock of
    /// earlier releases, still taken along with [`RedisKeys::retry_of`], so that a retry fired
    /// by dispatchers of both releases during a rolling upgrade runs once.
    pub fn retry(&self, job_id: i64, due_ms: i64) -> String {
        format!("{}:retry:{job_id}:{due_ms}", self.prefix)
    }

    /// The lock of the retry of run `run_id` of one job, whenever it is due: two versions of
    /// one retry request (put again with another due time) take the same lock.
    pub fn retry_of(&self, job_id: i64, run_id: i64) -> String {
        format!("{}:retry-of:{job_id}:{run_id}", self.prefix)
    }

    /// The lock of one chained run of one job, after parent run `parent_run`.
    pub fn chain(&self, job_id: i64, parent_run: i64) -> String {
        format!("{}:chain:{job_id}:{parent_run}", self.prefix)
    }

    /// The lock of one event's run of one job.
    pub fn event(&self, job_id: i64, event_id: i64) -> String {
        format!("{}:event:{job_id}:{event_id}", self.prefix)
    }

    /// How far a job has been scheduled: its latest tick fired (Unix ms).
    pub fn through(&self, job_id: i64) -> String {
        format!("{}:through:{job_id}", self.prefix)
    }

    /// The monitor's tick ledger: job id → how far its ticks are accounted for (Unix ms; every
    /// tick of the job's current rule up to it has a row).
    pub fn accounted(&self) -> String {
        format!("{}:accounted", self.prefix)
    }

    /// The hash of a job's runs in flight.
    pub fn live(&self, job_id: i64) -> String {
        format!("{}:live:{job_id}", self.prefix)
    }

    /// The set of job ids whose live hash is not empty: the lost-run sweep's index, so that it
    /// never scans the keyspace.
    pub fn live_jobs(&self) -> String {
        format!("{}:live_jobs", self.prefix)
    }

    /// The pattern matching every job's live hash (for the one `SCAN` that indexes live hashes
    /// written before the index existed).
    pub fn live_pattern(&self) -> String {
        format!("{}:live:*", self.prefix)
    }

    /// The job id of a live hash's key.
    pub fn live_job(&self, key: &str) -> Option<i64> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix(":live:")?
            .parse()
            .ok()
    }

    /// The claim of one run.
    pub fn run(&self, run_id: i64) -> String {
        format!("{}:run:{run_id}", self.prefix)
    }

    /// The dispatch counter of a machine group.
    pub fn round_robin(&self, machine: &str) -> String {
        let machine = if machine.is_empty() { "*" } else { machine };
        format!("{}:rr:{machine}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let k = EtcdKeys::new("/gocron/");
        assert_eq!(k.executor("e1"), "/gocron/executors/e1");
        assert_eq!(k.job(42), "/gocron/jobs/42");
        assert_eq!(k.instance("ab12"), "/gocron/instances/ab12");
        assert_eq!(k.job_id("/gocron/jobs/42"), Some(42));
        assert_eq!(k.job_id("/gocron/jobs/x"), None);
        assert_eq!(k.job_id("/other/jobs/42"), None);
        let r = RedisKeys::new("gc");
        assert_eq!(r.tick(3, 1000), "gc:tick:3:1000");
        assert_eq!(r.round_robin(""), "gc:rr:*");
        assert_eq!(r.run(9), "gc:run:9");
        assert_eq!(r.round_robin("php"), "gc:rr:php");
        assert_eq!(r.live(4), "gc:live:4");
        assert_eq!(r.through(4), "gc:through:4");
        assert_eq!(r.live_job("gc:live:4"), Some(4));
        assert_eq!(r.live_job("gc:live:x"), None);
        assert_eq!(r.manual(4, 99), "gc:manual:4:99");
        assert_eq!(k.manual_request_key(4, 99), "/gocron/manual/4/99");
        assert_eq!(k.manual_request("/gocron/manual/4/99"), Some((4, 99)));
        assert_eq!(k.manual_request("/gocron/manual/4"), None);
        assert_eq!(r.retry(4, 99), "gc:retry:4:99");
        assert_eq!(r.retry_of(4, 12), "gc:retry-of:4:12");
        assert_eq!(k.retry_request_key(4, 12), "/gocron/retry/4/12");
        assert_eq!(k.retry_request("/gocron/retry/4/12"), Some((4, 12)));
        assert_eq!(k.retry_request("/gocron/manual/4/12"), None);
        assert_eq!(r.event(4, 7), "gc:event:4:7");
        assert_eq!(r.chain(4, 7), "gc:chain:4:7");
        assert_eq!(k.chain_request_key(4, 7), "/gocron/chain/4/7");
        assert_eq!(k.chain_request("/gocron/chain/4/7"), Some((4, 7)));
        assert_eq!(k.event_request_key(4, 7), "/gocron/event/4/7");
        assert_eq!(k.event_request("/gocron/event/4/7"), Some((4, 7)));
        assert_eq!(k.event_request("/gocron/retry/4/7"), None);
    }
}
