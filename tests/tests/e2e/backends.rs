//! The same code on MariaDB and PostgreSQL, and the database's own duplicate-run fence.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use gocron_shared::entity::run;
use gocron_shared::job::{RunStatus, Trigger};
use gocron_tests::{Backend, Cluster};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_runs_each_tick_exactly_once() {
    crate::pipeline::exactly_once(Backend::MariaDb, 2, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_a_job() {
    let mut c = Cluster::new(Backend::Postgres, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c.insert_job("pg", "* * * * * *", "echo pg").await;
    let runs = c.wait_for_finished(job, 2, Duration::from_secs(30)).await;
    let done: Vec<_> = runs.iter().filter(|r| r.finished_at.is_some()).collect();
    assert!(
        done.iter()
            .all(|r| r.status == "succeeded" && r.output.as_deref() == Some("pg\n"))
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_race_safely_and_upgrade_an_old_schema_on_every_backend() {
    use gocron_shared::migration::Migrator;
    use sea_orm::ConnectionTrait;
    use sea_orm_migration::MigratorTrait;
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        // Undo the harness's own migration, so that the daemons race on an empty schema...
        let c = Cluster::new(backend, &[]).await;
        for table in [
            "cron_event",
            "cron_audit",
            "cron_alarm_state",
            "cron_alarm",
            "cron_run",
            "cron_job",
            "gocron_migrations",
        ] {
            c.db.execute_unprepared(&format!("DROP TABLE {table}"))
                .await
                .unwrap();
        }
        // ...then bring it to the first release's schema, with a job in it, as an upgrade
        // finds it.
        Migrator::up(&c.db, Some(1)).await.unwrap();
        c.sql(
            "INSERT INTO cron_job (name, rule, command) VALUES (?, ?, ?)",
            vec!["old".into(), "@daily".into(), "true".into()],
        )
        .await;
        // Runs 1-3, the last one deleted since: ids must go on from 4 (SQLite rebuilds
        // `cron_run` to change its unique key).
        let day = |d: i64| Utc.timestamp_opt(1_767_225_600 + d * 86_400, 0).unwrap();
        for d in 1..=3 {
            c.sql(
                "INSERT INTO cron_run (job_id, scheduled_at, status, output) VALUES (1, ?, 'succeeded', 'kept')",
                vec![day(d).into()],
            )
            .await;
        }
        // A table created just now: its ids start at 1.
        let (ids, top) = ([1_i64, 2], 3_i64);
        assert_eq!(
            c.sql("DELETE FROM cron_run WHERE id = ?", vec![top.into()])
                .await,
            1
        );
        let never = tokio_util::sync::CancellationToken::new();
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let (config, never) = (c.database(), never.clone());
                tokio::spawn(async move {
                    gocron_shared::db::connect_and_migrate(&config, &never)
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        for racer in racers {
            racer.await.expect("migration task").expect("migration");
        }
        // The old row has the new columns' defaults; new rows and the alarm table work.
        let old = c.job_by_name("old").await;
        assert_eq!(
            (old.misfire.as_str(), old.done_at),
            ("skip", None),
            "{backend:?}"
        );
        assert!(
            c.insert_job("after-race", "@daily", "true").await > 0,
            "{backend:?}"
        );
        c.sql("SELECT COUNT(*) FROM cron_alarm", vec![]).await;
        c.sql("SELECT COUNT(*) FROM cron_audit", vec![]).await;
        c.sql("SELECT COUNT(*) FROM cron_event", vec![]).await;
        // Migration 10's index of deferred runs by their source.
        let index = match backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'index' AND name = 'cron_run_source'"
            }
            Backend::MariaDb => {
                "SELECT COUNT(DISTINCT index_name) AS n FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND index_name = 'cron_run_source'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM pg_indexes \
                 WHERE schemaname = current_schema() AND indexname = 'cron_run_source'"
            }
        };
        let n: i64 =
            c.db.query_one_raw(sea_orm::Statement::from_string(
                c.db.get_database_backend(),
                index,
            ))
            .await
            .expect("query")
            .expect("a row")
            .try_get("", "n")
            .expect("n");
        assert_eq!(n, 1, "{backend:?}: the index cron_run_source");
        let kept = c.runs(1).await;
        assert_eq!(
            kept.iter()
                .map(|r| (
                    r.id,
                    r.output.as_deref(),
                    r.source_id,
                    r.attempt,
                    (r.shard_index, r.shard_total)
                ))
                .collect::<Vec<_>>(),
            [
                (ids[0], Some("kept"), 0, 1, (0, 0)),
                (ids[1], Some("kept"), 0, 1, (0, 0))
            ],
            "{backend:?}"
        );
        c.sql(
            "INSERT INTO cron_run (job_id, scheduled_at, status) VALUES (1, ?, 'succeeded')",
            vec![day(4).into()],
        )
        .await;
        let next = c.runs(1).await.last().map(|r| r.id);
        assert!(
            next > Some(top),
            "{backend:?}: a deleted id came back: {next:?}"
        );
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_second_run_of_the_same_tick() {
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        let c = Cluster::new(backend, &[]).await;
        let tick = Utc.timestamp_millis_opt(1_790_000_000_123).unwrap();
        let row = |trigger: Trigger| run::ActiveModel {
            job_id: Set(1),
            scheduled_at: Set(tick),
            status: Set(RunStatus::Dispatched.as_str().into()),
            executor: Set(String::new()),
            trigger: Set(trigger.as_str().into()),
            ..Default::default()
        };
        run::Entity::insert(row(Trigger::Schedule))
            .exec(&c.db)
            .await
            .unwrap();
        let err = run::Entity::insert(row(Trigger::Schedule))
            .exec(&c.db)
            .await
            .expect_err("a duplicate tick must be refused");
        assert!(
            gocron_shared::db::is_unique_violation(&err),
            "{backend:?}: {err}"
        );
        // A manual run at the same instant is a different run.
        run::Entity::insert(row(Trigger::Manual))
            .exec(&c.db)
            .await
            .unwrap();
        // So are two events' runs due in the same millisecond; one event's twice is refused.
        let event = |source: i64| run::ActiveModel {
            source_id: Set(source),
            ..row(Trigger::Event)
        };
        for source in [7, 8] {
            run::Entity::insert(event(source))
                .exec(&c.db)
                .await
                .unwrap();
        }
        let err = run::Entity::insert(event(7))
            .exec(&c.db)
            .await
            .expect_err("an event's second run must be refused");
        assert!(
            gocron_shared::db::is_unique_violation(&err),
            "{backend:?}: {err}"
        );
        // Two runs of one fanned-out tick are two runs; one of them twice is refused.
        let shard = |index: i32| run::ActiveModel {
            shard_index: Set(index),
            shard_total: Set(2),
            ..row(Trigger::Manual)
        };
        run::Entity::insert(shard(1)).exec(&c.db).await.unwrap();
        let err = run::Entity::insert(shard(1))
            .exec(&c.db)
            .await
            .expect_err("a shard's second run must be refused");
        assert!(
            gocron_shared::db::is_unique_violation(&err),
            "{backend:?}: {err}"
        );
        // The run log writes a fanned-out tick whole or not at all: a second dispatcher
        // seeing fewer (or more) executors inserts none of its rows.
        let log = gocron_shared::runs::RunLog::spawn(c.db.clone());
        let ids = log
            .insert_fanned_out(2, tick, Trigger::Schedule, None, 3)
            .await
            .unwrap()
            .expect("the tick's rows");
        assert_eq!(ids.len(), 3, "{backend:?}");
        for total in [1, 2, 4] {
            assert_eq!(
                log.insert_fanned_out(2, tick, Trigger::Schedule, None, total)
                    .await
                    .unwrap(),
                None,
                "{backend:?}: {total}"
            );
        }
        let fanned: Vec<_> = run::Entity::find()
            .filter(run::Column::JobId.eq(2))
            .order_by_asc(run::Column::Id)
            .all(&c.db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.shard_index, r.shard_total))
            .collect();
        assert_eq!(
            fanned,
            [(ids[0], 0, 3), (ids[1], 1, 3), (ids[2], 2, 3)],
            "{backend:?}"
        );
        // Millisecond precision survives the round trip.
        let stored = run::Entity::find().all(&c.db).await.unwrap();
        assert!(
            stored.iter().all(|r| r.scheduled_at == tick),
            "{backend:?}: {stored:?}"
        );
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_log_enforces_the_row_state_machine_on_every_backend() {
    use gocron_shared::runs::{Outcome, RunLog};
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        let c = Cluster::new(backend, &[]).await;
        let log = RunLog::spawn(c.db.clone());
        let tick = Utc.timestamp_millis_opt(1_790_000_000_000).unwrap();
        // Concurrent writes share a transaction: a duplicate in the batch must fail alone.
        let writes: Vec<_> = (0..20)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.insert(i % 10, tick, Trigger::Schedule).await })
            })
            .collect();
        let mut ids = Vec::new();
        for w in writes {
            ids.push(
                w.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{backend:?}: {e}")),
            );
        }
        assert_eq!(
            ids.iter().filter(|id| id.is_some()).count(),
            10,
            "{backend:?}: {ids:?}"
        );
        assert_eq!(
            run::Entity::find().all(&c.db).await.unwrap().len(),
            10,
            "{backend:?}"
        );

        let id = ids.iter().flatten().copied().next().unwrap();
        let at = Utc::now();
        assert!(
            log.start(id, "a@1", at).await.unwrap(),
            "{backend:?}: start"
        );
        assert!(
            !log.start(id, "a@1", at).await.unwrap(),
            "{backend:?}: started twice"
        );
        assert!(
            !log.no_executor(id, "x".into()).await.unwrap(),
            "{backend:?}"
        );
        let outcome = Outcome {
            status: RunStatus::Succeeded,
            exit_code: Some(0),
            error: None,
            output: "ok\n".into(),
        };
        assert!(
            log.finish(id, "a@1", (at, at), outcome.clone())
                .await
                .unwrap(),
            "{backend:?}"
        );
        assert!(
            !log.finish(id, "a@1", (at, at), outcome.clone())
                .await
                .unwrap(),
            "{backend:?}: finished twice"
        );
        // A start and its finish queued together: the row ends final, whatever the order.
        let other = ids.iter().flatten().copied().nth(1).unwrap();
        let (_, finished) = tokio::join!(
            log.start(other, "b@2", at),
            log.finish(other, "b@2", (at, at), outcome.clone())
        );
        assert!(finished.unwrap(), "{backend:?}");
        let row = run::Entity::find_by_id(other)
            .one(&c.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.status.as_str(), row.executor.as_str()),
            ("succeeded", "b@2"),
            "{backend:?}"
        );
        let row = run::Entity::find_by_id(id)
            .one(&c.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                row.status.as_str(),
                row.executor.as_str(),
                row.output.as_deref()
            ),
            ("succeeded", "a@1", Some("ok\n")),
            "{backend:?}"
        );
        c.shutdown().await;
    }
}

/// A batch of outcomes waits for company (here up to an hour), but a run row to insert is
/// written at once, and takes whatever is waiting with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_wait_for_company_but_an_insert_never_waits() {
    use gocron_shared::runs::{Outcome, RunLog};
    let bounded = Duration::from_secs(30);
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let log = RunLog::with_linger(c.db.clone(), Duration::from_secs(3600));
    let tick = Utc.timestamp_millis_opt(1_790_000_000_000).unwrap();
    let first = tokio::time::timeout(bounded, log.insert(1, tick, Trigger::Schedule))
        .await
        .expect("an insert must not linger")
        .unwrap()
        .unwrap();
    let outcome = Outcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        error: None,
        output: "ok\n".into(),
    };
    // The finish is queued, and waits (an hour, on its own): a commit takes a millisecond.
    let mut finish = std::pin::pin!(log.finish(first, "a@1", (Utc::now(), Utc::now()), outcome));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), finish.as_mut())
            .await
            .is_err(),
        "a lone outcome was written without waiting for company"
    );
    let second = tokio::time::timeout(bounded, log.insert(2, tick, Trigger::Schedule))
        .await
        .expect("an insert must not linger behind a waiting finish")
        .unwrap();
    assert!(second.is_some());
    let finished = tokio::time::timeout(bounded, finish)
        .await
        .expect("the finish must go with the insert's transaction")
        .unwrap();
    assert!(finished);
    let row = run::Entity::find_by_id(first)
        .one(&c.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "succeeded");
    // With the default linger, a lone outcome is written by itself.
    let log = RunLog::spawn(c.db.clone());
    let lone = Outcome {
        status: RunStatus::Failed,
        exit_code: Some(1),
        error: None,
        output: String::new(),
    };
    let id = second.unwrap();
    let finished = tokio::time::timeout(
        bounded,
        log.finish(id, "a@1", (Utc::now(), Utc::now()), lone),
    )
    .await
    .expect("a lone outcome is written after the linger")
    .unwrap();
    assert!(finished);
    c.shutdown().await;
}

/// Writes queued together go out as one multi-row statement per kind: each row must still get
/// its own id, executor, output and answer, and a repeated write its `false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_together_each_get_their_own_row_and_answer_on_every_backend() {
    use gocron_shared::runs::{Outcome, RunLog};
    const N: i64 = 300;
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        let c = Cluster::new(backend, &[]).await;
        let log = RunLog::spawn(c.db.clone());
        // A tick with a sub-millisecond part: stored to the millisecond, found again.
        let tick = Utc.timestamp_micros(1_790_000_000_123_456).unwrap();
        let inserts: Vec<_> = (1..=N)
            .map(|job| {
                let log = log.clone();
                tokio::spawn(async move { (job, log.insert(job, tick, Trigger::Schedule).await) })
            })
            .collect();
        let mut runs = Vec::new();
        for insert in inserts {
            let (job, id) = insert.await.unwrap();
            let id = id
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"))
                .unwrap_or_else(|| panic!("{backend:?}: job {job} found a duplicate"));
            runs.push((job, id));
        }
        let rows = run::Entity::find().all(&c.db).await.unwrap();
        assert_eq!(rows.len() as i64, N, "{backend:?}");
        for (job, id) in &runs {
            let row = rows.iter().find(|r| r.id == *id).unwrap();
            assert_eq!(
                row.job_id, *job,
                "{backend:?}: run {id} is another job's row"
            );
        }

        // Starts at instants of their own, one of them queued twice. One executor (as in an
        // executor process), so that a row given another row's values is not caught by the
        // executor read back but by the rows' check below.
        let at = |job: i64| Utc.timestamp_millis_opt(1_790_000_001_000 + job).unwrap();
        let executor = |_: i64| "a@1";
        let starts: Vec<_> = runs
            .iter()
            .chain(runs.first())
            .map(|&(job, id)| {
                let log = log.clone();
                tokio::spawn(async move { (id, log.start(id, executor(job), at(job)).await) })
            })
            .collect();
        let mut first = std::collections::HashSet::new();
        let mut started = 0;
        for start in starts {
            let (id, ok) = start.await.unwrap();
            if ok.unwrap_or_else(|e| panic!("{backend:?}: {e}")) {
                assert!(first.insert(id), "{backend:?}: run {id} started twice");
                started += 1;
            }
        }
        assert_eq!(started, N, "{backend:?}");

        // Finishes with outcomes of their own (one status, so that a row given another row's
        // output is not caught by the status read back); a third of the runs finished twice.
        // Each run's own end, however late its outcome is written: the row's `finished_at`.
        let end = move |job: i64| at(job) + chrono::Duration::milliseconds(500 + 7 * job);
        let outcome = |job: i64| Outcome {
            status: RunStatus::Succeeded,
            exit_code: Some((job % 3) as i32),
            error: (job % 3 == 0).then(|| format!("job {job} said so")),
            output: format!("output of job {job}\n"),
        };
        let finishes: Vec<_> = runs
            .iter()
            .chain(runs.iter().filter(|(job, _)| job % 3 == 1))
            .map(|&(job, id)| {
                let log = log.clone();
                tokio::spawn(async move {
                    (
                        id,
                        log.finish(id, executor(job), (at(job), end(job)), outcome(job))
                            .await,
                    )
                })
            })
            .collect();
        let mut recorded = std::collections::HashSet::new();
        for finish in finishes {
            let (id, ok) = finish.await.unwrap();
            if ok.unwrap_or_else(|e| panic!("{backend:?}: {e}")) {
                assert!(recorded.insert(id), "{backend:?}: run {id} recorded twice");
            }
        }
        assert_eq!(recorded.len() as i64, N, "{backend:?}");
        let rows = run::Entity::find().all(&c.db).await.unwrap();
        for (job, id) in &runs {
            let row = rows.iter().find(|r| r.id == *id).unwrap();
            let want = outcome(*job);
            assert_eq!(
                (
                    row.status.as_str(),
                    row.executor.as_str(),
                    row.exit_code,
                    row.error.clone(),
                    row.output.clone(),
                    row.started_at,
                    row.finished_at,
                ),
                (
                    want.status.as_str(),
                    executor(*job),
                    want.exit_code,
                    want.error,
                    Some(want.output),
                    Some(at(*job)),
                    Some(end(*job)),
                ),
                "{backend:?}: run {id} of job {job}"
            );
        }
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_running_past_statement_timeout_secs_is_cancelled_by_the_server() {
    use sea_orm::ConnectionTrait;
    for (backend, sleep) in [
        (Backend::MariaDb, "SELECT SLEEP(5)"),
        (Backend::Postgres, "SELECT pg_sleep(5)"),
    ] {
        let c = Cluster::new(backend, &[]).await;
        let mut config = c.database();
        config.statement_timeout = Some(Duration::from_secs(1));
        let db = gocron_shared::db::connect(&config, &tokio_util::sync::CancellationToken::new())
            .await
            .expect("connect");
        // Three at once: every connection of the pool is limited, not just the first.
        let started = std::time::Instant::now();
        let (a, b, c3) = tokio::join!(
            db.execute_unprepared(sleep),
            db.execute_unprepared(sleep),
            db.execute_unprepared(sleep)
        );
        let results = [a, b, c3];
        let took = started.elapsed();
        // MariaDB ends an interrupted SLEEP with 1 rather than an error; either way the server
        // stopped them at the limit, not after the five seconds asked for.
        assert!(
            took < Duration::from_secs(4),
            "{backend:?}: the statements ran {took:?} ({results:?})"
        );
        if backend == Backend::Postgres {
            assert!(
                results.iter().all(|r| r.is_err()),
                "PostgreSQL reports the cancels: {results:?}"
            );
        }
        c.shutdown().await;
    }
}
