//! The core pipeline: exactly once per tick, group targeting, round-robin, executor leaving.

use std::time::Duration;

use gocron_tests::{Backend, Cluster, assert_one_run_per_tick, executor_name, lines, tally};

/// Every second, three dispatchers race for each tick: each tick runs exactly once, none skipped.
pub async fn exactly_once(backend: Backend, dispatchers: usize, ticks: usize) {
    let mut c = Cluster::new(backend, &[]).await;
    c.start_executor("exec-a").await;
    c.start_executor("exec-b").await;
    for i in 0..dispatchers {
        c.start_dispatcher(&format!("disp-{i}"));
    }
    c.start_monitor();
    let out = c.path("ticks.txt");
    let job = c
        .insert_job(
            "every-second",
            "* * * * * *",
            &format!(
                "echo \"$GOCRON_SCHEDULED_AT $GOCRON_RUN_ID\" >> {}",
                out.display()
            ),
        )
        .await;

    let runs = c
        .wait_for_finished(job, ticks, Duration::from_secs(ticks as u64 + 30))
        .await;
    // Every row counts for "once per tick", finished or not: a row is a tick that was fired.
    assert_one_run_per_tick(&runs, chrono::Duration::seconds(1));
    let finished: Vec<_> = runs
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    assert!(
        finished.iter().all(|r| r.status == "succeeded"),
        "every run succeeds: {finished:#?}"
    );

    // The commands themselves ran once per tick: one line per run, no tick twice.
    let written = lines(&out);
    let by_tick = tally(
        written
            .iter()
            .map(|l| l.split(' ').next().unwrap_or("").to_owned()),
    );
    assert!(
        by_tick.values().all(|n| *n == 1),
        "a tick's command ran twice: {by_tick:?}"
    );
    for run in &finished {
        let tick = run
            .scheduled_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert_eq!(
            by_tick.get(&tick),
            Some(&1),
            "run {} of tick {tick} wrote its line",
            run.id
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_runs_exactly_once_with_three_dispatchers() {
    exactly_once(Backend::Sqlite, 3, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_only_inside_their_machine_group() {
    let mut c = Cluster::new(
        Backend::Sqlite,
        &[
            ("ga", "exec-a"),
            ("gbc", "exec-b|exec-c"),
            ("loopback", "127.0.0.1"),
        ],
    )
    .await;
    for e in ["exec-a", "exec-b", "exec-c"] {
        c.start_executor(e).await;
    }
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let ga = c
        .insert_job_with("on-ga", "* * * * * *", "true", &[("machine", "ga".into())])
        .await;
    let gbc = c
        .insert_job_with(
            "on-gbc",
            "* * * * * *",
            "true",
            &[("machine", "gbc".into())],
        )
        .await;
    let lo = c
        .insert_job_with(
            "on-loopback",
            "* * * * * *",
            "true",
            &[("machine", "loopback".into())],
        )
        .await;

    let timeout = Duration::from_secs(40);
    let on_ga = c.wait_for_finished(ga, 6, timeout).await;
    let on_gbc = c.wait_for_finished(gbc, 6, timeout).await;
    let on_lo = c.wait_for_finished(lo, 6, timeout).await;
    let used = |runs: &[gocron_shared::entity::run::Model]| {
        tally(
            runs.iter()
                .filter(|r| r.finished_at.is_some())
                .map(|r| executor_name(r).to_owned()),
        )
    };
    assert_eq!(used(&on_ga).keys().collect::<Vec<_>>(), ["exec-a"]);
    assert_eq!(
        used(&on_gbc).keys().collect::<Vec<_>>(),
        ["exec-b", "exec-c"]
    );
    // An IP member matches every executor advertising it: all three here.
    assert_eq!(used(&on_lo).len(), 3, "{:?}", used(&on_lo));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_take_turns_across_dispatchers() {
    let mut c = Cluster::new(Backend::Sqlite, &[("trio", "exec-a|exec-b|exec-c")]).await;
    for e in ["exec-a", "exec-b", "exec-c"] {
        c.start_executor(e).await;
    }
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let job = c
        .insert_job_with("rr", "* * * * * *", "true", &[("machine", "trio".into())])
        .await;
    let runs = c.wait_for_finished(job, 9, Duration::from_secs(40)).await;
    let order: Vec<&str> = runs
        .iter()
        .filter(|r| r.finished_at.is_some())
        .take(9)
        .map(executor_name)
        .collect();
    // Strict rotation, whichever dispatcher wins each tick: every window of 3 has all three.
    for window in order.windows(3) {
        let distinct = tally(window.iter().copied());
        assert_eq!(distinct.len(), 3, "not round-robin: {order:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_leaves_is_no_longer_chosen() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_executor("exec-b").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c.insert_job("leaver", "* * * * * *", "true").await;
    let before = c.wait_for_finished(job, 4, Duration::from_secs(30)).await;
    assert!(
        before.iter().any(|r| executor_name(r) == "exec-b"),
        "exec-b took runs while alive: {before:#?}"
    );

    c.stop("exec-b").await;
    let stopped_at = chrono::Utc::now();
    let n = before.len();
    let after = c
        .wait_for_finished(job, n + 5, Duration::from_secs(30))
        .await;
    let later: Vec<_> = after
        .iter()
        .filter(|r| r.scheduled_at > stopped_at && r.finished_at.is_some())
        .collect();
    assert!(
        later.len() >= 3,
        "runs continued after exec-b left: {after:#?}"
    );
    for r in later {
        assert_eq!(executor_name(r), "exec-a", "run after exec-b left: {r:#?}");
        assert_eq!(r.status, "succeeded", "{r:#?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_live_executors_records_no_executor() {
    let mut c = Cluster::new(Backend::Sqlite, &[("empty", "exec-nobody")]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c
        .insert_job_with(
            "orphan",
            "* * * * * *",
            "true",
            &[("machine", "empty".into())],
        )
        .await;
    let runs = c.wait_for_finished(job, 2, Duration::from_secs(30)).await;
    for r in runs.iter().filter(|r| r.finished_at.is_some()) {
        assert_eq!(r.status, "no_executor", "{r:#?}");
        assert_eq!(
            r.error.as_deref(),
            Some("no live executor in machine group \"empty\""),
            "{r:#?}"
        );
        assert_eq!(r.executor, "");
    }
    c.shutdown().await;
}
