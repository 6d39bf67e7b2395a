//! `cron_event` through the API: report an event (admin), list them (viewer).
//!
//! `POST /api/v1/events` inserts the row a business system could insert with plain SQL; the
//! monitor hands it to the `@event` jobs subscribed to its name. With a `dedup_key`, reporting
//! the same event again is answered with the stored one (200, `duplicate: true`) and fires
//! nothing more.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use gocron_shared::entity::event;
use gocron_shared::rule::check_event_name;
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Admin, Reader};
use crate::error::ApiError;
use crate::extract::{Body, Query, paging};

/// The longest `dedup_key`.
const MAX_DEDUP_KEY: usize = 255;

/// An event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// `id`: `GOCRON_EVENT_ID`, and the `source_id` of its runs.
    pub id: i64,
    /// `name`.
    pub name: String,
    /// `payload`.
    pub payload: Option<String>,
    /// `dedup_key`.
    pub dedup_key: Option<String>,
    /// `created_at`.
    pub created_at: DateTime<Utc>,
    /// Whether this answer is an event reported earlier with the same `dedup_key`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl EventView {
    fn of(m: event::Model, duplicate: bool) -> EventView {
        EventView {
            id: m.id,
            name: m.name,
            payload: m.payload,
            dedup_key: m.dedup_key,
            created_at: m.created_at,
            duplicate,
        }
    }
}

/// The body of `POST /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// What happened: the jobs with rule `@event NAME` run.
    pub name: String,
    /// Handed to each run (`GOCRON_EVENT_PAYLOAD`, stdin).
    pub payload: Option<String>,
    /// The same name and key again fires nothing more.
    pub dedup_key: Option<String>,
}

/// `POST /api/v1/events`: 201 with the new event, or 200 with the one reported before under
/// the same `dedup_key`.
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    Body(input): Body<EventInput>,
) -> Result<(StatusCode, Json<EventView>), ApiError> {
    let name = input.name.trim().to_owned();
    check_event_name(&name).map_err(ApiError::Invalid)?;
    if let Some(payload) = &input.payload
        && payload.len() > gocron_shared::job::MAX_EVENT_PAYLOAD_BYTES
    {
        return Err(ApiError::Invalid(format!(
            "payload is {} bytes; at most {} are handed to a command",
            payload.len(),
            gocron_shared::job::MAX_EVENT_PAYLOAD_BYTES
        )));
    }
    if input
        .dedup_key
        .as_ref()
        .is_some_and(|k| k.chars().count() > MAX_DEDUP_KEY)
    {
        return Err(ApiError::Invalid(format!(
            "dedup_key is longer than {MAX_DEDUP_KEY} characters"
        )));
    }
    let earlier = async |db: &sea_orm::DatabaseConnection, key: &str| {
        event::Entity::find()
            .filter(event::Column::Name.eq(name.as_str()))
            .filter(event::Column::DedupKey.eq(key))
            .one(db)
            .await
    };
    if let Some(key) = &input.dedup_key
        && let Some(found) = earlier(state.db(), key).await?
    {
        return Ok((StatusCode::OK, Json(EventView::of(found, true))));
    }
    let row = event::ActiveModel {
        name: Set(name.clone()),
        payload: Set(input.payload.clone()),
        dedup_key: Set(input.dedup_key.clone()),
        created_at: Set(now_ms()),
        ..Default::default()
    };
    match event::Entity::insert(row).exec(state.db()).await {
        Ok(inserted) => {
            let stored = event::Entity::find_by_id(inserted.last_insert_id)
                .one(state.db())
                .await?
                .ok_or_else(|| ApiError::Unavailable("the event vanished once stored".into()))?;
            Ok((StatusCode::CREATED, Json(EventView::of(stored, false))))
        }
        // Reported at the same moment by another caller.
        Err(e) if gocron_shared::db::is_unique_violation(&e) => {
            let key = input.dedup_key.as_deref().unwrap_or_default();
            let found = earlier(state.db(), key)
                .await?
                .ok_or_else(|| ApiError::Unavailable(e.to_string()))?;
            Ok((StatusCode::OK, Json(EventView::of(found, true))))
        }
        Err(e) => Err(e.into()),
    }
}

/// The query of `GET /events`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events of this name.
    pub name: Option<String>,
    /// The page, from 1.
    pub page: Option<u64>,
    /// Events a page (default 50, at most 500).
    pub per_page: Option<u64>,
}

/// A page of events, newest first, and how many match in all.
#[derive(Debug, Serialize)]
pub struct EventPage {
    /// The page.
    pub events: Vec<EventView>,
    /// Events matching the filter, on every page.
    pub total: u64,
}

/// `GET /api/v1/events`: newest first.
pub async fn list(
    State(state): State<AppState>,
    _: Reader,
    Query(query): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let (offset, limit) = paging(query.page, query.per_page)?;
    let mut select = event::Entity::find();
    if let Some(name) = &query.name {
        select = select.filter(event::Column::Name.eq(name.as_str()));
    }
    let total = select.clone().count(state.db()).await?;
    let events = select
        .order_by_desc(event::Column::Id)
        .offset(offset)
        .limit(limit)
        .all(state.db())
        .await?
        .into_iter()
        .map(|m| EventView::of(m, false))
        .collect();
    Ok(Json(EventPage { events, total }))
}

/// Now, at the millisecond precision the database keeps.
fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now)
}
