//! `cron_alarm` through the API (read only), without the bodies and recipients.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use gocron_shared::entity::alarm;
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, FromQueryResult, PaginatorTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Reader;
use crate::error::ApiError;
use crate::extract::{Query, paging};

/// An alarm in a list.
#[derive(Debug, Clone, Serialize, FromQueryResult)]
pub struct AlarmSummary {
    /// `id`.
    pub id: i64,
    /// `kind`: `run_failed`, `executor_down`, ...
    pub kind: String,
    /// `channel`: `mail`, `sms`, or `none` (no channel configured).
    pub channel: String,
    /// `job_id` (0: about no job).
    pub job_id: i64,
    /// `run_id`.
    pub run_id: Option<i64>,
    /// `status`.
    pub status: String,
    /// `subject`.
    pub subject: String,
    /// `attempts`.
    pub attempts: i32,
    /// `error`.
    pub error: Option<String>,
    /// `created_at`.
    pub created_at: DateTime<Utc>,
    /// `sent_at`.
    pub sent_at: Option<DateTime<Utc>>,
}

/// The query of `GET /alarms`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsQuery {
    /// Alarms of this kind.
    pub kind: Option<String>,
    /// Alarms with this status.
    pub status: Option<String>,
    /// Alarms about this job.
    pub job_id: Option<i64>,
    /// The page, from 1.
    pub page: Option<u64>,
    /// Alarms a page (default 50, at most 500).
    pub per_page: Option<u64>,
}

/// A page of alarms, newest first, and how many match in all.
#[derive(Debug, Serialize)]
pub struct AlarmPage {
    /// The page.
    pub alarms: Vec<AlarmSummary>,
    /// Alarms matching the filters, on every page.
    pub total: u64,
}

/// `GET /api/v1/alarms`: newest first.
pub async fn list(
    State(state): State<AppState>,
    _: Reader,
    Query(query): Query<AlarmsQuery>,
) -> Result<Json<AlarmPage>, ApiError> {
    let (offset, limit) = paging(query.page, query.per_page)?;
    let mut select = alarm::Entity::find();
    if let Some(kind) = &query.kind {
        select = select.filter(alarm::Column::Kind.eq(kind.as_str()));
    }
    if let Some(status) = &query.status {
        select = select.filter(alarm::Column::Status.eq(status.as_str()));
    }
    if let Some(job_id) = query.job_id {
        select = select.filter(alarm::Column::JobId.eq(job_id));
    }
    let total = select.clone().count(state.db()).await?;
    let alarms = select
        .select_only()
        .columns([
            alarm::Column::Id,
            alarm::Column::Kind,
            alarm::Column::Channel,
            alarm::Column::JobId,
            alarm::Column::RunId,
            alarm::Column::Status,
            alarm::Column::Subject,
            alarm::Column::Attempts,
            alarm::Column::Error,
            alarm::Column::CreatedAt,
            alarm::Column::SentAt,
        ])
        .order_by_desc(alarm::Column::Id)
        .offset(offset)
        .limit(limit)
        .into_model::<AlarmSummary>()
        .all(state.db())
        .await?;
    Ok(Json(AlarmPage { alarms, total }))
}
