//! Operator actions, for the command-line tools: run a job now, kill a run.
//!
//! Run-now goes through the dispatchers, so that it takes the same path as a tick: the request
//! is an etcd key (`{prefix}/manual/{job_id}/{requested_ms}`, under a short lease so a request
//! nobody serves disappears); every dispatcher sees it, they race for its lock in Redis like
//! for a tick, the winner applies the job's policy (an `abandon` job with a live run gets a
//! `skipped` row), hands the run to an executor with `trigger = manual`, and deletes the key.
//! The run row is `(job_id, scheduled_at = requested instant, trigger = 'manual')`.
//!
//! Kill finds the run's executor in the job's live hash (see [`crate::live`]) and asks it over
//! RPC, with the `[rpc] secret`, to stop the run's process group; the run ends `killed`. A
//! running run's output is read from the same executor ([`executor_of`], then
//! [`crate::rpc::ExecutorRpc::run_output`]).

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use etcd_client::{Client, PutOptions};
use serde::{Deserialize, Serialize};

use crate::keys::EtcdKeys;
use crate::live::Holder;
use crate::lock::Fences;
use crate::rpc::{self, KillRequest, Refused, Secret, Tls};

/// How long a run-now request waits for a dispatcher before it lapses.
pub const REQUEST_TTL_SECS: i64 = 60;

/// Occurs when an operator action cannot be done; says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Occurs when etcd cannot be written.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Occurs when Redis cannot be read.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Occurs when the run is not in flight (finished, never started, or unknown).
    #[error("run {0} is not in flight")]
    NotInFlight(i64),
    /// Occurs when the run is still being handed to an executor: try again in a moment.
    #[error("run {0} is being handed over by {1}; try again")]
    InHandOff(i64, String),
    /// Occurs when the executor cannot be reached.
    #[error("executor {0}: {1}")]
    Unreachable(String, String),
    /// Occurs when a run-now's variables are not `KEY=VALUE` lines.
    #[error("env {0}")]
    Env(String),
    /// Occurs when the executor refuses (wrong secret, or it no longer runs it).
    #[error("executor {0} refused: {1}")]
    Refused(String, Refused),
}

/// What a run-now request's etcd value holds, as JSON (an empty value is a request with
/// nothing more, as the first releases wrote it).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunNow {
    /// Variables for this run only, on top of the job's `env` (replacing those of the same name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

impl RunNow {
    /// Reads a request's value; an empty one is a plain request.
    pub fn decode(value: &[u8]) -> Result<RunNow, String> {
        if value.is_empty() {
            return Ok(RunNow::default());
        }
        serde_json::from_slice(value).map_err(|e| format!("run-now request: {e}"))
    }
}

/// A retry request's etcd value (`{prefix}/retry/{job}/{run}`, JSON): the monitor puts it when
/// run `run` ended so that its job runs it again; the dispatcher that fires the retry deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRequest {
    /// When the retry is due (Unix ms): its run row's `scheduled_at`, and its lock's instant.
    pub due_ms: i64,
    /// Which attempt it is (2 for the first retry).
    pub attempt: i32,
    /// The first attempt's run id (`cron_run.retry_of`).
    pub first_run: i64,
    /// When the first attempt was an event's run, the event: the retry gets it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<crate::job::EventRef>,
    /// When the first attempt was one run of a fanned-out tick (route `broadcast` or `shard`),
    /// its place: the retry keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::job::Shard>,
    /// When the first attempt was a chained run, its parent run: the retry is told it too
    /// (`GOCRON_PARENT_RUN_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run: Option<i64>,
}

/// An event request's etcd value (`{prefix}/event/{job}/{event}`, JSON): the monitor puts one
/// for each job subscribed to an event it reads in `cron_event`; the dispatcher that fires the
/// run deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRequest {
    /// When the run is due (Unix ms): the event's `created_at` plus the job's `delay_secs`;
    /// the run row's `scheduled_at`.
    pub due_ms: i64,
    /// The event's name, payload and whether the job waits for it.
    pub event: crate::job::EventRef,
}

/// A chain request's etcd value (`{prefix}/chain/{job}/{parent run}`, JSON): the monitor puts
/// one for each job a run's `on_success` or `on_failure` names when the run ends so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRequest {
    /// When the run is due (Unix ms): when the parent run ended.
    pub due_ms: i64,
}

/// Puts a deferred request (a [`RetryRequest`], [`EventRequest`] or [`ChainRequest`]) under
/// `key` (`EtcdKeys::retry_request_key`, `event_request_key`, `chain_request_key`), with no
/// lease: it waits for a dispatcher however long that takes. Putting the same request twice is
/// harmless: its lock and the run row's unique key make it run once.
pub async fn put_request(
    etcd: &mut Client,
    key: String,
    request: &impl Serialize,
) -> Result<(), ControlError> {
    let value = serde_json::to_string(request).unwrap_or_default();
    etcd.put(key, value, None).await?;
    Ok(())
}

/// Asks the dispatchers to run job `job_id` now, with the variables of `env` (`KEY=VALUE`
/// lines, see [`crate::job::parse_env`]) for this run only; returns the request's instant,
/// which is the run row's `scheduled_at` (with `trigger = 'manual'`).
pub async fn run_now(
    etcd: &mut Client,
    keys: &EtcdKeys,
    job_id: i64,
    env: &str,
) -> Result<DateTime<Utc>, ControlError> {
    let request = RunNow {
        env: crate::job::parse_env(env).map_err(ControlError::Env)?,
    };
    let value = if request == RunNow::default() {
        String::new()
    } else {
        serde_json::to_string(&request).unwrap_or_default()
    };
    let now = Utc::now();
    let ms = now.timestamp_millis();
    let lease = etcd.lease_grant(REQUEST_TTL_SECS, None).await?;
    etcd.put(
        keys.manual_request_key(job_id, ms),
        value,
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await?;
    Ok(Utc.timestamp_millis_opt(ms).single().unwrap_or(now))
}

/// The executor holding run `run_id` of job `job_id`, from the job's live hash: its label
/// (`name@address`) and address.
pub async fn executor_of(
    fences: &Fences,
    job_id: i64,
    run_id: i64,
) -> Result<(String, SocketAddr), ControlError> {
    let run = fences
        .in_flight(job_id)
        .await?
        .into_iter()
        .find(|r| r.run_id == run_id)
        .ok_or(ControlError::NotInFlight(run_id))?;
    let label = match run.holder {
        Some(Holder::Executor { label, .. }) => label,
        Some(Holder::Dispatcher { name, .. }) => {
            return Err(ControlError::InHandOff(run_id, name));
        }
        None => return Err(ControlError::NotInFlight(run_id)),
    };
    let address = label
        .rsplit_once('@')
        .and_then(|(_, addr)| addr.parse().ok())
        .ok_or_else(|| {
            ControlError::Unreachable(label.clone(), "no address in its label".into())
        })?;
    Ok((label, address))
}

/// Asks the executor running run `run_id` of job `job_id` to stop it (status `killed`); `by`
/// says who asks; `secret` and `tls` are `[rpc]`'s.
pub async fn kill_run(
    fences: &Fences,
    secret: &Secret,
    tls: &Tls,
    job_id: i64,
    run_id: i64,
    by: &str,
    timeout: Duration,
) -> Result<(), ControlError> {
    let (label, address) = executor_of(fences, job_id, run_id).await?;
    let unreachable = |why: String| ControlError::Unreachable(label.clone(), why);
    let client = rpc::connect(address, timeout, tls)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let request = KillRequest {
        secret: secret.clone(),
        run_id,
        by: by.to_owned(),
    };
    client
        .kill_run(rpc::context(timeout), request)
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .map_err(|refused| ControlError::Refused(label.clone(), refused))
}
