//! The RPC handler: refuse when busy or stopping, claim the run row, start the run, answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gocron_shared::config::ExecutorConfig;
use gocron_shared::machine::ExecutorInfo;
use gocron_shared::rpc::{Accepted, ExecutorRpc, Refused, RunRequest};
use gocron_shared::runs::RunLog;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::runner::Runner;

/// The executor's RPC service; cheap to clone (one per connection).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    runs: RunLog,
    /// `name@address`, as written to `cron_run.executor`.
    label: String,
    slots: Arc<Semaphore>,
    max: usize,
    stopping: AtomicBool,
    tasks: TaskTracker,
    runner: Runner,
}

impl Service {
    /// A service that records runs in `runs` and runs them on `tasks`, at most
    /// `config.max_concurrent` at once.
    pub fn new(
        config: &ExecutorConfig,
        info: &ExecutorInfo,
        runs: RunLog,
        tasks: TaskTracker,
    ) -> Service {
        Service {
            inner: Arc::new(Inner {
                runner: Runner::new(config, &info.name, runs.clone()),
                runs,
                label: info.to_string(),
                slots: Arc::new(Semaphore::new(config.max_concurrent)),
                max: config.max_concurrent,
                stopping: AtomicBool::new(false),
                tasks,
            }),
        }
    }

    /// From now on, every call is refused with [`Refused::ShuttingDown`].
    pub fn refuse_new_runs(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }
}

impl ExecutorRpc for Service {
    async fn start_run(
        self,
        _: tarpc::context::Context,
        request: RunRequest,
    ) -> Result<Accepted, Refused> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
            return Err(Refused::Busy {
                running: inner.max - inner.slots.available_permits(),
                max: inner.max,
            });
        };
        // The claim and the start happen in a task of their own: tarpc aborts a handler whose
        // deadline passed, and a claim that committed must never be left without its run.
        // The claim is what makes a hand-over idempotent: if a dispatcher retries with another
        // executor after a lost answer, only one of them flips the row out of `dispatched`.
        let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
        let (runs, label, runner) = (
            inner.runs.clone(),
            inner.label.clone(),
            inner.runner.clone(),
        );
        inner.tasks.spawn(async move {
            let claimed = claim(&runs, &label, &request).await;
            let go = claimed.is_ok();
            let _ = claimed_tx.send(claimed);
            if go {
                tracing::info!(
                    run_id = request.run_id,
                    job_id = request.job.id,
                    job = %request.job.name,
                    dispatcher = %request.dispatcher,
                    "run started"
                );
                let outcome = runner.execute(&request).await;
                // The slot is free once the job is; recording may retry for a while.
                drop(permit);
                runner.record(request.run_id, outcome).await;
            }
        });
        claimed_rx
            .await
            .unwrap_or_else(|_| Err(Refused::Unavailable("the claim task ended".into())))?;
        Ok(Accepted {
            executor: inner.label.clone(),
        })
    }
}

/// Flips run `request.run_id` from `dispatched` to `running` for this executor.
async fn claim(runs: &RunLog, label: &str, request: &RunRequest) -> Result<(), Refused> {
    match runs.claim(request.run_id, label).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refused::AlreadyClaimed(format!(
            "run {} is no longer dispatched",
            request.run_id
        ))),
        Err(e) => {
            tracing::warn!(run_id = request.run_id, error = %e, "cannot claim run");
            Err(Refused::Unavailable(e.to_string()))
        }
    }
}
