//! The gocron dispatcher: schedules the published jobs, and at each tick races the other
//! dispatchers for the tick lock; the winner hands the run to a live executor of the job's
//! machine group, round-robin, offering it to the next one if an executor cannot take it.
//!
//! Modules:
//! - [`scheduler`]: the schedule table (next fire instant of every job), a pure data structure.
//! - [`dispatch`]: one tick: lock, run row, RPC to an executor, failover.
//!
//! [`run`] is the whole daemon; `main` only parses flags and handles signals.

pub mod batches;
pub mod deferred;
pub mod dispatch;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use gocron_shared::config::Config;
use gocron_shared::control::RunNow;
use gocron_shared::job::{JobSpec, Origin, Trigger};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::registry::{self, MirrorEvent, Registration};
use gocron_shared::rule::Schedule;
use gocron_shared::runs::RunLog;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deferred::{Deferred, Key, Request as DeferredRequest};
use crate::dispatch::{Dispatcher, Handover};
use crate::scheduler::Scheduler;

/// How long hand-overs under way may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the dispatcher until `shutdown` is cancelled; then it takes no new tick, finishes the
/// hand-overs under way, and leaves etcd.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let name = config.dispatcher.name.clone();
    let tls = gocron_shared::rpc::Tls::load(&config.rpc)?;
    // `/metrics`, served until this function returns (through a drain, for an executor).
    let metrics_stop = CancellationToken::new();
    let _metrics_stop = metrics_stop.clone().drop_guard();
    if let Some(listen) = config.metrics.listen {
        gocron_shared::metrics::serve(listen, metrics_stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))?;
    }
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
    let mut retry_requests = registry::mirror(etcd.clone(), keys.retries(), watches.clone());
    let mut event_requests = registry::mirror(etcd.clone(), keys.events(), watches.clone());
    let mut chain_requests = registry::mirror(etcd.clone(), keys.chains(), watches.clone());
    let mut deferred = Deferred::default();
    // Deferred requests whose firing failed or was shed, to fire again.
    let (again_tx, mut again) = tokio::sync::mpsc::unbounded_channel();
    // Deferred requests wait until the jobs are read: a job not known before that is not gone.
    let mut jobs_read = false;
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
    )
    .with_lead(config.dispatcher.lead);
    let ticks = Ticks::new(config.dispatcher.max_ticks_in_flight);
    // Run-now requests for jobs not scheduled here (yet), and since when.
    let mut waiting: Vec<(Request, std::time::Instant)> = Vec::new();
    tracing::info!(dispatcher = %name, "dispatcher ready");

    loop {
        let next_retry = deferred.next_ms().filter(|_| jobs_read);
        let sleep_ms = [scheduler.next_deadline(), next_retry]
            .into_iter()
            .flatten()
            .min()
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
                        let synced = scheduler.apply(event, Utc::now());
                        jobs_read |= synced;
                        // A request that came before its job did is served now.
                        waiting.retain(|(request, since)| {
                            match scheduler.manual(request.job_id, request.requested, &request.env) {
                                Some(tick) => {
                                    serve_manual(&dispatcher, &etcd, &keys, &ticks, tick, request);
                                    false
                                }
                                None if since.elapsed() > MANUAL_WAIT => {
                                    tracing::warn!(job_id = request.job_id, "run-now request for a job that is not scheduled (disabled, invalid or unknown); ignored");
                                    false
                                }
                                None => true,
                            }
                        });
                        if synced {
                            // (Re)started: ticks every dispatcher missed meanwhile get the
                            // misfire policy now, not at each job's next tick.
                            let jobs: Vec<_> = scheduler
                                .jobs()
                                .map(|(spec, schedule)| (spec.clone(), schedule.clone()))
                                .collect();
                            ticks.tracker.spawn(catch_up(dispatcher.clone(), lock.clone(), jobs, config.dispatcher.max_late, ticks.clone()));
                        }
                    }
                    None => break,
                }
            }
            Some(event) = requests.recv() => {
                if let Some(request) = run_now_request(&keys, event) {
                    match scheduler.manual(request.job_id, request.requested, &request.env) {
                        Some(tick) => serve_manual(&dispatcher, &etcd, &keys, &ticks, tick, &request),
                        // The job's publication may still be on its way (another watch): the
                        // request waits for it a while.
                        None => {
                            waiting.retain(|(r, _)| (r.job_id, r.requested) != (request.job_id, request.requested));
                            waiting.push((request, std::time::Instant::now()));
                        }
                    }
                }
            }
            Some(event) = retry_requests.recv() => {
                deferred_event(&mut deferred, &keys, Trigger::Retry, event);
            }
            Some(event) = event_requests.recv() => {
                deferred_event(&mut deferred, &keys, Trigger::Event, event);
            }
            Some(event) = chain_requests.recv() => {
                deferred_event(&mut deferred, &keys, Trigger::Chain, event);
            }
            Some((key, request)) = again.recv() => {
                let later = Utc::now().timestamp_millis() + AGAIN_MS;
                deferred.put(key, request, later);
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {
                fire_due(&mut scheduler, &dispatcher, &ticks);
                if jobs_read {
                    let now = Utc::now().timestamp_millis();
                    for (key, request) in deferred.due(now) {
                        let waited = deferred.fired_for(&key, now);
                        fire_deferred(&scheduler, &dispatcher, &etcd, &keys, &ticks, &again_tx, key, request, waited);
                    }
                }
            }
        }
    }

    ticks.tracker.close();
    if tokio::time::timeout(DRAIN, ticks.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pending = ticks.tracker.len(),
            "hand-overs still under way at exit"
        );
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
    ticks: Ticks,
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

/// The tasks firing ticks, at most `max` at once: a dispatcher whose ticks cannot finish (the
/// database or Redis down, executors hanging) stays bounded, and leaves the ticks past the cap
/// to the other dispatchers (a tick nobody fires is missed, and handled by the misfire policy).
#[derive(Clone)]
struct Ticks {
    tracker: TaskTracker,
    slots: Arc<tokio::sync::Semaphore>,
    shed: Arc<std::sync::Mutex<Shed>>,
}

/// Ticks not fired because of the cap, logged at most once every 10 s.
#[derive(Default)]
struct Shed {
    /// Since the last log line.
    count: u64,
    /// Since the start.
    total: u64,
    logged: Option<std::time::Instant>,
}

impl Ticks {
    fn new(max: usize) -> Ticks {
        Ticks {
            tracker: TaskTracker::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            shed: Arc::default(),
        }
    }

    /// Runs `fire` in a task of its own if a slot is free (`true`); sheds it otherwise.
    fn spawn<F>(&self, fire: F) -> bool
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.tracker.spawn(async move {
                    let _slot = slot;
                    fire.await
                });
                true
            }
            Err(_) => {
                let mut shed = self.shed.lock().unwrap_or_else(|p| p.into_inner());
                shed.count += 1;
                shed.total += 1;
                if shed
                    .logged
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(
                        in_flight = self.tracker.len(),
                        shed = shed.count,
                        "max_ticks_in_flight reached: ticks left to the other dispatchers (ticks nobody fires are missed)"
                    );
                    shed.logged = Some(std::time::Instant::now());
                    shed.count = 0;
                }
                false
            }
        }
    }
}

/// How long a run-now request waits for its job to be scheduled here (its publication may come
/// after the request, through another watch) before it is ignored.
const MANUAL_WAIT: Duration = Duration::from_secs(30);

/// A run-now request read from etcd.
struct Request {
    job_id: i64,
    requested: DateTime<Utc>,
    /// Its variables, for this run only.
    env: Vec<(String, String)>,
}

/// Fires a run-now request, and deletes it once it is served (here or by another dispatcher).
fn serve_manual(
    dispatcher: &Dispatcher,
    etcd: &etcd_client::Client,
    keys: &EtcdKeys,
    ticks: &Ticks,
    tick: scheduler::Tick,
    request: &Request,
) {
    let (dispatcher, mut etcd, key) = (
        dispatcher.clone(),
        etcd.clone(),
        keys.manual_request_key(request.job_id, request.requested.timestamp_millis()),
    );
    ticks.spawn(async move {
        if !matches!(dispatcher.fire(tick).await, Handover::Failed(_)) {
            let _ = etcd.delete(key, None).await;
        }
    });
    // (Left in etcd when shed: it is served at the request's next read.)
}

/// How long after a failed or shed firing a deferred request is fired again.
const AGAIN_MS: i64 = 1000;

/// How long a deferred request for a job not scheduled here (since it was first fired here)
/// waits for the job (its publication may come after the request, through another watch) before it is
/// dropped.
const UNKNOWN_JOB_WAIT_MS: i64 = 30_000;

/// Takes in a change under the retry, event or chain requests (`trigger` says which).
fn deferred_event(deferred: &mut Deferred, keys: &EtcdKeys, trigger: Trigger, event: MirrorEvent) {
    let parse = |key: &str| match trigger {
        Trigger::Event => keys.event_request(key),
        Trigger::Chain => keys.chain_request(key),
        _ => keys.retry_request(key),
    };
    let key_of = |key: &str| {
        parse(key).map(|(job_id, source_id)| Key {
            trigger,
            job_id,
            source_id,
        })
    };
    match event {
        MirrorEvent::Put(key, value) => {
            let request = key_of(&key).and_then(|k| {
                let request = match trigger {
                    Trigger::Event => DeferredRequest::Event(serde_json::from_slice(&value).ok()?),
                    Trigger::Chain => DeferredRequest::Chain(serde_json::from_slice(&value).ok()?),
                    _ => DeferredRequest::Retry(serde_json::from_slice(&value).ok()?),
                };
                Some((k, request))
            });
            match request {
                Some((k, request)) => {
                    let due = request.due_ms();
                    deferred.put(k, request, due);
                }
                None => tracing::error!(%key, "deferred request unreadable; ignored"),
            }
        }
        MirrorEvent::Delete(key) => {
            if let Some(k) = key_of(&key) {
                deferred.delete(&k);
            }
        }
        MirrorEvent::Resync | MirrorEvent::Synced => {}
    }
}

/// Fires a retry, an event's run or a chained run, and deletes its request once it is served (here or by
/// another dispatcher); sends it to `again` when it could not be.
#[allow(clippy::too_many_arguments)]
fn fire_deferred(
    scheduler: &Scheduler,
    dispatcher: &Dispatcher,
    etcd: &etcd_client::Client,
    keys: &EtcdKeys,
    ticks: &Ticks,
    again: &tokio::sync::mpsc::UnboundedSender<(Key, DeferredRequest)>,
    key: Key,
    request: DeferredRequest,
    waited_ms: i64,
) {
    let (job_id, source_id) = (key.job_id, key.source_id);
    let (etcd_key, origin) = match &request {
        DeferredRequest::Retry(r) => (
            keys.retry_request_key(job_id, source_id),
            Origin {
                attempt: r.attempt,
                first_run: Some(r.first_run),
                source_id,
                event: r.event.clone(),
                parent_run: r.parent_run,
                shard: r.shard.clone(),
            },
        ),
        DeferredRequest::Chain(_) => (
            keys.chain_request_key(job_id, source_id),
            Origin {
                attempt: 1,
                first_run: None,
                source_id,
                event: None,
                parent_run: Some(source_id),
                shard: None,
            },
        ),
        DeferredRequest::Event(e) => (
            keys.event_request_key(job_id, source_id),
            Origin {
                attempt: 1,
                first_run: None,
                source_id,
                event: Some(e.event.clone()),
                parent_run: None,
                shard: None,
            },
        ),
    };
    let Some(due) = Utc.timestamp_millis_opt(request.due_ms()).single() else {
        return;
    };
    let mut etcd = etcd.clone();
    let Some(tick) = scheduler.deferred(job_id, due, key.trigger, origin) else {
        if waited_ms < UNKNOWN_JOB_WAIT_MS {
            // Perhaps published a moment ago, through the other watch.
            let _ = again.send((key, request));
            return;
        }
        // Disabled, invalid or deleted since: not run. Every dispatcher agrees.
        tracing::warn!(
            job_id,
            source_id,
            trigger = %key.trigger,
            "deferred run of a job that is not scheduled (disabled, invalid or deleted); dropped"
        );
        tokio::spawn(async move {
            let _ = etcd.delete(etcd_key, None).await;
        });
        return;
    };
    let (dispatcher, again_tx, retried) = (dispatcher.clone(), again.clone(), request.clone());
    let fired = ticks.spawn(async move {
        // Served already (a request put again, perhaps due at another time: see `has_run`):
        // nothing more to run. Unknown (the database failed): the tick's own fences decide.
        if let Ok(true) = dispatcher.has_run(job_id, key.trigger, source_id).await {
            tracing::info!(
                job_id,
                source_id,
                trigger = %key.trigger,
                "deferred run already served; its request put again is dropped"
            );
            let _ = etcd.delete(etcd_key, None).await;
            return;
        }
        match dispatcher.clone().fire(tick).await {
            Handover::Failed(_) => {
                let _ = again_tx.send((key, retried));
            }
            // Another dispatcher holds the lock: it deletes the request once it has written
            // the run's row. Until then the request is kept here too, should that one die first.
            Handover::Lost => match dispatcher.has_run(job_id, key.trigger, source_id).await {
                Ok(true) => {
                    let _ = etcd.delete(etcd_key, None).await;
                }
                _ => {
                    let still = etcd.get(etcd_key, None).await.map(|r| !r.kvs().is_empty());
                    if still.unwrap_or(true) {
                        let _ = again_tx.send((key, retried));
                    }
                }
            },
            _ => {
                let _ = etcd.delete(etcd_key, None).await;
            }
        }
    });
    if !fired {
        let _ = again.send((key, request));
    }
}

/// The run-now request an etcd event brings, if any.
fn run_now_request(keys: &EtcdKeys, event: MirrorEvent) -> Option<Request> {
    // A request read by a (re)read of the prefix is served like a new one: the tick lock makes
    // it run once.
    let MirrorEvent::Put(key, value) = event else {
        return None;
    };
    let (job_id, ms) = keys.manual_request(&key)?;
    let env = match RunNow::decode(&value) {
        Ok(request) => request.env,
        // Written by a tool of another release: not run without what it asked for (its lease
        // makes it lapse).
        Err(e) => {
            tracing::error!(job_id, error = %e, "run-now request unreadable; ignored");
            return None;
        }
    };
    Some(Request {
        job_id,
        requested: Utc.timestamp_millis_opt(ms).single()?,
        env,
    })
}

/// Fires the ticks due now. Several due together have their locks taken in one call to Redis
/// (in a task of their own), and only those this dispatcher won go on, each in its task: at
/// a thousand jobs a second, most of the ticks a dispatcher sees are won by another one.
fn fire_due(scheduler: &mut Scheduler, dispatcher: &Dispatcher, ticks: &Ticks) {
    let due = scheduler.due(Utc::now());
    if due.len() < 2 {
        for tick in due {
            ticks.spawn(dispatcher.clone().fire(tick));
        }
        return;
    }
    let (dispatcher, ticks) = (dispatcher.clone(), ticks.clone());
    ticks.clone().tracker.spawn(async move {
        match dispatcher.win_all(&due).await {
            Ok(won) => {
                for (tick, won) in due.into_iter().zip(won) {
                    match won {
                        Some(won) => {
                            ticks.spawn(dispatcher.clone().fire_won(tick, won));
                        }
                        None => dispatch::report(&tick.job, tick.at, &Handover::Lost),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(ticks = due.len(), error = %e, "cannot take the due ticks' locks together; taking them one by one");
                for tick in due {
                    ticks.spawn(dispatcher.clone().fire(tick));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::Ticks;

    #[tokio::test]
    async fn ticks_past_the_cap_are_shed_and_slots_come_back() {
        let ticks = Ticks::new(2);
        let (release, hold) = tokio::sync::watch::channel(false);
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let (mut hold, fired) = (hold.clone(), fired.clone());
            ticks.spawn(async move {
                fired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = hold.wait_for(|go| *go).await;
            });
        }
        // Two in flight, the third shed.
        assert_eq!(ticks.tracker.len(), 2);
        assert_eq!(ticks.shed.lock().unwrap().total, 1);
        release.send(true).unwrap();
        ticks.tracker.close();
        ticks.tracker.wait().await;
        assert_eq!(fired.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Their slots are free again.
        assert_eq!(ticks.slots.available_permits(), 2);
    }
}
