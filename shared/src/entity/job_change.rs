//! `cron_job_change`: the job table's change log, filled by triggers on `cron_job` (every insert,
//! update and delete appends the row's id), read by the monitor above its mark.

use sea_orm::entity::prelude::*;

/// One change of one job row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_job_change")]
pub struct Model {
    /// Grows with every change (an auto-increment; ids of transactions not yet committed may
    /// show up later than larger ones, see the monitor's gap handling).
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// The job row that was inserted, changed or deleted.
    pub job_id: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
