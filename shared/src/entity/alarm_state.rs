//! `cron_alarm_state`: named counters the monitors share, each changed only by conditional
//! updates: the run scan's marks, quiet periods, daily caps, the last check.

use sea_orm::entity::prelude::*;

/// One named value.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cron_alarm_state")]
pub struct Model {
    /// e.g. `run_mark`, `quiet:run_failed:12:mail`, `cap:2026-11-21:ops@example.com`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// A run id, a Unix time in milliseconds, or a count.
    pub value: i64,
}

/// No relations are navigated through the ORM.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
