//! `gocronctl`: gocron from the command line, and the rule engine's benchmark.
//!
//! Modules:
//! - [`cli`]: the command line: `next`, and `jobs`, `job show|add|edit|enable|disable|rm`, `runs`,
//!   `logs` (`--follow`: the live output of a running run), `run`, `kill`, `executors`,
//!   `status` through a monitor's HTTP API.
//! - [`next`]: `gocronctl next '<rule>'`, the next fire instants of a rule in a time zone, computed
//!   by the same [`gocron_shared::rule::Schedule`] the dispatcher uses.
//! - [`bench`]: `gocron-rule-bench`, next-fire computation speed and memory over a million
//!   schedules.

pub mod bench;
pub mod cli;
pub mod next;
