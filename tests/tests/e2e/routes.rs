//! Routes (`cron_job.route`): which executor of the group is offered a run first. `hash`
//! keeps a job on one executor while it lives and moves it to the next by the same hash when it
//! is gone; `least_busy` picks the executor with the fewest runs going; `random` spreads runs.

use std::collections::BTreeSet;
use std::time::Duration;

use gocron_dispatcher::dispatch::rendezvous;
use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, executor_name, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// Inserts `n` events named `name` in one statement.
async fn events(c: &Cluster, name: &str, n: usize) {
    let rows = vec![format!("('{name}')"); n].join(", ");
    c.sql(
        &format!("INSERT INTO cron_event (name) VALUES {rows}"),
        vec![],
    )
    .await;
}

/// The executors that ran `runs`, by name.
fn executors(runs: &[run::Model]) -> BTreeSet<String> {
    runs.iter().map(|r| executor_name(r).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_a_job_on_one_executor_until_it_is_gone_and_random_spreads() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let names = ["exec-a", "exec-b", "exec-c"];
    for name in names {
        c.start_executor(name).await;
    }
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let hashed = c
        .insert_job_with("hashed", "@event h", "true", &[("route", "hash".into())])
        .await;
    let random = c
        .insert_job_with("random", "@event r", "true", &[("route", "random".into())])
        .await;
    c.wait_published(hashed).await;
    c.wait_published(random).await;
    let mut ranked = names.to_vec();
    ranked.sort_by_key(|n| std::cmp::Reverse(rendezvous(hashed, n)));

    events(&c, "h", 6).await;
    let runs = c.wait_for_finished(hashed, 6, WAIT).await;
    assert_eq!(executors(&runs), BTreeSet::from([ranked[0].to_owned()]));
    // Its executor gone: the next by the same hash, for every run.
    c.stop(ranked[0]).await;
    events(&c, "h", 4).await;
    let runs = c.wait_for_finished(hashed, 10, WAIT).await;
    assert_eq!(
        executors(&runs[6..]),
        BTreeSet::from([ranked[1].to_owned()])
    );
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:?}");

    // Sixteen runs at random over two executors: both get some (all on one: 1 in 32,768).
    events(&c, "r", 16).await;
    let runs = c.wait_for_finished(random, 16, WAIT).await;
    assert_eq!(executors(&runs).len(), 2, "{:?}", executors(&runs));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_busy_goes_to_the_executor_with_the_fewest_runs_going() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    // Three long runs on exec-a, the only executor yet.
    let barrier = c.path("release");
    let hog = c
        .insert_job(
            "hog",
            "@event hog",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", barrier.display()),
        )
        .await;
    c.wait_published(hog).await;
    events(&c, "hog", 3).await;
    wait_until("three runs going", WAIT, || async {
        let runs = c.runs(hog).await;
        (runs.len() == 3 && runs.iter().all(|r| r.status == "running")).then_some(())
    })
    .await;
    c.start_executor("exec-b").await;
    let light = c
        .insert_job_with(
            "light",
            "@event light",
            "true",
            &[("route", "least_busy".into())],
        )
        .await;
    c.wait_published(light).await;
    // One at a time: every one goes to exec-b, which has none going (round-robin would
    // alternate).
    for n in 1..=4 {
        events(&c, "light", 1).await;
        c.wait_for_finished(light, n, WAIT).await;
    }
    let runs = c.runs(light).await;
    assert_eq!(executors(&runs), BTreeSet::from(["exec-b".to_owned()]));
    std::fs::write(&barrier, "").unwrap();
    c.wait_for_finished(hog, 3, WAIT).await;
    c.shutdown().await;
}
