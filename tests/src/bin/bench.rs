//! `gocron-bench`: fire lag, missed and doubled ticks for N every-second jobs.
//!
//! Starts a cluster of 2 dispatchers, 2 executors and a monitor (in this process, against the
//! real servers of `scripts/services --test`), inserts N jobs `* * * * * *` whose command writes
//! `job tick own-start-time` to a file (bash, `$EPOCHREALTIME`), waits until every job is live, then measures a window of
//! whole seconds. Run it with `scripts/bench` (release build, servers started).
//!
//! Lag is the command's own start time (`$EPOCHREALTIME`, once bash has started) minus
//! `GOCRON_SCHEDULED_AT`: everything between the tick and the job's first instruction.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Parser;
use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, lines, wait_until};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};

#[derive(Parser)]
struct Args {
    /// Job counts to measure, one cluster each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    jobs: Vec<usize>,
    /// Seconds measured per job count.
    #[arg(long, default_value_t = 30)]
    secs: i64,
    /// Database: sqlite, mariadb or postgres.
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// The jobs' timeout policy. `sync` (the default here) runs every tick, so a tick not run
    /// is a dispatch failure; under `abandon` an overloaded machine's late runs make the next
    /// ticks `skipped`, as the policy says.
    #[arg(long, default_value = "sync")]
    policy: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = match args.db.as_str() {
        "sqlite" => Backend::Sqlite,
        "mariadb" | "mysql" => Backend::MariaDb,
        "postgres" => Backend::Postgres,
        other => anyhow::bail!("unknown --db {other}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>9}",
        "jobs", "db", "p50 ms", "p99 ms", "max ms", "missed", "twice", "not-ok", "peak MiB"
    );
    for n in args.jobs {
        let row = runtime.block_on(measure(backend, &args.db, &args.policy, n, args.secs))?;
        println!("{row}");
    }
    Ok(())
}

async fn measure(
    backend: Backend,
    db: &str,
    policy: &str,
    n: usize,
    secs: i64,
) -> anyhow::Result<String> {
    let mut c = Cluster::new(backend, &[]).await;
    // A whole second's burst must fit: the executors must not answer busy.
    c.set("EXECUTOR", "MAX_CONCURRENT", &(n * 2 + 16).to_string());
    c.set("DATABASE", "MAX_CONNECTIONS", "16");
    // bash's $EPOCHREALTIME is the job's own clock reading without forking `date`: on 2 cores,
    // 1000 forks of `date` a second would cost more CPU than the machine has.
    c.set("EXECUTOR", "SHELL", "/bin/bash");
    c.start_executor("exec-a").await;
    c.start_executor("exec-b").await;
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let out = c.path("lag.txt");
    let command = format!(
        "echo \"$GOCRON_JOB_ID $GOCRON_SCHEDULED_AT $EPOCHREALTIME\" >> {}",
        out.display()
    );
    for i in 0..n {
        c.insert_job_with(
            &format!("bench-{i}"),
            "* * * * * *",
            &command,
            &[("timeout_policy", policy.into())],
        )
        .await;
    }
    // Live = every job has run once; then measure from the next whole second on.
    wait_until("every job live", Duration::from_secs(120), || async {
        (live_jobs(&c).await >= n).then_some(())
    })
    .await;
    let start = (Utc::now().timestamp() + 1) * 1000;
    let end = start + secs * 1000;
    let in_window = |ms: i64| ms >= start && ms < end;
    tokio::time::sleep(Duration::from_millis(
        (end - Utc::now().timestamp_millis()).max(0) as u64,
    ))
    .await;
    // A tick is missed only if its command never runs: wait (bounded) for every expected line,
    // and for the window's rows to be final, before counting.
    let end_at = DateTime::from_timestamp_millis(end).unwrap_or_default();
    let expected_lines = n as i64 * secs;
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < drain_deadline {
        let ran = lines(&out)
            .iter()
            .filter_map(|l| {
                l.split(' ')
                    .nth(1)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            })
            .filter(|t| in_window(t.timestamp_millis()))
            .count() as i64;
        if ran >= expected_lines && unfinished_before(&c, end_at).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let not_ok_rows = run::Entity::find()
        .filter(
            run::Column::ScheduledAt
                .gte(DateTime::from_timestamp_millis(start).unwrap_or_default()),
        )
        .filter(run::Column::ScheduledAt.lt(end_at))
        .filter(run::Column::Status.ne("succeeded"))
        .all(&c.db)
        .await?;
    let not_ok = not_ok_rows.len();
    if let Some(sample) = not_ok_rows.first() {
        let statuses = gocron_tests::tally(not_ok_rows.iter().map(|r| r.status.clone()));
        eprintln!(
            "N={n}: runs not succeeded by status: {statuses:?}; e.g. run {} ({}): {:?}",
            sample.id, sample.status, sample.error
        );
    }
    // Read before shutdown: the output file lives in the cluster's temporary folder.
    let written = lines(&out);
    c.shutdown().await;

    let mut seen: HashMap<(i64, i64), usize> = HashMap::new();
    let mut lags = Vec::new();
    for line in written {
        let mut parts = line.split(' ');
        let (Some(job), Some(tick), Some(started)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(job), Ok(tick), Ok(started)) = (
            job.parse::<i64>(),
            DateTime::parse_from_rfc3339(tick),
            started.parse::<f64>(),
        ) else {
            continue;
        };
        let tick_ms = tick.timestamp_millis();
        if !in_window(tick_ms) {
            continue;
        }
        *seen.entry((job, tick_ms)).or_default() += 1;
        lags.push(started * 1e3 - tick_ms as f64);
    }
    let expected = n as i64 * secs;
    let missed = expected - seen.len() as i64;
    let twice = seen.values().filter(|&&k| k > 1).count();
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lags.is_empty() {
            f64::NAN
        } else {
            lags[((lags.len() - 1) as f64 * p).round() as usize]
        }
    };
    Ok(format!(
        "{n:>6} {db:>8} {:>9.2} {:>9.2} {:>9.2} {missed:>7} {twice:>7} {not_ok:>8} {:>9.1}",
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        peak_rss_mib()
    ))
}

/// How many distinct jobs have a run row.
async fn live_jobs(c: &Cluster) -> usize {
    run::Entity::find()
        .select_only()
        .column(run::Column::JobId)
        .distinct()
        .into_tuple::<i64>()
        .all(&c.db)
        .await
        .map_or(0, |v| v.len())
}

/// How many runs of ticks before `end` have not finished.
async fn unfinished_before(c: &Cluster, end: DateTime<Utc>) -> u64 {
    run::Entity::find()
        .filter(run::Column::ScheduledAt.lt(end))
        .filter(run::Column::FinishedAt.is_null())
        .count(&c.db)
        .await
        .unwrap_or(u64::MAX)
}

/// The process's peak resident memory (all five daemons live in it), from /proc.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
