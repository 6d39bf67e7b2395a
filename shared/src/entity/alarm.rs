//! `cron_alarm`: one row per alarm and channel, written by the monitor before it is sent.

use sea_orm::entity::prelude::*;

/// One alarm as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_alarm")]
pub struct Model {
    /// Auto-increment id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// What makes this alarm one (unique): e.g. `run_failed:run=42:mail`. A second monitor
    /// finding the same condition fails to insert it, so it is recorded and sent once.
    pub dedup_key: String,
    /// See [`crate::alarm::AlarmKind`].
    pub kind: String,
    /// `mail` or `sms`.
    pub channel: String,
    /// The job it is about; 0 when none.
    pub job_id: i64,
    /// The run it is about, if any.
    pub run_id: Option<i64>,
    /// `pending`, `sending`, `sent`, `failed`, `held`, `summarised`, `capped` or `no_recipient`.
    pub status: String,
    /// Comma-separated addresses or mobiles it goes to.
    pub recipients: String,
    /// The mail subject (for SMS: the text).
    pub subject: String,
    /// The mail body (for SMS: the text).
    pub body: String,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The last delivery error, or why it was held, capped or summarised.
    pub error: Option<String>,
    /// When it was recorded.
    pub created_at: DateTimeUtc,
    /// When it may next be tried (`pending`), when a claim expires (`sending`), or when the
    /// quiet period that held it ends (`held`).
    pub next_attempt_at: DateTimeUtc,
    /// When it was delivered.
    pub sent_at: Option<DateTimeUtc>,
    /// The monitor that last claimed it for sending.
    pub claimed_by: String,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
