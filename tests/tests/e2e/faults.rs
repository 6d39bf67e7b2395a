//! The fault suite of issue 10: under every-second jobs, with two dispatchers, two executors and
//! a monitor running as processes of their own, a fault in the middle of a window of ticks
//! (SIGKILL of a daemon, a restart of Redis or etcd, the database down for two minutes, a
//! dispatcher killed between winning a tick and writing its row); then, once the window has
//! settled, every tick in it must be accounted for ([`gocron_tests::accounted`]): in the run
//! table and in what the commands themselves wrote.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gocron_shared::entity::run;
use gocron_tests::accounted;
use gocron_tests::servers::{Kind, Server};
use gocron_tests::{Backend, Cluster, Process, Servers, lines, wait_until};
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};

/// Every second.
const RULE: &str = "* * * * * *";
/// Jobs per test.
const JOBS: usize = 3;
/// How long a settled window may take to be accounted for, after its end.
const SETTLE: Duration = Duration::from_secs(120);

/// A cluster under test: daemons as processes, jobs appending a line per run.
struct Rig {
    c: Cluster,
    jobs: Vec<(i64, PathBuf)>,
    dispatchers: Vec<Process>,
    executors: Vec<Process>,
    monitor: Process,
}

impl Rig {
    /// `servers` for the cluster; short leases and graces, so that faults heal within seconds.
    async fn new(backend: Backend, servers: Servers) -> Rig {
        let mut c = Cluster::with_servers(backend, &[], servers).await;
        c.set("ETCD", "LEASE_TTL", "3");
        c.set("ALARM", "GRACE_SECS", "2");
        c.set("ALARM", "CHECK_MS", "500");
        c.set("DISPATCHER", "LOCK_TTL_SECS", "30");
        c.set("EXECUTOR", "DRAIN_SECS", "1");
        c.set("EXECUTOR", "KILL_GRACE_SECS", "1");
        let mut executors = Vec::new();
        for name in ["exec-a", "exec-b"] {
            executors.push(c.start_process("EXECUTOR", name, crate::EXECUTOR_PROCESS.as_ref()));
            c.wait_registered(name).await;
        }
        let dispatchers = ["disp-0", "disp-1"]
            .iter()
            .map(|name| c.start_process("DISPATCHER", name, crate::DISPATCHER_PROCESS.as_ref()))
            .collect();
        let monitor = c.start_process("MONITOR", "monitor", crate::MONITOR_PROCESS.as_ref());
        let mut jobs = Vec::new();
        for i in 0..JOBS {
            let file = c.path(&format!("job-{i}.lines"));
            let id = c
                .insert_job(&format!("tick-{i}"), RULE, &accounted::command(&file))
                .await;
            jobs.push((id, file));
        }
        let rig = Rig {
            c,
            jobs,
            dispatchers,
            executors,
            monitor,
        };
        for (id, _) in &rig.jobs {
            wait_until(
                &format!("job {id} running"),
                Duration::from_secs(60),
                || async {
                    let runs = rig.runs(*id).await?;
                    runs.iter().any(|r| r.status == "succeeded").then_some(())
                },
            )
            .await;
        }
        rig
    }

    /// The job's rows, or `None` while the database does not answer.
    async fn runs(&self, job: i64) -> Option<Vec<run::Model>> {
        run::Entity::find()
            .filter(run::Column::JobId.eq(job))
            .all(&self.c.db)
            .await
            .ok()
    }

    /// Waits until every tick of every job in `[from, to]` is accounted for; after `SETTLE`
    /// past `to`, panics with everything the checker found.
    async fn assert_settled(&self, from: DateTime<Utc>, to: DateTime<Utc>) {
        wait_until("the window's end", Duration::from_secs(300), || async {
            (Utc::now() > to + chrono::Duration::seconds(1)).then_some(())
        })
        .await;
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let mut jobs = Vec::new();
            let mut readable = true;
            for (id, file) in &self.jobs {
                match self.runs(*id).await {
                    Some(runs) => jobs.push((format!("job {id}"), RULE, runs, lines(file))),
                    None => readable = false,
                }
            }
            if readable {
                let report = accounted::report(from, to, &jobs);
                if report.is_empty() {
                    cost(from, to, &jobs, Utc::now() - to);
                    return;
                }
                if tokio::time::Instant::now() > deadline {
                    self.print_logs();
                    panic!("{SETTLE:?} after the window: {report}");
                }
            } else if tokio::time::Instant::now() > deadline {
                panic!("the database did not answer {SETTLE:?} after the window");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Prints the warnings and errors the daemons logged (their log files go with the
    /// cluster's temporary folder).
    fn print_logs(&self) {
        let all = self
            .dispatchers
            .iter()
            .chain(&self.executors)
            .chain([&self.monitor]);
        for p in all {
            let log = p.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!(
                "----- {}: {} warnings and errors, the last 40:",
                p.name,
                lines.len()
            );
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }

    /// The whole second `secs` from now.
    fn in_secs(secs: i64) -> DateTime<Utc> {
        let now = Utc::now() + chrono::Duration::seconds(secs);
        DateTime::from_timestamp(now.timestamp(), 0).expect("a time")
    }

    /// Stops the in-process side; the processes are killed as they drop.
    async fn shutdown(self) {
        drop(self.dispatchers);
        drop(self.executors);
        drop(self.monitor);
        self.c.shutdown().await;
    }
}

/// Prints what the fault cost (the README's figures come from these lines): the statuses of
/// the window's ticks, the longest run of ticks in a row that did not succeed, and how long after
/// the window's end every tick was accounted for.
fn cost(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    jobs: &[(String, &str, Vec<run::Model>, Vec<String>)],
    settled: chrono::Duration,
) {
    let test = std::thread::current().name().unwrap_or("").to_owned();
    for (label, _, runs, _) in jobs {
        let mut window: Vec<_> = runs
            .iter()
            .filter(|r| r.trigger == "schedule" && r.scheduled_at >= from && r.scheduled_at <= to)
            .collect();
        window.sort_by_key(|r| r.scheduled_at);
        let statuses = gocron_tests::tally(window.iter().map(|r| r.status.as_str()));
        let (mut gap, mut longest) = (0, 0);
        for r in &window {
            gap = if r.status == "succeeded" { 0 } else { gap + 1 };
            longest = longest.max(gap);
        }
        eprintln!(
            "{test}: {label}: {statuses:?}; at most {longest} ticks in a row did not succeed; \
             settled {:.1} s after the window",
            settled.num_milliseconds() as f64 / 1000.0
        );
    }
}

async fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

/// A daemon process SIGKILLed in the middle of the window, and started again 3 s later.
async fn kill_and_restart(which: &str) {
    let mut rig = Rig::new(Backend::Sqlite, Servers::default()).await;
    let from = Rig::in_secs(2);
    let fault = from + chrono::Duration::seconds(6);
    sleep_until(fault).await;
    let victim = match which {
        "dispatcher" => &mut rig.dispatchers[0],
        "executor" => &mut rig.executors[0],
        _ => &mut rig.monitor,
    };
    victim.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    victim.start();
    let name = victim.name.clone();
    if which == "executor" {
        rig.c.wait_registered(&name).await;
    }
    let to = Rig::in_secs(8);
    rig.assert_settled(from, to).await;
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_and_restarted_leaves_every_tick_accounted_for() {
    kill_and_restart("dispatcher").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_and_restarted_leaves_every_tick_accounted_for() {
    kill_and_restart("executor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_killed_and_restarted_leaves_every_tick_accounted_for() {
    kill_and_restart("monitor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_persistence_leaves_every_tick_accounted_for() {
    let mut redis = Server::start_new(Kind::Redis).await;
    let servers = Servers {
        redis: Some(redis.url()),
        ..Servers::default()
    };
    let rig = Rig::new(Backend::Sqlite, servers).await;
    let from = Rig::in_secs(2);
    sleep_until(from + chrono::Duration::seconds(6)).await;
    redis.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.start().await;
    let to = Rig::in_secs(8);
    rig.assert_settled(from, to).await;
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_restart_leaves_every_tick_accounted_for() {
    let mut etcd = Server::start_new(Kind::Etcd).await;
    let servers = Servers {
        etcd: Some(etcd.url()),
        ..Servers::default()
    };
    let rig = Rig::new(Backend::Sqlite, servers).await;
    let from = Rig::in_secs(2);
    sleep_until(from + chrono::Duration::seconds(6)).await;
    etcd.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.start().await;
    let to = Rig::in_secs(8);
    rig.assert_settled(from, to).await;
    rig.shutdown().await;
}

/// The database server stopped (SIGTERM) for two minutes in the middle of the window.
async fn database_down_for_two_minutes(kind: Kind, backend: Backend) {
    let mut db = Server::start_new(kind).await;
    let servers = Servers {
        database: Some(db.url()),
        ..Servers::default()
    };
    let rig = Rig::new(backend, servers).await;
    let from = Rig::in_secs(2);
    sleep_until(from + chrono::Duration::seconds(5)).await;
    db.stop().await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    db.start().await;
    let to = Rig::in_secs(5);
    rig.assert_settled(from, to).await;
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_down_for_two_minutes_leaves_every_tick_accounted_for() {
    database_down_for_two_minutes(Kind::MariaDb, Backend::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_two_minutes_leaves_every_tick_accounted_for() {
    database_down_for_two_minutes(Kind::Postgres, Backend::Postgres).await;
}

/// A dispatcher process SIGKILLed after it won a tick's lock and before its run row was
/// written: the test holds SQLite's write lock (`BEGIN EXCLUSIVE` on a connection of its own),
/// so the dispatchers win their Redis locks and then wait on their inserts; once a lock of
/// `disp-0` for a tick after that is seen in Redis, `disp-0` is killed and the write lock
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_between_lock_and_insert_leaves_its_ticks_accounted_for() {
    use sea_orm::ConnectionTrait as _;
    let mut rig = Rig::new(Backend::Sqlite, Servers::default()).await;
    let from = Rig::in_secs(2);
    sleep_until(from + chrono::Duration::seconds(5)).await;

    let url = rig.c.database().url;
    let mut options = sea_orm::ConnectOptions::new(url);
    options.max_connections(1).min_connections(1);
    let hold = sea_orm::Database::connect(options)
        .await
        .expect("a second connection to the SQLite file");
    hold.execute_unprepared("BEGIN EXCLUSIVE")
        .await
        .expect("SQLite's write lock");
    let held_at = Utc::now();

    let (_, prefix) = rig.c.redis();
    let conn = rig.c.redis_connection().await;
    let jobs: Vec<i64> = rig.jobs.iter().map(|(id, _)| *id).collect();
    let won = wait_until(
        "disp-0 winning a tick while the database is locked",
        Duration::from_secs(8),
        || {
            let (mut conn, jobs, prefix) = (conn.clone(), jobs.clone(), prefix.clone());
            async move {
                let first = held_at.timestamp() + 1;
                for s in first..=Utc::now().timestamp() {
                    for job in &jobs {
                        let key = format!("{prefix}:tick:{job}:{}", s * 1000);
                        let owner: Option<String> = redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        if owner.is_some_and(|o| o.starts_with("disp-0|")) {
                            return Some((*job, s));
                        }
                    }
                }
                None
            }
        },
    )
    .await;
    rig.dispatchers[0].kill();
    // The kill came while the dispatcher waited on its insert: the tick has no row yet.
    let before = rig
        .runs(won.0)
        .await
        .expect("runs (readers pass the write lock)");
    assert!(
        !before
            .iter()
            .any(|r| r.scheduled_at.timestamp() == won.1 && r.trigger == "schedule"),
        "the row of job {} tick {} was written before the kill: {before:#?}",
        won.0,
        won.1
    );
    hold.execute_unprepared("ROLLBACK")
        .await
        .expect("releasing the write lock");
    hold.close().await.ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.dispatchers[0].start();
    let to = Rig::in_secs(6);
    rig.assert_settled(from, to).await;
    rig.shutdown().await;
}
