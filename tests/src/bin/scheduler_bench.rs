//! `gocron-scheduler-bench`: what a dispatcher's schedule table costs for many jobs.
//!
//! Loads N published jobs (a mix like a real table: mostly daily at random times, some every
//! five minutes, weekly, hourly `@every`, in three time zones) into the dispatcher's
//! [`Scheduler`] the way the etcd mirror feeds it, then replays one simulated day minute by
//! minute, taking every due tick. Prints the memory the table holds (the process's resident
//! set, before and after), the load time per job, and the cost per tick taken. Run it with
//! `cargo run --release -p gocron-tests --bin gocron-scheduler-bench -- --jobs 1000000`.

use std::time::{Duration, Instant};

use chrono::{TimeZone as _, Utc};
use clap::Parser;
use gocron_dispatcher::scheduler::Scheduler;
use gocron_shared::job::{JobKind, JobSpec, TimeoutPolicy};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::registry::MirrorEvent;
use rand::{Rng as _, SeedableRng as _};

#[derive(Parser)]
struct Args {
    /// How many jobs.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
}

/// The process's resident set size in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn spec(id: i64, rng: &mut rand::rngs::StdRng) -> JobSpec {
    let rule = match rng.random_range(0..100) {
        0..90 => format!(
            "{} {} * * *",
            rng.random_range(0..60),
            rng.random_range(0..24)
        ),
        90..95 => "*/5 * * * *".to_owned(),
        95..98 => format!("0 {} * * MON-FRI", rng.random_range(6..20)),
        _ => "@every 1h".to_owned(),
    };
    let time_zone = match rng.random_range(0..10) {
        0 => "Asia/Shanghai",
        1 => "America/New_York",
        _ => "",
    };
    JobSpec {
        id,
        name: format!("job-{id}"),
        rule,
        command: format!("/usr/local/bin/task --id {id}"),
        kind: JobKind::Shell,
        machine: String::new(),
        timeout_secs: 0,
        timeout_policy: TimeoutPolicy::Abandon,
        time_zone: time_zone.to_owned(),
        misfire: Default::default(),
        env: Vec::new(),
        workdir: String::new(),
        route: Default::default(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys = EtcdKeys::new("/bench");
    let mut scheduler = Scheduler::new(keys.clone(), chrono_tz::UTC, Duration::from_secs(5));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = Utc.with_ymd_and_hms(2026, 3, 7, 0, 0, 0).unwrap();
    let before = rss_kib();

    let loading = Instant::now();
    // As the mirror delivers them: JSON values under their keys, in batches.
    for chunk in (1..=args.jobs as i64).collect::<Vec<_>>().chunks(10_000) {
        for &id in chunk {
            let value = serde_json::to_vec(&spec(id, &mut rng))?;
            scheduler.apply(MirrorEvent::Put(keys.job(id), value), start);
        }
    }
    let load = loading.elapsed();
    let after = rss_kib();

    // One simulated day (across New York's spring-forward night), minute by minute.
    let replay = Instant::now();
    let mut ticks = 0u64;
    for minute in 1..=24 * 60 {
        ticks += scheduler
            .due(start + chrono::Duration::minutes(minute))
            .len() as u64;
    }
    let replayed = replay.elapsed();
    let held = after.saturating_sub(before);
    println!(
        "{:>9} {:>10} {:>10} {:>12} {:>11} {:>12}",
        "jobs", "load s", "µs/job", "table MiB", "ticks/day", "ns/tick"
    );
    println!(
        "{:>9} {:>10.2} {:>10.2} {:>12.1} {:>11} {:>12.0}",
        args.jobs,
        load.as_secs_f64(),
        load.as_secs_f64() * 1e6 / args.jobs as f64,
        held as f64 / 1024.0,
        ticks,
        replayed.as_secs_f64() * 1e9 / ticks.max(1) as f64,
    );
    println!(
        "(table MiB: resident set after loading minus before; {} bytes per job)",
        held * 1024 / args.jobs.max(1) as u64
    );
    Ok(())
}
