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
//! MySQL's commit cost) off the fire path. A run row to insert never waits for a timer: a tick's
//! hand-over waits for its id, so a batch with an insert is committed at once. A batch of other
//! writes (outcomes, starts, verdicts) waits up to [`LINGER`] for company: at a hundred short
//! runs a second, an executor's outcomes otherwise came one transaction each. Within a
//! transaction, the inserts, starts and finishes queued together are written with one
//! multi-row statement per kind, so a batch is a few round trips whatever its size (see
//! `commit`). One failing statement (the unique-tick fence) never fails the others:
//! on PostgreSQL, where it would abort the transaction, each write runs in its own savepoint.
//! A write that fails for its own reasons answers its database error, never `Ok(false)`:
//! `Ok(false)` means only that the row was not in the expected status (a real conflict), so a
//! caller may retry an error but must not take it for "already final".
//! A batch that loses a deadlock or a serialization race is replayed whole: every write is a
//! conditional statement, so replaying one is safe, and replies go out only after the commit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QuerySelect, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::db::is_unique_violation;
use crate::entity::run;
use crate::job::{Origin, RunStatus, Trigger};

/// How long a batch of writes that no tick waits on (outcomes, starts, verdicts) waits for more
/// before its transaction: at a hundred runs a second, outcomes came one per transaction.
pub const LINGER: Duration = Duration::from_millis(10);

/// The most writes committed in one transaction: large, so that under a backlog a run's start
/// and finish usually share a batch and merge into one write.
const MAX_BATCH: usize = 4096;

/// How long a run goes on before its executor marks its row `running`: a run that ends sooner
/// is recorded with its outcome alone, one write instead of two, and a row may stay
/// `dispatched` that long after its command started.
pub const RUNNING_AFTER: Duration = Duration::from_secs(1);

/// The statuses of a run in flight.
const IN_FLIGHT: [&str; 2] = ["dispatched", "running"];

/// The statuses a finish may replace: in flight, and `lost` too: an executor judged dead (its
/// lease expired in a partition) that comes back with the outcome knows better.
const FINISHABLE: [&str; 3] = ["dispatched", "running", "lost"];

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

/// The columns of a run row that say where it comes from (see [`Origin`]).
#[derive(Debug, Clone, Copy)]
struct Lineage {
    attempt: i32,
    first_run: Option<i64>,
    source_id: i64,
    /// `(shard_index, shard_total)`: a retry's of one run of a fanned-out tick; else (0, 0).
    shard: (i32, i32),
}

impl Lineage {
    fn of(origin: Option<&Origin>) -> Lineage {
        origin.map_or(
            Lineage {
                attempt: 1,
                first_run: None,
                source_id: 0,
                shard: (0, 0),
            },
            |o| Lineage {
                attempt: o.attempt.max(1),
                first_run: o.first_run,
                source_id: o.source_id,
                shard: o.shard.as_ref().map_or((0, 0), |s| (s.index, s.total)),
            },
        )
    }
}

enum Write {
    Insert {
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        /// `None`: a `dispatched` row; `Some((status, why))`: a row final at once (`skipped`,
        /// `missed`).
        settled: Option<(RunStatus, String)>,
        /// Its attempt, first attempt and source (a retry, an event).
        lineage: Lineage,
        /// 0: one row. `n > 0`: a fanned-out tick's `n` rows, `shard_index` 0 to `n - 1`,
        /// written by one statement: all of them or none.
        fan_out: i32,
        /// The rows' ids, in `shard_index` order.
        reply: oneshot::Sender<Result<Option<Vec<i64>>, DbErr>>,
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
        /// When the job ended (not when its outcome is written).
        finished_at: DateTime<Utc>,
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
        RunLog::with_linger(db, LINGER)
    }

    /// [`RunLog::spawn`] with a batch of writes that nothing waits on held up to `linger` for
    /// company, instead of [`LINGER`] (for tests).
    pub fn with_linger(db: DatabaseConnection, linger: Duration) -> RunLog {
        let (writes, queue) = mpsc::channel(2 * MAX_BATCH);
        tokio::spawn(commit_loop(db, queue, linger));
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
        self.insert_attempt(job_id, scheduled_at, trigger, None)
            .await
    }

    /// [`RunLog::insert`], for a run that comes from `origin` (a retry, an event: its
    /// `attempt`, `retry_of` and `source_id`).
    pub async fn insert_attempt(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        origin: Option<&Origin>,
    ) -> Result<Option<i64>, DbErr> {
        let ids = self
            .insert_write(job_id, scheduled_at, trigger, origin, None, 0)
            .await?;
        Ok(ids.and_then(|ids| ids.first().copied()))
    }

    /// The one way in for inserts: one row (`fan_out` 0), or a fanned-out tick's `fan_out`
    /// rows; `settled` makes them final at once. Their ids, or `Ok(None)` when the tick
    /// already has a row.
    async fn insert_write(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        origin: Option<&Origin>,
        settled: Option<(RunStatus, String)>,
        fan_out: i32,
    ) -> Result<Option<Vec<i64>>, DbErr> {
        self.submit(|reply| Write::Insert {
            job_id,
            scheduled_at,
            trigger,
            settled,
            lineage: Lineage::of(origin),
            fan_out,
            reply,
        })
        .await
    }

    /// Inserts the `total` `dispatched` rows of a fanned-out tick (route `broadcast` or
    /// `shard`), `shard_index` 0 to `total - 1`, all or none; their ids in that order, or
    /// `Ok(None)` when the tick already has a row (the database's duplicate fence).
    pub async fn insert_fanned_out(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        origin: Option<&Origin>,
        total: i32,
    ) -> Result<Option<Vec<i64>>, DbErr> {
        self.insert_write(job_id, scheduled_at, trigger, origin, None, total.max(1))
            .await
    }

    /// Inserts a `skipped` row for a tick that was not started, saying why; `Ok(None)` when the
    /// tick already has a row.
    pub async fn skipped(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        origin: Option<&Origin>,
        why: String,
    ) -> Result<Option<i64>, DbErr> {
        self.settled(
            job_id,
            scheduled_at,
            trigger,
            origin,
            RunStatus::Skipped,
            why,
        )
        .await
    }

    /// Inserts a row final at once (`skipped`, `missed`) for a run that comes from `origin`,
    /// saying why; `Ok(None)` when it already has a row.
    pub async fn settled(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        trigger: Trigger,
        origin: Option<&Origin>,
        status: RunStatus,
        why: String,
    ) -> Result<Option<i64>, DbErr> {
        let ids = self
            .insert_write(
                job_id,
                scheduled_at,
                trigger,
                origin,
                Some((status, why)),
                0,
            )
            .await?;
        Ok(ids.and_then(|ids| ids.first().copied()))
    }

    /// Inserts a `missed` row for a tick no dispatcher fired in time (misfire policy), saying
    /// why; `Ok(None)` when the tick already has a row.
    pub async fn missed(
        &self,
        job_id: i64,
        scheduled_at: DateTime<Utc>,
        why: String,
    ) -> Result<Option<i64>, DbErr> {
        self.settled(
            job_id,
            scheduled_at,
            Trigger::Schedule,
            None,
            RunStatus::Missed,
            why,
        )
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
    /// executor, start time and end time (when the job ended, however late its outcome is
    /// written); `Ok(false)` when the row was already final.
    pub async fn finish(
        &self,
        run_id: i64,
        executor: &str,
        (started_at, finished_at): (DateTime<Utc>, DateTime<Utc>),
        outcome: Outcome,
    ) -> Result<bool, DbErr> {
        let executor = executor.to_owned();
        self.submit(|reply| Write::Finish {
            run_id,
            executor,
            started_at,
            finished_at,
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
#[derive(Clone)]
enum Found {
    Inserted(Option<Vec<i64>>),
    Updated(bool),
    Failed(String),
}

/// How often a batch that lost a deadlock or a serialization race is replayed.
const REPLAYS: usize = 3;

async fn commit_loop(db: DatabaseConnection, mut queue: mpsc::Receiver<Write>, linger: Duration) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let m = crate::metrics::metrics();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        gather(&mut queue, &mut batch, linger).await;
        coalesce(&mut batch);
        m.write_batches.inc();
        m.writes.inc_by(batch.len() as u64);
        let began = std::time::Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match commit(&db, &batch).await {
                Err(e) if attempt <= REPLAYS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, writes = batch.len(), "replaying a batch");
                    tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
                }
                other => break other,
            }
        };
        tracing::debug!(
            writes = batch.len(),
            ms = began.elapsed().as_secs_f64() * 1e3,
            ok = outcome.is_ok(),
            "committed a batch of run writes"
        );
        match outcome {
            Ok(found) => {
                let now = Utc::now();
                for (write, found) in batch.drain(..).zip(found) {
                    if let (Write::Finish { finished_at, .. }, Found::Updated(_)) = (&write, &found)
                    {
                        let late = (now - *finished_at).num_microseconds().unwrap_or(i64::MAX);
                        m.outcome_delay.observe(late.max(0) as f64 / 1e6);
                    }
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

/// Adds to `batch` the writes that come within `linger`, unless one of them is a run row to
/// insert (a tick's hand-over waits for its id) or the batch is full: an executor's outcomes,
/// which nothing waits on but the run's release from its job's live runs, then share a
/// transaction instead of taking one each. Ends at once when the queue closes.
async fn gather(queue: &mut mpsc::Receiver<Write>, batch: &mut Vec<Write>, linger: Duration) {
    let until = tokio::time::Instant::now() + linger;
    let mut seen = 0;
    while batch.len() < MAX_BATCH {
        if batch[seen..]
            .iter()
            .any(|w| matches!(w, Write::Insert { .. }))
        {
            return;
        }
        seen = batch.len();
        let room = MAX_BATCH - batch.len();
        // `recv_many` is cancel safe: a write is either in `batch` or still queued.
        match tokio::time::timeout_at(until, queue.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
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

/// The most rows one multi-row statement writes.
const MAX_ROWS: usize = 500;

/// The most output bytes one multi-row finish carries (MySQL's `max_allowed_packet` is 16 MiB
/// on MariaDB by default, 4 MiB on older servers).
const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Applies every write of `batch` in one transaction; each write's finding, once committed.
///
/// Consecutive inserts, starts and finishes are written a group at a time, one multi-row
/// statement per kind (see [`Group`]), so that a batch costs a few round trips to the database
/// rather than one per write: a thousand runs a second make three thousand writes, and on a
/// busy machine each round trip waits for the server's and this process's turn on a core. The
/// rarer writes (`lost`, `no_executor`, overrun) are applied one by one, in their place, and
/// end the group before them, so every run sees its writes in the order they were queued.
async fn commit(db: &DatabaseConnection, batch: &[Write]) -> Result<Vec<Found>, DbErr> {
    let txn = db.begin().await?;
    let mut found: Vec<Option<Found>> = Vec::with_capacity(batch.len());
    found.resize_with(batch.len(), || None);
    let mut group = Group::default();
    for (at, write) in batch.iter().enumerate() {
        if !group.takes(write) {
            group.write(&txn, batch, &mut found).await?;
            if !group.takes(write) {
                // Written alone, in its place.
                found[at] = Some(alone(&txn, write).await?);
                continue;
            }
        }
        group.add(at, write);
    }
    group.write(&txn, batch, &mut found).await?;
    txn.commit().await?;
    Ok(found
        .into_iter()
        .map(|f| f.unwrap_or_else(|| Found::Failed("the run write was not applied".into())))
        .collect())
}

/// One write applied alone; `Err` only for what should fail or replay the whole batch.
async fn alone(txn: &sea_orm::DatabaseTransaction, write: &Write) -> Result<Found, DbErr> {
    match apply(txn, write).await {
        Ok(f) => Ok(f),
        Err(e) if is_transient(&e) => Err(e),
        // A write that fails for its own reasons fails alone; its savepoint (PostgreSQL) or
        // the statement's own rollback (SQLite, MySQL) left the others intact.
        Err(e) => {
            tracing::warn!(error = %e, "a run write failed");
            Ok(Found::Failed(e.to_string()))
        }
    }
}

/// Consecutive inserts, starts and finishes of a batch (by their place in it), written
/// together: each kind in one statement, then its rows read back to answer each write.
#[derive(Default)]
struct Group {
    inserts: Vec<usize>,
    /// The rows the inserts write (a fanned-out tick's insert writes several).
    insert_rows: usize,
    starts: Vec<usize>,
    finishes: Vec<usize>,
    /// The runs the group's starts and finishes write: a second write of one of them ends the
    /// group, so that the first is applied before it.
    runs: std::collections::HashSet<i64>,
    output_bytes: usize,
}

impl Group {
    /// Whether `write` may join the group.
    fn takes(&self, write: &Write) -> bool {
        match write {
            Write::Insert { .. } => self.insert_rows < MAX_ROWS,
            Write::Start { run_id, .. } => {
                self.starts.len() < MAX_ROWS && !self.runs.contains(run_id)
            }
            Write::Finish {
                run_id, outcome, ..
            } => {
                self.finishes.len() < MAX_ROWS
                    && !self.runs.contains(run_id)
                    && (self.finishes.is_empty()
                        || self.output_bytes + outcome.output.len() <= MAX_OUTPUT_BYTES)
            }
            _ => false,
        }
    }

    fn add(&mut self, at: usize, write: &Write) {
        match write {
            Write::Insert { fan_out, .. } => {
                self.insert_rows += (*fan_out).max(1) as usize;
                self.inserts.push(at);
            }
            Write::Start { run_id, .. } => {
                self.runs.insert(*run_id);
                self.starts.push(at);
            }
            Write::Finish {
                run_id, outcome, ..
            } => {
                self.runs.insert(*run_id);
                self.output_bytes += outcome.output.len();
                self.finishes.push(at);
            }
            _ => unreachable!("Group::takes refuses other writes"),
        }
    }

    /// Writes the group (and empties it). A multi-row statement that fails for reasons of its
    /// own (one bad row, a duplicate tick) is rolled back and its writes applied one by one,
    /// so that one write's failure stays its own.
    async fn write(
        &mut self,
        txn: &sea_orm::DatabaseTransaction,
        batch: &[Write],
        found: &mut [Option<Found>],
    ) -> Result<(), DbErr> {
        let group = std::mem::take(self);
        for (places, kind) in [
            (group.inserts, Kind::Insert),
            (group.starts, Kind::Start),
            (group.finishes, Kind::Finish),
        ] {
            if places.is_empty() {
                continue;
            }
            let writes: Vec<&Write> = places.iter().map(|&at| &batch[at]).collect();
            if let [write] = writes[..] {
                found[places[0]] = Some(alone(txn, write).await?);
                continue;
            }
            // In a savepoint on every backend: what the statement did is undone when its
            // writes must be applied one by one after all.
            let sp = txn.begin().await?;
            match kind.write_many(&sp, &writes).await {
                Ok(Some(many)) => {
                    sp.commit().await?;
                    for (at, f) in places.into_iter().zip(many) {
                        found[at] = Some(f);
                    }
                    continue;
                }
                Ok(None) => {
                    tracing::debug!(
                        writes = writes.len(),
                        "a multi-row run write found a row already in its new state; applying its writes one by one"
                    );
                }
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, writes = writes.len(), "a multi-row run write failed; applying its writes one by one");
                }
            }
            sp.rollback().await?;
            for (at, write) in places.into_iter().zip(writes) {
                found[at] = Some(alone(txn, write).await?);
            }
        }
        Ok(())
    }
}

/// The kinds of write a [`Group`] writes many at a time.
#[derive(Clone, Copy)]
enum Kind {
    Insert,
    Start,
    Finish,
}

impl Kind {
    /// Writes `writes` (all of this kind) in one statement, and reads back what each found;
    /// `Ok(None)` when that cannot be told row by row (see [`answers`]).
    async fn write_many<C: ConnectionTrait>(
        self,
        db: &C,
        writes: &[&Write],
    ) -> Result<Option<Vec<Found>>, DbErr> {
        match self {
            Kind::Insert => insert_many(db, writes).await.map(Some),
            Kind::Start => start_many(db, writes).await,
            Kind::Finish => finish_many(db, writes).await,
        }
    }
}

/// A tick at the precision `cron_run.scheduled_at` keeps (milliseconds), so that a row read
/// back compares equal to the tick it was inserted for.
fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// The rows an insert writes: one, or a fanned-out tick's `fan_out`.
fn insert_rows(write: &Write) -> impl Iterator<Item = run::ActiveModel> + '_ {
    let Write::Insert {
        job_id,
        scheduled_at,
        trigger,
        settled,
        lineage,
        fan_out,
        ..
    } = write
    else {
        unreachable!("insert_rows of an insert")
    };
    let status = settled.as_ref().map_or(RunStatus::Dispatched, |(s, _)| *s);
    let shards = shards_of(*lineage, *fan_out);
    shards.map(move |(shard_index, shard_total)| run::ActiveModel {
        job_id: Set(*job_id),
        scheduled_at: Set(stored(*scheduled_at)),
        status: Set(status.as_str().to_owned()),
        executor: Set(String::new()),
        trigger: Set(trigger.as_str().to_owned()),
        error: Set(settled.as_ref().map(|(_, why)| why.clone())),
        finished_at: Set(settled.as_ref().map(|_| Utc::now())),
        attempt: Set(lineage.attempt),
        retry_of: Set(lineage.first_run),
        source_id: Set(lineage.source_id),
        shard_index: Set(shard_index),
        shard_total: Set(shard_total),
        ..Default::default()
    })
}

/// The `(shard_index, shard_total)` of each row an insert writes.
fn shards_of(lineage: Lineage, fan_out: i32) -> impl Iterator<Item = (i32, i32)> {
    let (first, last, total) = if fan_out > 0 {
        (0, fan_out, fan_out)
    } else {
        (lineage.shard.0, lineage.shard.0 + 1, lineage.shard.1)
    };
    (first..last).map(move |index| (index, total))
}

/// Inserts every row in one statement, then reads their ids back by their ticks. The statement
/// fails whole when one tick already has a row (the duplicate fence); the caller then inserts
/// one by one. Having succeeded, every row of those ticks is one of ours.
async fn insert_many<C: ConnectionTrait>(db: &C, writes: &[&Write]) -> Result<Vec<Found>, DbErr> {
    run::Entity::insert_many(writes.iter().flat_map(|w| insert_rows(w)))
        .exec_without_returning(db)
        .await?;
    insert_ids(db, writes).await
}

/// The ids of the rows [`insert_many`] inserted, read back by their ticks.
async fn insert_ids<C: ConnectionTrait>(db: &C, writes: &[&Write]) -> Result<Vec<Found>, DbErr> {
    let key = |w: &Write| match w {
        Write::Insert {
            job_id,
            scheduled_at,
            trigger,
            lineage,
            fan_out,
            ..
        } => (
            *job_id,
            stored(*scheduled_at),
            trigger.as_str(),
            lineage.source_id,
            shards_of(*lineage, *fan_out),
        ),
        _ => unreachable!("insert_ids of inserts"),
    };
    let keys: Vec<_> = writes.iter().map(|w| key(w)).collect();
    let jobs: std::collections::BTreeSet<i64> = keys.iter().map(|k| k.0).collect();
    let first = keys
        .iter()
        .map(|k| k.1)
        .min()
        .expect("a group is never empty");
    let last = keys
        .iter()
        .map(|k| k.1)
        .max()
        .expect("a group is never empty");
    let rows: Vec<(i64, i64, DateTime<Utc>, String, i64, i32)> = run::Entity::find()
        .select_only()
        .column(run::Column::Id)
        .column(run::Column::JobId)
        .column(run::Column::ScheduledAt)
        .column(run::Column::Trigger)
        .column(run::Column::SourceId)
        .column(run::Column::ShardIndex)
        .filter(run::Column::JobId.is_in(jobs))
        .filter(run::Column::ScheduledAt.gte(first))
        .filter(run::Column::ScheduledAt.lte(last))
        .into_tuple()
        .all(db)
        .await?;
    let ids: std::collections::HashMap<(i64, i64, &str, i64, i32), i64> = rows
        .iter()
        .map(|(id, job, at, trigger, source, shard)| {
            (
                (
                    *job,
                    at.timestamp_millis(),
                    trigger.as_str(),
                    *source,
                    *shard,
                ),
                *id,
            )
        })
        .collect();
    keys.into_iter()
        .map(|(job, at, trigger, source, shards)| {
            shards
                .map(|(shard, _)| {
                    ids.get(&(job, at.timestamp_millis(), trigger, source, shard))
                        .copied()
                        .ok_or_else(|| {
                            DbErr::Custom(format!(
                                "inserted the run row of job {job} at {at}, then could not read it back"
                            ))
                        })
                })
                .collect::<Result<Vec<i64>, DbErr>>()
                .map(|ids| Found::Inserted(Some(ids)))
        })
        .collect()
}

/// The size a multi-row `UPDATE` of `rows` rows is written at: the next power of two. Its
/// text (and its parameters' count) then takes one of a few shapes, each prepared once per
/// connection and then found in its statement cache, instead of being parsed and planned
/// anew for each size: at a hundred rows or more a batch, preparing the `CASE`s cost more than
/// running them. The extra places repeat the last row's id, which changes nothing.
fn shape(rows: usize) -> usize {
    rows.next_power_of_two()
}

/// `ids` with the last repeated up to [`shape`] (an `IN` list the same for its extra places).
fn padded(mut ids: Vec<i64>) -> Vec<i64> {
    if let Some(&last) = ids.last() {
        ids.resize(shape(ids.len()), last);
    }
    ids
}

/// `column = CASE WHEN id = .. THEN .. END` over `rows` (arms up to [`shape`]), or the one
/// value they all share.
fn per_row<V: Into<sea_orm::Value> + PartialEq + Clone + Default>(
    column: run::Column,
    rows: &[(i64, V)],
) -> sea_orm::sea_query::SimpleExpr {
    if rows.windows(2).all(|pair| pair[0].1 == pair[1].1) {
        return Expr::value(rows[0].1.clone());
    }
    let mut case = sea_orm::sea_query::CaseStatement::new();
    for (id, value) in rows {
        case = case.case(run::Column::Id.eq(*id), Expr::value(value.clone()));
    }
    // Never taken: an arm before has the same id. Their value is the type's empty one, so that
    // a large value (an output) is not bound again.
    let last = rows[rows.len() - 1].0;
    for _ in rows.len()..shape(rows.len()) {
        case = case.case(run::Column::Id.eq(last), Expr::value(V::default()));
    }
    case.finally(Expr::col(column)).into()
}

/// Every start in one conditional `UPDATE`; its row is in its new state when it is `running`
/// on the start's executor (see [`answers`]).
async fn start_many<C: ConnectionTrait>(
    db: &C,
    writes: &[&Write],
) -> Result<Option<Vec<Found>>, DbErr> {
    let mut executors = Vec::with_capacity(writes.len());
    let mut starts = Vec::with_capacity(writes.len());
    for w in writes {
        let Write::Start {
            run_id,
            executor,
            started_at,
            ..
        } = w
        else {
            unreachable!("start_many of starts")
        };
        executors.push((*run_id, executor.clone()));
        starts.push((*run_id, *started_at));
    }
    let ids: Vec<i64> = starts.iter().map(|(id, _)| *id).collect();
    let changed = run::Entity::update_many()
        .col_expr(
            run::Column::Status,
            Expr::value(RunStatus::Running.as_str()),
        )
        .col_expr(
            run::Column::Executor,
            per_row(run::Column::Executor, &executors),
        )
        .col_expr(
            run::Column::StartedAt,
            per_row(run::Column::StartedAt, &starts),
        )
        .filter(run::Column::Id.is_in(padded(ids)))
        .filter(run::Column::Status.eq(RunStatus::Dispatched.as_str()))
        .exec(db)
        .await?;
    let targets: Vec<_> = executors
        .iter()
        .map(|(id, executor)| (*id, RunStatus::Running.as_str(), executor.as_str()))
        .collect();
    answers(db, changed.rows_affected, &targets).await
}

/// Every finish in one conditional `UPDATE`; its row is in its new state when it has the
/// outcome's status and the finish's executor (see [`answers`]).
async fn finish_many<C: ConnectionTrait>(
    db: &C,
    writes: &[&Write],
) -> Result<Option<Vec<Found>>, DbErr> {
    let n = writes.len();
    let (mut statuses, mut executors, mut starts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut ends = Vec::with_capacity(n);
    let (mut codes, mut errors, mut outputs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for w in writes {
        let Write::Finish {
            run_id,
            executor,
            started_at,
            finished_at,
            outcome,
            ..
        } = w
        else {
            unreachable!("finish_many of finishes")
        };
        let id = *run_id;
        statuses.push((id, outcome.status.as_str()));
        executors.push((id, executor.clone()));
        starts.push((id, *started_at));
        ends.push((id, *finished_at));
        codes.push((id, outcome.exit_code));
        errors.push((id, outcome.error.clone()));
        outputs.push((id, outcome.output.clone()));
    }
    let ids: Vec<i64> = statuses.iter().map(|(id, _)| *id).collect();
    let changed = run::Entity::update_many()
        .col_expr(run::Column::Status, per_row(run::Column::Status, &statuses))
        .col_expr(
            run::Column::Executor,
            per_row(run::Column::Executor, &executors),
        )
        .col_expr(
            run::Column::StartedAt,
            per_row(run::Column::StartedAt, &starts),
        )
        .col_expr(
            run::Column::FinishedAt,
            per_row(run::Column::FinishedAt, &ends),
        )
        .col_expr(
            run::Column::ExitCode,
            per_row(run::Column::ExitCode, &codes),
        )
        .col_expr(run::Column::Error, per_row(run::Column::Error, &errors))
        .col_expr(run::Column::Output, per_row(run::Column::Output, &outputs))
        .filter(run::Column::Id.is_in(padded(ids)))
        .filter(run::Column::Status.is_in(FINISHABLE))
        .exec(db)
        .await?;
    let targets: Vec<_> = statuses
        .iter()
        .zip(&executors)
        .map(|((id, status), (_, executor))| (*id, *status, executor.as_str()))
        .collect();
    answers(db, changed.rows_affected, &targets).await
}

/// What each write of a multi-row conditional `UPDATE` found, given the `(id, status,
/// executor)` each gives its row and how many rows the statement changed. The ids of a group
/// are distinct, so when it changed as many rows as there are writes, each found its row.
/// Otherwise the rows are read back: every row the statement changed is in its new state
/// (nothing else writes them before the commit: row locks, or SQLite's one writer), so when as
/// many rows are in their new state as it changed, those are exactly the rows it changed. Else
/// some row was in its new state already (a repeated write), which only the one-by-one path
/// can tell apart: `None`.
async fn answers<C: ConnectionTrait>(
    db: &C,
    changed: u64,
    targets: &[(i64, &str, &str)],
) -> Result<Option<Vec<Found>>, DbErr> {
    if changed == targets.len() as u64 {
        return Ok(Some(vec![Found::Updated(true); targets.len()]));
    }
    let rows: Vec<(i64, String, String)> = run::Entity::find()
        .select_only()
        .column(run::Column::Id)
        .column(run::Column::Status)
        .column(run::Column::Executor)
        .filter(run::Column::Id.is_in(targets.iter().map(|t| t.0)))
        .into_tuple()
        .all(db)
        .await?;
    let now: std::collections::HashMap<i64, (String, String)> =
        rows.into_iter().map(|(id, s, e)| (id, (s, e))).collect();
    let found: Vec<bool> = targets
        .iter()
        .map(|(id, status, executor)| {
            now.get(id)
                .is_some_and(|(s, on)| s == status && on == executor)
        })
        .collect();
    let matched = found.iter().filter(|&&f| f).count() as u64;
    Ok((matched == changed).then(|| found.into_iter().map(Found::Updated).collect()))
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
        Write::Insert { fan_out, .. } => {
            let result = if *fan_out > 1 {
                // All the tick's rows in one statement, so that none is written without the
                // others.
                in_savepoint(txn, async |sp| {
                    match insert_many(sp, &[write]).await?.pop() {
                        Some(Found::Inserted(Some(ids))) => Ok(ids),
                        _ => Err(DbErr::Custom("inserting a fanned-out tick's rows".into())),
                    }
                })
                .await
            } else {
                let mut rows = insert_rows(write);
                let row = rows.next().expect("an insert writes a row");
                in_savepoint(txn, async |sp| {
                    run::Entity::insert(row)
                        .exec(sp)
                        .await
                        .map(|r| vec![r.last_insert_id])
                })
                .await
            };
            match result {
                Ok(ids) => Ok(Found::Inserted(Some(ids))),
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
            finished_at,
            outcome,
            ..
        } => {
            let update = run::Entity::update_many()
                .col_expr(run::Column::Status, Expr::value(outcome.status.as_str()))
                .col_expr(run::Column::Executor, Expr::value(executor.clone()))
                .col_expr(run::Column::StartedAt, Expr::value(*started_at))
                .col_expr(run::Column::FinishedAt, Expr::value(*finished_at))
                .col_expr(run::Column::ExitCode, Expr::value(outcome.exit_code))
                .col_expr(run::Column::Error, Expr::value(outcome.error.clone()))
                .col_expr(run::Column::Output, Expr::value(outcome.output.clone()))
                .filter(run::Column::Id.eq(*run_id))
                .filter(run::Column::Status.is_in(FINISHABLE));
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

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{DbBackend, QueryTrait as _};

    /// Batches of a few sizes share a statement (and so its prepared form).
    #[test]
    fn multi_row_updates_take_few_shapes() {
        let sql = |n: i64| {
            let rows: Vec<(i64, String)> = (1..=n).map(|i| (i, format!("out {i}"))).collect();
            run::Entity::update_many()
                .col_expr(run::Column::Output, per_row(run::Column::Output, &rows))
                .filter(run::Column::Id.is_in(padded(rows.iter().map(|r| r.0).collect())))
                .build(DbBackend::Sqlite)
                .sql
        };
        assert_eq!(sql(3), sql(4));
        assert_eq!(sql(5), sql(8));
        assert_ne!(sql(4), sql(5));
        assert_eq!(shape(1), 1);
        assert_eq!(shape(500), 512);
    }
}
