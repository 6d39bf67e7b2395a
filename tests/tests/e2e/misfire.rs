//! The misfire policy: ticks that passed while every dispatcher was down are recorded `missed`
//! (`skip`), caught up once (`once`), or all run (`all`), exactly once across dispatchers.

use std::time::Duration;

use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, assert_one_run_per_tick};

/// Runs an every-second job under `policy`, stops both dispatchers for four seconds, restarts
/// them, and returns the job's rows once three ticks ran after the restart.
async fn downtime(policy: &str) -> Vec<run::Model> {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-1");
    c.start_dispatcher("disp-2");
    c.start_monitor();
    let job = c
        .insert_job_with("tick", "* * * * * *", "true", &[("misfire", policy.into())])
        .await;
    c.wait_for_finished(job, 2, Duration::from_secs(30)).await;
    c.stop("disp-1").await;
    c.stop("disp-2").await;
    // The downtime is the subject here, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = chrono::Utc::now();
    c.start_dispatcher("disp-3");
    c.start_dispatcher("disp-4");
    gocron_tests::wait_until(
        "three ticks after the restart",
        Duration::from_secs(30),
        || async {
            let runs = c.runs(job).await;
            let after = runs
                .iter()
                .filter(|r| r.scheduled_at > restarted && r.finished_at.is_some())
                .count();
            (after >= 3).then_some(())
        },
    )
    .await;
    // Catch-up runs may still be finishing.
    let runs = c
        .wait_for_finished(job, c.runs(job).await.len(), Duration::from_secs(30))
        .await;
    c.shutdown().await;
    // Every tick from the first to the last has exactly one row.
    let settled: Vec<_> = runs
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    assert_one_run_per_tick(&settled, chrono::Duration::seconds(1));
    settled
}

/// Runs that started more than 900 ms after their tick: catch-up runs (on-time runs start
/// within milliseconds).
fn caught_up(runs: &[run::Model]) -> Vec<&run::Model> {
    runs.iter()
        .filter(|r| r.status == "succeeded")
        .filter(|r| r.started_at.unwrap() - r.scheduled_at > chrono::Duration::milliseconds(900))
        .collect()
}

fn missed(runs: &[run::Model]) -> Vec<&run::Model> {
    runs.iter().filter(|r| r.status == "missed").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_records_each_missed_tick_once() {
    let runs = downtime("skip").await;
    let missed = missed(&runs);
    assert!(missed.len() >= 3, "{runs:#?}");
    for r in &missed {
        assert_eq!(
            r.error.as_deref(),
            Some("no dispatcher fired this tick in time (misfire policy skip)")
        );
    }
    assert!(caught_up(&runs).is_empty(), "{runs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_runs_one_catch_up_run_for_the_latest_missed_tick() {
    let runs = downtime("once").await;
    let missed = missed(&runs);
    let caught = caught_up(&runs);
    assert!(missed.len() >= 2, "{runs:#?}");
    assert_eq!(caught.len(), 1, "{runs:#?}");
    assert!(
        missed
            .iter()
            .all(|m| m.scheduled_at < caught[0].scheduled_at),
        "the catch-up run is the latest missed tick: {runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_runs_every_missed_tick_in_order() {
    let runs = downtime("all").await;
    assert!(missed(&runs).is_empty(), "{runs:#?}");
    let caught = caught_up(&runs);
    assert!(caught.len() >= 3, "{runs:#?}");
    for pair in caught.windows(2) {
        assert!(
            pair[0].started_at <= pair[1].started_at,
            "in order: {pair:#?}"
        );
    }
}
