//! sea-orm entities of the two tables users see: `cron_job` (rows they write) and `cron_run`
//! (rows gocron writes). The column names are a contract with users' SQL.

pub mod job;
pub mod run;
