//! `cron_audit`: each change made through the API, recorded in the change's transaction.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use gocron_shared::entity::audit;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, ConnectionTrait, EntityTrait as _, PaginatorTrait as _,
    QueryFilter as _, QueryOrder as _, QuerySelect as _,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Reader, Role};
use crate::error::ApiError;
use crate::extract::{Query, paging};

/// Records that `role` did `action` to job `job_id`, the row going from `before` to `after`.
pub async fn record<T: Serialize>(
    db: &impl ConnectionTrait,
    role: Role,
    action: &str,
    job_id: Option<i64>,
    before: Option<&T>,
    after: Option<&T>,
) -> Result<(), ApiError> {
    let json = |row: Option<&T>| {
        row.map(serde_json::to_string)
            .transpose()
            .map_err(|e| ApiError::Unavailable(format!("cannot write the audit record: {e}")))
    };
    let row = audit::ActiveModel {
        at: Set(Utc::now()),
        actor: Set(role.as_str().into()),
        action: Set(action.into()),
        job_id: Set(job_id),
        before: Set(json(before)?),
        after: Set(json(after)?),
        ..Default::default()
    };
    audit::Entity::insert(row).exec(db).await?;
    Ok(())
}

/// An audit record as the API shows it: `before` and `after` as JSON, not text.
#[derive(Debug, Serialize)]
pub struct AuditView {
    /// `id`.
    pub id: i64,
    /// `at`.
    pub at: DateTime<Utc>,
    /// `actor`: the token's role.
    pub actor: String,
    /// `action`.
    pub action: String,
    /// `job_id`.
    pub job_id: Option<i64>,
    /// `before`.
    pub before: Option<serde_json::Value>,
    /// `after`.
    pub after: Option<serde_json::Value>,
}

impl From<audit::Model> for AuditView {
    fn from(m: audit::Model) -> AuditView {
        // Text that is not JSON (written by hand) is shown as a string rather than hidden.
        let value = |text: Option<String>| {
            text.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
        };
        AuditView {
            id: m.id,
            at: m.at,
            actor: m.actor,
            action: m.action,
            job_id: m.job_id,
            before: value(m.before),
            after: value(m.after),
        }
    }
}

/// The query of `GET /audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Records about this job.
    pub job_id: Option<i64>,
    /// The page, from 1.
    pub page: Option<u64>,
    /// Records a page (default 50, at most 500).
    pub per_page: Option<u64>,
}

/// A page of audit records, newest first, and how many match in all.
#[derive(Debug, Serialize)]
pub struct AuditPage {
    /// The page.
    pub audit: Vec<AuditView>,
    /// Records matching the filter, on every page.
    pub total: u64,
}

/// `GET /api/v1/audit`: newest first.
pub async fn list(
    State(state): State<AppState>,
    _: Reader,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let (offset, limit) = paging(query.page, query.per_page)?;
    let mut select = audit::Entity::find();
    if let Some(job_id) = query.job_id {
        select = select.filter(audit::Column::JobId.eq(job_id));
    }
    let total = select.clone().count(state.db()).await?;
    let rows = select
        .order_by_desc(audit::Column::Id)
        .offset(offset)
        .limit(limit)
        .all(state.db())
        .await?;
    Ok(Json(AuditPage {
        audit: rows.into_iter().map(AuditView::from).collect(),
        total,
    }))
}
