//! Retries (`cron_job.retries`, `retry_delay_secs`): a run that ends failed, timeout, lost or
//! no_executor runs again, each attempt a row of its own (`trigger = retry`, `attempt`,
//! `retry_of`), each once (with two dispatchers racing, and across a dispatcher restart); the
//! alarm comes when the last attempt fails, saying so.

use std::time::Duration;

use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, lines, wait_until};

use crate::alarms::{alarm_cluster, wait_mail};

const WAIT: Duration = Duration::from_secs(60);

/// A command that appends its attempt (`GOCRON_ATTEMPT`) to `file` each run and fails until
/// the `n`th run.
fn flaky(file: &std::path::Path, n: usize) -> String {
    let file = file.display();
    format!("echo \"$GOCRON_ATTEMPT\" >> {file}; [ $(wc -l < {file}) -ge {n} ]")
}

/// (trigger, attempt, retry_of, status) of each run.
fn shape(runs: &[run::Model]) -> Vec<(String, i32, Option<i64>, String)> {
    runs.iter()
        .map(|r| (r.trigger.clone(), r.attempt, r.retry_of, r.status.clone()))
        .collect()
}

/// The lines `1`, `2`, … `n`.
fn attempts(n: i32) -> Vec<String> {
    (1..=n).map(|a| a.to_string()).collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

/// The retry requests waiting in etcd.
async fn requests(c: &Cluster) -> usize {
    c.etcd_keys_under(c.etcd_keys().retries()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_retried_once_per_attempt_with_doubling_delays_and_alarmed_after_the_last()
{
    retried(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_postgres() {
    retried(Backend::Postgres).await;
}

async fn retried(backend: Backend) {
    let (mut c, sink) = alarm_cluster(backend, &[], None, &[]).await;
    c.start_executor("exec-a").await;
    // Two dispatchers race for every retry, as for every tick.
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    // A run written before the monitor's first pass would not be retried.
    c.wait_checks_started().await;
    // Once a year: the only first attempts are the manual runs.
    let (mends, fails) = (c.path("mends.txt"), c.path("fails.txt"));
    let retrying = |retries: i32| vec![("retries", retries.into()), ("retry_delay_secs", 1.into())];
    let mended = c
        .insert_job_with("mends", "0 0 1 1 *", &flaky(&mends, 3), &retrying(3))
        .await;
    let broken = c
        .insert_job_with("broken", "0 0 1 1 *", &flaky(&fails, 100), &retrying(2))
        .await;
    c.run_now(mended, "").await;
    c.run_now(broken, "").await;

    // Fails twice, then succeeds: two retries of the first run, and no third.
    let runs = c.wait_for_finished(mended, 3, WAIT).await;
    let first = runs[0].id;
    assert_eq!(
        shape(&runs),
        [
            (s("manual"), 1, None, s("failed")),
            (s("retry"), 2, Some(first), s("failed")),
            (s("retry"), 3, Some(first), s("succeeded")),
        ]
    );
    // Each retry is due its delay after the attempt before it ended: 1 s, then 2 s.
    for (before, retry, delay) in [(&runs[0], &runs[1], 1000), (&runs[1], &runs[2], 2000)] {
        let ended = before.finished_at.unwrap().timestamp_millis();
        assert_eq!(retry.scheduled_at.timestamp_millis() - ended, delay);
    }
    // Always failing, two retries: three attempts, one alarm, for the last.
    let runs = c.wait_for_finished(broken, 3, WAIT).await;
    let first = runs[0].id;
    assert_eq!(
        shape(&runs),
        [
            (s("manual"), 1, None, s("failed")),
            (s("retry"), 2, Some(first), s("failed")),
            (s("retry"), 3, Some(first), s("failed")),
        ]
    );
    let mail = wait_mail(&sink, &format!("run_failed: job {broken} \"broken\"")).await;
    assert!(
        mail.body.contains("(attempt 3 of 3, none left)"),
        "{}",
        mail.body
    );
    // Settled: every request served and gone, and each attempt ran once (its line).
    wait_until("no retry request left", WAIT, || async {
        (requests(&c).await == 0).then_some(())
    })
    .await;
    assert_eq!((lines(&mends), lines(&fails)), (attempts(3), attempts(3)));
    let failed_alarms: Vec<_> = c
        .alarms()
        .await
        .into_iter()
        .filter(|a| a.kind == "run_failed")
        .map(|a| (a.job_id, a.run_id))
        .collect();
    assert_eq!(failed_alarms, [(broken, Some(runs[2].id))]);
    assert_eq!(c.runs(mended).await.len(), 3);
    assert_eq!(c.runs(broken).await.len(), 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_while_no_dispatcher_runs_runs_once_when_one_is_back() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("ALARM", "CHECK_MS", "200");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    c.wait_checks_started().await;
    let out = c.path("out.txt");
    let job = c
        .insert_job_with(
            "later",
            "0 0 1 1 *",
            &flaky(&out, 2),
            &[("retries", 1.into()), ("retry_delay_secs", 3.into())],
        )
        .await;
    c.run_now(job, "").await;
    // The first attempt failed and its retry is requested: the only dispatcher stops.
    wait_until("the retry requested", WAIT, || async {
        (requests(&c).await == 1).then_some(())
    })
    .await;
    c.stop("disp-0").await;
    let first = c.runs(job).await;
    assert_eq!(shape(&first), [(s("manual"), 1, None, s("failed"))]);
    let due = first[0].finished_at.unwrap() + chrono::Duration::seconds(3);
    // Back after the retry was due (the request waited in etcd): it runs, once.
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    c.start_dispatcher("disp-1");
    let runs = c.wait_for_finished(job, 2, WAIT).await;
    assert_eq!(
        shape(&runs),
        [
            (s("manual"), 1, None, s("failed")),
            (s("retry"), 2, Some(first[0].id), s("succeeded")),
        ]
    );
    assert_eq!(
        runs[1].scheduled_at.timestamp_millis(),
        due.timestamp_millis()
    );
    wait_until("the request gone", WAIT, || async {
        (requests(&c).await == 0).then_some(())
    })
    .await;
    assert_eq!(lines(&out), attempts(2));
    c.shutdown().await;
}
