//! Routes (`cron_job.route`): which executor of the group is offered a run first. `hash`
//! keeps a job on one executor while it lives and moves it to the next by the same hash when it
//! is gone; `least_busy` picks the executor with the fewest runs going; `random` spreads runs.
//! `broadcast` and `shard` run each tick once on every live executor of the group, one row
//! each, and tell the command its place (`GOCRON_SHARD_INDEX`, `GOCRON_SHARD_TOTAL`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use gocron_dispatcher::dispatch::rendezvous;
use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, executor_name, lines, wait_until};

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

/// The job's schedule runs by tick, each tick's runs in `shard_index` order.
fn by_tick(runs: &[run::Model]) -> BTreeMap<DateTime<Utc>, Vec<&run::Model>> {
    let mut ticks: BTreeMap<DateTime<Utc>, Vec<&run::Model>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.trigger == "schedule") {
        ticks.entry(r.scheduled_at).or_default().push(r);
    }
    for runs in ticks.values_mut() {
        runs.sort_by_key(|r| r.shard_index);
    }
    ticks
}

/// Checks one fanned-out tick: `shard_index` 0 to n - 1 once each, all saying n; and, when
/// `live` is given, one run on each of those executors (in name order, by index), succeeded.
fn check_tick(at: DateTime<Utc>, runs: &[&run::Model], live: Option<&[&str]>) {
    let n = runs.len() as i32;
    let places: Vec<_> = runs
        .iter()
        .map(|r| (r.shard_index, r.shard_total))
        .collect();
    assert_eq!(
        places,
        (0..n).map(|i| (i, n)).collect::<Vec<_>>(),
        "tick {at}: {runs:?}"
    );
    if let Some(live) = live {
        let ran: Vec<_> = runs
            .iter()
            .map(|r| (executor_name(r), r.status.as_str()))
            .collect();
        let expected: Vec<_> = live.iter().map(|e| (*e, "succeeded")).collect();
        assert_eq!(ran, expected, "tick {at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_runs_every_tick_once_on_each_live_executor() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    for name in ["exec-c", "exec-a", "exec-b"] {
        c.start_executor(name).await;
    }
    // Two dispatchers race for every tick: its rows are written whole, by one of them.
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let out = c.path("out.txt");
    let job = c
        .insert_job_with(
            "everywhere",
            "* * * * * *",
            &format!(
                "echo \"$GOCRON_RUN_ID $GOCRON_EXECUTOR\" >> '{}'",
                out.display()
            ),
            &[("route", "broadcast".into())],
        )
        .await;
    let all = ["exec-a", "exec-b", "exec-c"];
    let full_ticks = |runs: &[run::Model]| {
        by_tick(runs)
            .values()
            .filter(|t| t.len() == 3 && t.iter().all(|r| r.status == "succeeded"))
            .count()
    };
    wait_until("three ticks run on all three executors", WAIT, || async {
        let runs = c.runs(job).await;
        (full_ticks(&runs) >= 3).then_some(())
    })
    .await;

    // One executor gone: the following ticks run on the two left.
    c.stop("exec-b").await;
    let runs = wait_until("three ticks run on the two left", WAIT, || async {
        let runs = c.runs(job).await;
        let ticks = by_tick(&runs);
        let last: Vec<_> = ticks.values().rev().take(3).collect();
        (last.len() == 3
            && last.iter().all(|t| {
                t.len() == 2
                    && t.iter()
                        .all(|r| r.status == "succeeded" && executor_name(r) != "exec-b")
            }))
        .then_some(runs)
    })
    .await;
    let written = lines(&out);
    c.shutdown().await;

    let ticks = by_tick(&runs);
    // Every tick from the first to the last has its rows (one second apart), each whole.
    let instants: Vec<_> = ticks.keys().copied().collect();
    for pair in instants.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "{instants:?}"
        );
    }
    let (mut before, mut after) = (0, 0);
    for (at, tick) in &ticks {
        check_tick(*at, tick, None);
        match tick.len() {
            3 if tick.iter().all(|r| r.status == "succeeded") => {
                check_tick(*at, tick, Some(&all));
                before += 1;
            }
            2 => {
                check_tick(*at, tick, Some(&["exec-a", "exec-c"]));
                after += 1;
            }
            // Only around the stop: exec-b's run of the tick, still thought live, did not run
            // (broadcast offers a run to its own executor alone), or its row is the one
            // `lost` as exec-b stopped.
            3 => {
                for r in tick {
                    let expected = if r.shard_index == 1 {
                        vec!["no_executor", "lost", "succeeded"]
                    } else {
                        vec!["succeeded"]
                    };
                    assert!(expected.contains(&r.status.as_str()), "tick {at}: {r:?}");
                }
            }
            // The first tick may come before every executor is seen.
            _ => assert_eq!(Some(at), ticks.keys().next(), "tick {at}: {tick:?}"),
        }
    }
    assert!(
        before >= 3 && after >= 3,
        "{before} ticks before, {after} after"
    );
    // Each run that succeeded ran once, on its own executor, and nothing else ran.
    let mut ran: Vec<(i64, String)> = written
        .iter()
        .map(|l| {
            let (id, executor) = l.split_once(' ').expect("a line per run");
            (id.parse().unwrap(), executor.to_owned())
        })
        .collect();
    ran.sort();
    let mut succeeded: Vec<(i64, String)> = runs
        .iter()
        .filter(|r| r.status == "succeeded")
        .map(|r| (r.id, executor_name(r).to_owned()))
        .collect();
    succeeded.sort();
    assert_eq!(ran, succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_runs_know_their_place_and_a_retry_keeps_it() {
    let mut c = Cluster::new(Backend::Postgres, &[]).await;
    for name in ["exec-b", "exec-a"] {
        c.start_executor(name).await;
    }
    c.start_dispatcher("disp-0");
    c.start_monitor();
    // Prints its place; shard 1's first attempt fails.
    let job = c
        .insert_job_with(
            "sharded",
            "@event work",
            "echo \"$GOCRON_SHARD_INDEX/$GOCRON_SHARD_TOTAL $GOCRON_EXECUTOR $GOCRON_ATTEMPT\"; \
             [ \"$GOCRON_SHARD_INDEX\" = 0 ] || [ \"$GOCRON_ATTEMPT\" = 2 ]",
            &[
                ("route", "shard".into()),
                ("retries", 1.into()),
                ("retry_delay_secs", 1.into()),
            ],
        )
        .await;
    c.wait_published(job).await;
    events(&c, "work", 1).await;
    let runs = c.wait_for_finished(job, 3, WAIT).await;
    let shape: Vec<_> = runs
        .iter()
        .map(|r| {
            (
                r.trigger.as_str(),
                r.shard_index,
                r.shard_total,
                executor_name(r),
                r.status.as_str(),
                r.output.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("event", 0, 2, "exec-a", "succeeded", "0/2 exec-a 1\n"),
            ("event", 1, 2, "exec-b", "failed", "1/2 exec-b 1\n"),
            ("retry", 1, 2, "exec-b", "succeeded", "1/2 exec-b 2\n"),
        ]
    );
    assert_eq!(runs[2].retry_of, Some(runs[1].id));
    // The tick's runs share their event.
    assert_eq!(runs[0].source_id, runs[1].source_id);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_abandon_a_fanned_out_run_still_going_skips_the_whole_next_tick() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    for name in ["exec-a", "exec-b"] {
        c.start_executor(name).await;
    }
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let barrier = c.path("release");
    let job = c
        .insert_job_with(
            "held",
            "* * * * * *",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", barrier.display()),
            &[("route", "broadcast".into())],
        )
        .await;
    // A tick fanned out to both, its runs held; then ticks skipped whole, one row each.
    let skipped_ticks = |runs: &[run::Model]| {
        by_tick(runs)
            .values()
            .filter(|t| t.len() == 1 && t[0].status == "skipped")
            .count()
    };
    wait_until("two ticks skipped", WAIT, || async {
        (skipped_ticks(&c.runs(job).await) >= 2).then_some(())
    })
    .await;
    std::fs::write(&barrier, "").unwrap();
    // Released: the held runs end, and the next tick fans out again.
    let runs = wait_until("a tick run on both after the release", WAIT, || async {
        let runs = c.runs(job).await;
        let ticks = by_tick(&runs);
        let fanned = ticks
            .values()
            .filter(|t| t.len() == 2 && t.iter().all(|r| r.status == "succeeded"))
            .count();
        (fanned >= 2).then_some(runs)
    })
    .await;
    c.shutdown().await;
    for (at, tick) in by_tick(&runs) {
        match tick.as_slice() {
            [one] if one.status == "skipped" => {
                assert_eq!((one.shard_index, one.shard_total), (0, 0), "tick {at}");
                assert!(
                    one.error.as_deref().unwrap_or("").contains("still"),
                    "tick {at}: {one:?}"
                );
            }
            // Fanned out whole (two runs; one only if the dispatcher saw one executor yet).
            _ => check_tick(at, &tick, None),
        }
    }
}
