//! `cron_event`: events that business systems report (plain SQL, the API or `gocronctl
//! event`); each fires every enabled job whose rule is `@event NAME` once.

use sea_orm::entity::prelude::*;

/// One event as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_event")]
pub struct Model {
    /// Auto-increment id: the event's "tick" (`GOCRON_EVENT_ID`, `cron_run.source_id`).
    #[sea_orm(primary_key)]
    pub id: i64,
    /// What happened, e.g. `order.paid`: the jobs with rule `@event order.paid` run.
    pub name: String,
    /// Handed to each run as `GOCRON_EVENT_PAYLOAD` and on stdin.
    pub payload: Option<String>,
    /// Idempotency: a second event with the same name and key is refused by the unique key
    /// `(name, dedup_key)`, so it fires once. NULL: no deduplication.
    pub dedup_key: Option<String>,
    /// When it was inserted (the default); a job's `delay_secs` counts from here.
    pub created_at: DateTimeUtc,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
