//! What crosses a boundary between gocron's daemons.
//!
//! The data flow is: a row of `cron_job` → **monitor** validates it and publishes it to etcd →
//! every **dispatcher** watches the published jobs, computes next fire times, and at each tick
//! takes the Redis tick lock → the winner inserts a `cron_run` row and hands the run over RPC to
//! an **executor** of the job's machine group → the executor claims the row, runs the command and
//! records the outcome.
//!
//! Modules:
//! - [`clock`]: waiting for a wall-clock instant to within a fraction of a millisecond.
//! - [`config`]: `conf/conf.ini`, with `GOCRON__SECTION__KEY` environment overrides and validation.
//! - [`machine`]: the `[machine]` groups and how a member matches an executor.
//! - [`metrics`]: the Prometheus metrics each daemon keeps, and `/metrics`.
//! - [`rule`]: cron rules (crontab 5/6/7 fields, Quartz extras, macros, `@every`, `@at`) and
//!   next-fire computation in a time zone, with cronie's DST rule.
//! - [`job`]: the validated job definition that the monitor publishes and dispatchers schedule.
//! - [`entity`], [`migration`], [`db`]: the `cron_job` and `cron_run` tables and the connection.
//! - [`runs`]: every write to `cron_run` (its state machine), with group commit.
//! - [`rpc`]: the dispatcher → executor tarpc service and its wire types.
//! - [`keys`]: every etcd key and Redis key layout, in one place.
//! - [`registry`]: etcd leases (registration) and prefix mirroring (discovery without gaps).
//! - [`lock`]: the Redis tick lock that lets exactly one dispatcher fire a (job, tick), the run
//!   claim, and each job's hash of runs in flight.
//! - [`live`]: which runs are live (their holder is registered now), and which are lost.
//! - [`control`]: operator actions: run a job now, kill a run.
//! - [`alarm`]: what an alarm says and how it is delivered (SMTP mail, HTTP SMS gateway).
//! - [`daemon`]: what the three `main`s share: flags, logging, signals, retry with backoff.

pub mod alarm;
pub mod chain;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod db;
pub mod entity;
pub mod job;
pub mod keys;
pub mod live;
pub mod lock;
pub mod machine;
pub mod metrics;
pub mod migration;
pub mod registry;
pub mod rpc;
pub mod rule;
pub mod runs;

/// The version of gocron, as every daemon reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
