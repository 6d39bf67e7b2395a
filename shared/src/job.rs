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
text_enum!(Route, "route", Route::RoundRobin => "round_robin", Route::Random => "random",
    Route::LeastBusy => "least_busy", Route::Hash => "hash", Route::Broadcast => "broadcast",
    Route::Shard => "shard");
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

/// Which executor of the group is offered a run first (`cron_job.route`); the others are
/// offered it in turn when it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The group's executors in turn, across all dispatchers (a counter in Redis).
    #[default]
    RoundRobin,
    /// One at random.
    Random,
    /// The one with the fewest runs going (each is asked; one that does not answer is last).
    LeastBusy,
    /// The same one for a job as long as it is alive (rendezvous hashing of job and executor
    /// names), the next one by the same hash when it is not; an executor joining takes over
    /// only the jobs it now ranks first for.
    Hash,
    /// Every live executor of the group runs the tick: one run (row) per executor, each its
    /// own, never offered to another executor (see [`Shard`]).
    Broadcast,
    /// Like `broadcast`, each run told its place (`GOCRON_SHARD_INDEX`, `GOCRON_SHARD_TOTAL`):
    /// a shard is work to be done, so one its executor refuses is offered to the others.
    Shard,
}

impl Route {
    /// Whether a run of the job is one run per live executor (`broadcast`, `shard`).
    pub fn fans_out(self) -> bool {
        matches!(self, Route::Broadcast | Route::Shard)
    }
}

/// One run of a tick fanned out over the group's executors (route `broadcast` or `shard`):
/// `cron_run.shard_index` of `shard_total`, part of the row's unique key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0, 1, …, `total - 1`: the run's place among the executors of the tick, by name.
    pub index: i32,
    /// How many executors the tick was fanned out over.
    pub total: i32,
    /// The executor the run went to (its name), when it is a retry's: a retry of a
    /// broadcast run goes back there (a shard's retry tries it first). Empty: the one now at
    /// `index`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub executor: String,
}

/// Why a run exists (`cron_run.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A tick of the job's rule.
    Schedule,
    /// An operator asked for it.
    Manual,
    /// An earlier attempt of it ended `failed`, `timeout`, `lost` or `no_executor`, and the
    /// job has `retries` left.
    Retry,
    /// An event the job (`@event NAME`) is subscribed to was inserted into `cron_event`.
    Event,
    /// A run of a job naming this one in `on_success` or `on_failure` ended so.
    Chain,
}

text_enum!(Trigger, "trigger", Trigger::Schedule => "schedule", Trigger::Manual => "manual",
    Trigger::Retry => "retry", Trigger::Event => "event", Trigger::Chain => "chain");

/// The longest `cron_job.on_success` and `on_failure` (characters).
pub const MAX_CHAIN_CHARS: usize = 1024;

/// One job named in `on_success` or `on_failure`: by id, or by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChainTarget {
    /// A job id (the entry is all digits).
    Id(i64),
    /// A job name (anything else).
    Name(String),
}

/// Parses `on_success` or `on_failure`: job ids or names, separated by commas (spaces around
/// each trimmed, empty entries skipped), each at most once.
pub fn parse_chain(text: &str) -> Result<Vec<ChainTarget>, String> {
    if text.chars().count() > MAX_CHAIN_CHARS {
        return Err(format!("is longer than {MAX_CHAIN_CHARS} characters"));
    }
    let mut targets = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let target = if entry.bytes().all(|b| b.is_ascii_digit()) {
            ChainTarget::Id(
                entry
                    .parse()
                    .map_err(|_| format!("job id {entry} is out of range"))?,
            )
        } else {
            ChainTarget::Name(entry.to_owned())
        };
        if targets.contains(&target) {
            return Err(format!("names {entry} twice"));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// The most `cron_job.retries`.
pub const MAX_RETRIES: i32 = 100;

/// The longest delay before a retry (the doubling stops there).
pub const MAX_RETRY_DELAY_SECS: i64 = 3600;

/// Where a run that is neither a tick of the rule nor a run-now comes from (trigger `retry` or
/// `event`): what its row records, and what its command is told.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Origin {
    /// `cron_run.attempt`: 1, or 2, 3, … for retries.
    pub attempt: i32,
    /// `cron_run.retry_of`: a retry's first attempt (its run id).
    pub first_run: Option<i64>,
    /// `cron_run.source_id`: the run a retry follows, or the event's id. Part of the row's
    /// unique key, so that two retries or two events due in the same millisecond are two runs.
    pub source_id: i64,
    /// The event of an event's run, or of a retry of one.
    pub event: Option<EventRef>,
    /// A chained run's parent run (`GOCRON_PARENT_RUN_ID`).
    pub parent_run: Option<i64>,
    /// A retry of one run of a fanned-out tick: that run's place (see [`Shard`]).
    pub shard: Option<Shard>,
}

/// The event a run is for: `GOCRON_EVENT_NAME`, and `GOCRON_EVENT_PAYLOAD` (also on stdin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    /// `cron_event.id`.
    pub id: i64,
    /// `cron_event.name`.
    pub name: String,
    /// `cron_event.payload` (empty when NULL).
    pub payload: String,
    /// Whether the job waits `delay_secs` after the event: then, fired later than
    /// `[dispatcher] max_late_ms` after it was due, the run takes the job's misfire policy
    /// (`skip`: recorded `missed`).
    #[serde(default)]
    pub delayed: bool,
    /// When the monitor handed the event over (Unix ms): lateness counts from here when it is
    /// after the due time (a monitor that was slow to read the event did not make it late).
    #[serde(default)]
    pub requested_ms: i64,
}

/// The longest `cron_job.delay_secs` (30 days).
pub const MAX_EVENT_DELAY_SECS: i32 = 30 * 86_400;

/// The largest event payload handed to a command (bytes); a larger event's runs are recorded
/// `skipped`, saying so.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 64 * 1024;

/// How long after attempt `attempt` ended the next one starts: `first_delay_secs`, doubling
/// with each attempt, at most [`MAX_RETRY_DELAY_SECS`].
pub fn retry_delay(first_delay_secs: i32, attempt: i32) -> chrono::Duration {
    let doublings = (attempt.max(1) - 1).min(32) as u32;
    let secs = i64::from(first_delay_secs.max(0)).saturating_mul(1_i64 << doublings);
    chrono::Duration::seconds(secs.min(MAX_RETRY_DELAY_SECS))
}

/// Whether a run ending in `status` is retried (when its job has retries left).
pub fn is_retried(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Failed | RunStatus::Timeout | RunStatus::Lost | RunStatus::NoExecutor
    )
}

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
    /// `cron_job.env`, parsed: the variables a shell job's command gets on top of the
    /// executor's base environment ([`parse_env`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// `cron_job.workdir`: the directory a shell job's command starts in; empty = the
    /// executor's own working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workdir: String,
    /// `cron_job.route`.
    #[serde(default, skip_serializing_if = "is_round_robin")]
    pub route: Route,
}

fn is_round_robin(route: &Route) -> bool {
    *route == Route::RoundRobin
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
    /// Occurs when `env` is not `KEY=VALUE` lines, or sets a variable it may not.
    #[error("env {0}")]
    Env(String),
    /// Occurs when `workdir` is not an absolute path, or is set on an `http` job.
    #[error("workdir {0}")]
    Workdir(String),
    /// Occurs when `on_success` or `on_failure` does not parse, names a job that does not exist
    /// (or a name more than one job has), or closes a cycle of chains.
    #[error("{0}")]
    Chain(String),
    /// Occurs when the job's texts (command, name, rule, machine, time zone) are too long to be
    /// handed to an executor in one run request (see [`crate::rpc::MAX_FRAME_BYTES`]).
    #[error(
        "command, name, rule, env and workdir take {bytes} bytes; at most {MAX_JOB_TEXT_BYTES} fit in a run request"
    )]
    TooLong {
        /// Their length together, in bytes.
        bytes: usize,
    },
}

/// The most bytes a job's texts may take together: a run request must fit in one RPC frame
/// ([`crate::rpc::MAX_FRAME_BYTES`]), with room for the rest of the request.
pub const MAX_JOB_TEXT_BYTES: usize = 128 * 1024;

/// The longest `cron_job.env` (characters; the column is `VARCHAR(4096)` on MySQL/MariaDB).
pub const MAX_ENV_CHARS: usize = 4096;

/// The longest `cron_job.workdir` (characters; the column is `VARCHAR(1024)`).
pub const MAX_WORKDIR_CHARS: usize = 1024;

/// Parses `KEY=VALUE` lines (`cron_job.env`, or a run-now's extra variables): blank lines and
/// lines starting with `#` are skipped; the key (spaces around it trimmed) is a letter or `_`
/// then letters, digits and `_`, not starting with `GOCRON_` (gocron's own variables), each key
/// once; the value is the rest of the line after the first `=`, taken literally except that
/// one pair of surrounding double or single quotes is removed. The error names the line.
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {n}: {trimmed:?} is not KEY=VALUE"));
        };
        let key = key.trim();
        let mut chars = key.chars();
        let well_formed = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !well_formed {
            return Err(format!(
                "line {n}: {key:?} is not a variable name (a letter or _, then letters, digits, _)"
            ));
        }
        if key.to_ascii_uppercase().starts_with("GOCRON_") {
            return Err(format!(
                "line {n}: {key} is gocron's own (GOCRON_* variables are set by gocron)"
            ));
        }
        if vars.iter().any(|(k, _)| k == key) {
            return Err(format!("line {n}: {key} is set twice"));
        }
        if value.contains('\0') {
            return Err(format!("line {n}: the value of {key} holds a NUL byte"));
        }
        let unquoted = ['"', '\''].iter().find_map(|q| {
            value
                .strip_prefix(*q)
                .and_then(|v| v.strip_suffix(*q))
                .filter(|_| value.len() >= 2)
        });
        vars.push((key.to_owned(), unquoted.unwrap_or(value).to_owned()));
    }
    Ok(vars)
}

/// Checks `cron_job.workdir`: empty, or an absolute path.
fn check_workdir(workdir: &str) -> Result<(), JobError> {
    if workdir.chars().count() > MAX_WORKDIR_CHARS {
        return Err(JobError::Workdir(format!(
            "is longer than {MAX_WORKDIR_CHARS} characters"
        )));
    }
    if workdir.contains('\0') {
        return Err(JobError::Workdir("holds a NUL byte".into()));
    }
    if !workdir.is_empty() && !workdir.starts_with('/') {
        return Err(JobError::Workdir(format!(
            "{workdir:?} is not an absolute path"
        )));
    }
    Ok(())
}

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
        env: Vec::new(),
        workdir: row.workdir.trim().to_owned(),
        route: row.route.trim().parse().map_err(JobError::Column)?,
    };
    if spec.command.trim().is_empty() {
        return Err(JobError::EmptyCommand);
    }
    if !(0..=MAX_RETRIES).contains(&row.retries) {
        return Err(JobError::Column(format!(
            "retries {} must be between 0 and {MAX_RETRIES}",
            row.retries
        )));
    }
    if !(0..=MAX_RETRY_DELAY_SECS).contains(&i64::from(row.retry_delay_secs)) {
        return Err(JobError::Column(format!(
            "retry_delay_secs {} must be between 0 and {MAX_RETRY_DELAY_SECS}",
            row.retry_delay_secs
        )));
    }
    if row.env.chars().count() > MAX_ENV_CHARS {
        return Err(JobError::Env(format!(
            "is longer than {MAX_ENV_CHARS} characters"
        )));
    }
    if !(0..=MAX_EVENT_DELAY_SECS).contains(&row.delay_secs) {
        return Err(JobError::Column(format!(
            "delay_secs {} must be between 0 and {MAX_EVENT_DELAY_SECS}",
            row.delay_secs
        )));
    }
    for (column, text) in [
        ("on_success", &row.on_success),
        ("on_failure", &row.on_failure),
    ] {
        parse_chain(text).map_err(|e| JobError::Chain(format!("{column} {e}")))?;
    }
    let env = parse_env(&row.env).map_err(JobError::Env)?;
    check_workdir(&spec.workdir)?;
    if spec.kind == JobKind::Http && !(env.is_empty() && spec.workdir.is_empty()) {
        return Err(JobError::Column(
            "env and workdir apply to shell jobs only (this one is kind http)".into(),
        ));
    }
    let spec = JobSpec { env, ..spec };
    let bytes = [
        &spec.command,
        &spec.name,
        &spec.rule,
        &spec.machine,
        &spec.time_zone,
        &row.env,
        &spec.workdir,
    ]
    .iter()
    .map(|text| text.len())
    .sum();
    if bytes > MAX_JOB_TEXT_BYTES {
        return Err(JobError::TooLong { bytes });
    }
    let schedule = spec.schedule(default_tz)?;
    if row.delay_secs != 0 && schedule.rule().event().is_none() {
        return Err(JobError::Column(
            "delay_secs applies to @event jobs only".into(),
        ));
    }
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
            env: String::new(),
            workdir: String::new(),
            retries: 0,
            retry_delay_secs: 10,
            delay_secs: 0,
            on_success: String::new(),
            on_failure: String::new(),
            route: "round_robin".into(),
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
            (
                Box::new(|r| r.env = "A=1\nnot a pair".into()),
                "env line 2: \"not a pair\" is not KEY=VALUE",
            ),
            (
                Box::new(|r| r.env = "GOCRON_RUN_ID=5".into()),
                "env line 1: GOCRON_RUN_ID is gocron's own",
            ),
            (Box::new(|r| r.env = "A=1\nA=2".into()), "A is set twice"),
            (
                Box::new(|r| r.retries = -1),
                "retries -1 must be between 0 and 100",
            ),
            (
                Box::new(|r| r.retry_delay_secs = 3601),
                "retry_delay_secs 3601 must be between 0 and 3600",
            ),
            (Box::new(|r| r.env = "1A=x".into()), "not a variable name"),
            (Box::new(|r| r.route = "nearest".into()), "route"),
            (
                Box::new(|r| r.on_success = "3, nightly, 3".into()),
                "on_success names 3 twice",
            ),
            (
                Box::new(|r| r.on_failure = "9".repeat(30)),
                "on_failure job id 999999999999999999999999999999 is out of range",
            ),
            (
                Box::new(|r| r.delay_secs = 5),
                "delay_secs applies to @event jobs only",
            ),
            (
                Box::new(|r| {
                    r.rule = "@event order.paid".into();
                    r.delay_secs = -1;
                }),
                "delay_secs -1 must be between 0 and 2592000",
            ),
            (Box::new(|r| r.env = "A=x".repeat(2000)), "longer than 4096"),
            (
                Box::new(|r| r.workdir = "tmp/work".into()),
                "workdir \"tmp/work\" is not an absolute path",
            ),
            (
                Box::new(|r| {
                    r.kind = "http".into();
                    r.env = "A=1".into();
                }),
                "env and workdir apply to shell jobs only",
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
    fn env_lines_parse_like_a_simple_env_file() {
        let text = "# comment\n\n  PATH=/opt/bin:/usr/bin\nQUOTED=\"a b\"\nSINGLE='c'\nEMPTY=\nEQ=x=y\r\nHALF=\"\n";
        let vars = parse_env(text).unwrap();
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(
            pairs,
            [
                ("PATH", "/opt/bin:/usr/bin"),
                ("QUOTED", "a b"),
                ("SINGLE", "c"),
                ("EMPTY", ""),
                ("EQ", "x=y"),
                ("HALF", "\""),
            ]
        );
        let mut r = row();
        r.env = text.into();
        r.workdir = " /srv/app ".into();
        let spec = validate(&r, &MachineGroups::default(), Tz::UTC).unwrap();
        assert_eq!(spec.env, vars);
        assert_eq!(spec.workdir, "/srv/app");
    }

    #[test]
    fn retry_delays_double_up_to_an_hour() {
        let secs = |first, attempt| retry_delay(first, attempt).num_seconds();
        assert_eq!(
            [1, 2, 3, 4].map(|a| secs(10, a)),
            [10, 20, 40, 80],
            "attempt 1 ended: the first delay"
        );
        assert_eq!(secs(10, 12), 3600);
        assert_eq!(secs(0, 5), 0);
        assert_eq!(secs(3600, 100), 3600);
        assert_eq!("retry".parse::<Trigger>().unwrap(), Trigger::Retry);
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
