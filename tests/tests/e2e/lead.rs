//! `[dispatcher] lead_ms`: a scheduled tick is handed over (lock, row, executor's claim) before
//! its instant, and its command starts at the instant; the policies still decide at the tick.

use std::time::Duration;

use chrono::Utc;
use gocron_tests::{Backend, Cluster, lines, wait_until};

/// When run `run_id` started, by its command's own clock (lines `{run id} {unix time}`).
fn start_of(path: &std::path::Path, run_id: i64) -> f64 {
    lines(path)
        .iter()
        .find_map(|l| {
            let (id, at) = l.split_once(' ')?;
            (id == run_id.to_string()).then(|| at.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no start time of run {run_id}: {:?}", lines(path)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_is_handed_over_before_its_instant_and_its_command_starts_at_it() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("dispatcher", "lead_ms", "5000");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let started = c.path("started.txt");
    // Every 10 s, so that the lead (5 s) never reaches back to the tick before.
    let job = c
        .insert_job_with(
            "early",
            "*/10 * * * * *",
            &format!(
                "echo \"$GOCRON_RUN_ID $(date +%s.%N)\" >> {}",
                started.display()
            ),
            &[("timeout_policy", "sync".into())],
        )
        .await;
    // The row of a tick to come: written, and its run in the executor's hands, before it.
    let (row, seen_at) = wait_until(
        "a run row before its tick",
        Duration::from_secs(30),
        || async {
            let now = Utc::now();
            c.runs(job)
                .await
                .into_iter()
                .find(|r| r.scheduled_at > now)
                .map(|r| (r, now))
        },
    )
    .await;
    // Found at all: without the lead, a tick's row is written at the tick, never before.
    assert_eq!(row.status, "dispatched", "{row:?}");
    assert!(row.scheduled_at > seen_at);
    // The command itself starts at the tick, not when the run reached the executor.
    let ran = wait_until("the run's end", Duration::from_secs(30), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.id == row.id && r.finished_at.is_some())
    })
    .await;
    assert_eq!(ran.status, "succeeded", "{ran:?}");
    let first = start_of(&started, ran.id);
    let tick = row.scheduled_at.timestamp_millis() as f64 / 1000.0;
    assert!(first >= tick, "started at {first}, before its tick {tick}");
    // The row's start is the command's, not the hand-over's.
    assert!(ran.started_at.unwrap() >= row.scheduled_at, "{ran:?}");
    c.shutdown().await;
}

/// Under `abandon` a tick is skipped when the job's previous run is still going at the tick. A
/// tick handed over while that run goes waits for its instant to decide: here each run (1 s)
/// is going when the next tick is handed over (1.5 s before it), and has ended by its tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_decides_at_the_tick_not_at_its_early_hand_over() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("dispatcher", "lead_ms", "1500");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c.insert_job("second", "*/2 * * * * *", "sleep 1").await;
    let runs = c.wait_for_finished(job, 4, Duration::from_secs(60)).await;
    let finished: Vec<_> = runs.iter().filter(|r| r.finished_at.is_some()).collect();
    for r in &finished {
        assert_eq!(r.status, "succeeded", "a tick not run: {runs:#?}");
    }
    // One run every 2 s, none skipped: consecutive ticks.
    for pair in finished.windows(2) {
        assert_eq!(
            pair[1].scheduled_at - pair[0].scheduled_at,
            chrono::Duration::seconds(2),
            "{runs:#?}"
        );
    }
    c.shutdown().await;
}

/// An executor of an earlier release starts a run when it gets it, and does not say that it
/// waits (its registration has no `starts_at_tick`): a dispatcher hands it a run only at its
/// tick, holding the run itself until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_does_not_say_it_waits_gets_the_run_at_its_tick() {
    let mut c = Cluster::new(Backend::Sqlite, &[("old", "old-exec")]).await;
    c.set("dispatcher", "lead_ms", "5000");
    c.start_executor("exec-a").await;
    // Registered the way an earlier release registers, at exec-a's address (exec-a serves it;
    // the dispatcher cannot know that).
    let address = c.executor_address("exec-a").await;
    let registration = serde_json::json!({
        "name": "old-exec",
        "address": address.to_string(),
        "version": "0.0.0",
        "started_at": Utc::now().to_rfc3339(),
        "instance": "0123456789abcdef",
    });
    c.etcd()
        .await
        .put(
            c.etcd_keys().executor("old-exec"),
            registration.to_string(),
            None,
        )
        .await
        .unwrap();
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let started = c.path("started.txt");
    let job = c
        .insert_job_with(
            "to-an-old-executor",
            "*/10 * * * * *",
            &format!(
                "echo \"$GOCRON_RUN_ID $(date +%s.%N)\" >> {}",
                started.display()
            ),
            &[("timeout_policy", "sync".into()), ("machine", "old".into())],
        )
        .await;
    let fences = c.fences().await;
    // The tick's row and its hold, before the tick: the dispatcher's, not an executor's.
    let (run_id, tick) = wait_until(
        "a held run before its tick",
        Duration::from_secs(30),
        || async {
            // At least 2 s ahead (a job that came within the lead of its first tick has it
            // handed over at once): the tick after, if need be.
            let ahead = Utc::now() + chrono::Duration::seconds(2);
            let row = c
                .runs(job)
                .await
                .into_iter()
                .find(|r| r.scheduled_at > ahead)?;
            let held = fences.in_flight(job).await.ok()?;
            held.iter()
                .any(|r| r.run_id == row.id && r.holder.is_some())
                .then_some((row.id, row.scheduled_at))
        },
    )
    .await;
    // Still the dispatcher's a second before the tick: it has not sent the run.
    let before = (tick - chrono::Duration::seconds(1) - Utc::now())
        .to_std()
        .expect("the hand-over took the whole lead: no test");
    tokio::time::sleep(before).await;
    let held = fences.in_flight(job).await.unwrap();
    let holder = held
        .iter()
        .find(|r| r.run_id == run_id)
        .and_then(|r| r.holder.clone());
    assert!(
        matches!(holder, Some(gocron_shared::live::Holder::Dispatcher { .. })),
        "{holder:?}"
    );
    // Sent at the tick, it runs then.
    let ran = wait_until("the run's end", Duration::from_secs(30), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.id == run_id && r.finished_at.is_some())
    })
    .await;
    assert_eq!(ran.status, "succeeded", "{ran:?}");
    assert!(ran.executor.starts_with("exec-a@"), "{ran:?}");
    let first = start_of(&started, ran.id);
    let tick = tick.timestamp_millis() as f64 / 1000.0;
    assert!(first >= tick, "started at {first}, before its tick {tick}");
    c.shutdown().await;
}

/// An executor busy before the tick (its one slot held by another run waiting for the same
/// tick) is asked again at the tick, as it would have been without the lead: here the slot is
/// freed before the tick (that run killed while it waits), and the second run gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_busy_before_the_tick_is_asked_again_at_it() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("dispatcher", "lead_ms", "5000");
    c.start_executor_with("exec-a", &[("EXECUTOR", "MAX_CONCURRENT", "1")])
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let mut jobs = Vec::new();
    for name in ["one", "two"] {
        let job = c
            .insert_job_with(
                name,
                "*/10 * * * * *",
                "true",
                &[("timeout_policy", "sync".into())],
            )
            .await;
        jobs.push(job);
    }
    let fences = c.fences().await;
    // Both rows of the coming tick; one run claimed by exec-a, the other held by the
    // dispatcher (refused busy).
    let (tick, pending, refused) = wait_until(
        "two runs of the same coming tick, one of them claimed",
        Duration::from_secs(30),
        || async {
            // At least 2 s ahead (see above).
            let ahead = Utc::now() + chrono::Duration::seconds(2);
            let mut rows = Vec::new();
            for job in &jobs {
                let row = c
                    .runs(*job)
                    .await
                    .into_iter()
                    .find(|r| r.scheduled_at > ahead)?;
                rows.push(row);
            }
            if rows[0].scheduled_at != rows[1].scheduled_at {
                return None;
            }
            let mut claimed = None;
            for row in &rows {
                let held = fences.in_flight(row.job_id).await.ok()?;
                let holder = held.iter().find(|r| r.run_id == row.id)?.holder.clone()?;
                if matches!(holder, gocron_shared::live::Holder::Executor { .. }) {
                    claimed = Some(row.clone());
                }
            }
            let claimed = claimed?;
            let other = rows.into_iter().find(|r| r.id != claimed.id)?;
            Some((claimed.scheduled_at, claimed, other))
        },
    )
    .await;
    // Refused before the tick, and not given up: still `dispatched` a second before the tick.
    let before = (tick - chrono::Duration::seconds(1) - Utc::now())
        .to_std()
        .expect("the hand-over took the whole lead: no test");
    tokio::time::sleep(before).await;
    let row = c
        .runs(refused.job_id)
        .await
        .into_iter()
        .find(|r| r.id == refused.id)
        .unwrap();
    assert_eq!(row.status, "dispatched", "{row:?}");
    // The slot freed before the tick: the other run, asked again at the tick, takes it.
    let config = c.base_config();
    let tls = gocron_shared::rpc::Tls::load(&config.rpc).unwrap();
    gocron_shared::control::kill_run(
        &fences,
        &config.rpc.secret,
        &tls,
        pending.job_id,
        pending.id,
        "test",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let ran = wait_until("the second run's end", Duration::from_secs(30), || async {
        c.runs(refused.job_id)
            .await
            .into_iter()
            .find(|r| r.id == refused.id && r.finished_at.is_some())
    })
    .await;
    assert_eq!(ran.status, "succeeded", "{ran:?}");
    assert!(ran.started_at.unwrap() >= tick, "{ran:?}");
    let killed = c
        .runs(pending.job_id)
        .await
        .into_iter()
        .find(|r| r.id == pending.id)
        .unwrap();
    assert_eq!(killed.status, "killed", "{killed:?}");
    c.shutdown().await;
}
