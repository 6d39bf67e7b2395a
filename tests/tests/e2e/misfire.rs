//! The misfire policy: ticks that passed while every dispatcher was down are recorded `missed`
//! (`skip`), caught up once (`once`), or all run (`all`), exactly once across dispatchers.

use std::time::Duration;

use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, assert_one_run_per_tick};
use sea_orm::EntityTrait as _;

/// Runs an every-second job under `policy`, stops both dispatchers for four seconds, restarts
/// them, and returns the job's rows once three ticks ran after the restart, and the restart.
async fn downtime(policy: &str) -> (Vec<run::Model>, chrono::DateTime<chrono::Utc>) {
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
    (settled, restarted)
}

/// Catch-up runs: of ticks before the dispatchers' restart, started after it.
fn caught_up(runs: &[run::Model], restarted: chrono::DateTime<chrono::Utc>) -> Vec<&run::Model> {
    runs.iter()
        .filter(|r| r.status == "succeeded")
        .filter(|r| r.scheduled_at < restarted && r.started_at.unwrap() >= restarted)
        .collect()
}

fn missed(runs: &[run::Model]) -> Vec<&run::Model> {
    runs.iter().filter(|r| r.status == "missed").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_records_each_missed_tick_once() {
    let (runs, restarted) = downtime("skip").await;
    let missed = missed(&runs);
    assert!(missed.len() >= 3, "{runs:#?}");
    for r in &missed {
        assert_eq!(
            r.error.as_deref(),
            Some("no dispatcher fired this tick in time (misfire policy skip)")
        );
    }
    assert!(caught_up(&runs, restarted).is_empty(), "{runs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_runs_one_catch_up_run_for_the_latest_missed_tick() {
    let (runs, restarted) = downtime("once").await;
    let missed = missed(&runs);
    let caught = caught_up(&runs, restarted);
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
    let (runs, restarted) = downtime("all").await;
    assert!(missed(&runs).is_empty(), "{runs:#?}");
    let caught = caught_up(&runs, restarted);
    assert!(caught.len() >= 3, "{runs:#?}");
    for pair in caught.windows(2) {
        assert!(
            pair[0].started_at <= pair[1].started_at,
            "in order: {pair:#?}"
        );
    }
}

/// Waits until job `job` is marked done and withdrawn from etcd.
async fn wait_done(c: &Cluster, job: i64) {
    gocron_tests::wait_until("the one-shot job done", Duration::from_secs(20), || async {
        let row = gocron_shared::entity::job::Entity::find_by_id(job)
            .one(&c.db)
            .await
            .ok()??;
        row.done_at.map(|_| ())
    })
    .await;
    let key = format!("/gocron-test/{}/jobs/{job}", c.id);
    let etcd = c.etcd().await;
    gocron_tests::wait_until(
        "the one-shot job withdrawn",
        Duration::from_secs(20),
        || {
            let (mut etcd, key) = (etcd.clone(), key.clone());
            async move { (etcd.get(key, None).await.ok()?.count() == 0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_job_runs_once_is_marked_done_and_never_runs_again() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let at = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let once = c.insert_job("once", &format!("@at {at}"), "true").await;
    let clock = c.insert_job("clock", "* * * * * *", "true").await;
    let runs = c.wait_for_finished(once, 1, Duration::from_secs(20)).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!(
        runs[0].scheduled_at,
        chrono::DateTime::parse_from_rfc3339(&at).unwrap()
    );
    wait_done(&c, once).await;
    // A restart of the dispatchers does not bring it back.
    c.stop("disp-1").await;
    c.start_dispatcher("disp-2");
    let seen = c.runs(clock).await.len();
    c.wait_for_finished(clock, seen + 3, Duration::from_secs(30))
        .await;
    assert_eq!(c.runs(once).await.len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_whose_instant_passed_unfired_follows_its_misfire_policy() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-1");
    c.start_dispatcher("disp-2");
    c.start_monitor();
    let at = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let rule = format!("@at {at}");
    let skipped = c.insert_job("skipped", &rule, "true").await;
    let caught = c
        .insert_job_with("caught", &rule, "true", &[("misfire", "once".into())])
        .await;
    wait_done(&c, skipped).await;
    wait_done(&c, caught).await;
    let runs = c
        .wait_for_finished(skipped, 1, Duration::from_secs(20))
        .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, "missed", "{runs:#?}");
    let runs = c
        .wait_for_finished(caught, 1, Duration::from_secs(20))
        .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].status, "succeeded", "{runs:#?}");
    c.shutdown().await;
}
