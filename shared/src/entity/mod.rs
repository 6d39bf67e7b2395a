//! sea-orm entities of the two tables users see: `cron_job` (rows they write) and `cron_run`
//! (rows gocron writes). The column names are a contract with users' SQL. `cron_alarm` and
//! `cron_alarm_state` are the monitor's alarms and its shared bookkeeping; `cron_job_change` is the
//! job table's change log, kept by triggers; `cron_audit` records every change made through the
//! HTTP API. `cron_event` holds the events that `@event` jobs run for, inserted by users.

pub mod alarm;
pub mod alarm_state;
pub mod audit;
pub mod event;
pub mod job;
pub mod job_change;
pub mod run;
