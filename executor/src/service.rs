//! The RPC handler: refuse when busy or stopping, claim the run row, start the run, answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use gocron_shared::config::ExecutorConfig;
use gocron_shared::live::Holder;
use gocron_shared::lock::Fences;
use gocron_shared::machine::ExecutorInfo;
use gocron_shared::rpc::{
    Accepted, ExecutorRpc, KillRequest, Load, MAX_OUTPUT_WAIT, OutputChunk, OutputRequest, Refused,
    RunRequest, Secret, v1,
};
use gocron_shared::runs::{RUNNING_AFTER, RunLog};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runner::{Registered, RunAs, Runner};
use crate::spool::{Finished, Outcomes};

/// The executor's RPC service; cheap to clone (one per connection).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
    /// The connection's remote address, for the log of refused calls.
    peer: Option<SocketAddr>,
}

struct Inner {
    secret: Secret,
    runs: RunLog,
    fences: Fences,
    /// `name@address`, as written to `cron_run.executor`.
    label: String,
    /// This process, as entered in the jobs' live hashes.
    holder: Holder,
    slots: Arc<Semaphore>,
    max: usize,
    stopping: AtomicBool,
    tasks: TaskTracker,
    runner: Runner,
    outcomes: Outcomes,
}

impl Service {
    /// A service that claims runs with `fences`, records them in `runs` (their outcomes
    /// through `outcomes`) and runs them on `tasks` (as `run_as`, if set), at most
    /// `config.max_concurrent` at once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        secret: Secret,
        config: &ExecutorConfig,
        info: &ExecutorInfo,
        runs: RunLog,
        fences: Fences,
        outcomes: Outcomes,
        tasks: TaskTracker,
        stop_all: CancellationToken,
        run_as: Option<RunAs>,
    ) -> Service {
        Service {
            peer: None,
            inner: Arc::new(Inner {
                secret,
                runner: Runner::new(config, &info.name, runs.clone(), stop_all, run_as),
                runs,
                fences,
                label: info.to_string(),
                holder: Holder::executor(info),
                slots: Arc::new(Semaphore::new(config.max_concurrent)),
                max: config.max_concurrent,
                stopping: AtomicBool::new(false),
                tasks,
                outcomes,
            }),
        }
    }

    /// The service for one connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Service {
        Service {
            inner: self.inner.clone(),
            peer: Some(peer),
        }
    }

    /// From now on, every call is refused with [`Refused::ShuttingDown`].
    pub fn refuse_new_runs(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }
}

impl Service {
    /// Whether run `request` may start here now (its credential, this executor's state, the
    /// outcomes waiting, a free slot): its slot if so.
    fn admit(&self, request: &RunRequest) -> Result<OwnedSemaphorePermit, Refused> {
        let inner = &self.inner;
        // Before anything else: only our dispatchers may make this machine run a command.
        if !inner.secret.matches(&request.secret) {
            tracing::warn!(
                peer = ?self.peer,
                run_id = request.run_id,
                "refused a call with a missing or wrong [rpc] secret"
            );
            return Err(Refused::Unauthorized);
        }
        if inner.stopping.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        // Outcomes waiting for the database take memory and disk: past the cap, the run goes
        // to an executor whose outcomes get through.
        if let Some(refused) = inner.outcomes.full() {
            return Err(refused);
        }
        inner
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Busy {
                running: inner.max - inner.slots.available_permits(),
                max: inner.max,
            })
    }

    /// Claims and starts a run, whichever shape its request came in.
    async fn start(self, request: RunRequest) -> Result<Accepted, Refused> {
        self.start_all(vec![request])
            .await
            .pop()
            .unwrap_or_else(|| Err(Refused::Unavailable("no answer for the run".into())))
    }

    /// Claims and starts each run of `requests` as if alone (those admitted claimed in one
    /// call to Redis); the answers in their order, each given once its run is claimed.
    async fn start_all(self, requests: Vec<RunRequest>) -> Vec<Result<Accepted, Refused>> {
        let mut answers: Vec<Option<Result<(), Refused>>> = Vec::with_capacity(requests.len());
        let mut admitted = Vec::new();
        for request in requests {
            match self.admit(&request) {
                Ok(permit) => {
                    admitted.push((answers.len(), request, permit));
                    answers.push(None);
                }
                Err(refused) => answers.push(Some(Err(refused))),
            }
        }
        if !admitted.is_empty() {
            // The claim and the starts happen in a task of their own: tarpc aborts a handler
            // whose deadline passed, and a run claimed must never be left without its start.
            let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
            let service = self.clone();
            self.inner.tasks.spawn(async move {
                let inner = &service.inner;
                let runs: Vec<&RunRequest> = admitted.iter().map(|(_, r, _)| r).collect();
                let claimed = claim(&inner.fences, &inner.label, &inner.holder, &runs).await;
                // Claimed, a run is ours from now, and can be killed: registered before the
                // answer, so that a kill sent after it finds the run.
                let registered: Vec<Option<Registered>> = admitted
                    .iter()
                    .zip(&claimed)
                    .map(|((_, request, _), claimed)| {
                        claimed
                            .is_ok()
                            .then(|| inner.runner.register(request.run_id))
                    })
                    .collect();
                let places: Vec<usize> = admitted.iter().map(|(at, ..)| *at).collect();
                let _ =
                    claimed_tx.send(places.into_iter().zip(claimed.clone()).collect::<Vec<_>>());
                for (((_, request, permit), claimed), registered) in
                    admitted.into_iter().zip(claimed).zip(registered)
                {
                    match (claimed, registered) {
                        (Ok(()), Some(registered)) => {
                            inner
                                .tasks
                                .spawn(service.clone().run(request, permit, registered));
                        }
                        (Err(Refused::Unavailable(_)), _) => {
                            let (fences, runs, label, holder) = (
                                inner.fences.clone(),
                                inner.runs.clone(),
                                inner.label.clone(),
                                inner.holder.clone(),
                            );
                            // Detached: a stopping executor does not wait for Redis to come back.
                            tokio::spawn(async move {
                                settle_unconfirmed(&fences, &runs, &label, &holder, &request).await;
                            });
                        }
                        _ => {}
                    }
                }
            });
            match claimed_rx.await {
                Ok(claimed) => {
                    for (at, claimed) in claimed {
                        answers[at] = Some(claimed);
                    }
                }
                Err(_) => {
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(Err(Refused::Unavailable("the claim task ended".into())));
                    }
                }
            }
        }
        let accepted = || Accepted {
            executor: self.inner.label.clone(),
        };
        answers
            .into_iter()
            .map(|answer| match answer {
                Some(Ok(())) => Ok(accepted()),
                Some(Err(refused)) => Err(refused),
                None => Err(Refused::Unavailable("no answer for the run".into())),
            })
            .collect()
    }

    /// Runs claimed run `request` (`registered` with the runner) in its slot `permit`: waits
    /// for its tick if it came before it, runs it, records its outcome.
    async fn run(self, request: RunRequest, permit: OwnedSemaphorePermit, registered: Registered) {
        let inner = &self.inner;
        let (runs, fences, label, holder, runner, outcomes) = (
            &inner.runs,
            &inner.fences,
            inner.label.clone(),
            &inner.holder,
            &inner.runner,
            &inner.outcomes,
        );
        // Handed over before its tick, it starts at the tick.
        let waited = match request.start_at_ms {
            Some(at) => runner.until_start(&registered, at).await,
            None => Ok(()),
        };
        let started_at = Utc::now();
        let m = gocron_shared::metrics::metrics();
        m.running.inc();
        if waited.is_ok() {
            tracing::info!(
                run_id = request.run_id,
                job_id = request.job.id,
                job = %request.job.name,
                dispatcher = %request.dispatcher,
                "run started"
            );
            if request.trigger == gocron_shared::job::Trigger::Schedule {
                let lag_ms = started_at.timestamp_millis() - request.scheduled_ms;
                m.fire_lag.observe(lag_ms.max(0) as f64 / 1000.0);
            }
        }
        // `running` is written while the job runs, not before: the job waits for nobody.
        // The slot is free once the job is, whatever the database's backlog.
        let job = async {
            let outcome = match waited {
                Ok(()) => runner.execute(&request, registered).await,
                Err(not_started) => {
                    drop(registered);
                    tracing::info!(
                        run_id = request.run_id,
                        error = not_started.error.as_deref().unwrap_or(""),
                        "run not started"
                    );
                    not_started
                }
            };
            let finished_at = Utc::now();
            m.running.dec();
            m.runs.with_label_values(&[outcome.status.as_str()]).inc();
            // Counted as waiting before its slot is free: the cap on outcomes waiting is
            // what bounds the memory of a slow database, not the slots.
            let waiting = outcomes.wait();
            drop(permit);
            // Ended: the job no longer holds up its next tick, while the outcome waits for
            // the database (until then a death of this process still makes the run lost).
            let ended = holder.clone().ended();
            if let Err(e) = fences.hold(request.job.id, request.run_id, &ended).await {
                tracing::warn!(run_id = request.run_id, error = %e, "cannot mark the run ended in the job's live runs");
            }
            (outcome, finished_at, waiting)
        };
        // A run shorter than `RUNNING_AFTER` goes from `dispatched` to its outcome in one
        // write (the finish carries the executor and the start time): at a thousand short
        // runs a second, a third fewer writes.
        let mut job = std::pin::pin!(job);
        let (outcome, finished_at, waiting) = tokio::select! {
            ended = &mut job => ended,
            () = tokio::time::sleep(RUNNING_AFTER) => {
                let (started, ended) =
                    tokio::join!(runs.start(request.run_id, &label, started_at), job);
                if let Err(e) = started {
                    tracing::warn!(run_id = request.run_id, error = %e, "cannot record the run as running");
                }
                ended
            }
        };
        // Out of the live runs only once the outcome is safe: an unrecorded run stays live
        // while this process lives, and becomes `lost` if it dies (its spooled outcome then
        // replaces `lost` when the executor starts again).
        let finished = Finished {
            run_id: request.run_id,
            job_id: request.job.id,
            executor: label,
            started_at,
            finished_at,
            outcome,
        };
        outcomes.record(finished, waiting).await;
    }
}

impl ExecutorRpc for Service {
    async fn start_run(
        self,
        _: tarpc::context::Context,
        request: v1::RunRequest,
    ) -> Result<Accepted, Refused> {
        self.start(request.into()).await
    }

    async fn start_run_json(
        self,
        _: tarpc::context::Context,
        request: String,
    ) -> Result<Accepted, Refused> {
        let request = RunRequest::from_json(&request).inspect_err(|e| {
            tracing::warn!(peer = ?self.peer, error = %e, "refused a run request that does not decode");
        })?;
        self.start(request).await
    }

    async fn kill_run(
        self,
        _: tarpc::context::Context,
        request: KillRequest,
    ) -> Result<(), Refused> {
        if !self.inner.secret.matches(&request.secret) {
            tracing::warn!(
                peer = ?self.peer,
                run_id = request.run_id,
                "refused a kill with a missing or wrong [rpc] secret"
            );
            return Err(Refused::Unauthorized);
        }
        if self.inner.runner.kill(request.run_id, &request.by) {
            tracing::info!(run_id = request.run_id, by = %request.by, "killing the run on request");
            Ok(())
        } else {
            Err(Refused::NotRunning(request.run_id))
        }
    }

    async fn start_runs_json(
        self,
        _: tarpc::context::Context,
        batch: String,
    ) -> Result<Vec<Result<Accepted, Refused>>, Refused> {
        let requests = RunRequest::batch_from_json(&batch).inspect_err(|e| {
            tracing::warn!(peer = ?self.peer, error = %e, "refused a batch of run requests that does not decode");
        })?;
        Ok(self.start_all(requests).await)
    }

    async fn load(self, _: tarpc::context::Context, secret: Secret) -> Result<Load, Refused> {
        let inner = &self.inner;
        if !inner.secret.matches(&secret) {
            return Err(Refused::Unauthorized);
        }
        Ok(Load {
            running: inner.max - inner.slots.available_permits(),
            max: inner.max,
        })
    }

    async fn run_output(
        self,
        _: tarpc::context::Context,
        request: OutputRequest,
    ) -> Result<OutputChunk, Refused> {
        // Output is the job's, and may hold what only the job's owners may read.
        if !self.inner.secret.matches(&request.secret) {
            tracing::warn!(
                peer = ?self.peer,
                run_id = request.run_id,
                "refused an output request with a missing or wrong [rpc] secret"
            );
            return Err(Refused::Unauthorized);
        }
        let wait = std::time::Duration::from_millis(request.wait_ms).min(MAX_OUTPUT_WAIT);
        self.inner
            .runner
            .output(request.run_id, request.offset, wait)
            .await
            .ok_or(Refused::NotRunning(request.run_id))
    }
}

/// How long an executor keeps trying to learn whether a claim it could not confirm took.
const UNCONFIRMED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// A claim whose answer was lost (Redis failed or restarted mid-call) may have taken: the run
/// would then be this executor's, held in its job's live runs, and never started, while
/// everyone else (dispatchers, the monitor) sees it held by a live executor. So the claim is
/// asked again (it is idempotent for its holder) until Redis answers: if it is ours, the run
/// was not started, and is recorded `no_executor` and taken out of the live runs; if someone
/// else holds it, it is theirs.
async fn settle_unconfirmed(
    fences: &Fences,
    runs: &RunLog,
    label: &str,
    holder: &Holder,
    request: &RunRequest,
) {
    let (job_id, run_id) = (request.job.id, request.run_id);
    let mut backoff = gocron_shared::daemon::Backoff::new("redis (an unconfirmed claim)");
    let never = tokio_util::sync::CancellationToken::new();
    let until = tokio::time::Instant::now() + UNCONFIRMED_FOR;
    while tokio::time::Instant::now() < until {
        match fences.claim_run(job_id, run_id, label, Some(holder)).await {
            Ok(None) => {
                let why = format!(
                    "executor {label} could not confirm its claim of the run (Redis unavailable), so it did not start it"
                );
                match runs.no_executor(run_id, why).await {
                    Ok(_) => {
                        if let Err(e) = fences.release(job_id, run_id).await {
                            tracing::warn!(run_id, error = %e, "cannot drop an unstarted run from its job's live runs");
                        }
                        tracing::warn!(
                            run_id,
                            "a claim whose answer was lost took: the run was not started, recorded no_executor"
                        );
                    }
                    // Its entry stays: the run becomes lost when this executor stops.
                    Err(e) => tracing::warn!(run_id, error = %e, "cannot record an unstarted run"),
                }
                return;
            }
            Ok(Some(_)) => return,
            Err(e) => {
                let _ = backoff.wait(&e, &never).await;
            }
        }
    }
    tracing::warn!(
        run_id,
        "Redis did not answer for an unconfirmed claim; giving up"
    );
}

/// Claims the runs of `requests` for this executor and enters them in their jobs' live runs
/// (see [`gocron_shared::lock`], [`gocron_shared::live`]), in one call to Redis; what each found.
async fn claim(
    fences: &Fences,
    label: &str,
    holder: &Holder,
    requests: &[&RunRequest],
) -> Vec<Result<(), Refused>> {
    let runs: Vec<(i64, i64)> = requests.iter().map(|r| (r.job.id, r.run_id)).collect();
    match fences.claim_runs(&runs, label, Some(holder)).await {
        Ok(held) => runs
            .iter()
            .zip(held)
            .map(|((_, run_id), held)| match held {
                None => Ok(()),
                Some(holder) => Err(Refused::AlreadyClaimed(format!(
                    "run {run_id} is held by {holder}"
                ))),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(runs = runs.len(), error = %e, "cannot claim runs");
            let refused = Refused::Unavailable(format!("redis: {e}"));
            vec![Err(refused); runs.len()]
        }
    }
}
