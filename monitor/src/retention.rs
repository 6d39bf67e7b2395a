//! Retention: old rows of `cron_run` and `cron_alarm` are deleted in the background, in small
//! batches, so that neither table grows forever.
//!
//! Every `[monitor] retention_secs` (and once at start), a pass deletes final runs (never
//! `dispatched` nor `running`) scheduled more than `keep_days` ago, then, per job, the final
//! runs beyond its newest `keep_runs` (by `scheduled_at`), then alarms done with (sent, given up,
//! summarised, capped, without recipient) created more than `alarm_keep_days` ago. Each
//! statement selects at most [`BATCH`] ids, then deletes by that id list (the same SQL on SQLite,
//! MariaDB and PostgreSQL, and no long lock), with a short pause between batches. Monitors may
//! prune at once: a delete by id is idempotent.
//!
//! The age is found without an index on `scheduled_at`: ids grow with time, so a binary search
//! by id (a few primary-key lookups) finds the last old row, and only ids below it are scanned.
//! A run is deleted only below the checks' `run_floor` (see [`crate::checks`]): the checks have
//! settled every run below it, and re-read the ones above, which must still be there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gocron_shared::config::MonitorConfig;
use gocron_shared::entity::{alarm, alarm_state, job, run};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use tokio_util::sync::CancellationToken;

use crate::alarms::status;

/// The most rows one statement selects, then deletes.
pub const BATCH: u64 = 1000;
/// Between two deleting statements: other writers get the tables.
const PAUSE: Duration = Duration::from_millis(20);
/// The statuses of a run in flight, never deleted.
const IN_FLIGHT: [&str; 2] = ["dispatched", "running"];
/// The statuses of an alarm done with.
const ALARM_DONE: [&str; 5] = [
    status::SENT,
    status::FAILED,
    status::SUMMARISED,
    status::CAPPED,
    status::NO_RECIPIENT,
];
/// Where the checks read runs again from (see [`crate::checks`]).
const RUN_FLOOR: &str = "run_floor";

/// What to keep.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Final runs scheduled within this long.
    pub runs_for: chrono::Duration,
    /// Per job, at least its newest this many runs.
    pub runs: u64,
    /// Alarms created within this long (and every alarm not done with).
    pub alarms_for: chrono::Duration,
}

impl Keep {
    /// `[monitor] keep_days`, `keep_runs`, `alarm_keep_days`.
    pub fn from_config(config: &MonitorConfig) -> Keep {
        let days = |d: u64| chrono::Duration::days(d.min(1_000_000) as i64);
        Keep {
            runs_for: days(config.keep_days),
            runs: config.keep_runs.max(1),
            alarms_for: days(config.alarm_keep_days),
        }
    }
}

/// Rows one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Runs older than `keep_days`.
    pub old_runs: u64,
    /// Runs beyond their job's newest `keep_runs`.
    pub extra_runs: u64,
    /// Alarms older than `alarm_keep_days`.
    pub alarms: u64,
}

/// Prunes every `interval` (the first pass at once) until `stop`.
pub async fn run(db: DatabaseConnection, keep: Keep, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            pruned = prune(&db, keep, Utc::now()) => match pruned {
                Ok(p) if p != Pruned::default() => tracing::info!(
                    old_runs = p.old_runs,
                    extra_runs = p.extra_runs,
                    alarms = p.alarms,
                    "old rows deleted (retention)"
                ),
                Ok(_) => {}
                // The next pass starts over: every step is a fresh look at the tables.
                Err(e) => tracing::warn!(error = %e, "retention pass failed"),
            },
        }
    }
}

/// One pass: deletes what `keep` does not keep, as of `now`.
pub async fn prune(
    db: &DatabaseConnection,
    keep: Keep,
    now: DateTime<Utc>,
) -> Result<Pruned, DbErr> {
    let floor = alarm_state::Entity::find_by_id(RUN_FLOOR.to_owned())
        .one(db)
        .await?
        .map_or(i64::MAX, |r| r.value);
    let mut pruned = Pruned::default();

    let cutoff = now - keep.runs_for;
    if let Some(last) =
        last_id_before::<run::Entity>(db, run::Column::Id, run::Column::ScheduledAt, cutoff, floor)
            .await?
    {
        let mut after = i64::MIN;
        loop {
            let ids: Vec<i64> = run::Entity::find()
                .select_only()
                .column(run::Column::Id)
                .filter(run::Column::Id.gt(after))
                .filter(run::Column::Id.lte(last))
                .filter(run::Column::ScheduledAt.lt(cutoff))
                .filter(run::Column::Status.is_not_in(IN_FLIGHT))
                .order_by_asc(run::Column::Id)
                .limit(BATCH)
                .into_tuple()
                .all(db)
                .await?;
            let Some(&max) = ids.last() else { break };
            after = max;
            pruned.old_runs += delete_runs(db, ids).await?;
        }
    }

    let mut after_job = i64::MIN;
    loop {
        let jobs: Vec<i64> = job::Entity::find()
            .select_only()
            .column(job::Column::Id)
            .filter(job::Column::Id.gt(after_job))
            .order_by_asc(job::Column::Id)
            .limit(BATCH)
            .into_tuple()
            .all(db)
            .await?;
        let Some(&max) = jobs.last() else { break };
        after_job = max;
        for job_id in jobs {
            pruned.extra_runs += prune_job(db, job_id, keep.runs, floor).await?;
        }
    }

    let cutoff = now - keep.alarms_for;
    if let Some(last) = last_id_before::<alarm::Entity>(
        db,
        alarm::Column::Id,
        alarm::Column::CreatedAt,
        cutoff,
        i64::MAX,
    )
    .await?
    {
        let mut after = i64::MIN;
        loop {
            let ids: Vec<i64> = alarm::Entity::find()
                .select_only()
                .column(alarm::Column::Id)
                .filter(alarm::Column::Id.gt(after))
                .filter(alarm::Column::Id.lte(last))
                .filter(alarm::Column::CreatedAt.lt(cutoff))
                .filter(alarm::Column::Status.is_in(ALARM_DONE))
                .order_by_asc(alarm::Column::Id)
                .limit(BATCH)
                .into_tuple()
                .all(db)
                .await?;
            let Some(&max) = ids.last() else { break };
            after = max;
            let deleted = alarm::Entity::delete_many()
                .filter(alarm::Column::Id.is_in(ids))
                .exec(db)
                .await?;
            pruned.alarms += deleted.rows_affected;
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(pruned)
}

/// Deletes job `job_id`'s final runs below `floor` scheduled before its `keep`-th newest.
async fn prune_job(
    db: &DatabaseConnection,
    job_id: i64,
    keep: u64,
    floor: i64,
) -> Result<u64, DbErr> {
    // Along the unique index (job_id, scheduled_at, trigger): `keep` entries, not the job's runs.
    let nth: Option<DateTime<Utc>> = run::Entity::find()
        .select_only()
        .column(run::Column::ScheduledAt)
        .filter(run::Column::JobId.eq(job_id))
        .order_by_desc(run::Column::ScheduledAt)
        .offset(keep - 1)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    let Some(nth) = nth else {
        return Ok(0);
    };
    let mut deleted = 0;
    loop {
        let ids: Vec<i64> = run::Entity::find()
            .select_only()
            .column(run::Column::Id)
            .filter(run::Column::JobId.eq(job_id))
            .filter(run::Column::ScheduledAt.lt(nth))
            .filter(run::Column::Status.is_not_in(IN_FLIGHT))
            .filter(run::Column::Id.lt(floor))
            .order_by_asc(run::Column::ScheduledAt)
            .limit(BATCH)
            .into_tuple()
            .all(db)
            .await?;
        let full = ids.len() as u64 == BATCH;
        if ids.is_empty() {
            break;
        }
        deleted += delete_runs(db, ids).await?;
        if !full {
            break;
        }
    }
    Ok(deleted)
}

async fn delete_runs(db: &DatabaseConnection, ids: Vec<i64>) -> Result<u64, DbErr> {
    let deleted = run::Entity::delete_many()
        .filter(run::Column::Id.is_in(ids))
        // A run in flight again (never, but a delete must not take one on trust).
        .filter(run::Column::Status.is_not_in(IN_FLIGHT))
        .exec(db)
        .await?;
    tokio::time::sleep(PAUSE).await;
    Ok(deleted.rows_affected)
}

/// The highest id below `below` whose time column is before `cutoff`, by binary search on ids
/// (which grow with time; a row out of order near the boundary waits for a later pass);
/// `None` when the oldest row is not before `cutoff`.
async fn last_id_before<E: EntityTrait>(
    db: &DatabaseConnection,
    id: E::Column,
    at: E::Column,
    cutoff: DateTime<Utc>,
    below: i64,
) -> Result<Option<i64>, DbErr> {
    // The first row with an id in lo..=hi.
    let first = async |lo: i64, hi: i64| -> Result<Option<(i64, DateTime<Utc>)>, DbErr> {
        E::find()
            .select_only()
            .column(id)
            .column(at)
            .filter(id.gte(lo))
            .filter(id.lte(hi))
            .order_by_asc(id)
            .limit(1)
            .into_tuple()
            .one(db)
            .await
    };
    let Some((mut lo, oldest)) = first(i64::MIN, below.saturating_sub(1)).await? else {
        return Ok(None);
    };
    if oldest >= cutoff {
        return Ok(None);
    }
    let newest: Option<i64> = E::find()
        .select_only()
        .column(id)
        .filter(id.lt(below))
        .order_by_desc(id)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    let mut hi = newest.unwrap_or(lo);
    // `lo` is an old row; nothing above `hi` is known old.
    while lo < hi {
        let mid = lo + (hi - lo) / 2 + 1;
        match first(mid, hi).await? {
            Some((found, t)) if t < cutoff => lo = found,
            _ => hi = mid - 1,
        }
    }
    Ok(Some(lo))
}
