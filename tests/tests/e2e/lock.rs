//! The Redis fences on a real Redis: one winner per tick, one holder per run, idempotent.

use std::time::Duration;

use gocron_shared::job::Trigger;
use gocron_shared::live::{Holder, LiveRun};
use gocron_shared::lock::Fences;
use gocron_tests::{Backend, Cluster};
use tokio_util::sync::CancellationToken;

/// Fences on the cluster's Redis for `owner`, their locks kept a minute.
async fn fences(c: &Cluster, owner: &str) -> Fences {
    let never = CancellationToken::new();
    Fences::connect(
        &c.base_config().redis,
        owner,
        Duration::from_secs(60),
        &never,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dispatcher_wins_each_tick_and_a_retry_keeps_the_win() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let mut locks = Vec::new();
    for owner in ["d0", "d1", "d2"] {
        locks.push(fences(&c, owner).await);
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

/// Two versions of one request (put again due at another time, read by two dispatchers at
/// once) take one lock: one of them runs. For a retry, dispatchers of earlier releases lock the
/// due time only, and that lock is taken too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_run_is_one_lock_whenever_it_is_due() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let (d0, d1) = (fences(&c, "d0").await, fences(&c, "d1").await);
    for (job, trigger) in [
        (11, Trigger::Retry),
        (12, Trigger::Event),
        (13, Trigger::Chain),
    ] {
        let won = d0.acquire(job, 5_000, trigger, 42, "g").await.unwrap();
        assert!(won.is_some(), "{trigger}: the first version");
        let other = d1.acquire(job, 6_000, trigger, 42, "g").await.unwrap();
        assert!(
            other.is_none(),
            "{trigger}: the version due at another time"
        );
        // Another source's run, due at the same instant as the first: a lock of its own.
        let next = d1.acquire(job, 6_000, trigger, 43, "g").await.unwrap();
        assert!(next.is_some(), "{trigger}: another source");
    }
    // The lock an earlier release's dispatcher takes for a retry: its due time.
    let mut redis = c.redis_connection().await;
    let (_, prefix) = c.redis();
    let old: Option<String> = redis::cmd("SET")
        .arg(format!("{prefix}:retry:14:7000"))
        .arg("old|1|")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(old.as_deref(), Some("OK"));
    assert!(
        d0.acquire(14, 7_000, Trigger::Retry, 42, "g")
            .await
            .unwrap()
            .is_none(),
        "a retry an earlier release's dispatcher won"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_has_one_holder() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let fences = fences(&c, "d0").await;
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

/// Many ticks in one call: each as if taken alone, in order, and one winner per tick across
/// dispatchers racing with their batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_ticks_is_won_tick_by_tick() {
    use gocron_shared::lock::TickKey;
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let d0 = fences(&c, "d0").await;
    let d1 = fences(&c, "d1").await;
    // 600 jobs (past one call's 500), a tick each, plus a second tick of job 1 in the same batch.
    let mut ticks: Vec<TickKey<'static>> = (1..=600)
        .map(|job_id| TickKey {
            job_id,
            scheduled_ms: 10_000,
            trigger: Trigger::Schedule,
            source_id: 0,
            machine: "g",
        })
        .collect();
    ticks.push(TickKey {
        scheduled_ms: 11_000,
        ..ticks[0]
    });
    // d1 takes every third of the first ticks alone first.
    for tick in ticks[..600].iter().step_by(3) {
        let won = d1
            .acquire(tick.job_id, tick.scheduled_ms, tick.trigger, 0, "g")
            .await
            .unwrap();
        assert!(won.is_some());
    }
    let (a, b) = tokio::join!(d0.acquire_many(&ticks), d1.acquire_many(&ticks));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.len(), b.len()), (ticks.len(), ticks.len()));
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        // Exactly one winner; d1 kept what it had won alone.
        assert!(a.is_some() != b.is_some(), "tick {i}: {a:?} {b:?}");
        if i % 3 == 0 && i < 600 {
            assert!(b.is_some(), "tick {i} was d1's");
        }
    }
    // The group's count went up once per tick won, whoever won it: 601 distinct sequences.
    let mut sequences: Vec<u64> = a.iter().chain(&b).flatten().map(|w| w.sequence).collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=ticks.len() as u64).collect::<Vec<_>>());
    // Job 1's second tick saw how far its first had scheduled it.
    let second = a[600].as_ref().or(b[600].as_ref()).unwrap();
    assert_eq!(second.scheduled_through, Some(10_000));
    // Each tick moved its own job's mark to itself; job 1's to its second tick.
    let through = d0.scheduled_through(&[1, 2, 600]).await.unwrap();
    assert_eq!(through, [Some(11_000), Some(10_000), Some(10_000)]);
    // Asked again, the winners get their answers back and the losers still lose.
    let again = d0.acquire_many(&ticks).await.unwrap();
    for (i, (first, again)) in a.iter().zip(&again).enumerate() {
        assert_eq!(
            first.as_ref().map(|w| w.sequence),
            again.as_ref().map(|w| w.sequence),
            "tick {i}"
        );
    }
    c.shutdown().await;
}

/// Many runs claimed in one call: each as if claimed alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_claims_is_claimed_run_by_run() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let fences = fences(&c, "d0").await;
    let holder = |label: &str| Holder::Executor {
        instance: format!("i-{label}"),
        label: label.into(),
        ended: false,
    };
    let (a, b) = (holder("exec-a@1"), holder("exec-b@2"));
    // exec-b holds run 12 already.
    assert_eq!(
        fences.claim_run(4, 12, "exec-b@2", Some(&b)).await.unwrap(),
        None
    );
    let runs: Vec<(i64, i64)> = (10..15).map(|run| (4 + run % 2, run)).collect();
    let held = fences
        .claim_runs(&runs, "exec-a@1", Some(&a))
        .await
        .unwrap();
    assert_eq!(
        held,
        [None, None, Some("exec-b@2".to_owned()), None, None],
        "{runs:?}"
    );
    // Each claimed run is in its own job's live runs, held by exec-a; run 12 is still exec-b's.
    let mut live = fences.all_in_flight().await.unwrap();
    live.sort_by_key(|r| r.run_id);
    let seen: Vec<(i64, i64, String)> = live
        .iter()
        .map(|r| {
            let label = match &r.holder {
                Some(Holder::Executor { label, .. }) => label.clone(),
                other => format!("{other:?}"),
            };
            (r.job_id, r.run_id, label)
        })
        .collect();
    assert_eq!(
        seen,
        [
            (4, 10, "exec-a@1".to_owned()),
            (5, 11, "exec-a@1".to_owned()),
            (4, 12, "exec-b@2".to_owned()),
            (5, 13, "exec-a@1".to_owned()),
            (4, 14, "exec-a@1".to_owned()),
        ]
    );
    // The same batch again: the holder keeps what it has.
    assert_eq!(
        fences
            .claim_runs(&runs, "exec-a@1", Some(&a))
            .await
            .unwrap(),
        held
    );
    c.shutdown().await;
}

/// Writes of the live runs queued while the writer is busy go in one call, in order, each as if
/// alone. On a current-thread runtime every write below is queued before the writer runs, so
/// its 210 writes take exactly one call (each was one call before they were queued together).
#[tokio::test(flavor = "current_thread")]
async fn live_writes_queued_together_take_one_call() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let fences = fences(&c, "d0").await;
    let holder = |ended| Holder::Executor {
        instance: "i-a".into(),
        label: "exec-a@1".into(),
        ended,
    };
    let (going, ended) = (holder(false), holder(true));
    // Counted by these fences' own writer: other tests of this process write live runs too.
    let (calls, writes) = fences.live_write_counts();
    // Jobs 20..30, ten runs each: every run entered, then the odd ones marked ended and the
    // even ones taken out, all queued at once; the later write of a run wins.
    let runs: Vec<(i64, i64)> = (0..100).map(|i| (20 + i / 10, 1_000 + i)).collect();
    let entered = runs.iter().map(|&(job, run)| fences.hold(job, run, &going));
    let changed = runs.iter().map(|&(job, run)| {
        let fences = &fences;
        let ended = &ended;
        async move {
            if run % 2 == 1 {
                fences.hold(job, run, ended).await
            } else {
                fences.release(job, run).await
            }
        }
    });
    let taken_out = runs
        .iter()
        .filter(|(job, _)| *job == 29)
        .map(|&(job, run)| fences.release(job, run));
    let (a, b, d) = tokio::join!(
        futures::future::join_all(entered),
        futures::future::join_all(changed),
        futures::future::join_all(taken_out),
    );
    assert!(a.iter().chain(&b).chain(&d).all(Result::is_ok));
    let (calls_after, writes_after) = fences.live_write_counts();
    assert_eq!(writes_after - writes, 210);
    assert_eq!(calls_after - calls, 1);

    // Jobs 20..29 keep their five odd runs, ended; job 29 lost all its runs, so it left the
    // index of jobs with runs in flight.
    for job in 20..29 {
        let mut live = fences.in_flight(job).await.unwrap();
        live.sort_by_key(|r| r.run_id);
        let expected: Vec<LiveRun> = runs
            .iter()
            .filter(|&&(j, run)| j == job && run % 2 == 1)
            .map(|&(job_id, run_id)| LiveRun {
                job_id,
                run_id,
                holder: Some(ended.clone()),
            })
            .collect();
        assert_eq!(live, expected);
    }
    assert!(fences.in_flight(29).await.unwrap().is_empty());
    let mut jobs: Vec<i64> = fences
        .all_in_flight()
        .await
        .unwrap()
        .iter()
        .map(|r| r.job_id)
        .collect();
    jobs.sort();
    jobs.dedup();
    assert_eq!(jobs, (20..29).collect::<Vec<_>>());
    c.shutdown().await;
}
