//! Retention: old final runs, runs beyond a job's newest `keep_runs` and old alarms go, in
//! batches; runs in flight, runs the checks have not settled and alarms not done with stay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gocron_monitor::retention::{self, Keep, Pruned};
use gocron_shared::entity::{alarm, alarm_state, run};
use gocron_tests::{Backend, Cluster, wait_until};
use sea_orm::{ActiveModelTrait as _, ActiveValue::Set, EntityTrait as _, QueryOrder as _};

async fn insert_run(c: &Cluster, job_id: i64, at: DateTime<Utc>, status: &str) -> i64 {
    run::ActiveModel {
        job_id: Set(job_id),
        scheduled_at: Set(at),
        status: Set(status.into()),
        executor: Set(String::new()),
        trigger: Set("schedule".into()),
        ..Default::default()
    }
    .insert(&c.db)
    .await
    .expect("inserting a run")
    .id
}

async fn insert_alarm(c: &Cluster, key: &str, at: DateTime<Utc>, status: &str) -> i64 {
    alarm::ActiveModel {
        dedup_key: Set(key.into()),
        kind: Set("run_failed".into()),
        channel: Set("mail".into()),
        job_id: Set(1),
        run_id: Set(None),
        status: Set(status.into()),
        recipients: Set("ops@example.com".into()),
        subject: Set("s".into()),
        body: Set("b".into()),
        attempts: Set(0),
        error: Set(None),
        created_at: Set(at),
        next_attempt_at: Set(at),
        sent_at: Set(None),
        claimed_by: Set(String::new()),
        ..Default::default()
    }
    .insert(&c.db)
    .await
    .expect("inserting an alarm")
    .id
}

async fn set_floor(c: &Cluster, floor: i64) {
    let _ = alarm_state::Entity::delete_by_id("run_floor".to_owned())
        .exec(&c.db)
        .await
        .expect("clearing run_floor");
    alarm_state::ActiveModel {
        name: Set("run_floor".into()),
        value: Set(floor),
    }
    .insert(&c.db)
    .await
    .expect("setting run_floor");
}

async fn run_ids(c: &Cluster) -> Vec<i64> {
    run::Entity::find()
        .order_by_asc(run::Column::Id)
        .all(&c.db)
        .await
        .expect("query")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

async fn alarm_ids(c: &Cluster) -> Vec<i64> {
    c.alarms().await.into_iter().map(|a| a.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_and_extra_final_runs_and_old_alarms_and_nothing_else() {
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        let mut c = Cluster::new(backend, &[]).await;
        let now = Utc::now();
        let days = |d: i64| now - chrono::Duration::days(d);
        let a = c.insert_job("a", "0 0 1 1 *", "true").await;
        let b = c.insert_job("b", "0 0 1 1 *", "true").await;
        let gone_job = 999_999;
        // Inserted oldest first, as the dispatchers do.
        let d1 = insert_run(&c, gone_job, days(50), "succeeded").await;
        let b1 = insert_run(&c, b, days(40), "failed").await;
        let a1 = insert_run(&c, a, days(20), "succeeded").await;
        let a2 = insert_run(&c, a, days(15), "running").await;
        let a3 = insert_run(&c, a, days(5), "failed").await;
        let a4 = insert_run(&c, a, days(4), "succeeded").await;
        let a5 = insert_run(&c, a, days(3), "dispatched").await;
        let a6 = insert_run(&c, a, days(2), "lost").await;
        let b2 = insert_run(&c, b, days(1), "succeeded").await;
        let d2 = insert_run(&c, gone_job, days(1), "no_executor").await;
        let al1 = insert_alarm(&c, "k1", days(10), "sent").await;
        let al2 = insert_alarm(&c, "k2", days(10), "pending").await;
        let al3 = insert_alarm(&c, "k3", days(1), "sent").await;
        let keep = Keep {
            runs_for: chrono::Duration::days(10),
            runs: 3,
            alarms_for: chrono::Duration::days(5),
        };

        assert_eq!(
            run_ids(&c).await,
            [d1, b1, a1, a2, a3, a4, a5, a6, b2, d2],
            "{backend:?}"
        );
        assert_eq!(alarm_ids(&c).await, [al1, al2, al3], "{backend:?}");
        // The checks have settled the runs below a1 only: nothing from a1 up goes yet.
        set_floor(&c, a1).await;
        let pruned = retention::prune(&c.db, keep, now).await.expect("a pass");
        assert_eq!(
            pruned,
            Pruned {
                old_runs: 2,
                extra_runs: 0,
                alarms: 1
            },
            "{backend:?}"
        );
        assert_eq!(
            run_ids(&c).await,
            [a1, a2, a3, a4, a5, a6, b2, d2],
            "{backend:?}"
        );
        assert_eq!(alarm_ids(&c).await, [al2, al3], "{backend:?}");

        // All settled: a1 is old, a3 is beyond a's newest 3 (a4, a5, a6); a2 is both, but in
        // flight.
        set_floor(&c, d2 + 1).await;
        let pruned = retention::prune(&c.db, keep, now).await.expect("a pass");
        assert_eq!(
            pruned,
            Pruned {
                old_runs: 1,
                extra_runs: 1,
                alarms: 0
            },
            "{backend:?}"
        );
        assert_eq!(run_ids(&c).await, [a2, a4, a5, a6, b2, d2], "{backend:?}");
        let again = retention::prune(&c.db, keep, now).await.expect("a pass");
        assert_eq!(again, Pruned::default(), "{backend:?}");

        // The monitor prunes by itself, from its configuration, once its checks have settled
        // the new runs.
        let b3 = insert_run(&c, b, now - chrono::Duration::hours(3), "succeeded").await;
        let b4 = insert_run(&c, b, now - chrono::Duration::hours(2), "failed").await;
        let b5 = insert_run(&c, b, now - chrono::Duration::hours(1), "succeeded").await;
        c.set("MONITOR", "KEEP_DAYS", "10");
        c.set("MONITOR", "KEEP_RUNS", "3");
        c.set("MONITOR", "ALARM_KEEP_DAYS", "5");
        c.set("MONITOR", "RETENTION_SECS", "1");
        c.start_monitor();
        wait_until(
            "the monitor's retention pass",
            Duration::from_secs(30),
            || async {
                let ids = run_ids(&c).await;
                (!ids.contains(&b2)).then_some(ids)
            },
        )
        .await;
        assert_eq!(
            run_ids(&c).await,
            [a2, a4, a5, a6, d2, b3, b4, b5],
            "{backend:?}"
        );
        assert_eq!(alarm_ids(&c).await, [al2, al3], "{backend:?}");
        c.shutdown().await;
    }
}
