//! The Redis fences on a real Redis: one winner per tick, one holder per run, idempotent.

use std::time::Duration;

use gocron_shared::job::Trigger;
use gocron_shared::live::{Holder, LiveRun};
use gocron_shared::lock::Fences;
use gocron_tests::{Backend, Cluster};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dispatcher_wins_each_tick_and_a_retry_keeps_the_win() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let config = c.base_config();
    let never = CancellationToken::new();
    let mut locks = Vec::new();
    for owner in ["d0", "d1", "d2"] {
        locks.push(
            Fences::connect(&config.redis, owner, Duration::from_secs(60), &never)
                .await
                .unwrap(),
        );
    }
    for tick in 0..20i64 {
        // All three race for the same tick at once.
        let racers: Vec<_> = locks
            .iter()
            .cloned()
            .map(|lock| {
                tokio::spawn(async move {
                    lock.acquire(7, tick * 1000, Trigger::Schedule, 0, "g")
                        .await
                        .unwrap()
                        .map(|w| w.sequence)
                })
            })
            .collect();
        let mut results = Vec::new();
        for r in racers {
            results.push(r.await.unwrap());
        }
        let winners: Vec<usize> = (0..3).filter(|&i| results[i].is_some()).collect();
        assert_eq!(winners.len(), 1, "tick {tick}: {results:?}");
        let w = winners[0];
        // The group's dispatch count goes up by one per tick won.
        assert_eq!(results[w], Some(tick as u64 + 1), "tick {tick}");
        // The winner asking again gets the same count; the others still lose.
        assert_eq!(
            locks[w]
                .acquire(7, tick * 1000, Trigger::Schedule, 0, "g")
                .await
                .unwrap()
                .map(|w| w.sequence),
            results[w]
        );
        let loser = (w + 1) % 3;
        assert_eq!(
            locks[loser]
                .acquire(7, tick * 1000, Trigger::Schedule, 0, "g")
                .await
                .unwrap(),
            None
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_has_one_holder() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let config = c.base_config();
    let never = CancellationToken::new();
    let fences = Fences::connect(&config.redis, "d0", Duration::from_secs(60), &never)
        .await
        .unwrap();
    let exec_a = Holder::Executor {
        instance: "i-a".into(),
        label: "exec-a@1".into(),
        ended: false,
    };
    let exec_b = Holder::Executor {
        instance: "i-b".into(),
        label: "exec-b@2".into(),
        ended: false,
    };
    let claim = |run: i64, holder: &'static str, live: Option<Holder>| {
        let fences = fences.clone();
        async move {
            fences
                .claim_run(3, run, holder, live.as_ref())
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(5, "exec-a@1", Some(exec_a.clone())).await, None);
    // The holder asking again keeps it; anyone else learns who holds it.
    assert_eq!(claim(5, "exec-a@1", Some(exec_a.clone())).await, None);
    assert_eq!(
        claim(5, "exec-b@2", Some(exec_b)).await,
        Some("exec-a@1".to_owned())
    );
    assert_eq!(
        claim(5, "nobody:d0", None).await,
        Some("exec-a@1".to_owned())
    );
    // The winning executor entered the run in the job's live runs; losers changed nothing.
    let live = |run_id, holder: &Holder| LiveRun {
        job_id: 3,
        run_id,
        holder: Some(holder.clone()),
    };
    assert_eq!(fences.in_flight(3).await.unwrap(), vec![live(5, &exec_a)]);

    // A dispatcher's hand-off entry is taken out by its "nobody" claim.
    let handing = Holder::Dispatcher {
        since_ms: 1,
        name: "d0".into(),
    };
    fences.hold(3, 6, &handing).await.unwrap();
    assert_eq!(fences.in_flight(3).await.unwrap().len(), 2);
    assert_eq!(claim(6, "nobody:d0", None).await, None);
    assert_eq!(fences.in_flight(3).await.unwrap(), vec![live(5, &exec_a)]);

    // The tick's winner sees the runs in flight; the all-jobs scan finds them too.
    let won = fences
        .acquire(3, 1_000, Trigger::Schedule, 0, "g")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(won.in_flight, vec![live(5, &exec_a)]);
    assert_eq!(
        fences.all_in_flight().await.unwrap(),
        vec![live(5, &exec_a)]
    );
    fences.release(3, 5).await.unwrap();
    assert!(fences.in_flight(3).await.unwrap().is_empty());
    assert!(fences.all_in_flight().await.unwrap().is_empty());
    c.shutdown().await;
}
