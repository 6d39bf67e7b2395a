//! A job as the system passes it around once validated, and the vocabulary of runs.

use std::fmt;
use std::str::FromStr;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::entity::job;
use crate::machine::MachineGroups;
use crate::rule::{RuleError, Schedule};

/// How a job's command is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `/bin/sh -c command`.
    Shell,
    /// `GET command`; 2xx is success.
    Http,
}

/// What happens when a run passes its timeout (enforced by the executor; see the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPolicy {
    /// Flag and alarm, let it run, skip ticks while it runs.
    Abandon,
    /// Stop its process group.
    Kill,
    /// Flag and alarm, and start ticks alongside it.
    Sync,
}

macro_rules! text_enum {
    ($ty:ty, $what:literal, $($variant:path => $text:literal),+) => {
        impl $ty {
            /// The spelling stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($variant => $text),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($variant),)+
                    _ => Err(format!(
                        concat!($what, " {:?} is not one of: {}"),
                        s,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// What happens to ticks that passed while no dispatcher fired them (`cron_job.misfire`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Record them as `missed`; run the next tick on time.
    #[default]
    Skip,
    /// Run one catch-up run at once (the latest missed tick), record the others `missed`.
    Once,
    /// Run every missed tick within `[dispatcher] catchup_secs`, in order, capped.
    All,
}

text_enum!(JobKind, "kind", JobKind::Shell => "shell", JobKind::Http => "http");
text_enum!(Misfire, "misfire", Misfire::Skip => "skip", Misfire::Once => "once", Misfire::All => "all");
text_enum!(TimeoutPolicy, "timeout_policy",
    TimeoutPolicy::Abandon => "abandon", TimeoutPolicy::Kill => "kill", TimeoutPolicy::Sync => "sync");

/// The status of a run (`cron_run.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A dispatcher won the tick and is handing the run to an executor.
    Dispatched,
    /// An executor claimed the run and started the command.
    Running,
    /// The command exited 0 (shell) or answered 2xx (http).
    Succeeded,
    /// The command exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// No live executor of the job's machine group accepted the run.
    NoExecutor,
    /// The run passed its timeout under the `kill` policy, and its process group was stopped.
    Timeout,
    /// The run was stopped before its end: its executor was shutting down and the drain time
    /// was over, or an operator killed it.
    Killed,
    /// The executor holding the run died (its etcd lease expired) before recording an outcome,
    /// or the dispatcher died during the hand-off; the job is free to run again.
    Lost,
    /// The tick was not started because the job's previous run was still live (policy
    /// `abandon`); `error` names the run it waited on.
    Skipped,
    /// The tick passed while no dispatcher could fire it (misfire policy `skip`).
    Missed,
}

text_enum!(RunStatus, "status",
    RunStatus::Dispatched => "dispatched", RunStatus::Running => "running",
    RunStatus::Succeeded => "succeeded", RunStatus::Failed => "failed",
    RunStatus::NoExecutor => "no_executor", RunStatus::Timeout => "timeout",
    RunStatus::Killed => "killed", RunStatus::Lost => "lost",
    RunStatus::Skipped => "skipped", RunStatus::Missed => "missed");

/// Why a run exists (`cron_run.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A tick of the job's rule.
    Schedule,
    /// An operator asked for it.
    Manual,
}

text_enum!(Trigger, "trigger", Trigger::Schedule => "schedule", Trigger::Manual => "manual");

/// A validated, enabled job: what the monitor publishes and dispatchers schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// `cron_job.id`.
    pub id: i64,
    /// `cron_job.name`.
    pub name: String,
    /// `cron_job.rule`, as written.
    pub rule: String,
    /// `cron_job.command`.
    pub command: String,
    /// `cron_job.kind`.
    pub kind: JobKind,
    /// `cron_job.machine`; empty = any executor.
    pub machine: String,
    /// `cron_job.timeout_secs`; 0 = until the next tick.
    pub timeout_secs: u32,
    /// `cron_job.timeout_policy`.
    pub timeout_policy: TimeoutPolicy,
    /// `cron_job.time_zone`; empty = the dispatcher's default.
    pub time_zone: String,
    /// `cron_job.misfire`.
    #[serde(default)]
    pub misfire: Misfire,
}

impl JobSpec {
    /// The job's schedule, its empty time zone meaning `default_tz`.
    pub fn schedule(&self, default_tz: Tz) -> Result<Schedule, JobError> {
        schedule(&self.rule, &self.time_zone, default_tz)
    }
}

/// The schedule of `rule` in `time_zone`, an empty zone meaning `default_tz`.
pub fn schedule(rule: &str, time_zone: &str, default_tz: Tz) -> Result<Schedule, JobError> {
    let tz = if time_zone.is_empty() {
        default_tz
    } else {
        time_zone
            .parse()
            .map_err(|_| JobError::TimeZone(time_zone.to_owned()))?
    };
    Schedule::new(rule, tz).map_err(JobError::Rule)
}

/// Occurs when a `cron_job` row cannot be scheduled; written to `cron_job.last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Occurs when the rule does not parse.
    #[error("{0}")]
    Rule(RuleError),
    /// Occurs when `time_zone` is not an IANA zone name.
    #[error("unknown time_zone {0:?} (expected an IANA name such as Europe/Berlin)")]
    TimeZone(String),
    /// Occurs when `machine` is not a key of `[machine]`.
    #[error(
        "unknown machine group {machine:?}: not a key of [machine] in conf.ini (known: {known})"
    )]
    Machine {
        /// The row's `machine`.
        machine: String,
        /// The configured group names.
        known: String,
    },
    /// Occurs when a text column holds a value outside its vocabulary.
    #[error("{0}")]
    Column(String),
    /// Occurs when `command` is empty.
    #[error("command is empty")]
    EmptyCommand,
    /// Occurs when the job's texts (command, name, rule, machine, time zone) are too long to be
    /// handed to an executor in one run request (see [`crate::rpc::MAX_FRAME_BYTES`]).
    #[error(
        "command, name and rule take {bytes} bytes; at most {MAX_JOB_TEXT_BYTES} fit in a run request"
    )]
    TooLong {
        /// Their length together, in bytes.
        bytes: usize,
    },
}

/// The most bytes a job's texts may take together: a run request must fit in one RPC frame
/// ([`crate::rpc::MAX_FRAME_BYTES`]), with room for the rest of the request.
pub const MAX_JOB_TEXT_BYTES: usize = 128 * 1024;

/// Checks a row against the rules and the machine groups.
pub fn validate(
    row: &job::Model,
    machines: &MachineGroups,
    default_tz: Tz,
) -> Result<JobSpec, JobError> {
    let spec = JobSpec {
        id: row.id,
        name: row.name.clone(),
        rule: row.rule.clone(),
        command: row.command.clone(),
        kind: row.kind.parse().map_err(JobError::Column)?,
        machine: row.machine.trim().to_owned(),
        timeout_secs: u32::try_from(row.timeout_secs).map_err(|_| {
            JobError::Column(format!(
                "timeout_secs {} must be 0 or more",
                row.timeout_secs
            ))
        })?,
        timeout_policy: row.timeout_policy.parse().map_err(JobError::Column)?,
        time_zone: row.time_zone.trim().to_owned(),
        misfire: row.misfire.parse().map_err(JobError::Column)?,
    };
    if spec.command.trim().is_empty() {
        return Err(JobError::EmptyCommand);
    }
    let bytes = [
        &spec.command,
        &spec.name,
        &spec.rule,
        &spec.machine,
        &spec.time_zone,
    ]
    .iter()
    .map(|text| text.len())
    .sum();
    if bytes > MAX_JOB_TEXT_BYTES {
        return Err(JobError::TooLong { bytes });
    }
    spec.schedule(default_tz)?;
    if !machines.is_known(&spec.machine) {
        return Err(JobError::Machine {
            machine: spec.machine.clone(),
            known: machines.names().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> job::Model {
        let now = chrono::Utc::now();
        job::Model {
            id: 7,
            name: "n".into(),
            rule: "*/5 * * * * *".into(),
            command: "true".into(),
            kind: "shell".into(),
            machine: String::new(),
            timeout_secs: 0,
            timeout_policy: "abandon".into(),
            time_zone: String::new(),
            enabled: 1,
            alarm_emails: String::new(),
            alarm_mobiles: String::new(),
            created_at: now,
            updated_at: now,
            last_error: None,
            misfire: "skip".into(),
            done_at: None,
        }
    }

    #[test]
    fn a_good_row_validates() {
        let mut groups = MachineGroups::default();
        groups.insert("php", "10.0.0.1").unwrap();
        let mut r = row();
        r.machine = "php".into();
        r.kind = "HTTP".into();
        let spec = validate(&r, &groups, Tz::UTC).unwrap();
        assert_eq!(spec.kind, JobKind::Http);
        assert_eq!(spec.machine, "php");
    }

    #[test]
    fn bad_rows_say_why() {
        let groups = MachineGroups::default();
        type Mutation = Box<dyn Fn(&mut job::Model)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.rule = "nope".into()),
                "invalid rule \"nope\"",
            ),
            (
                Box::new(|r| r.machine = "ghost".into()),
                "unknown machine group \"ghost\"",
            ),
            (
                Box::new(|r| r.time_zone = "Mars/Base".into()),
                "unknown time_zone",
            ),
            (
                Box::new(|r| r.kind = "ftp".into()),
                "kind \"ftp\" is not one of: shell, http",
            ),
            (
                Box::new(|r| r.timeout_policy = "maybe".into()),
                "timeout_policy \"maybe\"",
            ),
            (Box::new(|r| r.timeout_secs = -1), "timeout_secs -1"),
            (Box::new(|r| r.command = " ".into()), "command is empty"),
            (
                Box::new(|r| r.command = "x".repeat(MAX_JOB_TEXT_BYTES)),
                "at most 131072 fit in a run request",
            ),
        ];
        for (mutate, needle) in cases {
            let mut r = row();
            mutate(&mut r);
            let err = validate(&r, &groups, Tz::UTC).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            RunStatus::Dispatched,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::NoExecutor,
            RunStatus::Timeout,
            RunStatus::Killed,
            RunStatus::Lost,
            RunStatus::Skipped,
            RunStatus::Missed,
        ] {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
        }
    }
}
