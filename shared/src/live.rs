//! Which runs are live: "still running" derived from live state, never from a flag a crash can
//! leave behind.
//!
//! Each job has a hash in Redis (`{prefix}:live:{job_id}`, see [`crate::keys`]) of its runs in
//! flight: run id → [`Holder`]. The dispatcher that wins a tick enters the run as held by itself
//! (the hand-off); the executor that claims it replaces that with itself, atomically with the
//! claim, and marks it ended when the job's process exits (it then holds the job up no more);
//! whoever records the run's final status removes it. The hash is only an index of
//! candidates: whether a run is held is decided by [`Holder::is_held`] against the executor
//! processes alive in etcd right now (`{prefix}/instances/{instance}`, under a lease of their own
//! that a stopping executor keeps until its drain is over, unlike its registration). An executor
//! that dies (SIGKILL, power loss) loses that lease within the TTL, so its runs stop being live
//! even though their entries remain; whoever finds them (the dispatcher at the job's next tick,
//! or the monitor's sweep) records them `lost` and removes the entries. A run whose row says `running` is therefore never trusted on its own.

use std::fmt;
use std::time::Duration;

use std::collections::HashSet;

use chrono::Utc;

use crate::keys::EtcdKeys;
use crate::lock::Fences;
use crate::machine::ExecutorInfo;
use crate::registry;
use crate::runs::RunLog;

/// How long a dispatcher may hold a run during the hand-off before the run counts as lost: a
/// hand-off offers the run to each executor within `[dispatcher] rpc_timeout_ms`, so a holder
/// older than this died mid-hand-off.
pub const HANDOFF_LIMIT: Duration = Duration::from_secs(60);

/// Who holds a run in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// The dispatcher `name` has been handing it over since `since_ms`.
    Dispatcher {
        /// When the hand-off began (Unix ms).
        since_ms: i64,
        /// The dispatcher's name.
        name: String,
    },
    /// An executor runs it (`ended`: the job has exited and the executor is recording its
    /// outcome; the run no longer holds the job up).
    Executor {
        /// The executor process's [`ExecutorInfo::instance`].
        instance: String,
        /// `name@address`.
        label: String,
        /// Whether the job's process has ended.
        ended: bool,
    },
}

impl Holder {
    /// The holder for an executor.
    pub fn executor(info: &ExecutorInfo) -> Holder {
        Holder::Executor {
            instance: info.instance.clone(),
            label: info.to_string(),
            ended: false,
        }
    }

    /// The same holder once the job's process has ended (its outcome is being recorded).
    pub fn ended(self) -> Holder {
        match self {
            Holder::Executor {
                instance, label, ..
            } => Holder::Executor {
                instance,
                label,
                ended: true,
            },
            other => other,
        }
    }

    /// Whether the job is still running (or being handed over), as opposed to ended and being
    /// recorded.
    pub fn is_running(&self) -> bool {
        !matches!(self, Holder::Executor { ended: true, .. })
    }

    /// Reads the stored form; `None` for anything else (treated as not live).
    pub fn parse(text: &str) -> Option<Holder> {
        let mut parts = text.splitn(3, ' ');
        match (parts.next()?, parts.next()?, parts.next()?) {
            ("d", since, name) => Some(Holder::Dispatcher {
                since_ms: since.parse().ok()?,
                name: name.to_owned(),
            }),
            (kind @ ("x" | "e"), instance, label) => Some(Holder::Executor {
                instance: instance.to_owned(),
                label: label.to_owned(),
                ended: kind == "e",
            }),
            _ => None,
        }
    }

    /// Whether the run is held: its executor process is alive now (among `instances`), or its
    /// dispatcher's hand-off began less than [`HANDOFF_LIMIT`] ago. A run no longer held is lost.
    pub fn is_held(&self, instances: &HashSet<String>, now_ms: i64) -> bool {
        match self {
            Holder::Dispatcher { since_ms, .. } => {
                now_ms - since_ms < HANDOFF_LIMIT.as_millis() as i64
            }
            Holder::Executor { instance, .. } => instances.contains(instance),
        }
    }

    /// Where the run is, for messages and `cron_run.executor`: `name@address`, or the
    /// dispatcher handing it over.
    pub fn label(&self) -> String {
        match self {
            Holder::Dispatcher { name, .. } => format!("dispatcher {name} (hand-off)"),
            Holder::Executor { label, .. } => label.clone(),
        }
    }
}

impl fmt::Display for Holder {
    /// The stored form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Dispatcher { since_ms, name } => write!(f, "d {since_ms} {name}"),
            Holder::Executor {
                instance,
                label,
                ended,
            } => write!(f, "{} {instance} {label}", if *ended { "e" } else { "x" }),
        }
    }
}

/// A run in a job's live hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRun {
    /// The job.
    pub job_id: i64,
    /// The run.
    pub run_id: i64,
    /// Who holds it, as stored (`None`: unreadable).
    pub holder: Option<Holder>,
}

impl LiveRun {
    /// Whether it is held now (see [`Holder::is_held`]).
    pub fn is_held(&self, instances: &HashSet<String>, now_ms: i64) -> bool {
        self.holder
            .as_ref()
            .is_some_and(|h| h.is_held(instances, now_ms))
    }

    /// Whether its job is still running (not ended and being recorded).
    pub fn is_running(&self) -> bool {
        self.holder.as_ref().is_some_and(Holder::is_running)
    }

    /// Why it is no longer live, for `cron_run.error`.
    pub fn why_lost(&self) -> String {
        match &self.holder {
            Some(Holder::Executor { label, .. }) => format!(
                "lost: executor {label} stopped (its etcd lease ended) before recording an outcome"
            ),
            Some(Holder::Dispatcher { name, .. }) => {
                format!("lost: dispatcher {name} stopped during the hand-off")
            }
            None => "lost: its holder could not be read".to_owned(),
        }
    }
}

/// The runs of `in_flight` that are live (held, and still running: a run that ended and is being
/// recorded holds nothing up); the ones no longer held are recorded `lost` and taken out of their
/// job's live hash. A holder missing from `view` (a mirror of the executor instances, which may
/// lag behind one that just started; `None` before it was first read) is checked against etcd
/// itself first; if etcd cannot be read, nothing
/// is called lost (better a skipped tick than a job run twice).
pub async fn settle(
    in_flight: Vec<LiveRun>,
    view: Option<&HashSet<String>>,
    etcd: &etcd_client::Client,
    keys: &EtcdKeys,
    runs: &RunLog,
    fences: &Fences,
) -> Vec<LiveRun> {
    let now_ms = Utc::now().timestamp_millis();
    let empty = HashSet::new();
    let view = view.unwrap_or(&empty);
    let (mut live, maybe_dead): (Vec<_>, Vec<_>) =
        in_flight.into_iter().partition(|r| r.is_held(view, now_ms));
    live.retain(LiveRun::is_running);
    if maybe_dead.is_empty() {
        return live;
    }
    let registered = match registry::read_instances(etcd, keys).await {
        Ok(registered) => registered,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the executors to check for lost runs");
            live.extend(maybe_dead.into_iter().filter(LiveRun::is_running));
            return live;
        }
    };
    for run in maybe_dead {
        if run.is_held(&registered, now_ms) {
            if run.is_running() {
                live.push(run);
            }
            continue;
        }
        let why = run.why_lost();
        tracing::warn!(job_id = run.job_id, run_id = run.run_id, "{why}");
        match runs.lost(run.run_id, why).await {
            // Recorded, or the row was already final: either way the entry has served.
            Ok(_) => {
                if let Err(e) = fences.release(run.job_id, run.run_id).await {
                    tracing::warn!(run_id = run.run_id, error = %e, "cannot drop a lost run's entry");
                }
            }
            Err(e) => tracing::warn!(run_id = run.run_id, error = %e, "cannot record a lost run"),
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(instance: &str) -> ExecutorInfo {
        ExecutorInfo {
            name: "e1".into(),
            address: "127.0.0.1:7071".parse().unwrap(),
            version: "0".into(),
            started_at: String::new(),
            instance: instance.into(),
            starts_at_tick: true,
            takes_batches: true,
        }
    }

    #[test]
    fn holders_round_trip_and_liveness_follows_registration() {
        let x = Holder::executor(&executor("aa"));
        let set = |ids: &[&str]| ids.iter().map(|i| i.to_string()).collect::<HashSet<_>>();
        assert_eq!(x.to_string(), "x aa e1@127.0.0.1:7071");
        assert_eq!(Holder::parse(&x.to_string()), Some(x.clone()));
        assert!(x.is_held(&set(&["aa"]), 0) && x.is_running());
        // Same name and address, another process: the run's process is gone.
        assert!(!x.is_held(&set(&["bb"]), 0));
        assert!(!x.is_held(&set(&[]), 0));
        // Ended, being recorded: still held by its process, no longer running.
        let e = x.clone().ended();
        assert_eq!(e.to_string(), "e aa e1@127.0.0.1:7071");
        assert_eq!(Holder::parse(&e.to_string()), Some(e.clone()));
        assert!(e.is_held(&set(&["aa"]), 0) && !e.is_running());

        let d = Holder::Dispatcher {
            since_ms: 1_000,
            name: "d 1".into(),
        };
        assert_eq!(Holder::parse(&d.to_string()), Some(d.clone()));
        let limit = HANDOFF_LIMIT.as_millis() as i64;
        assert!(d.is_held(&set(&[]), 1_000 + limit - 1) && d.is_running());
        assert!(!d.is_held(&set(&[]), 1_000 + limit));
        assert_eq!(Holder::parse("nobody:d0"), None);
    }
}
