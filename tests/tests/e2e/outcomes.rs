//! An outcome is never dropped while its executor lives, and survives an executor restart: the
//! spool under `[executor] data_dir`, and the cap `[executor] max_unrecorded`.

use std::path::PathBuf;
use std::time::Duration;

use gocron_tests::{Backend, Cluster, wait_until};
use sea_orm::sqlx::{Connection as _, SqliteConnection};

/// The outcomes in executor `name`'s spool: the files the executor counts as spooled, not a
/// write still in progress (a SIGKILL before its rename loses that outcome, by design).
fn spooled(c: &Cluster, name: &str) -> Vec<PathBuf> {
    let Ok(files) = std::fs::read_dir(c.executor_data_dir(name).join("spool")) else {
        return Vec::new();
    };
    files
        .filter_map(Result::ok)
        .filter(|e| gocron_executor::spool::is_spooled(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect()
}

/// Takes SQLite's write lock from a connection of the test's own and keeps it, as a long
/// transaction would: every other writer waits out its busy timeout, then fails (readers go on,
/// in WAL mode).
async fn lock_database(c: &Cluster) -> SqliteConnection {
    let mut conn = SqliteConnection::connect(&c.database().url)
        .await
        .expect("a SQLite connection of the test's own");
    sea_orm::sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .expect("the database's write lock");
    conn
}

async fn unlock_database(mut conn: SqliteConnection) {
    sea_orm::sqlx::query("ROLLBACK")
        .execute(&mut conn)
        .await
        .expect("releasing the write lock");
    conn.close().await.expect("closing the test's connection");
}

async fn run_row(c: &Cluster, job: i64, id: i64) -> gocron_shared::entity::run::Model {
    c.runs(job)
        .await
        .into_iter()
        .find(|r| r.id == id)
        .expect("the run row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_database_refused_survives_a_sigkill_and_is_recorded_after_the_restart() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let mut executor = c
        .start_executor_process("exec-a", crate::EXECUTOR_PROCESS.as_ref())
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let go = c.path("go");
    // Once a year: the only run is the manual one. It ends when the test says so.
    let command = format!(
        "echo before; while [ ! -e {} ]; do sleep 0.05; done; echo after; exit 3",
        go.display()
    );
    let job = c.insert_job("yearly", "0 0 1 1 *", &command).await;
    c.run_now(job, "").await;
    let run = wait_until("the run going", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.status == "running")
    })
    .await;

    // The database refuses writes while the run ends: its outcome goes to the spool.
    let lock = lock_database(&c).await;
    std::fs::write(&go, "").expect("letting the job end");
    wait_until("the outcome spooled", Duration::from_secs(120), || async {
        (spooled(&c, "exec-a").len() == 1).then_some(())
    })
    .await;
    // The job has ended by now; its outcome is recorded only after the restart below.
    let spooled_at = chrono::Utc::now();
    executor.kill().expect("SIGKILL the executor");
    executor.wait().expect("reaping the executor");
    unlock_database(lock).await;

    // Its process dead, the run is lost, as without a spool...
    wait_until("the run lost", Duration::from_secs(60), || async {
        (run_row(&c, job, run.id).await.status == "lost").then_some(())
    })
    .await;
    // ... until the executor starts again on the same data_dir: the real outcome replaces it.
    let mut executor = c
        .start_executor_process("exec-a", crate::EXECUTOR_PROCESS.as_ref())
        .await;
    let r = wait_until(
        "the run's real outcome",
        Duration::from_secs(60),
        || async { Some(run_row(&c, job, run.id).await).filter(|r| r.status != "lost") },
    )
    .await;
    assert_eq!(
        (
            r.status.as_str(),
            r.exit_code,
            r.error.as_deref(),
            r.output.as_deref(),
            r.executor.as_str(),
        ),
        (
            "failed",
            Some(3),
            Some("exited with code 3"),
            Some("before\nafter\n"),
            run.executor.as_str(),
        ),
        "{r:#?}"
    );
    // `finished_at` is when the job ended, not when its outcome was written at last.
    let finished_at = r.finished_at.expect("finished_at");
    assert!(
        finished_at <= spooled_at && Some(finished_at) >= r.started_at,
        "finished at {finished_at}, spooled by {spooled_at}: {r:#?}"
    );
    let fences = c.fences().await;
    wait_until(
        "the spool empty and the run out of the job's live runs",
        Duration::from_secs(20),
        || async {
            let live = fences.in_flight(job).await.ok()?;
            (spooled(&c, "exec-a").is_empty() && live.is_empty()).then_some(())
        },
    )
    .await;

    executor.kill().expect("SIGKILL the executor");
    executor.wait().expect("reaping the executor");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_unrecorded_outcomes_waiting_the_executor_answers_busy_until_they_are_recorded() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    // The database refuses every `succeeded` (and nothing else: the dispatcher's rows, the
    // `running` and `no_executor` updates go through), as a failing constraint would.
    c.sql(
        "CREATE TRIGGER refuse_outcomes BEFORE UPDATE OF status ON cron_run \
         WHEN NEW.status = 'succeeded' \
         BEGIN SELECT RAISE(ABORT, 'outcomes refused by the test'); END",
        vec![],
    )
    .await;
    c.start_executor_with("exec-a", &[("EXECUTOR", "MAX_UNRECORDED", "1")])
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c
        .insert_job("every-second", "* * * * * *", "echo out")
        .await;

    let refused = wait_until(
        "a run refused for outcomes waiting",
        Duration::from_secs(30),
        || async {
            c.runs(job).await.into_iter().find(|r| {
                r.status == "no_executor"
                    && r.error.as_deref().is_some_and(|e| {
                        e.contains("exec-a@")
                            && e.contains(
                                "busy: 1 outcomes of finished runs are waiting for the database (max_unrecorded 1)",
                            )
                    })
            })
        },
    )
    .await;
    // The one run accepted is still in flight, its outcome in the spool.
    let runs = c.runs(job).await;
    let accepted: Vec<_> = runs
        .iter()
        .filter(|r| r.status != "no_executor" && r.id < refused.id)
        .collect();
    assert_eq!(accepted.len(), 1, "{runs:#?}");
    let first = accepted[0].clone();
    // Ended within a second: never marked `running` (RUNNING_AFTER), it goes from
    // `dispatched` to its outcome once the spool is replayed.
    assert_eq!(first.status, "dispatched", "{first:#?}");
    assert_eq!(spooled(&c, "exec-a").len(), 1);

    // Once the database takes outcomes again, the spooled one is recorded and runs go on.
    c.sql("DROP TRIGGER refuse_outcomes", vec![]).await;
    wait_until(
        "the spooled outcome recorded and a later run done",
        Duration::from_secs(60),
        || async {
            let runs = c.runs(job).await;
            let first = runs.iter().find(|r| r.id == first.id)?;
            let later = runs
                .iter()
                .any(|r| r.id > refused.id && r.status == "succeeded");
            (first.status == "succeeded" && first.output.as_deref() == Some("out\n") && later)
                .then_some(())
        },
    )
    .await;
    assert!(spooled(&c, "exec-a").is_empty());
    c.shutdown().await;
}
