//! `cron_run`: one row per run (or per tick that could not run), written by gocron.

use sea_orm::entity::prelude::*;

/// One run as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_run")]
pub struct Model {
    /// Auto-increment id; also `GOCRON_RUN_ID` in the job's environment.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The job's `cron_job.id`.
    pub job_id: i64,
    /// The tick's instant (UTC, millisecond precision).
    pub scheduled_at: DateTimeUtc,
    /// See [`crate::job::RunStatus`].
    pub status: String,
    /// `name@address` of the executor that holds the run; empty until one does.
    pub executor: String,
    /// When the command started.
    pub started_at: Option<DateTimeUtc>,
    /// When the run reached its final status.
    pub finished_at: Option<DateTimeUtc>,
    /// The exit code of a shell job, or the HTTP status of an http job.
    pub exit_code: Option<i32>,
    /// The tail of stdout and stderr (or of the HTTP body).
    pub output: Option<String>,
    /// Why the run is not `succeeded`, in words.
    pub error: Option<String>,
    /// `schedule`, `manual`, `retry`, `event` or `chain`.
    pub trigger: String,
    /// When the run passed its timeout while still running under the `abandon` or `sync`
    /// policy (the overrun flag); the run itself goes on.
    pub overrun_at: Option<DateTimeUtc>,
    /// 1 for a run of a tick or a run-now; 2, 3, … for its retries.
    pub attempt: i32,
    /// A retry's first attempt (its run id); NULL for a first attempt.
    pub retry_of: Option<i64>,
    /// What the run comes from: for a retry, the run it follows; for an event, the event's
    /// `cron_event.id`; for a chained run, the parent run; 0 for a tick or a run-now. Part of the unique key
    /// `(job_id, scheduled_at, trigger, source_id, shard_index)`.
    pub source_id: i64,
    /// For a run of a fanned-out tick (route `broadcast` or `shard`), its place among the
    /// tick's runs: 0, 1, …, `shard_total - 1` (`GOCRON_SHARD_INDEX`); 0 for others. Part of
    /// the unique key.
    pub shard_index: i32,
    /// How many runs the tick was fanned out into (`GOCRON_SHARD_TOTAL`); 0 for a run that
    /// was not.
    pub shard_total: i32,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
