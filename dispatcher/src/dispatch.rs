//! One tick of one job: win the tick lock, insert the run row, hand the run to an executor.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use gocron_shared::config::DispatcherConfig;
use gocron_shared::entity::job;
use gocron_shared::job::{
    JobSpec, Misfire, Origin, Route, RunStatus, Shard, TimeoutPolicy, Trigger,
};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::live::{self, Holder, LiveRun};
use gocron_shared::rule::Schedule;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};

use crate::batches::{Answer, Batches, Failed, Queued};
use crate::scheduler::Tick;
use gocron_shared::lock::{Fences, TickKey, Won};
use gocron_shared::machine::{ExecutorInfo, MachineGroups};
use gocron_shared::rpc::{self, ExecutorRpcClient, Refused, RunRequest, Secret, Tls, WireRequest};
use gocron_shared::runs::RunLog;
use tarpc::client::RpcError;
use tokio::sync::watch;

/// How long the `least_busy` route waits for an executor to say how busy it is.
const LOAD_TIMEOUT: Duration = Duration::from_millis(300);

/// The rendezvous-hashing score of executor `name` for job `job_id`: the job goes to the
/// live executor with the highest score. A fixed function (FNV-1a, then a 64-bit finaliser),
/// so that every dispatcher, of any build, ranks alike.
pub fn rendezvous(job_id: i64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in job_id.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Everything a tick needs; cheap to clone into each tick's task.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    runs: RunLog,
    lock: Fences,
    machines: MachineGroups,
    executors: watch::Receiver<Arc<Vec<ExecutorInfo>>>,
    clients: Clients,
    batches: Batches,
    rpc_timeout: Duration,
    secret: Secret,
    tls: Tls,
    instances: watch::Receiver<Option<Arc<HashSet<String>>>>,
    db: DatabaseConnection,
    etcd: etcd_client::Client,
    keys: EtcdKeys,
    max_late: Duration,
    catchup: Duration,
    catchup_max: usize,
}

/// How a hand-over ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Another dispatcher won the tick.
    Lost,
    /// The run went to this executor (`name@address`).
    Started(String),
    /// An executor already holds the run (a retried hand-over whose first answer was lost).
    InHand(String),
    /// No executor took it; the run row says why.
    NoExecutor(String),
    /// Not fired in time; recorded `missed` (misfire policy).
    Missed(String),
    /// Not started: the job's previous run is still live (policy `abandon`); a `skipped` row
    /// says which.
    Skipped(String),
    /// Redis or the database failed; the tick could not be dispatched.
    Failed(String),
}

impl Dispatcher {
    /// A dispatcher named `config.name`; `instances` (the executor processes alive), `etcd` and
    /// `keys` tell which runs in flight are lost.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        secret: Secret,
        tls: Tls,
        config: &DispatcherConfig,
        runs: RunLog,
        lock: Fences,
        machines: MachineGroups,
        executors: watch::Receiver<Arc<Vec<ExecutorInfo>>>,
        instances: watch::Receiver<Option<Arc<HashSet<String>>>>,
        db: DatabaseConnection,
        etcd: etcd_client::Client,
        keys: EtcdKeys,
    ) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                runs,
                lock,
                machines,
                executors,
                clients: Clients::default(),
                batches: Batches::default(),
                rpc_timeout: config.rpc_timeout,
                secret,
                tls,
                instances,
                db,
                etcd,
                keys,
                max_late: config.max_late,
                catchup: config.catchup,
                catchup_max: config.catchup_max,
            }),
        }
    }

    /// Fires `tick` if this dispatcher wins it.
    pub async fn fire(self, tick: Tick) -> Handover {
        self.fire_with(tick, None).await
    }

    /// Fires `tick`, whose lock `won` this dispatcher holds (taken with the other ticks due at
    /// the same instant: see [`Dispatcher::win_all`]).
    pub async fn fire_won(self, tick: Tick, won: Won) -> Handover {
        self.fire_with(tick, Some(won)).await
    }

    /// Wins the lock of each of `ticks` (all due now) in as few round trips as Redis allows:
    /// for each, `Some(won)` or `None` (another dispatcher won it). `Err` when Redis failed
    /// (after a few attempts): the ticks are then fired one by one, each taking its own lock.
    pub async fn win_all(&self, ticks: &[Tick]) -> Result<Vec<Option<Won>>, String> {
        let keys: Vec<TickKey<'_>> = ticks
            .iter()
            .map(|t| TickKey {
                job_id: t.job.id,
                scheduled_ms: t.at.timestamp_millis(),
                trigger: t.trigger,
                source_id: t.origin.as_ref().map_or(0, |o| o.source_id),
                machine: &t.job.machine,
            })
            .collect();
        let mut attempt = 0;
        loop {
            match self.inner.lock.acquire_many(&keys).await {
                Ok(won) => return Ok(won),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(ticks = keys.len(), error = %e, attempt, "tick locks failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => return Err(format!("redis: {e}")),
            }
        }
    }

    async fn fire_with(self, tick: Tick, won: Option<Won>) -> Handover {
        let (job, schedule) = (tick.job, tick.schedule);
        let (following, trigger, tick, origin) =
            (tick.following, tick.trigger, tick.at, tick.origin);
        let outcome = self
            .fire_inner(&job, &schedule, tick, following, trigger, origin, won)
            .await;
        if schedule.is_one_shot()
            && trigger == Trigger::Schedule
            && !matches!(outcome, Handover::Lost | Handover::Failed(_))
        {
            self.mark_done(&job).await;
        }
        report(&job, tick, &outcome);
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn fire_inner(
        &self,
        job: &JobSpec,
        schedule: &Schedule,
        tick: DateTime<Utc>,
        following: Option<DateTime<Utc>>,
        trigger: Trigger,
        origin: Option<Origin>,
        won: Option<Won>,
    ) -> Handover {
        let source_id = origin.as_ref().map_or(0, |o| o.source_id);
        let won = match won {
            Some(won) => won,
            None => match self.win(job, tick, trigger, source_id).await {
                Ok(Some(won)) => won,
                Ok(None) => return Handover::Lost,
                Err(failed) => return failed,
            },
        };
        // A run-now, a retry or an event is not a tick of the rule: nothing before it was
        // missed. A delayed event's run that comes too late takes the misfire policy.
        if trigger != Trigger::Schedule {
            let event = origin.as_ref().and_then(|o| o.event.as_ref());
            let since = event
                .and_then(|e| Utc.timestamp_millis_opt(e.requested_ms).single())
                .map_or(tick, |requested| requested.max(tick));
            let late = (Utc::now() - since).to_std().unwrap_or_default() > self.inner.max_late;
            let delayed = event.is_some_and(|e| e.delayed);
            if late && delayed && job.misfire == Misfire::Skip {
                let why = format!(
                    "the delayed event's run was due at {tick}, when no dispatcher could fire it (misfire skip)"
                );
                return match self
                    .inner
                    .runs
                    .settled(
                        job.id,
                        tick,
                        trigger,
                        origin.as_ref(),
                        RunStatus::Missed,
                        why.clone(),
                    )
                    .await
                {
                    Ok(Some(_)) => Handover::Missed(why),
                    Ok(None) => Handover::Lost,
                    Err(e) => Handover::Failed(format!("{why}; and recording it failed: {e}")),
                };
            }
            return self.run(job, tick, following, trigger, origin, won).await;
        }
        // The ticks between the last one fired and this one were missed (every dispatcher was
        // down or stalled); so is this one if it comes too late.
        let now = Utc::now();
        let late = (now - tick).to_std().unwrap_or_default() > self.inner.max_late;
        let mut missed = self.missed_before(job, schedule, won.scheduled_through, tick);
        if missed.is_empty() && !late {
            return self.run(job, tick, following, trigger, None, won).await;
        }
        let mut this = None;
        if late {
            missed.push(tick);
            this = Some(won);
        }
        // Boxed: see `offer_inner`.
        let handled = Box::pin(self.misfire(job, schedule, missed, this)).await;
        if late {
            return handled;
        }
        let won = match self.win(job, tick, trigger, 0).await {
            Ok(Some(won)) => won,
            Ok(None) => return Handover::Lost,
            Err(failed) => return failed,
        };
        self.run(job, tick, following, trigger, None, won).await
    }

    /// Whether the deferred run of `trigger` from `source_id` (a retry of run `source_id`, a
    /// run of event `source_id`, a run chained to run `source_id`) has a row: it was served,
    /// here or by another dispatcher, whenever it was due. Asked by its source rather than its
    /// tick, so that a request put again with another due time (a second monitor that read a
    /// delay changed since) runs nothing more.
    pub async fn has_run(
        &self,
        job_id: i64,
        trigger: Trigger,
        source_id: i64,
    ) -> Result<bool, sea_orm::DbErr> {
        use gocron_shared::entity::run;
        use sea_orm::PaginatorTrait as _;
        let n = run::Entity::find()
            .filter(run::Column::SourceId.eq(source_id))
            .filter(run::Column::JobId.eq(job_id))
            .filter(run::Column::Trigger.eq(trigger.as_str()))
            // Literally, so that SQLite and PostgreSQL take the partial index `cron_run_source`.
            .filter(Expr::cust("source_id <> 0"))
            .count(&self.inner.db)
            .await?;
        Ok(n > 0)
    }

    /// Marks a one-shot job done (`cron_job.done_at`): the monitor withdraws it, and it never
    /// runs again.
    async fn mark_done(&self, job: &JobSpec) {
        let done = job::Entity::update_many()
            .col_expr(job::Column::DoneAt, Expr::value(Utc::now()))
            .filter(job::Column::Id.eq(job.id))
            .filter(job::Column::DoneAt.is_null())
            .exec(&self.inner.db)
            .await;
        match done {
            Ok(_) => tracing::info!(job_id = job.id, job = %job.name, "one-shot job done"),
            Err(e) => {
                tracing::warn!(job_id = job.id, error = %e, "cannot mark the one-shot job done; its tick lock still keeps it from running twice")
            }
        }
    }

    /// Takes the lock of `tick` (retrying Redis errors a few times).
    async fn win(
        &self,
        job: &JobSpec,
        tick: DateTime<Utc>,
        trigger: Trigger,
        source_id: i64,
    ) -> Result<Option<Won>, Handover> {
        let mut attempt = 0;
        loop {
            match self
                .inner
                .lock
                .acquire(
                    job.id,
                    tick.timestamp_millis(),
                    trigger,
                    source_id,
                    &job.machine,
                )
                .await
            {
                Ok(won) => return Ok(won),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(job_id = job.id, error = %e, attempt, "tick lock failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => return Err(Handover::Failed(format!("redis: {e}"))),
            }
        }
    }

    /// The job's ticks after `through` and before `tick`, within `catchup_secs` of `tick`, the
    /// newest `catchup_max` of them, oldest first.
    fn missed_before(
        &self,
        job: &JobSpec,
        schedule: &Schedule,
        through: Option<i64>,
        tick: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let inner = &self.inner;
        let Some(through) = through.and_then(|ms| Utc.timestamp_millis_opt(ms).single()) else {
            return Vec::new();
        };
        let window_start = tick - chrono::Duration::from_std(inner.catchup).unwrap_or_default();
        let mut from = through;
        let mut older = false;
        if from < window_start {
            from = window_start - chrono::Duration::milliseconds(1);
            older = schedule
                .next_after(through)
                .is_some_and(|t| t < window_start);
        }
        let mut missed = std::collections::VecDeque::new();
        let mut dropped = 0usize;
        let mut at = from;
        while let Some(next) = schedule.next_after(at) {
            if next >= tick {
                break;
            }
            missed.push_back(next);
            if missed.len() > inner.catchup_max {
                missed.pop_front();
                dropped += 1;
            }
            at = next;
        }
        if dropped > 0 || older {
            tracing::warn!(
                job_id = job.id,
                job = %job.name,
                through = %through,
                "more ticks were missed than are handled (catchup_secs, catchup_max): the older ones are not run (the monitor records them missed)"
            );
        }
        missed.into()
    }

    /// Applies the job's misfire policy to `missed` (oldest first). `last` is the lock already
    /// won for the last of them, if so; every other missed tick is handled only by whoever
    /// wins its own lock, so that a late dispatcher firing one of them cannot handle it twice.
    async fn misfire(
        &self,
        job: &JobSpec,
        schedule: &Schedule,
        missed: Vec<DateTime<Utc>>,
        mut last: Option<Won>,
    ) -> Handover {
        let inner = &self.inner;
        let n = missed.len();
        let window_start =
            Utc::now() - chrono::Duration::from_std(inner.catchup).unwrap_or_default();
        let mut outcome = Handover::Lost;
        for (i, at) in missed.into_iter().enumerate() {
            if job.misfire == Misfire::All && job.timeout_policy == TimeoutPolicy::Abandon && i > 0
            {
                // In order, one at a time: under `abandon` the next would only be skipped.
                self.until_idle(job).await;
            }
            let won = match last.take_if(|_| i + 1 == n) {
                Some(won) => won,
                None => match self.win(job, at, Trigger::Schedule, 0).await {
                    Ok(Some(won)) => won,
                    Ok(None) => continue,
                    Err(failed) => {
                        outcome = failed;
                        continue;
                    }
                },
            };
            let run = match job.misfire {
                Misfire::Skip => false,
                Misfire::Once => i + 1 == n,
                Misfire::All => at >= window_start,
            };
            outcome = if run {
                tracing::info!(job_id = job.id, tick = %at, policy = %job.misfire, "running a missed tick");
                self.run(
                    job,
                    at,
                    schedule.next_after(at),
                    Trigger::Schedule,
                    None,
                    won,
                )
                .await
            } else {
                let why = format!(
                    "no dispatcher fired this tick in time (misfire policy {})",
                    job.misfire
                );
                match inner.runs.missed(job.id, at, why.clone()).await {
                    Ok(_) => Handover::Missed(why),
                    Err(e) => Handover::Failed(format!("recording a missed tick: {e}")),
                }
            };
        }
        outcome
    }

    /// The runs of `in_flight` still live; the others become `lost` (see [`live::settle`]).
    async fn live(&self, in_flight: Vec<LiveRun>) -> Vec<LiveRun> {
        let inner = &self.inner;
        let view = inner.instances.borrow().clone();
        live::settle(
            in_flight,
            view.as_deref(),
            &inner.etcd,
            &inner.keys,
            &inner.runs,
            &inner.lock,
        )
        .await
    }

    /// Waits until the job has no live run (polling its live runs).
    async fn until_idle(&self, job: &JobSpec) {
        let inner = &self.inner;
        loop {
            let in_flight = match inner.lock.in_flight(job.id).await {
                Ok(runs) => runs,
                Err(_) => return,
            };
            if self.live(in_flight).await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the tick whose lock `won` holds: the `abandon` check, the run row, the hand-off.
    async fn run(
        &self,
        job: &JobSpec,
        tick: DateTime<Utc>,
        following: Option<DateTime<Utc>>,
        trigger: Trigger,
        origin: Option<Origin>,
        won: Won,
    ) -> Handover {
        let inner = &self.inner;
        let scheduled_ms = tick.timestamp_millis();
        let Won {
            sequence,
            in_flight,
            ..
        } = won;

        // "Still running" is the job's runs in flight whose holder is alive now; the others
        // are lost, and the job is free to run again.
        // An event's run (or its retry) is work of its own: not skipped for one still going;
        // so is the retry of one run of a fanned-out tick (its siblings may still be going).
        let skips = job.timeout_policy == TimeoutPolicy::Abandon
            && trigger != Trigger::Event
            && origin
                .as_ref()
                .is_none_or(|o| o.event.is_none() && o.shard.is_none());
        let mut live = self.live(in_flight).await;
        // Handed over before its tick (`lead_ms`), a tick whose job has a run going waits for
        // its instant to decide: that run may end before it.
        if skips && !live.is_empty() && scheduled_ms > Utc::now().timestamp_millis() {
            gocron_shared::clock::until_ms(scheduled_ms).await;
            if let Ok(in_flight) = inner.lock.in_flight(job.id).await {
                live = self.live(in_flight).await;
            }
        }
        if skips && let Some(previous) = live.first() {
            let holder = previous.holder.as_ref().map(Holder::label);
            let why = format!(
                "run {} of this job is still running on {} (timeout policy abandon)",
                previous.run_id,
                holder.as_deref().unwrap_or("?")
            );
            return match inner
                .runs
                .skipped(job.id, tick, trigger, origin.as_ref(), why.clone())
                .await
            {
                Ok(Some(_)) => Handover::Skipped(why),
                Ok(None) => Handover::Lost,
                Err(e) => Handover::Failed(format!("{why}; and recording the skip failed: {e}")),
            };
        }

        let live = inner.executors.borrow().clone();
        let candidates = inner.machines.select(&job.machine, &live);
        let request = RunRequest {
            secret: inner.secret.clone(),
            run_id: 0,
            job: job.clone(),
            scheduled_ms,
            timeout_ms: run_timeout_ms(job, tick, following),
            trigger,
            dispatcher: inner.name.clone(),
            attempt: origin.as_ref().map_or(1, |o| o.attempt.max(1)),
            parent_run: origin.as_ref().and_then(|o| o.parent_run),
            event: origin.as_ref().and_then(|o| o.event.clone()),
            shard: origin.as_ref().and_then(|o| o.shard.clone()),
            // A tick handed over before its instant starts at it.
            start_at_ms: (trigger == Trigger::Schedule
                && scheduled_ms > Utc::now().timestamp_millis())
            .then_some(scheduled_ms),
        };
        // A tick of a `broadcast` or `shard` job is one run per live executor of its group
        // (its retries are one run each, of the place they keep).
        if job.route.fans_out()
            && request.shard.is_none()
            && let Some(candidates) = candidates.as_ref().filter(|c| !c.is_empty())
        {
            // Boxed: see `offer_inner`.
            return Box::pin(self.fan_out(job, tick, origin.as_ref(), candidates, request)).await;
        }

        let run_id = match inner
            .runs
            .insert_attempt(job.id, tick, trigger, origin.as_ref())
            .await
        {
            Ok(Some(id)) => id,
            // The lock said we won, yet the tick has a row: Redis lost the lock (restart,
            // failover). The unique key just stopped a duplicate run.
            Ok(None) => return Handover::Lost,
            Err(e) => return Handover::Failed(format!("database: inserting the run row: {e}")),
        };
        self.handing(job.id, run_id).await;
        let candidates = match candidates {
            None => {
                return self
                    .no_executor(
                        job.id,
                        run_id,
                        format!("unknown {}: not in this dispatcher's conf.ini", group(job)),
                    )
                    .await;
            }
            Some(c) if c.is_empty() => {
                return self
                    .no_executor(
                        job.id,
                        run_id,
                        format!("no live executor in {}", group(job)),
                    )
                    .await;
            }
            Some(c) => c,
        };
        // The job's route orders the executors; each is offered the run at most once.
        let order = match &request.shard {
            Some(shard) => shard_order(job.route, &candidates, shard),
            None => self.order(job, &candidates, sequence).await,
        };
        self.hand_over(job, RunRequest { run_id, ..request }, order)
            .await
    }

    /// Enters run `run_id` in the job's live runs, held by this dispatcher until an executor
    /// claims it.
    async fn handing(&self, job_id: i64, run_id: i64) {
        let inner = &self.inner;
        let handing = Holder::Dispatcher {
            since_ms: Utc::now().timestamp_millis(),
            name: inner.name.clone(),
        };
        if let Err(e) = inner.lock.hold(job_id, run_id, &handing).await {
            tracing::warn!(run_id, error = %e, "cannot enter the run in the job's live runs");
        }
    }

    /// Fans a tick out over `candidates` (route `broadcast` or `shard`): one row per executor,
    /// ordered by name, inserted together (all or none), then each run handed over at once.
    async fn fan_out(
        &self,
        job: &JobSpec,
        tick: DateTime<Utc>,
        origin: Option<&Origin>,
        candidates: &[&ExecutorInfo],
        request: RunRequest,
    ) -> Handover {
        let inner = &self.inner;
        let mut by_name = candidates.to_vec();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let total = by_name.len() as i32;
        let ids = match inner
            .runs
            .insert_fanned_out(job.id, tick, request.trigger, origin, total)
            .await
        {
            Ok(Some(ids)) => ids,
            Ok(None) => return Handover::Lost,
            Err(e) => return Handover::Failed(format!("database: inserting the run rows: {e}")),
        };
        futures::future::join_all(ids.iter().map(|run_id| self.handing(job.id, *run_id))).await;
        let offers = ids
            .iter()
            .zip(&by_name)
            .zip(0..)
            .map(|((run_id, executor), index)| {
                let shard = Shard {
                    index,
                    total,
                    executor: executor.name.clone(),
                };
                let order = shard_order(job.route, &by_name, &shard);
                let request = RunRequest {
                    run_id: *run_id,
                    shard: Some(shard),
                    ..request.clone()
                };
                self.hand_over(job, request, order)
            });
        let outcomes = futures::future::join_all(offers).await;
        let summary = || {
            outcomes
                .iter()
                .zip(0..)
                .map(|(o, i)| format!("{i}/{total}: {o:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if outcomes
            .iter()
            .any(|o| matches!(o, Handover::Started(_) | Handover::InHand(_)))
        {
            Handover::Started(summary())
        } else if outcomes.iter().any(|o| matches!(o, Handover::Failed(_))) {
            Handover::Failed(summary())
        } else {
            Handover::NoExecutor(summary())
        }
    }

    /// Offers the run of `request` to the executors of `order` in turn; the first to take it
    /// has it; none: the row says `no_executor`.
    async fn hand_over(
        &self,
        job: &JobSpec,
        request: RunRequest,
        order: Vec<&ExecutorInfo>,
    ) -> Handover {
        let run_id = request.run_id;
        if order.is_empty() {
            let why = match &request.shard {
                Some(s) => format!(
                    "the executor of run {}/{} of the tick ({}) is not live in {} (route {})",
                    s.index,
                    s.total,
                    if s.executor.is_empty() {
                        "?"
                    } else {
                        &s.executor
                    },
                    group(job),
                    job.route
                ),
                None => format!("no live executor in {}", group(job)),
            };
            return self.no_executor(job.id, run_id, why).await;
        }
        let (mut request, mut order) = (request, order);
        let mut refusals = Vec::new();
        loop {
            let mut busy = Vec::new();
            for executor in order {
                match self.offer(executor, request.clone()).await {
                    Ok(label) => return Handover::Started(label),
                    Err(Offer::InHand(why)) => return Handover::InHand(why),
                    Err(Offer::Next(why)) => {
                        tracing::info!(run_id, executor = %executor, "executor did not take the run: {why}");
                        refusals.push(format!("{executor}: {why}"));
                    }
                    Err(Offer::Busy(why)) => {
                        tracing::info!(run_id, executor = %executor, "executor did not take the run: {why}");
                        refusals.push(format!("{executor}: {why}"));
                        busy.push(executor);
                    }
                }
            }
            // Busy before the tick (its slots held by runs waiting for their ticks, or going),
            // an executor may have a free slot at the tick: those are asked again then, as
            // they would have been without the lead.
            match request.start_at_ms.take() {
                Some(at) if !busy.is_empty() => {
                    gocron_shared::clock::until_ms(at).await;
                    order = busy;
                }
                _ => break,
            }
        }
        self.no_executor(
            job.id,
            run_id,
            format!(
                "no executor of {} took the run: {}",
                group(job),
                refusals.join("; ")
            ),
        )
        .await
    }

    /// The order in which `candidates` are offered a run of `job` (see [`Route`]); `sequence`
    /// is the group's dispatch count, across all dispatchers.
    async fn order<'a>(
        &self,
        job: &JobSpec,
        candidates: &[&'a ExecutorInfo],
        sequence: u64,
    ) -> Vec<&'a ExecutorInfo> {
        let n = candidates.len();
        let rotated = |first: usize| (0..n).map(|i| candidates[(first + i) % n]).collect();
        match job.route {
            Route::RoundRobin => rotated(((sequence.max(1) - 1) % n as u64) as usize),
            Route::Random => rotated(rand::random_range(0..n)),
            Route::Hash => {
                let mut ranked = candidates.to_vec();
                ranked.sort_by_key(|e| std::cmp::Reverse(rendezvous(job.id, &e.name)));
                ranked
            }
            // A fanned-out tick's runs are ordered by `shard_order`; here only if that changed.
            Route::Broadcast | Route::Shard => rotated(0),
            Route::LeastBusy => {
                let loads =
                    futures::future::join_all(candidates.iter().map(|e| self.load(e))).await;
                let first = ((sequence.max(1) - 1) % n as u64) as usize;
                // Fewest runs going first; ties in round-robin order; no answer last.
                let mut ranked: Vec<(usize, usize, &ExecutorInfo)> = candidates
                    .iter()
                    .zip(loads)
                    .enumerate()
                    .map(|(i, (e, load))| (load.unwrap_or(usize::MAX), (i + n - first) % n, *e))
                    .collect();
                ranked.sort_by_key(|(load, turn, _)| (*load, *turn));
                ranked.into_iter().map(|(.., e)| e).collect()
            }
        }
    }

    /// How many runs `executor` has going (`None`: no answer within [`LOAD_TIMEOUT`]).
    async fn load(&self, executor: &ExecutorInfo) -> Option<usize> {
        let inner = &self.inner;
        let ask = async {
            let client = inner
                .clients
                .get(executor.address, inner.rpc_timeout, &inner.tls)
                .await
                .ok()?;
            match client
                .load(rpc::context(LOAD_TIMEOUT), inner.secret.clone())
                .await
            {
                Ok(Ok(load)) => Some(load.running),
                Ok(Err(_)) => None,
                Err(_) => {
                    inner.clients.forget(executor.address);
                    None
                }
            }
        };
        tokio::time::timeout(LOAD_TIMEOUT, ask).await.ok().flatten()
    }

    /// Offers the run to one executor, within one `rpc_timeout` for connect and call together
    /// (after waiting for the run's tick if that executor would not wait for it).
    async fn offer(
        &self,
        executor: &ExecutorInfo,
        mut request: RunRequest,
    ) -> Result<String, Offer> {
        // An executor of an earlier release would start a run when it gets it: it gets it at
        // its tick.
        if let Some(at) = request.start_at_ms
            && !executor.starts_at_tick
        {
            gocron_shared::clock::until_ms(at).await;
            request.start_at_ms = None;
        }
        let deadline = self.inner.rpc_timeout;
        match tokio::time::timeout(deadline, self.offer_inner(executor, request)).await {
            Ok(result) => result,
            Err(_) => {
                self.inner.clients.forget(executor.address);
                Err(Offer::Next(format!(
                    "no answer within {} ms",
                    deadline.as_millis()
                )))
            }
        }
    }

    async fn offer_inner(
        &self,
        executor: &ExecutorInfo,
        request: RunRequest,
    ) -> Result<String, Offer> {
        let inner = &self.inner;
        // A cached connection may be dead (the executor restarted on the same address): a
        // request that never left is redialled once. Safe, since the claim makes it idempotent.
        for attempt in 0..2 {
            let answer = if executor.takes_batches {
                self.queue_offer(executor.address, request.to_json()).await
            } else {
                // Boxed, like the other paths a tick seldom takes (misfire, fan-out): a tick's
                // task holds (and is copied with) the largest future of every path; this one,
                // a tarpc call, was a third of it, though executors of this release take batches.
                Box::pin(self.send_offer(executor.address, &request)).await
            };
            match answer {
                Ok(Ok(accepted)) => return Ok(accepted.executor),
                Ok(Err(Refused::AlreadyClaimed(why))) => return Err(Offer::InHand(why)),
                Ok(Err(busy @ Refused::Busy { .. })) => return Err(Offer::Busy(busy.to_string())),
                Ok(Err(refused)) => return Err(Offer::Next(refused.to_string())),
                Err(Failed::Connect(e)) => return Err(Offer::Next(format!("cannot connect: {e}"))),
                Err(Failed::Rpc { never_sent, error }) => {
                    inner.clients.forget(executor.address);
                    if !(never_sent && attempt == 0) {
                        return Err(Offer::Next(format!("rpc: {error}")));
                    }
                }
            }
        }
        Err(Offer::Next("connection lost twice".into()))
    }

    /// Offers a run alone, in the oldest shape that carries it (for executors of earlier
    /// releases).
    async fn send_offer(&self, address: SocketAddr, request: &RunRequest) -> Answer {
        let inner = &self.inner;
        let client = inner
            .clients
            .get(address, inner.rpc_timeout, &inner.tls)
            .await
            .map_err(|e| Failed::Connect(e.to_string()))?;
        let context = rpc::context(inner.rpc_timeout);
        count_handover(1);
        let answer = match request.to_wire() {
            WireRequest::V1(request) => client.start_run(context, request).await,
            WireRequest::Json(request) => client.start_run_json(context, request).await,
        };
        answer.map_err(rpc_failed)
    }

    /// Offers a run (`json`) in the next call to the executor at `address` (see
    /// [`crate::batches`]).
    async fn queue_offer(&self, address: SocketAddr, json: String) -> Answer {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.inner.batches.push(address, Queued { json, answer }) {
            tokio::spawn(self.clone().send_queued(address));
        }
        answered.await.unwrap_or_else(|_| {
            Err(Failed::Rpc {
                never_sent: false,
                error: "the call carrying the run ended".into(),
            })
        })
    }

    /// Sends the runs queued for `address`, a call at a time, until none is left.
    async fn send_queued(self, address: SocketAddr) {
        /// Should this task end early (a panic), the queue goes with it: else its `sending`
        /// mark would stay and the runs offered after would wait for a sender that is gone.
        struct Abandon<'a>(&'a Batches, SocketAddr);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                self.0.abandon(self.1);
            }
        }
        let abandon = Abandon(&self.inner.batches, address);
        loop {
            let batch = self.inner.batches.next(address);
            if batch.is_empty() {
                std::mem::forget(abandon);
                return;
            }
            let answers = self.send_batch(address, &batch).await;
            for (run, answer) in batch.into_iter().zip(answers) {
                let _ = run.answer.send(answer);
            }
        }
    }

    /// One call carrying `batch`; an answer for each run of it, in its order.
    async fn send_batch(&self, address: SocketAddr, batch: &[Queued]) -> Vec<Answer> {
        let inner = &self.inner;
        let n = batch.len();
        let all = |answer: Answer| vec![answer; n];
        let client = match inner
            .clients
            .get(address, inner.rpc_timeout, &inner.tls)
            .await
        {
            Ok(client) => client,
            Err(e) => return all(Err(Failed::Connect(e.to_string()))),
        };
        let mut json =
            String::with_capacity(batch.iter().map(|r| r.json.len() + 1).sum::<usize>() + 1);
        json.push('[');
        for (i, run) in batch.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&run.json);
        }
        json.push(']');
        count_handover(n);
        let call = client.start_runs_json(rpc::context(inner.rpc_timeout), json);
        match tokio::time::timeout(inner.rpc_timeout, call).await {
            Ok(Ok(Ok(answers))) if answers.len() == n => answers.into_iter().map(Ok).collect(),
            Ok(Ok(Ok(answers))) => all(Err(Failed::Rpc {
                never_sent: false,
                error: format!("{} answers for {n} runs", answers.len()),
            })),
            Ok(Ok(Err(refused))) => all(Ok(Err(refused))),
            Ok(Err(e)) => {
                inner.clients.forget(address);
                all(Err(rpc_failed(e)))
            }
            Err(_) => {
                inner.clients.forget(address);
                all(Err(Failed::Rpc {
                    never_sent: false,
                    error: format!("no answer within {} ms", inner.rpc_timeout.as_millis()),
                }))
            }
        }
    }

    /// Records that nobody took the run, after claiming it as "nobody": if an executor holds the
    /// claim (its answer was lost), the run is in its hands and the row is its to write.
    async fn no_executor(&self, job_id: i64, run_id: i64, why: String) -> Handover {
        let inner = &self.inner;
        let nobody = format!("nobody:{}", inner.name);
        match inner.lock.claim_run(job_id, run_id, &nobody, None).await {
            Ok(None) => {}
            Ok(Some(holder)) => return Handover::InHand(format!("held by {holder}")),
            Err(e) => {
                return Handover::Failed(format!(
                    "{why}; and the run could not be claimed as unrun (redis: {e}), so its row stays 'dispatched'"
                ));
            }
        }
        match inner.runs.no_executor(run_id, why.clone()).await {
            Ok(true) => Handover::NoExecutor(why),
            Ok(false) => Handover::InHand("the row was no longer dispatched".into()),
            Err(e) => Handover::Failed(format!("{why}; and recording that failed: {e}")),
        }
    }
}

/// Counts a hand-over call carrying `runs` runs.
fn count_handover(runs: usize) {
    let m = gocron_shared::metrics::metrics();
    m.handover_calls.inc();
    m.handover_runs.inc_by(runs as u64);
}

/// A failed call, as a run's answer.
fn rpc_failed(e: RpcError) -> Failed {
    Failed::Rpc {
        never_sent: matches!(e, RpcError::Shutdown | RpcError::Send(_)),
        error: e.to_string(),
    }
}

/// Counts and logs how a tick's hand-over ended.
pub fn report(job: &JobSpec, tick: DateTime<Utc>, outcome: &Handover) {
    let label = match outcome {
        Handover::Lost => "lost_race",
        Handover::Started(_) | Handover::InHand(_) => "fired",
        Handover::NoExecutor(_) => "no_executor",
        Handover::Missed(_) => "missed",
        Handover::Skipped(_) => "skipped",
        Handover::Failed(_) => "failed",
    };
    gocron_shared::metrics::metrics()
        .ticks
        .with_label_values(&[label])
        .inc();
    match outcome {
        Handover::Lost => {
            tracing::debug!(job_id = job.id, %tick, "tick won by another dispatcher")
        }
        Handover::Started(executor) => {
            tracing::debug!(job_id = job.id, %tick, %executor, "tick handed over")
        }
        Handover::InHand(why) => {
            tracing::info!(job_id = job.id, %tick, "run already in an executor's hands: {why}")
        }
        Handover::Missed(why) => {
            tracing::warn!(job_id = job.id, job = %job.name, %tick, "tick missed: {why}")
        }
        Handover::Skipped(why) => {
            tracing::warn!(job_id = job.id, job = %job.name, %tick, "tick skipped: {why}")
        }
        Handover::NoExecutor(why) => {
            tracing::warn!(job_id = job.id, job = %job.name, %tick, "no executor ran the tick: {why}")
        }
        Handover::Failed(why) => {
            tracing::error!(job_id = job.id, job = %job.name, %tick, "tick not dispatched: {why}")
        }
    }
}

/// The job's machine group, for messages.
fn group(job: &JobSpec) -> String {
    if job.machine.is_empty() {
        "any executor".to_owned()
    } else {
        format!("machine group {:?}", job.machine)
    }
}

/// The executors offered one run of a fanned-out tick (or its retry), given its place `shard`:
/// first the one it went to (by name), or else the one now at its index among `candidates`
/// ordered by name; under `broadcast` that one alone (each executor's run is its own), under
/// `shard` then the others in turn (a shard is work to be done, wherever it is done).
fn shard_order<'a>(
    route: Route,
    candidates: &[&'a ExecutorInfo],
    shard: &Shard,
) -> Vec<&'a ExecutorInfo> {
    let mut by_name = candidates.to_vec();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let n = by_name.len();
    let index = usize::try_from(shard.index).unwrap_or(0);
    let first = if shard.executor.is_empty() {
        (index < n).then_some(index)
    } else {
        by_name.iter().position(|e| e.name == shard.executor)
    };
    match (route, first) {
        (Route::Broadcast, first) => first.map(|i| vec![by_name[i]]).unwrap_or_default(),
        (_, _) if n == 0 => Vec::new(),
        (_, first) => {
            let first = first.unwrap_or(index % n);
            (0..n).map(|i| by_name[(first + i) % n]).collect()
        }
    }
}

/// A run's timeout: `timeout_secs`, or until the job's following tick when that is 0.
fn run_timeout_ms(job: &JobSpec, tick: DateTime<Utc>, following: Option<DateTime<Utc>>) -> u64 {
    if job.timeout_secs > 0 {
        return u64::from(job.timeout_secs) * 1000;
    }
    following.map_or(0, |next| (next - tick).num_milliseconds().max(0) as u64)
}

enum Offer {
    /// Offer the run to the next executor.
    Next(String),
    /// Offer the run to the next executor: this one has no free slot (`max_concurrent`).
    Busy(String),
    /// Someone already holds the run: stop offering.
    InHand(String),
}

/// One RPC connection per executor address, made on first use and dropped when it fails.
#[derive(Default)]
struct Clients {
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<ExecutorRpcClient>>>>>,
}

impl Clients {
    async fn get(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: &Tls,
    ) -> std::io::Result<ExecutorRpcClient> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(addr).or_default().clone()
        };
        // One connect per address at a time: a burst of ticks shares the first connection.
        let mut client = slot.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let c = rpc::connect(addr, timeout, tls).await?;
        *client = Some(c.clone());
        Ok(c)
    }

    fn forget(&self, addr: SocketAddr) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(&addr)
            && let Ok(mut client) = slot.try_lock()
        {
            *client = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use gocron_shared::job::{Route, Shard};
    use gocron_shared::machine::ExecutorInfo;

    use super::{rendezvous, shard_order};

    fn executor(name: &str) -> ExecutorInfo {
        ExecutorInfo {
            name: name.into(),
            address: "127.0.0.1:1".parse().unwrap(),
            version: String::new(),
            started_at: String::new(),
            instance: String::new(),
            starts_at_tick: true,
            takes_batches: true,
        }
    }

    /// The names `shard_order` offers a run at `index` (of executor `went_to`) among `live`.
    fn offered(route: Route, live: &[&str], index: i32, went_to: &str) -> Vec<String> {
        let live: Vec<ExecutorInfo> = live.iter().map(|n| executor(n)).collect();
        let candidates: Vec<&ExecutorInfo> = live.iter().collect();
        let shard = Shard {
            index,
            total: 3,
            executor: went_to.into(),
        };
        shard_order(route, &candidates, &shard)
            .into_iter()
            .map(|e| e.name.clone())
            .collect()
    }

    #[test]
    fn a_shard_goes_back_to_its_executor_and_a_broadcast_run_nowhere_else() {
        let live = ["exec-c", "exec-a", "exec-b"];
        // Its own executor first (by name, wherever it now sorts), then the others in turn.
        assert_eq!(
            offered(Route::Shard, &live, 1, "exec-b"),
            ["exec-b", "exec-c", "exec-a"]
        );
        assert_eq!(offered(Route::Broadcast, &live, 1, "exec-b"), ["exec-b"]);
        // Its executor gone: a shard is work for whoever is there; a broadcast run is not.
        let left = ["exec-c", "exec-a"];
        assert_eq!(
            offered(Route::Shard, &left, 1, "exec-b"),
            ["exec-c", "exec-a"]
        );
        assert!(offered(Route::Broadcast, &left, 1, "exec-b").is_empty());
        // No name (an older request): the executor now at its index.
        assert_eq!(offered(Route::Broadcast, &live, 2, ""), ["exec-c"]);
        assert!(offered(Route::Broadcast, &left, 2, "").is_empty());
        assert_eq!(offered(Route::Shard, &left, 2, ""), ["exec-a", "exec-c"]);
        assert!(offered(Route::Shard, &[], 0, "exec-a").is_empty());
    }

    fn first<'a>(job: i64, names: &[&'a str]) -> &'a str {
        names
            .iter()
            .copied()
            .max_by_key(|n| rendezvous(job, n))
            .expect("names")
    }

    #[test]
    fn rendezvous_spreads_jobs_and_a_leaving_executor_moves_only_its_own() {
        let all = ["exec-a", "exec-b", "exec-c", "exec-d"];
        let before: Vec<&str> = (1..=1000).map(|job| first(job, &all)).collect();
        for name in all {
            let share = before.iter().filter(|n| **n == name).count();
            assert!((150..=350).contains(&share), "{name}: {share} of 1000");
        }
        let left = ["exec-a", "exec-b", "exec-d"];
        for (job, was) in (1..=1000).zip(&before) {
            let now = first(job, &left);
            if *was != "exec-c" {
                assert_eq!(now, *was, "job {job} moved though its executor stayed");
            }
        }
        // A fixed function: every dispatcher, of any build, ranks alike (computed by hand).
        assert_eq!(rendezvous(1, "exec-a"), 5_659_634_275_859_959_913);
    }
}
