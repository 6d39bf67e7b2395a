//! `cron_audit`: one row per change made through the HTTP API (who, when, what, the row before
//! and after), written in the same transaction as the change.

use sea_orm::entity::prelude::*;

/// One audit record as stored.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_audit")]
pub struct Model {
    /// Auto-increment id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// When the change was made.
    pub at: DateTimeUtc,
    /// Who made it: the token's role (`admin`).
    pub actor: String,
    /// What was done: `job.create`, `job.update`, `job.delete`.
    pub action: String,
    /// The job it is about, if any.
    pub job_id: Option<i64>,
    /// The row before the change, as the API's JSON; NULL for a creation.
    pub before: Option<String>,
    /// The row after the change, as the API's JSON; NULL for a deletion.
    pub after: Option<String>,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
