//! `cron_run` through the API (read only).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use gocron_shared::entity::{job, run};
use gocron_shared::job::RunStatus;
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, FromQueryResult, PaginatorTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Reader;
use crate::error::ApiError;
use crate::extract::{Id, Query, paging};

/// A run as the API shows it: every `cron_run` column.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// `id`.
    pub id: i64,
    /// `job_id`.
    pub job_id: i64,
    /// `scheduled_at`: the tick.
    pub scheduled_at: DateTime<Utc>,
    /// `status`.
    pub status: String,
    /// `executor`: `name@address`.
    pub executor: String,
    /// `started_at`.
    pub started_at: Option<DateTime<Utc>>,
    /// `finished_at`.
    pub finished_at: Option<DateTime<Utc>>,
    /// `exit_code`.
    pub exit_code: Option<i32>,
    /// `output`: the tail of stdout and stderr.
    pub output: Option<String>,
    /// `error`.
    pub error: Option<String>,
    /// `trigger`: `schedule`, `manual`, `retry`, `event` or `chain`.
    pub trigger: String,
    /// `overrun_at`.
    pub overrun_at: Option<DateTime<Utc>>,
    /// `attempt`: 1, or 2, 3, … for retries.
    pub attempt: i32,
    /// `retry_of`: a retry's first attempt.
    pub retry_of: Option<i64>,
    /// `source_id`: the event, the parent run, or the run a retry follows; 0 for others.
    pub source_id: i64,
    /// `shard_index`: the run's place in a fanned-out tick (route `broadcast` or `shard`).
    pub shard_index: i32,
    /// `shard_total`: the runs of its fanned-out tick; 0 for a run that is not one of those.
    pub shard_total: i32,
}

impl From<run::Model> for RunView {
    fn from(m: run::Model) -> RunView {
        RunView {
            id: m.id,
            job_id: m.job_id,
            scheduled_at: m.scheduled_at,
            status: m.status,
            executor: m.executor,
            started_at: m.started_at,
            finished_at: m.finished_at,
            exit_code: m.exit_code,
            output: m.output,
            error: m.error,
            trigger: m.trigger,
            overrun_at: m.overrun_at,
            attempt: m.attempt,
            retry_of: m.retry_of,
            source_id: m.source_id,
            shard_index: m.shard_index,
            shard_total: m.shard_total,
        }
    }
}

/// A run in a list: every column but `output`, which can be large (read it with
/// `GET /runs/{id}`).
#[derive(Debug, Clone, Serialize, FromQueryResult)]
pub struct RunSummary {
    /// `id`.
    pub id: i64,
    /// `job_id`.
    pub job_id: i64,
    /// `scheduled_at`.
    pub scheduled_at: DateTime<Utc>,
    /// `status`.
    pub status: String,
    /// `executor`.
    pub executor: String,
    /// `started_at`.
    pub started_at: Option<DateTime<Utc>>,
    /// `finished_at`.
    pub finished_at: Option<DateTime<Utc>>,
    /// `exit_code`.
    pub exit_code: Option<i32>,
    /// `error`.
    pub error: Option<String>,
    /// `trigger`.
    pub trigger: String,
    /// `overrun_at`.
    pub overrun_at: Option<DateTime<Utc>>,
    /// `attempt`.
    pub attempt: i32,
    /// `retry_of`.
    pub retry_of: Option<i64>,
    /// `source_id`.
    pub source_id: i64,
    /// `shard_index`.
    pub shard_index: i32,
    /// `shard_total`.
    pub shard_total: i32,
}

/// The query of `GET /jobs/{id}/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Runs with this status.
    pub status: Option<String>,
    /// The page, from 1.
    pub page: Option<u64>,
    /// Runs a page (default 50, at most 500).
    pub per_page: Option<u64>,
}

/// A page of runs, newest tick first, and how many match in all.
#[derive(Debug, Serialize)]
pub struct RunPage {
    /// The page.
    pub runs: Vec<RunSummary>,
    /// Runs matching the filter, on every page.
    pub total: u64,
}

/// `GET /api/v1/jobs/{id}/runs`: newest tick first; 404 when the job does not exist.
pub async fn of_job(
    State(state): State<AppState>,
    _: Reader,
    Id(id): Id,
    Query(query): Query<RunsQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let (offset, limit) = paging(query.page, query.per_page)?;
    if job::Entity::find_by_id(id).one(state.db()).await?.is_none() {
        return Err(ApiError::NotFound(format!("no job {id}")));
    }
    let mut select = run::Entity::find().filter(run::Column::JobId.eq(id));
    if let Some(status) = &query.status {
        let status: RunStatus = status.parse().map_err(ApiError::bad_request)?;
        select = select.filter(run::Column::Status.eq(status.as_str()));
    }
    let total = select.clone().count(state.db()).await?;
    let runs = select
        .select_only()
        .columns([
            run::Column::Id,
            run::Column::JobId,
            run::Column::ScheduledAt,
            run::Column::Status,
            run::Column::Executor,
            run::Column::StartedAt,
            run::Column::FinishedAt,
            run::Column::ExitCode,
            run::Column::Error,
            run::Column::Trigger,
            run::Column::OverrunAt,
            run::Column::Attempt,
            run::Column::RetryOf,
            run::Column::SourceId,
            run::Column::ShardIndex,
            run::Column::ShardTotal,
        ])
        .order_by_desc(run::Column::ScheduledAt)
        .order_by_desc(run::Column::Id)
        .offset(offset)
        .limit(limit)
        .into_model::<RunSummary>()
        .all(state.db())
        .await?;
    Ok(Json(RunPage { runs, total }))
}

/// `GET /api/v1/runs/{id}`: every column, output included.
pub async fn show(
    State(state): State<AppState>,
    _: Reader,
    Id(id): Id,
) -> Result<Json<RunView>, ApiError> {
    run::Entity::find_by_id(id)
        .one(state.db())
        .await?
        .map(|m| Json(RunView::from(m)))
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))
}
