//! The Redis fences on a real Redis: one winner per tick, one holder per run, idempotent.

use std::time::Duration;

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
                tokio::spawn(async move { lock.acquire(7, tick * 1000, "g").await.unwrap() })
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
            locks[w].acquire(7, tick * 1000, "g").await.unwrap(),
            results[w]
        );
        let loser = (w + 1) % 3;
        assert_eq!(
            locks[loser].acquire(7, tick * 1000, "g").await.unwrap(),
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
    assert_eq!(fences.claim_run(5, "exec-a@1").await.unwrap(), None);
    // The holder asking again keeps it; anyone else learns who holds it.
    assert_eq!(fences.claim_run(5, "exec-a@1").await.unwrap(), None);
    assert_eq!(
        fences.claim_run(5, "exec-b@2").await.unwrap(),
        Some("exec-a@1".to_owned())
    );
    assert_eq!(
        fences.claim_run(5, "nobody:d0").await.unwrap(),
        Some("exec-a@1".to_owned())
    );
    assert_eq!(fences.claim_run(6, "nobody:d0").await.unwrap(), None);
    c.shutdown().await;
}
