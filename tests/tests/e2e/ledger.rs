//! Every tick accounted for: a tick whose lock was won but whose row was never written (the
//! dispatcher died in between, or the database refused the insert) gets a `missed` row from the
//! monitor's ledger, also across a monitor restart; a run row nobody holds in Redis becomes
//! `lost`.

use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use gocron_shared::entity::run;
use gocron_shared::job::Trigger;
use gocron_tests::{Backend, Cluster, assert_one_run_per_tick, lines, wait_until};
use sea_orm::{ActiveModelTrait as _, ActiveValue::Set};

const WAIT: Duration = Duration::from_secs(90);

/// A cluster whose monitor settles ticks within a few seconds (lease 2 s, grace 1 s).
async fn quick_cluster() -> Cluster {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("ETCD", "LEASE_TTL", "2");
    c.set("ALARM", "GRACE_SECS", "1");
    c.set("ALARM", "CHECK_MS", "250");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-1");
    c.start_dispatcher("disp-2");
    c
}

/// Wins the locks of `ticks` of job `job` as a dispatcher that then dies: Redis says the ticks
/// were fired, and no row is ever written for them.
async fn win_and_die(c: &Cluster, job: i64, ticks: &[DateTime<Utc>]) {
    let fences = c.fences().await;
    for t in ticks {
        let won = fences
            .acquire(job, t.timestamp_millis(), Trigger::Schedule, 0, "")
            .await
            .expect("redis");
        assert!(won.is_some(), "the test should win the tick at {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticks_won_by_a_dispatcher_that_died_are_recorded_missed_also_across_a_monitor_restart() {
    let mut c = quick_cluster().await;
    c.start_monitor();
    let out = c.path("ticks");
    let job = c
        .insert_job(
            "ledger",
            "* * * * * *",
            &format!("echo $GOCRON_SCHEDULED_AT >> {}", out.display()),
        )
        .await;
    c.wait_for_finished(job, 2, WAIT).await;

    // Two ticks a little ahead are won by a dispatcher that dies before writing their rows.
    let base = Utc::now().trunc_subsecs(0);
    let while_up = [base + chrono::Duration::seconds(3)];
    win_and_die(&c, job, &while_up).await;
    // And one while no monitor runs: the restarted one must resume from where it was.
    wait_until("the first lost tick to pass", WAIT, || async {
        (Utc::now() > while_up[0]).then_some(())
    })
    .await;
    c.stop("monitor").await;
    let while_down = [Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(2)];
    win_and_die(&c, job, &while_down).await;
    wait_until("the second lost tick to pass", WAIT, || async {
        (Utc::now() > while_down[0] + chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    c.start_monitor();

    let lost: Vec<DateTime<Utc>> = while_up.iter().chain(&while_down).copied().collect();
    let runs = wait_until("a missed row for each tick nobody wrote", WAIT, || async {
        let runs = c.runs(job).await;
        lost.iter()
            .all(|t| {
                runs.iter()
                    .any(|r| r.scheduled_at == *t && r.status == "missed")
            })
            .then_some(runs)
    })
    .await;
    for t in &lost {
        let row = runs.iter().find(|r| r.scheduled_at == *t).expect("row");
        let error = row.error.as_deref().unwrap_or("");
        assert!(
            error.contains("no run was recorded for this tick"),
            "the missed row says why: {error}"
        );
    }
    // Each tick has one row, with nothing missing between the first and the last; the only
    // missed ones are the ticks nobody wrote (no false alarm from the restart), and their
    // command never ran.
    let ticks: Vec<_> = runs
        .iter()
        .filter(|r| r.trigger == "schedule" && r.scheduled_at <= lost[1])
        .cloned()
        .collect();
    assert_one_run_per_tick(&ticks, chrono::Duration::seconds(1));
    let missed: Vec<DateTime<Utc>> = ticks
        .iter()
        .filter(|r| r.status == "missed")
        .map(|r| r.scheduled_at)
        .collect();
    assert_eq!(missed, lost, "only the ticks nobody wrote are missed");
    let ran = lines(&out);
    for t in &lost {
        let text = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(
            !ran.iter().any(|l| l.trim() == text),
            "the missed tick {text} must not have run"
        );
    }
    // And the alarm follows the row, once per tick.
    let alarms = wait_until("the missed ticks alarmed", WAIT, || async {
        let alarms = c.alarms().await;
        let n = alarms
            .iter()
            .filter(|a| a.kind == "tick_missed" && a.job_id == job)
            .count();
        (n >= lost.len()).then_some(alarms)
    })
    .await;
    for t in &lost {
        let key = format!("tick_missed:job={job}:tick={}:", t.timestamp_millis());
        let n = alarms
            .iter()
            .filter(|a| a.dedup_key.starts_with(&key))
            .count();
        assert_eq!(n, 1, "one alarm for the tick at {t}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_row_nobody_holds_becomes_lost() {
    let mut c = quick_cluster().await;
    c.start_monitor();
    let job = c.insert_job("orphan", "@yearly", "true").await;
    c.wait_checks_started().await;
    // A hand-off whose Redis entry was never made (Redis down at the hand-off, then the
    // dispatcher died): a `dispatched` row from two minutes ago, held by nobody.
    let at = Utc::now().trunc_subsecs(0) - chrono::Duration::minutes(2);
    run::ActiveModel {
        job_id: Set(job),
        scheduled_at: Set(at),
        status: Set("dispatched".into()),
        executor: Set(String::new()),
        trigger: Set("manual".into()),
        ..Default::default()
    }
    .insert(&c.db)
    .await
    .expect("insert the run row");
    let row = wait_until("the orphaned run to be lost", WAIT * 2, || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.scheduled_at == at && r.status == "lost")
    })
    .await;
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("no dispatcher or executor holds the run"),
        "{error}"
    );
    c.shutdown().await;
}
