//! The gocron dispatcher: schedules the published jobs, and at each tick races the other
//! dispatchers for the tick lock; the winner hands the run to a live executor of the job's
//! machine group, round-robin, offering it to the next one if an executor cannot take it.
//!
//! Modules:
//! - [`scheduler`]: the schedule table (next fire instant of every job), a pure data structure.
//! - [`dispatch`]: one tick: lock, run row, RPC to an executor, failover.
//!
//! [`run`] is the whole daemon; `main` only parses flags and handles signals.

pub mod dispatch;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use gocron_shared::config::Config;
use gocron_shared::job::JobSpec;
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::registry::{self, MirrorEvent, Registration};
use gocron_shared::rule::Schedule;
use gocron_shared::runs::RunLog;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::{Dispatcher, Handover};
use crate::scheduler::Scheduler;

/// How long hand-overs under way may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the dispatcher until `shutdown` is cancelled; then it takes no new tick, finishes the
/// hand-overs under way, and leaves etcd.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let name = config.dispatcher.name.clone();
    let tls = gocron_shared::rpc::Tls::load(&config.rpc)?;
    let Ok(db) = gocron_shared::db::connect_and_migrate(&config.database, &shutdown).await else {
        return Ok(());
    };
    let Ok(lock) =
        Fences::connect(&config.redis, &name, config.dispatcher.lock_ttl, &shutdown).await
    else {
        return Ok(());
    };
    let Ok(etcd) = registry::connect(&config.etcd, &shutdown).await else {
        return Ok(());
    };
    let keys = EtcdKeys::new(&config.etcd.prefix);
    let value = serde_json::json!({
        "name": name,
        "version": gocron_shared::VERSION,
        "started_at": Utc::now().to_rfc3339(),
    })
    .to_string();
    let Ok(registration) = Registration::start(
        etcd.clone(),
        keys.dispatcher(&name),
        value,
        config.etcd.lease_ttl,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };

    // Background watches end with this token, after the loop below has stopped.
    let watches = CancellationToken::new();
    let mut executors = registry::live_executors(etcd.clone(), &keys, watches.clone());
    // Firing before the executors are known would record ticks as `no_executor`.
    tokio::select! {
        _ = shutdown.cancelled() => {
            watches.cancel();
            registration.revoke().await;
            return Ok(());
        }
        _ = executors.changed() => {}
    }
    let mut jobs = registry::mirror(etcd.clone(), keys.jobs(), watches.clone());
    let mut requests = registry::mirror(etcd.clone(), keys.manual(), watches.clone());
    let dispatcher = Dispatcher::new(
        config.rpc.secret.clone(),
        tls,
        &config.dispatcher,
        RunLog::spawn(db.clone()),
        lock.clone(),
        config.machines.clone(),
        executors,
        registry::live_instances(etcd.clone(), &keys, watches.clone()),
        db,
        etcd.clone(),
        keys.clone(),
    );
    let mut scheduler = Scheduler::new(
        keys.clone(),
        config.dispatcher.time_zone,
        config.dispatcher.max_late,
    );
    let ticks = TaskTracker::new();
    tracing::info!(dispatcher = %name, "dispatcher ready");

    loop {
        let sleep_ms = scheduler
            .next_deadline()
            .map_or(3_600_000, |at| (at - Utc::now().timestamp_millis()).max(0));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            event = jobs.recv() => {
                // Ticks already due fire first: a change rescheduling a job from "now" must not
                // swallow the tick it arrived on top of.
                fire_due(&mut scheduler, &dispatcher, &ticks);
                match event {
                    Some(event) => {
                        if scheduler.apply(event, Utc::now()) {
                            // (Re)started: ticks every dispatcher missed meanwhile get the
                            // misfire policy now, not at each job's next tick.
                            let jobs: Vec<_> = scheduler
                                .jobs()
                                .map(|(spec, schedule)| (spec.clone(), schedule.clone()))
                                .collect();
                            ticks.spawn(catch_up(dispatcher.clone(), lock.clone(), jobs, config.dispatcher.max_late, ticks.clone()));
                        }
                    }
                    None => break,
                }
            }
            Some(event) = requests.recv() => {
                if let Some((job_id, requested)) = run_now_request(&keys, event) {
                    let Some(tick) = scheduler.manual(job_id, requested) else {
                        tracing::warn!(job_id, "run-now request for a job that is not scheduled (disabled, invalid or unknown); ignored");
                        continue;
                    };
                    let (dispatcher, mut etcd, key) =
                        (dispatcher.clone(), etcd.clone(), keys.manual_request_key(job_id, requested.timestamp_millis()));
                    ticks.spawn(async move {
                        if !matches!(dispatcher.fire(tick).await, Handover::Failed(_)) {
                            // Served (here or by another dispatcher): the request is done.
                            let _ = etcd.delete(key, None).await;
                        }
                    });
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {
                fire_due(&mut scheduler, &dispatcher, &ticks);
            }
        }
    }

    ticks.close();
    if tokio::time::timeout(DRAIN, ticks.wait()).await.is_err() {
        tracing::warn!(pending = ticks.len(), "hand-overs still under way at exit");
    }
    watches.cancel();
    registration.revoke().await;
    tracing::info!(dispatcher = %name, "dispatcher stopped");
    Ok(())
}

/// Fires, for each of `jobs` that missed ticks while no dispatcher fired them (from how far it
/// was scheduled, in Redis), its latest tick: the misfire policy handles the rest. Every
/// dispatcher starting does this; the tick locks make it happen once.
async fn catch_up(
    dispatcher: Dispatcher,
    lock: Fences,
    jobs: Vec<(Arc<JobSpec>, Arc<Schedule>)>,
    max_late: Duration,
    ticks: TaskTracker,
) {
    for chunk in jobs.chunks(1000) {
        let ids: Vec<i64> = chunk.iter().map(|(spec, _)| spec.id).collect();
        let through = match lock.scheduled_through(&ids).await {
            Ok(through) => through,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read how far jobs were scheduled; missed ticks wait for each job's next tick");
                return;
            }
        };
        let now = Utc::now();
        for ((spec, schedule), through) in chunk.iter().zip(through) {
            let Some(through) = through.and_then(|ms| Utc.timestamp_millis_opt(ms).single()) else {
                continue;
            };
            if let Some(tick) = Scheduler::catch_up(max_late, spec, schedule, through, now) {
                tracing::info!(job_id = spec.id, job = %spec.name, %through, tick = %tick.at, "the job missed ticks while no dispatcher ran");
                ticks.spawn(dispatcher.clone().fire(tick));
            }
        }
    }
}

/// The (job id, instant) of the run-now request an etcd event brings, if any.
fn run_now_request(keys: &EtcdKeys, event: MirrorEvent) -> Option<(i64, DateTime<Utc>)> {
    // A request read by a (re)read of the prefix is served like a new one: the tick lock makes
    // it run once.
    let MirrorEvent::Put(key, _) = event else {
        return None;
    };
    let (job_id, ms) = keys.manual_request(&key)?;
    Some((job_id, Utc.timestamp_millis_opt(ms).single()?))
}

/// Hands every tick due now to its own task.
fn fire_due(scheduler: &mut Scheduler, dispatcher: &Dispatcher, ticks: &TaskTracker) {
    for tick in scheduler.due(Utc::now()) {
        ticks.spawn(dispatcher.clone().fire(tick));
    }
}
