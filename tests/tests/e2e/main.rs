//! End-to-end tests: the real daemons, in-process, against real etcd, Redis and databases
//! started by `scripts/test`. One test binary (one link step); topics are modules. `rules`
//! needs no server but a Python with croniter (`GOCRON_TEST_PYTHON`, also from `scripts/test`).

mod alarms;
mod api;
mod backends;
mod chains;
mod console;
mod ctl;
mod events;
mod faults;
mod hardening;
mod jobs;
mod lead;
mod ledger;
mod lock;
mod metrics;
mod misfire;
mod outcomes;
mod params;
mod pipeline;
mod policies;
mod retention;
mod retries;
mod routes;
mod rpc;
mod rules;
mod scale;
mod stop;

/// The real executor as a process of its own (`gocron-test-executor`), for tests that signal or
/// kill it.
const EXECUTOR_PROCESS: &str = env!("CARGO_BIN_EXE_gocron-test-executor");
/// The real dispatcher as a process of its own (`gocron-test-dispatcher`).
const DISPATCHER_PROCESS: &str = env!("CARGO_BIN_EXE_gocron-test-dispatcher");
/// The real monitor as a process of its own (`gocron-test-monitor`).
const MONITOR_PROCESS: &str = env!("CARGO_BIN_EXE_gocron-test-monitor");
