//! `gocron-bench`: fire lag, missed and doubled ticks for N every-second jobs, against the floor.
//!
//! For each N it first runs the floor ([`gocron_tests::floor`]: a minimal spawner in a process
//! of its own, starting the same N commands at each whole second, with no scheduler, database or
//! RPC) for the window, then starts a cluster of 2 dispatchers, 2 executors and a monitor (in
//! this process, against the real servers of `scripts/services --test`), inserts N jobs
//! `* * * * * *` whose command writes `job tick own-start-time` to a file (bash,
//! `$EPOCHREALTIME`), waits until every job is live, and measures a window of the same length.
//! Run it with `scripts/bench` (release build, servers started).
//!
//! Lag is the command's own start time (`$EPOCHREALTIME`, once bash has started) minus its tick
//! (`GOCRON_SCHEDULED_AT`): everything between the tick and the job's first instruction.
//!
//! CPU is read from `/proc` at the window's two ends: this process's own `utime` + `stime` (all
//! threads: the five daemons, and the harness, which sleeps during the window; the jobs' processes
//! are reaped children and land in `cutime` + `cstime` instead, reported apart), and each
//! server's whole process tree (found by its listening port). The servers' CPU over the floor's
//! window, when gocron is not running, is what others put on them meanwhile (background).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use gocron_shared::entity::run;
use gocron_tests::procfs::{self, MachineCpu};
use gocron_tests::{Backend, Cluster, lines, wait_until};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect};

#[derive(Parser)]
struct Args {
    /// Job counts to measure, one cluster each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    jobs: Vec<usize>,
    /// Seconds measured per job count (the floor's window is as long).
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
    /// Skip the floor (gocron alone, as before).
    #[arg(long)]
    no_floor: bool,
    /// The dispatchers' `[dispatcher] lead_ms` (default: the release's default).
    #[arg(long)]
    lead_ms: Option<u64>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// The floor's spawner, run by the benchmark in a process of its own.
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        from_ms: i64,
        #[arg(long)]
        secs: i64,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// The shell both the floor and gocron's executors run jobs with.
const SHELL: &str = "/bin/bash";

/// The job command: one line per run, its own start time read by bash without forking `date`
/// (on 2 cores, 1000 forks of `date` a second would cost more CPU than the machine has).
fn job_command(out: &Path) -> String {
    format!(
        "echo \"$GOCRON_JOB_ID $GOCRON_SCHEDULED_AT $EPOCHREALTIME\" >> {}",
        out.display()
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Mode::Floor {
        count,
        from_ms,
        secs,
        out,
    }) = &args.mode
    {
        let report =
            gocron_tests::floor::spawn_window(SHELL, &job_command(out), *count, *from_ms, *secs);
        println!("{}", report.to_line());
        return Ok(());
    }
    // The daemons' logs go to stderr, apart from the figures on stdout (the test harness's
    // own subscriber, installed later, then stays out).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let backend = match args.db.as_str() {
        "sqlite" => Backend::Sqlite,
        "mariadb" | "mysql" => Backend::MariaDb,
        "postgres" => Backend::Postgres,
        other => anyhow::bail!("unknown --db {other}"),
    };
    let servers = Servers::find(backend);
    eprintln!("servers measured: {}", servers.describe());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &n in &args.jobs {
        let floor = if args.no_floor {
            None
        } else {
            Some(run_floor(n, args.secs, &servers)?)
        };
        let gocron = runtime.block_on(measure(
            backend,
            &args.policy,
            args.lead_ms,
            n,
            args.secs,
            &servers,
        ))?;
        let row = Row { n, floor, gocron };
        row.print_detail(&args.db, &servers);
        rows.push(row);
    }
    println!();
    print_summary(&args.db, &args.policy, &rows);
    Ok(())
}

/// The servers whose CPU is measured: etcd, Redis and the database server (none for SQLite,
/// which runs inside the daemons), each found by the port of its URL.
struct Servers {
    list: Vec<(&'static str, Option<u32>)>,
}

impl Servers {
    fn find(backend: Backend) -> Servers {
        let port = |var: &str, default: &str| -> Option<u16> {
            let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
            reqwest::Url::parse(&url).ok()?.port()
        };
        let mut list = vec![
            (
                "etcd",
                port("GOCRON_TEST_ETCD", "http://127.0.0.1:23790").and_then(procfs::listening_pid),
            ),
            (
                "redis",
                port("GOCRON_TEST_REDIS", "redis://127.0.0.1:63790")
                    .and_then(procfs::listening_pid),
            ),
        ];
        match backend {
            Backend::Sqlite => {}
            Backend::MariaDb => list.push((
                "mariadb",
                port("GOCRON_TEST_MYSQL", "mysql://gocron:gocron@127.0.0.1:33060")
                    .and_then(procfs::listening_pid),
            )),
            Backend::Postgres => list.push((
                "postgres",
                port(
                    "GOCRON_TEST_POSTGRES",
                    "postgres://gocron:gocron@127.0.0.1:54320",
                )
                .and_then(procfs::listening_pid),
            )),
        }
        Servers { list }
    }

    fn describe(&self) -> String {
        self.list
            .iter()
            .map(|(name, pid)| match pid {
                Some(pid) => format!("{name} pid {pid} ({} processes)", {
                    procfs::process_tree(*pid).len()
                }),
                None => format!("{name}: not found (its CPU is not measured)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Each server's CPU seconds so far (its whole process tree); NaN if not found.
    fn cpu(&self) -> Vec<f64> {
        self.list
            .iter()
            .map(|(_, pid)| pid.map_or(f64::NAN, procfs::tree_cpu))
            .collect()
    }
}

/// What one side (the floor or gocron) measured over its window.
struct Measured {
    lag: Lag,
    /// Runs whose command started within the window (what the CPU figures are divided by).
    runs_in_window: usize,
    /// CPU seconds of the spawner (floor) or of the five daemons (gocron), over the window.
    own_cpu: f64,
    /// CPU seconds of the jobs' processes reaped over the window.
    jobs_cpu: f64,
    /// CPU seconds of each server over the window, in [`Servers`] order.
    servers_cpu: Vec<f64>,
    /// Length of the window the CPU was measured over, seconds.
    window_secs: f64,
    /// The machine's CPU split and context switches over the window.
    machine: String,
    /// The 1-minute load average just before the window.
    load_before: f64,
    /// Runs not `succeeded` (gocron only).
    not_ok: Option<usize>,
    /// Peak resident memory, MiB (gocron: this process, all five daemons).
    peak_mib: f64,
    /// The run writers' transactions and the writes in them over the window (gocron only).
    run_writes: Option<(u64, u64)>,
    /// The dispatchers' hand-over calls to executors over the window, and the runs they carried.
    handovers: Option<(u64, u64)>,
    /// The Redis calls writing the live runs over the window, and the writes they carried.
    live_writes: Option<(u64, u64)>,
    /// From each job's end to its outcome's commit, for the outcomes committed from the window's
    /// start to the end of the drain after it, and the drain's length in seconds (gocron only;
    /// the jobs go on running during the drain, so its runs count too).
    outcome_delays: Option<(Delays, f64)>,
}

/// A snapshot of `gocron_outcome_delay_seconds`: how many, their sum, and the cumulative count
/// at each bucket's upper bound.
struct Delays {
    count: u64,
    sum: f64,
    buckets: Vec<(f64, u64)>,
}

impl Delays {
    fn of(h: &prometheus::Histogram) -> Delays {
        use prometheus::core::Metric as _;
        let m = h.metric();
        let h = m.get_histogram();
        Delays {
            count: h.get_sample_count(),
            sum: h.get_sample_sum(),
            buckets: h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
        }
    }

    /// What was observed after `before`.
    fn since(&self, before: &Delays) -> Delays {
        Delays {
            count: self.count - before.count,
            sum: self.sum - before.sum,
            buckets: self
                .buckets
                .iter()
                .zip(&before.buckets)
                .map(|(&(bound, after), &(_, before))| (bound, after - before))
                .collect(),
        }
    }

    /// How many took longer than `bound` seconds, or than the largest bucket bound below it.
    fn over(&self, bound: f64) -> u64 {
        let within = self
            .buckets
            .iter()
            .rfind(|(b, _)| *b <= bound)
            .map_or(0, |(_, n)| *n);
        self.count - within
    }

    /// The smallest bucket bound that at least `q` of them are within (`inf`: beyond them all).
    fn quantile_bound(&self, q: f64) -> f64 {
        let need = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= need)
            .map_or(f64::INFINITY, |(b, _)| *b)
    }
}

impl Measured {
    fn per_1000(&self, cpu: f64) -> f64 {
        cpu * 1000.0 / (self.runs_in_window.max(1) as f64)
    }
}

/// Fire lag and tick accounting from the job's output lines.
struct Lag {
    p50: f64,
    p99: f64,
    max: f64,
    missed: i64,
    twice: usize,
}

/// Reads the `job tick started` lines of ticks in `[start, end)`; also counts the runs whose
/// command started in that interval.
fn lag_of(written: &[String], n: usize, start: i64, end: i64) -> (Lag, usize) {
    let secs = (end - start) / 1000;
    let in_window = |ms: i64| ms >= start && ms < end;
    let mut seen: HashMap<(i64, i64), usize> = HashMap::new();
    let mut lags = Vec::new();
    let mut started_in_window = 0;
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
        if in_window((started * 1e3) as i64) {
            started_in_window += 1;
        }
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
    (
        Lag {
            p50: pct(0.5),
            p99: pct(0.99),
            max: lags.last().copied().unwrap_or(f64::NAN),
            missed,
            twice,
        },
        started_in_window,
    )
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Runs the floor's spawner (this binary, `floor` mode) for `secs` seconds of `n` commands.
fn run_floor(n: usize, secs: i64, servers: &Servers) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("floor.txt");
    // From the second after next: the process must be up before its first tick.
    let start = (now_ms() / 1000 + 2) * 1000;
    let end = start + secs * 1000;
    let load_before = procfs::load_average();
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["floor", "--count", &n.to_string()])
        .args(["--from-ms", &start.to_string(), "--secs", &secs.to_string()])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis((start - now_ms()).max(0) as u64));
    let (servers_before, machine_before) = (servers.cpu(), MachineCpu::now());
    std::thread::sleep(Duration::from_millis((end - now_ms()).max(0) as u64));
    let (servers_after, machine_after) = (servers.cpu(), MachineCpu::now());
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let report = text
        .lines()
        .find_map(gocron_tests::floor::FloorReport::parse)
        .ok_or_else(|| anyhow::anyhow!("the floor's spawner printed no report: {text}"))?;
    if report.failed > 0 {
        eprintln!(
            "N={n}: the floor could not start {} commands",
            report.failed
        );
    }
    let (lag, _) = lag_of(&lines(&out), n, start, end);
    Ok(Measured {
        lag,
        // The spawner's CPU covers its whole life, so it is divided by all it started.
        runs_in_window: report.started as usize,
        own_cpu: report.own_cpu,
        jobs_cpu: report.children_cpu,
        servers_cpu: diff(&servers_after, &servers_before),
        window_secs: (end - start) as f64 / 1000.0,
        machine: machine_after.since(&machine_before, (end - start) as f64 / 1000.0),
        load_before,
        not_ok: None,
        peak_mib: f64::NAN,
        run_writes: None,
        handovers: None,
        live_writes: None,
        outcome_delays: None,
    })
}

fn diff(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

async fn measure(
    backend: Backend,
    policy: &str,
    lead_ms: Option<u64>,
    n: usize,
    secs: i64,
    servers: &Servers,
) -> anyhow::Result<Measured> {
    let mut c = Cluster::new(backend, &[]).await;
    if let Some(ms) = lead_ms {
        c.set("DISPATCHER", "LEAD_MS", &ms.to_string());
    }
    // A whole second's burst must fit: the executors must not answer busy.
    c.set("EXECUTOR", "MAX_CONCURRENT", &(n * 2 + 16).to_string());
    c.set("DATABASE", "MAX_CONNECTIONS", "16");
    c.set("EXECUTOR", "SHELL", SHELL);
    c.start_executor("exec-a").await;
    c.start_executor("exec-b").await;
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let out = c.path("lag.txt");
    let command = job_command(&out);
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
    let start = (now_ms() / 1000 + 1) * 1000;
    let end = start + secs * 1000;
    let load_before = procfs::load_average();
    tokio::time::sleep(Duration::from_millis((start - now_ms()).max(0) as u64)).await;
    // Every daemon's run writer counts in this process's metrics.
    let m = gocron_shared::metrics::metrics();
    let before = (
        procfs::cpu_times("self").unwrap_or_default(),
        servers.cpu(),
        MachineCpu::now(),
        (m.write_batches.get(), m.writes.get()),
        Delays::of(&m.outcome_delay),
        (m.handover_calls.get(), m.handover_runs.get()),
        (m.live_write_calls.get(), m.live_writes.get()),
    );
    tokio::time::sleep(Duration::from_millis((end - now_ms()).max(0) as u64)).await;
    let after = (
        procfs::cpu_times("self").unwrap_or_default(),
        servers.cpu(),
        MachineCpu::now(),
        (m.write_batches.get(), m.writes.get()),
        (m.handover_calls.get(), m.handover_runs.get()),
        (m.live_write_calls.get(), m.live_writes.get()),
    );
    let spent = after.0 - before.0;
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
            .filter(|t| (start..end).contains(&t.timestamp_millis()))
            .count() as i64;
        if ran >= expected_lines && unfinished_before(&c, end_at).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every outcome of the window is in by now (or the drain gave up): how late each was.
    let outcome_delays = Delays::of(&m.outcome_delay).since(&before.4);
    let drain_secs = (now_ms() - end).max(0) as f64 / 1000.0;
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
    let (lag, runs_in_window) = lag_of(&written, n, start, end);
    Ok(Measured {
        lag,
        runs_in_window,
        own_cpu: spent.own,
        jobs_cpu: spent.reaped_children,
        servers_cpu: diff(&after.1, &before.1),
        window_secs: (end - start) as f64 / 1000.0,
        machine: after.2.since(&before.2, (end - start) as f64 / 1000.0),
        load_before,
        not_ok: Some(not_ok),
        // All five daemons live in this process.
        peak_mib: procfs::status_mib("self", "VmHWM"),
        run_writes: Some((after.3.0 - before.3.0, after.3.1 - before.3.1)),
        handovers: Some((after.4.0 - before.5.0, after.4.1 - before.5.1)),
        live_writes: Some((after.5.0 - before.6.0, after.5.1 - before.6.1)),
        outcome_delays: Some((outcome_delays, drain_secs)),
    })
}

/// One job count's figures.
struct Row {
    n: usize,
    floor: Option<Measured>,
    gocron: Measured,
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.1}")
    }
}

impl Row {
    fn print_detail(&self, db: &str, servers: &Servers) {
        println!(
            "\nN={} {db}, {} s window (load average before: floor {}, gocron {:.2})",
            self.n,
            self.gocron.window_secs,
            self.floor
                .as_ref()
                .map_or("-".into(), |f| format!("{:.2}", f.load_before)),
            self.gocron.load_before
        );
        println!(
            "  {:<8} {:>9} {:>9} {:>9} {:>7} {:>6} {:>7} {:>12} {:>12}  machine",
            "",
            "p50 ms",
            "p99 ms",
            "max ms",
            "missed",
            "twice",
            "not-ok",
            "own CPU-s/k",
            "jobs CPU-s/k"
        );
        for (name, m) in [
            ("floor", self.floor.as_ref()),
            ("gocron", Some(&self.gocron)),
        ] {
            let Some(m) = m else { continue };
            println!(
                "  {name:<8} {:>9} {:>9} {:>9} {:>7} {:>6} {:>7} {:>12.3} {:>12.3}  {}",
                ms(m.lag.p50),
                ms(m.lag.p99),
                ms(m.lag.max),
                m.lag.missed,
                m.lag.twice,
                m.not_ok.map_or("-".into(), |k| k.to_string()),
                m.per_1000(m.own_cpu),
                m.per_1000(m.jobs_cpu),
                m.machine
            );
        }
        if let Some(f) = &self.floor {
            println!(
                "  gocron / floor: p50 {:.2}x, p99 {:.2}x",
                self.gocron.lag.p50 / f.lag.p50,
                self.gocron.lag.p99 / f.lag.p99
            );
        }
        let servers_line = servers
            .list
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let cpu = self.gocron.servers_cpu[i];
                let background = self.floor.as_ref().map(|f| {
                    // What others put on the server while gocron was not running, over a window
                    // as long, per as many runs.
                    self.gocron
                        .per_1000(f.servers_cpu[i] * self.gocron.window_secs / f.window_secs)
                });
                format!(
                    "{name} {:.3}{}",
                    self.gocron.per_1000(cpu),
                    background.map_or(String::new(), |b| format!(" (background {b:.3})"))
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  servers, CPU-s per 1000 runs: {servers_line}{}",
            if db == "sqlite" {
                "; SQLite runs inside the daemons"
            } else {
                ""
            }
        );
        println!(
            "  gocron's daemons used {:.1} % of one core over the window; peak memory of the five \
             daemons (one process): {:.1} MiB",
            100.0 * self.gocron.own_cpu / self.gocron.window_secs,
            self.gocron.peak_mib
        );
        if let Some((d, drain_secs)) = &self.gocron.outcome_delays {
            println!(
                "  outcomes recorded over the window and the {drain_secs:.0} s of its drain: {}, \
                 {:.1} ms on average after the job's end, 99 % within {} s; {} over 1 s, {} over 5 s",
                d.count,
                1000.0 * d.sum / d.count.max(1) as f64,
                d.quantile_bound(0.99),
                d.over(1.0),
                d.over(5.0)
            );
        }
        if let Some((batches, writes)) = self.gocron.run_writes {
            println!(
                "  run writers (all daemons): {:.1} transactions a second, {:.1} writes per transaction",
                batches as f64 / self.gocron.window_secs,
                writes as f64 / batches.max(1) as f64
            );
        }
        if let Some((calls, runs)) = self.gocron.handovers {
            println!(
                "  hand-overs (all dispatchers): {:.1} calls a second, {:.1} runs per call",
                calls as f64 / self.gocron.window_secs,
                runs as f64 / calls.max(1) as f64
            );
        }
        if let Some((calls, writes)) = self.gocron.live_writes {
            println!(
                "  live-run writes (all daemons): {:.1} Redis calls a second, {:.1} writes per call",
                calls as f64 / self.gocron.window_secs,
                writes as f64 / calls.max(1) as f64
            );
        }
    }
}

fn print_summary(db: &str, policy: &str, rows: &[Row]) {
    println!(
        "{:>5} {:>8} {:>7} | {:>21} | {:>21} | {:>11} | {:>6} {:>5} {:>6} | {:>7} {:>7} | {:>6}",
        "jobs",
        "db",
        "policy",
        "floor p50/p99/max ms",
        "gocron p50/p99/max ms",
        "ratio p50/99",
        "missed",
        "twice",
        "not-ok",
        "daemons",
        "floor",
        "MiB"
    );
    for r in rows {
        let g = &r.gocron;
        let (floor, ratio, floor_cpu) = match &r.floor {
            Some(f) => (
                format!("{}/{}/{}", ms(f.lag.p50), ms(f.lag.p99), ms(f.lag.max)),
                format!("{:.2}/{:.2}", g.lag.p50 / f.lag.p50, g.lag.p99 / f.lag.p99),
                format!("{:.3}", f.per_1000(f.own_cpu)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>5} {db:>8} {policy:>7} | {floor:>21} | {:>21} | {ratio:>11} | {:>6} {:>5} {:>6} | {:>7.3} {floor_cpu:>7} | {:>6.1}",
            r.n,
            format!("{}/{}/{}", ms(g.lag.p50), ms(g.lag.p99), ms(g.lag.max)),
            g.lag.missed,
            g.lag.twice,
            g.not_ok.unwrap_or(0),
            g.per_1000(g.own_cpu),
            g.peak_mib
        );
    }
    println!(
        "(daemons, floor: CPU-seconds per 1000 runs of gocron's five daemons and of the floor's spawner)"
    );
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
