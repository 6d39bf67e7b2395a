//! Every write to `cron_run`, in one place: the run row's state machine, and group commit.
//!
//! A row moves `dispatched` → `running` (an executor claimed it) → `succeeded` | `failed`, or
//! `dispatched` → `no_executor`. Each transition is a conditional `UPDATE` on the expected
//! status, so a late or repeated writer can never move a row backwards or claim it twice.
//!
//! Writes go through one task per process that commits whatever is queued in one transaction
//! (group commit): with a thousand runs a second, a database sees a few transactions a second
//! per process instead of three thousand, which is what keeps SQLite's single writer lock (and
//! MySQL's commit cost) off the fire path. No write waits for a timer: an idle writer commits a
//! lone write at once. Each write runs in its own savepoint, so one failing statement (the
//! unique-tick fence) does not abort the others' transaction on PostgreSQL.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::db::is_unique_violation;
use crate::entity::run;
use crate::job::{RunStatus, Trigger};

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// How a run ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `succeeded` or `failed`.
    pub status: RunStatus,
    /// Exit code (shell) or HTTP status (http).
    pub exit_code: Option<i32>,
    /// Why it failed, in words.
    pub error: Option<String>,
    /// The tail of the output.
    pub output: String,
}

enum Write {
    Insert {
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        reply: oneshot::Sender<Result<Option<i64>, DbErr>>,
    },
    Claim {
        run_id: i64,
        executor: String,
        started_at: DateTime<Utc>,
        reply: oneshot::Sender<Result<bool, DbErr>>,
    },
    NoExecutor {
        run_id: i64,
        error: String,
        reply: oneshot::Sender<Result<bool, DbErr>>,
    },
    Finish {
        run_id: i64,
        outcome: Outcome,
        reply: oneshot::Sender<Result<bool, DbErr>>,
    },
}

/// The writer of `cron_run` rows for one process; cheap to clone.
#[derive(Clone)]
pub struct RunLog {
    writes: mpsc::Sender<Write>,
}

fn stopped() -> DbErr {
    DbErr::Custom("the run writer has stopped".into())
}

impl RunLog {
    /// Starts the writer task on `db`; it ends when the last clone is dropped.
    pub fn spawn(db: DatabaseConnection) -> RunLog {
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(commit_loop(db, queue));
        RunLog { writes }
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, DbErr>>) -> Write,
    ) -> Result<T, DbErr> {
        let (reply, answer) = oneshot::channel();
        self.writes.send(make(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Inserts a `dispatched` row for a tick; `Ok(None)` when the tick already has a row (the
    /// database's duplicate fence).
    pub async fn insert(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
    ) -> Result<Option<i64>, DbErr> {
        self.submit(|reply| Write::Insert {
            job_id,
            scheduled_at,
            trigger,
            reply,
        })
        .await
    }

    /// `dispatched` → `running` for `executor`; `Ok(false)` when the row was not `dispatched`
    /// (another executor, or an earlier attempt, has it).
    pub async fn claim(&self, run_id: i64, executor: &str) -> Result<bool, DbErr> {
        let executor = executor.to_owned();
        self.submit(|reply| Write::Claim {
            run_id,
            executor,
            started_at: Utc::now(),
            reply,
        })
        .await
    }

    /// `dispatched` → `no_executor`, saying why; `Ok(false)` when an executor has it after all.
    pub async fn no_executor(&self, run_id: i64, error: String) -> Result<bool, DbErr> {
        self.submit(|reply| Write::NoExecutor {
            run_id,
            error,
            reply,
        })
        .await
    }

    /// `running` → the outcome's final status.
    pub async fn finish(&self, run_id: i64, outcome: Outcome) -> Result<bool, DbErr> {
        self.submit(|reply| Write::Finish {
            run_id,
            outcome,
            reply,
        })
        .await
    }
}

/// A write's reply, held until its transaction's commit says whether the write stands.
type Reply = Box<dyn FnOnce(Option<&DbErr>) + Send>;

async fn commit_loop(db: DatabaseConnection, mut queue: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let txn = match db.begin().await {
            Ok(txn) => txn,
            Err(e) => {
                let message = format!("cannot start a transaction: {e}");
                for write in batch.drain(..) {
                    fail(write, &message);
                }
                continue;
            }
        };
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        for write in batch.drain(..) {
            replies.push(apply(&txn, write).await);
        }
        let committed = txn.commit().await.err();
        for reply in replies {
            reply(committed.as_ref());
        }
    }
}

fn fail(write: Write, message: &str) {
    let err = || DbErr::Custom(message.to_owned());
    match write {
        Write::Insert { reply, .. } => drop(reply.send(Err(err()))),
        Write::Claim { reply, .. }
        | Write::NoExecutor { reply, .. }
        | Write::Finish { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// Runs one write in its own savepoint; returns how to answer once the commit is known.
async fn apply(txn: &sea_orm::DatabaseTransaction, write: Write) -> Reply {
    fn answer<T: Send + 'static>(
        reply: oneshot::Sender<Result<T, DbErr>>,
        result: Result<T, DbErr>,
    ) -> Reply {
        Box::new(move |commit: Option<&DbErr>| {
            let result = match commit {
                Some(e) => Err(DbErr::Custom(format!("commit failed: {e}"))),
                None => result,
            };
            let _ = reply.send(result);
        })
    }
    match write {
        Write::Insert {
            job_id,
            scheduled_at,
            trigger,
            reply,
        } => {
            let row = run::ActiveModel {
                job_id: Set(job_id),
                scheduled_at: Set(scheduled_at),
                status: Set(RunStatus::Dispatched.as_str().to_owned()),
                executor: Set(String::new()),
                trigger: Set(trigger.as_str().to_owned()),
                ..Default::default()
            };
            let result = in_savepoint(txn, async |sp| {
                run::Entity::insert(row)
                    .exec(sp)
                    .await
                    .map(|r| r.last_insert_id)
            })
            .await;
            let result = match result {
                Ok(id) => Ok(Some(id)),
                Err(e) if is_unique_violation(&e) => Ok(None),
                Err(e) => Err(e),
            };
            answer(reply, result)
        }
        Write::Claim {
            run_id,
            executor,
            started_at,
            reply,
        } => {
            let update = run::Entity::update_many()
                .col_expr(
                    run::Column::Status,
                    Expr::value(RunStatus::Running.as_str()),
                )
                .col_expr(run::Column::Executor, Expr::value(executor))
                .col_expr(run::Column::StartedAt, Expr::value(started_at))
                .filter(run::Column::Id.eq(run_id))
                .filter(run::Column::Status.eq(RunStatus::Dispatched.as_str()));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await;
            answer(reply, result.map(|r| r.rows_affected == 1))
        }
        Write::NoExecutor {
            run_id,
            error,
            reply,
        } => {
            let update = run::Entity::update_many()
                .col_expr(
                    run::Column::Status,
                    Expr::value(RunStatus::NoExecutor.as_str()),
                )
                .col_expr(run::Column::Error, Expr::value(error))
                .col_expr(run::Column::FinishedAt, Expr::value(Utc::now()))
                .filter(run::Column::Id.eq(run_id))
                .filter(run::Column::Status.eq(RunStatus::Dispatched.as_str()));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await;
            answer(reply, result.map(|r| r.rows_affected == 1))
        }
        Write::Finish {
            run_id,
            outcome,
            reply,
        } => {
            let update = run::Entity::update_many()
                .col_expr(run::Column::Status, Expr::value(outcome.status.as_str()))
                .col_expr(run::Column::FinishedAt, Expr::value(Utc::now()))
                .col_expr(run::Column::ExitCode, Expr::value(outcome.exit_code))
                .col_expr(run::Column::Error, Expr::value(outcome.error))
                .col_expr(run::Column::Output, Expr::value(outcome.output))
                .filter(run::Column::Id.eq(run_id))
                .filter(run::Column::Status.eq(RunStatus::Running.as_str()));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await;
            answer(reply, result.map(|r| r.rows_affected == 1))
        }
    }
}

/// Runs `work` in a savepoint of `txn`, rolled back if it fails.
async fn in_savepoint<T>(
    txn: &sea_orm::DatabaseTransaction,
    work: impl AsyncFnOnce(&sea_orm::DatabaseTransaction) -> Result<T, DbErr>,
) -> Result<T, DbErr> {
    let sp = txn.begin().await?;
    match work(&sp).await {
        Ok(v) => {
            sp.commit().await?;
            Ok(v)
        }
        Err(e) => {
            let _ = sp.rollback().await;
            Err(e)
        }
    }
}
