//! Every write to `cron_run`, in one place: the run row's state machine, and group commit.
//!
//! A row moves `dispatched` → `running` (an executor started it) → `succeeded` | `failed` |
//! `timeout` | `killed`, or `dispatched` → `no_executor`; a run whose holder died becomes `lost`
//! from `dispatched` or `running` (and still takes the outcome if its executor was alive after
//! all and reports one); a tick skipped under `abandon` is inserted `skipped`, already final.
//! The overrun flag (`overrun_at`) is set once, on a run still in flight. Each transition is a conditional `UPDATE` on the expected
//! status, so a late or repeated writer can never move a row backwards. (Who may write a run's
//! transitions is decided before, by the run claim in Redis: see [`crate::lock`].)
//!
//! A finish carries the executor and start time too, so when a run's start and finish are
//! queued together (short jobs on a busy database) only the finish is written.
//!
//! Writes go through one task per process that commits whatever is queued in one transaction
//! (group commit): with a thousand runs a second, a database sees a few transactions a second
//! per process instead of three thousand, which is what keeps SQLite's single writer lock (and
//! MySQL's commit cost) off the fire path. No write waits for a timer: an idle writer commits a
//! lone write at once. One failing statement (the unique-tick fence) never fails the others:
//! on PostgreSQL, where it would abort the transaction, each write runs in its own savepoint.
//! A write that fails for its own reasons answers its database error, never `Ok(false)`:
//! `Ok(false)` means only that the row was not in the expected status (a real conflict), so a
//! caller may retry an error but must not take it for "already final".
//! A batch that loses a deadlock or a serialization race is replayed whole: every write is a
//! conditional statement, so replaying one is safe, and replies go out only after the commit.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::db::is_unique_violation;
use crate::entity::run;
use crate::job::{RunStatus, Trigger};

/// The most writes committed in one transaction: large, so that under a backlog a run's start
/// and finish usually share a batch and merge into one write.
const MAX_BATCH: usize = 4096;

/// The statuses of a run in flight.
const IN_FLIGHT: [&str; 2] = ["dispatched", "running"];

/// How a run ended, as recorded (and as an executor spools it while the database is away).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        /// `None`: a `dispatched` row; `Some((status, why))`: a row final at once (`skipped`,
        /// `missed`).
        settled: Option<(RunStatus, String)>,
        reply: oneshot::Sender<Result<Option<i64>, DbErr>>,
    },
    Start {
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
    Lost {
        run_id: i64,
        error: String,
        reply: oneshot::Sender<Result<bool, DbErr>>,
    },
    Overrun {
        run_id: i64,
        reply: oneshot::Sender<Result<bool, DbErr>>,
    },
    Finish {
        run_id: i64,
        executor: String,
        started_at: DateTime<Utc>,
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
        let (writes, queue) = mpsc::channel(2 * MAX_BATCH);
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
            settled: None,
            reply,
        })
        .await
    }

    /// Inserts a `skipped` row for a tick that was not started, saying why; `Ok(None)` when the
    /// tick already has a row.
    pub async fn skipped(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        why: String,
    ) -> Result<Option<i64>, DbErr> {
        self.submit(|reply| Write::Insert {
            job_id,
            scheduled_at,
            trigger,
            settled: Some((RunStatus::Skipped, why)),
            reply,
        })
        .await
    }

    /// Inserts a `missed` row for a tick no dispatcher fired in time (misfire policy), saying
    /// why; `Ok(None)` when the tick already has a row.
    pub async fn missed(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        why: String,
    ) -> Result<Option<i64>, DbErr> {
        self.submit(|reply| Write::Insert {
            job_id,
            scheduled_at,
            trigger: Trigger::Schedule,
            settled: Some((RunStatus::Missed, why)),
            reply,
        })
        .await
    }

    /// `dispatched` or `running` → `lost`, saying why; `Ok(false)` when the row was already
    /// final.
    pub async fn lost(&self, run_id: i64, error: String) -> Result<bool, DbErr> {
        self.submit(|reply| Write::Lost {
            run_id,
            error,
            reply,
        })
        .await
    }

    /// Sets the overrun flag of a run still in flight; `Ok(false)` when it was already set or
    /// the run is over.
    pub async fn overrun(&self, run_id: i64) -> Result<bool, DbErr> {
        self.submit(|reply| Write::Overrun { run_id, reply }).await
    }

    /// `dispatched` → `running` for `executor`; `Ok(false)` when the row was not `dispatched`
    /// (its finish was written first).
    pub async fn start(
        &self,
        run_id: i64,
        executor: &str,
        started_at: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        let executor = executor.to_owned();
        self.submit(|reply| Write::Start {
            run_id,
            executor,
            started_at,
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

    /// `running` (or still `dispatched`, or `lost`) → the outcome's final status, with the
    /// executor and start time; `Ok(false)` when the row was already final.
    pub async fn finish(
        &self,
        run_id: i64,
        executor: &str,
        started_at: DateTime<Utc>,
        outcome: Outcome,
    ) -> Result<bool, DbErr> {
        let executor = executor.to_owned();
        self.submit(|reply| Write::Finish {
            run_id,
            executor,
            started_at,
            outcome,
            reply,
        })
        .await
    }
}

/// What a write found: the new row's id (`None`: the tick already had a row), whether a
/// conditional update changed the row (`false`: the row was not in the expected status, a real
/// conflict), or the database's error for this write alone (which its caller may retry: it says
/// nothing about the row's status).
enum Found {
    Inserted(Option<i64>),
    Updated(bool),
    Failed(String),
}

/// How often a batch that lost a deadlock or a serialization race is replayed.
const REPLAYS: usize = 3;

async fn commit_loop(db: DatabaseConnection, mut queue: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        coalesce(&mut batch);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match commit(&db, &batch).await {
                Err(e) if attempt <= REPLAYS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, writes = batch.len(), "replaying a batch");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(found) => {
                for (write, found) in batch.drain(..).zip(found) {
                    answer(write, found);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for write in batch.drain(..) {
                    fail(write, &message);
                }
            }
        }
    }
}

/// Answers each start whose run's finish is in the same batch: the finish writes it all.
fn coalesce(batch: &mut Vec<Write>) {
    let finishing: std::collections::HashSet<i64> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Finish { run_id, .. } => Some(*run_id),
            _ => None,
        })
        .collect();
    if finishing.is_empty() {
        return;
    }
    let mut kept = Vec::with_capacity(batch.len());
    for write in batch.drain(..) {
        match write {
            Write::Start { run_id, reply, .. } if finishing.contains(&run_id) => {
                let _ = reply.send(Ok(true));
            }
            other => kept.push(other),
        }
    }
    *batch = kept;
}

/// Whether a failed transaction may succeed if replayed: a deadlock (MySQL 1213), a
/// serialization failure or deadlock (SQLSTATE 40001 / 40P01), or SQLite's busy/locked.
fn is_transient(e: &DbErr) -> bool {
    let text = e.to_string();
    [
        "1213",
        "40001",
        "40P01",
        "database is locked",
        "database is busy",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Applies every write of `batch` in one transaction; each write's finding, once committed.
async fn commit(db: &DatabaseConnection, batch: &[Write]) -> Result<Vec<Found>, DbErr> {
    let txn = db.begin().await?;
    let mut found = Vec::with_capacity(batch.len());
    for write in batch {
        match apply(&txn, write).await {
            Ok(f) => found.push(f),
            Err(e) if is_transient(&e) => return Err(e),
            // A write that fails for its own reasons fails alone; its savepoint (PostgreSQL) or
            // the statement's own rollback (SQLite, MySQL) left the others intact.
            Err(e) => {
                tracing::warn!(error = %e, "a run write failed");
                found.push(Found::Failed(e.to_string()));
            }
        }
    }
    txn.commit().await?;
    Ok(found)
}

fn answer(write: Write, found: Found) {
    match (write, found) {
        (write, Found::Failed(message)) => fail(write, &message),
        (Write::Insert { reply, .. }, Found::Inserted(id)) => drop(reply.send(Ok(id))),
        (Write::Insert { reply, .. }, Found::Updated(_)) => {
            drop(reply.send(Err(DbErr::Custom("inserting the run row failed".into()))))
        }
        (
            Write::Start { reply, .. }
            | Write::NoExecutor { reply, .. }
            | Write::Lost { reply, .. }
            | Write::Overrun { reply, .. }
            | Write::Finish { reply, .. },
            found,
        ) => drop(reply.send(Ok(matches!(found, Found::Updated(true))))),
    }
}

fn fail(write: Write, message: &str) {
    let err = || DbErr::Custom(message.to_owned());
    match write {
        Write::Insert { reply, .. } => drop(reply.send(Err(err()))),
        Write::Start { reply, .. }
        | Write::NoExecutor { reply, .. }
        | Write::Lost { reply, .. }
        | Write::Overrun { reply, .. }
        | Write::Finish { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// Runs one write; `Err` only for what should fail or replay the whole batch.
async fn apply(txn: &sea_orm::DatabaseTransaction, write: &Write) -> Result<Found, DbErr> {
    match write {
        Write::Insert {
            job_id,
            scheduled_at,
            trigger,
            settled,
            ..
        } => {
            let status = settled.as_ref().map_or(RunStatus::Dispatched, |(s, _)| *s);
            let row = run::ActiveModel {
                job_id: Set(*job_id),
                scheduled_at: Set(*scheduled_at),
                status: Set(status.as_str().to_owned()),
                executor: Set(String::new()),
                trigger: Set(trigger.as_str().to_owned()),
                error: Set(settled.as_ref().map(|(_, why)| why.clone())),
                finished_at: Set(settled.as_ref().map(|_| Utc::now())),
                ..Default::default()
            };
            let result = in_savepoint(txn, async |sp| {
                run::Entity::insert(row)
                    .exec(sp)
                    .await
                    .map(|r| r.last_insert_id)
            })
            .await;
            match result {
                Ok(id) => Ok(Found::Inserted(Some(id))),
                Err(e) if is_unique_violation(&e) => Ok(Found::Inserted(None)),
                Err(e) => Err(e),
            }
        }
        Write::Start {
            run_id,
            executor,
            started_at,
            ..
        } => {
            let update = run::Entity::update_many()
                .col_expr(
                    run::Column::Status,
                    Expr::value(RunStatus::Running.as_str()),
                )
                .col_expr(run::Column::Executor, Expr::value(executor.clone()))
                .col_expr(run::Column::StartedAt, Expr::value(*started_at))
                .filter(run::Column::Id.eq(*run_id))
                .filter(run::Column::Status.eq(RunStatus::Dispatched.as_str()));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await?;
            Ok(Found::Updated(result.rows_affected == 1))
        }
        Write::NoExecutor { run_id, error, .. } => {
            let update = run::Entity::update_many()
                .col_expr(
                    run::Column::Status,
                    Expr::value(RunStatus::NoExecutor.as_str()),
                )
                .col_expr(run::Column::Error, Expr::value(error.clone()))
                .col_expr(run::Column::FinishedAt, Expr::value(Utc::now()))
                .filter(run::Column::Id.eq(*run_id))
                .filter(run::Column::Status.eq(RunStatus::Dispatched.as_str()));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await?;
            Ok(Found::Updated(result.rows_affected == 1))
        }
        Write::Lost { run_id, error, .. } => {
            let update = run::Entity::update_many()
                .col_expr(run::Column::Status, Expr::value(RunStatus::Lost.as_str()))
                .col_expr(run::Column::Error, Expr::value(error.clone()))
                .col_expr(run::Column::FinishedAt, Expr::value(Utc::now()))
                .filter(run::Column::Id.eq(*run_id))
                .filter(run::Column::Status.is_in(IN_FLIGHT));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await?;
            Ok(Found::Updated(result.rows_affected == 1))
        }
        Write::Overrun { run_id, .. } => {
            let update = run::Entity::update_many()
                .col_expr(run::Column::OverrunAt, Expr::value(Utc::now()))
                .filter(run::Column::Id.eq(*run_id))
                .filter(run::Column::Status.is_in(IN_FLIGHT))
                .filter(run::Column::OverrunAt.is_null());
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await?;
            Ok(Found::Updated(result.rows_affected == 1))
        }
        Write::Finish {
            run_id,
            executor,
            started_at,
            outcome,
            ..
        } => {
            let update = run::Entity::update_many()
                .col_expr(run::Column::Status, Expr::value(outcome.status.as_str()))
                .col_expr(run::Column::Executor, Expr::value(executor.clone()))
                .col_expr(run::Column::StartedAt, Expr::value(*started_at))
                .col_expr(run::Column::FinishedAt, Expr::value(Utc::now()))
                .col_expr(run::Column::ExitCode, Expr::value(outcome.exit_code))
                .col_expr(run::Column::Error, Expr::value(outcome.error.clone()))
                .col_expr(run::Column::Output, Expr::value(outcome.output.clone()))
                .filter(run::Column::Id.eq(*run_id))
                // `lost` too: an executor judged dead (its lease expired in a partition) that
                // comes back with the outcome knows better.
                .filter(run::Column::Status.is_in([
                    RunStatus::Dispatched.as_str(),
                    RunStatus::Running.as_str(),
                    RunStatus::Lost.as_str(),
                ]));
            let result = in_savepoint(txn, async |sp| update.exec(sp).await).await?;
            Ok(Found::Updated(result.rows_affected == 1))
        }
    }
}

/// Runs `work` so that its failure leaves the rest of `txn` intact: in a savepoint on
/// PostgreSQL (where a failed statement aborts the whole transaction); directly on SQLite and
/// MySQL, which roll back just the failed statement (and savepoints would triple the statements).
async fn in_savepoint<T>(
    txn: &sea_orm::DatabaseTransaction,
    work: impl AsyncFnOnce(&sea_orm::DatabaseTransaction) -> Result<T, DbErr>,
) -> Result<T, DbErr> {
    if txn.get_database_backend() != sea_orm::DbBackend::Postgres {
        return work(txn).await;
    }
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
