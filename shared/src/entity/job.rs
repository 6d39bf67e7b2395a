//! `cron_job`: one row per job, written by users with plain SQL (or a CLI).

use sea_orm::entity::prelude::*;

/// One job as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_job")]
pub struct Model {
    /// Auto-increment id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// A human name.
    pub name: String,
    /// The cron rule; see [`crate::rule`].
    pub rule: String,
    /// The shell command, or the URL of an `http` job.
    pub command: String,
    /// `shell` (default) or `http`.
    pub kind: String,
    /// A `[machine]` group name; empty = any executor.
    pub machine: String,
    /// Seconds; 0 = until the job's next tick.
    pub timeout_secs: i32,
    /// `abandon` (default), `kill` or `sync`.
    pub timeout_policy: String,
    /// IANA zone; empty = `[dispatcher] time_zone`.
    pub time_zone: String,
    /// 1 = scheduled, 0 = not.
    pub enabled: i32,
    /// Extra alarm recipients (mail), comma- or space-separated.
    pub alarm_emails: String,
    /// Extra alarm recipients (SMS), comma- or space-separated.
    pub alarm_mobiles: String,
    /// When the row was inserted.
    pub created_at: DateTimeUtc,
    /// When the row was last changed (kept by MySQL/MariaDB itself; by gocron's tools elsewhere).
    pub updated_at: DateTimeUtc,
    /// Why the row is not scheduled, written by the monitor; NULL when it is fine.
    pub last_error: Option<String>,
    /// `skip`, `once` or `all`: what happens to ticks missed while no dispatcher fired them.
    pub misfire: String,
    /// When a one-shot job (`@at`) ran: it is done and not published again.
    pub done_at: Option<DateTimeUtc>,
    /// `KEY=VALUE` lines: a shell job's extra environment (see [`crate::job::parse_env`]).
    pub env: String,
    /// The directory a shell job starts in; empty = the executor's own working directory.
    pub workdir: String,
    /// How many times a run that ends `failed`, `timeout`, `lost` or `no_executor` is run
    /// again (0 = never).
    pub retries: i32,
    /// Seconds before the first retry; each next one waits twice as long, at most an hour.
    pub retry_delay_secs: i32,
    /// For an `@event` job: seconds between an event and its run (0 = at once).
    pub delay_secs: i32,
    /// Jobs (ids or names, comma-separated) started when a run of this one succeeds.
    pub on_success: String,
    /// Jobs started when a run of this one fails for good (`failed`, `timeout`, `lost` or
    /// `no_executor`, with no retry left).
    pub on_failure: String,
    /// Which executor of the group gets a run first: `round_robin`, `random`, `least_busy`,
    /// `hash`; or `broadcast`, `shard`: every live executor of the group gets a run of each tick.
    pub route: String,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
