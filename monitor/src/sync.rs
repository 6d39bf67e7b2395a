//! Job table → verdicts (`last_error`) → published jobs in etcd, in work proportional to what
//! changed.
//!
//! Triggers installed by the migration append the id of every inserted, updated or deleted
//! `cron_job` row to `cron_job_change` (so plain SQL is seen on every backend, whether or not
//! it touches `updated_at`). Every `poll_ms` the monitor reads that log above its mark, reads
//! just those rows by id, validates them, writes changed verdicts, and publishes the changes to
//! etcd in batched transactions. Every `reconcile_secs` (and at start) it compares the whole
//! table with etcd instead, reading it in pages by id: that heals anything the log cannot show
//! (a `TRUNCATE`, a log row pruned before this monitor read it, a gap that never filled).
//!
//! What etcd holds is known from the mirror of `{prefix}/jobs/` (and our own writes, which come
//! back through it) as a fingerprint per job, not the job itself, so a million jobs cost the
//! monitor tens of megabytes, not a copy of the table.
//!
//! Change-log ids come from an auto-increment, and a transaction that is not committed yet can
//! hold a smaller id than one already visible. So an id skipped by the mark is a *gap*, read
//! again by id each pass until it shows up or [`GAP_WAIT`] passes (a rolled-back insert); too
//! many gaps at once, or a log pruned past the mark, mean a reconcile now.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use etcd_client::{Client, Txn, TxnOp};
use gocron_shared::entity::{job, job_change};
use gocron_shared::job::{JobError, validate};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::machine::MachineGroups;
use gocron_shared::registry::{MirrorEvent, REQUEST_TIMEOUT, Resync};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use tokio::sync::mpsc;

/// Change-log rows read per query.
const LOG_PAGE: u64 = 5000;
/// Change-log queries per pass at most: a bulk change is taken in slices, the rest next pass.
const LOG_PAGES_PER_PASS: usize = 20;
/// Job rows read per query (by id, or a page of the reconcile).
const ROW_PAGE: u64 = 1000;
/// How long a change-log gap is read again before it is taken as a rolled-back transaction.
pub const GAP_WAIT: Duration = Duration::from_secs(60);
/// The most gaps tracked one by one; more at once means a reconcile.
const MAX_GAPS: usize = 1000;
/// Change-log rows kept below the mark (for a second, slower monitor); older ones are pruned.
const LOG_KEEP: i64 = 100_000;
/// etcd operations per transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 128;
/// Bytes per transaction at most (etcd's default `--max-request-bytes` is 1.5 MiB).
const TXN_BYTES: usize = 1024 * 1024;

/// What the checks learn of the job table from the publisher.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every message is a row: boxing would add an allocation to each"
)]
pub enum JobUpdate {
    /// A job row as looked at (`None`: deleted), after its verdict: `last_error` is what the
    /// monitor decided; and whether etcd already held the job with this rule (and zone) before.
    Row(i64, Option<job::Model>, bool),
    /// The whole table has just been compared: every row was sent (the first time, the checks
    /// know every job from now on).
    Reconciled,
}

/// What is published for one job: a fingerprint of its value, and of its timing (rule and time
/// zone; `None` if the value does not decode, so that it is overwritten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    value: u64,
    timing: Option<u64>,
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn timing(rule: &str, zone: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (rule, zone).hash(&mut h);
    h.finish()
}

/// The fields of a published value that decide its ticks.
#[derive(serde::Deserialize)]
struct Timing {
    rule: String,
    time_zone: String,
}

/// Keeps etcd's published jobs equal to the valid, enabled rows.
pub struct Publisher {
    db: DatabaseConnection,
    etcd: Client,
    keys: EtcdKeys,
    machines: MachineGroups,
    default_tz: Tz,
    /// Redis: a withdrawn job, or one whose rule or time zone changed, forgets how far it was
    /// scheduled, so that its ticks meanwhile do not count as missed.
    fences: Fences,
    /// What etcd holds, from the mirror plus our own writes.
    published: HashMap<i64, Published>,
    /// Jobs put since the mirror began (re)reading etcd.
    resync: Resync<i64>,
    /// Whether etcd has been read whole at least once and no re-read is under way.
    synced: bool,
    /// The change log is read above this.
    mark: Option<i64>,
    /// Change-log ids skipped by the mark, and since when.
    gaps: BTreeMap<i64, Instant>,
    /// Jobs to look at again: changed, or whose last look failed.
    pending: BTreeSet<i64>,
    /// When the whole table was last compared with etcd; `None`: compare at the next pass.
    reconciled: Option<Instant>,
    reconcile_every: Duration,
    /// When the change log was last pruned.
    pruned: Option<Instant>,
    /// Where the checks learn of job rows.
    updates: Option<mpsc::UnboundedSender<JobUpdate>>,
    /// Whether the last pass could read the table, so that an outage is logged once.
    table_ok: bool,
}

/// What one pass changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs put into etcd.
    pub published: usize,
    /// Jobs removed from etcd.
    pub withdrawn: usize,
    /// Rows whose `last_error` changed.
    pub verdicts: usize,
    /// Rows read and validated.
    pub rows: usize,
    /// Whether the pass compared the whole table.
    pub reconciled: bool,
}

/// One etcd write to make.
enum Write {
    Put(i64, String, Published),
    Delete(i64),
}

impl Publisher {
    /// A publisher that validates rows against `machines` and `default_tz`, and compares the
    /// whole table with etcd every `reconcile_every`.
    pub fn new(
        db: DatabaseConnection,
        etcd: Client,
        keys: EtcdKeys,
        machines: MachineGroups,
        default_tz: Tz,
        fences: Fences,
        reconcile_every: Duration,
    ) -> Publisher {
        Publisher {
            db,
            etcd,
            keys,
            machines,
            default_tz,
            fences,
            published: HashMap::new(),
            resync: Resync::default(),
            synced: false,
            mark: None,
            gaps: BTreeMap::new(),
            pending: BTreeSet::new(),
            reconciled: None,
            reconcile_every,
            pruned: None,
            updates: None,
            table_ok: true,
        }
    }

    /// Sends every row looked at (after its verdict) to `updates`, for the checks.
    pub fn with_updates(mut self, updates: mpsc::UnboundedSender<JobUpdate>) -> Publisher {
        self.updates = Some(updates);
        self
    }

    /// Whether etcd's published jobs are known (read whole, no re-read under way).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Takes in a change of etcd's published jobs.
    pub fn observe(&mut self, event: MirrorEvent) {
        match event {
            MirrorEvent::Resync => {
                self.resync.begin();
                self.synced = false;
            }
            MirrorEvent::Put(key, value) => {
                if let Some(id) = self.keys.job_id(&key) {
                    let timing = serde_json::from_slice::<Timing>(&value)
                        .ok()
                        .map(|t| timing(&t.rule, &t.time_zone));
                    let value = fingerprint(&value);
                    self.published.insert(id, Published { value, timing });
                    self.resync.put(id);
                }
            }
            MirrorEvent::Delete(key) => {
                if let Some(id) = self.keys.job_id(&key) {
                    self.published.remove(&id);
                }
            }
            MirrorEvent::Synced => {
                if let Some(seen) = self.resync.end() {
                    self.published.retain(|id, _| seen.contains(id));
                }
                self.synced = true;
            }
        }
    }

    /// Brings verdicts and etcd up to date with what changed (or, when due, with the whole
    /// table); failures are logged and retried at the next pass (nothing is withdrawn from etcd
    /// while the table cannot be read).
    pub async fn pass(&mut self) -> PassReport {
        let mut report = PassReport::default();
        if !self.synced {
            return report;
        }
        let due = self
            .reconciled
            .is_none_or(|at| at.elapsed() >= self.reconcile_every);
        let result = if due {
            self.reconcile(&mut report).await
        } else {
            self.follow(&mut report).await
        };
        match result {
            Ok(()) => {
                if !self.table_ok {
                    tracing::info!("the job table can be read again");
                }
                self.table_ok = true;
            }
            Err(e) => {
                if self.table_ok {
                    tracing::error!(error = %e, "cannot read the job table; published jobs stay as they are");
                }
                self.table_ok = false;
            }
        }
        if report.published + report.withdrawn + report.verdicts > 0 || report.reconciled {
            tracing::debug!(?report, "job table pass");
        }
        report
    }

    /// Compares the whole table with etcd, page by page.
    async fn reconcile(&mut self, report: &mut PassReport) -> Result<(), DbErr> {
        let started = Instant::now();
        // Changes made while the pages are read are in the log above this mark.
        let mark = self.log_max().await?;
        let mut seen = HashSet::with_capacity(self.published.len());
        let mut writes = Vec::new();
        let mut after = i64::MIN;
        loop {
            let rows = job::Entity::find()
                .filter(job::Column::Id.gt(after))
                .order_by_asc(job::Column::Id)
                .limit(ROW_PAGE)
                .all(&self.db)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let full = rows.len() as u64 == ROW_PAGE;
            for row in rows {
                seen.insert(row.id);
                self.look_at(row.id, Some(row), &mut writes, report).await;
            }
            if writes.len() >= TXN_OPS * 8 {
                self.write(std::mem::take(&mut writes), report).await;
            }
            if !full {
                break;
            }
        }
        let gone: Vec<i64> = self
            .published
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.look_at(id, None, &mut writes, report).await;
        }
        self.write(writes, report).await;
        self.mark = Some(mark);
        self.gaps.clear();
        self.reconciled = Some(Instant::now());
        report.reconciled = true;
        if let Some(updates) = &self.updates {
            let _ = updates.send(JobUpdate::Reconciled);
        }
        tracing::info!(
            rows = report.rows,
            published = report.published,
            withdrawn = report.withdrawn,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "job table compared with etcd"
        );
        Ok(())
    }

    /// Reads the change log above the mark (and its gaps), then the rows it names.
    async fn follow(&mut self, report: &mut PassReport) -> Result<(), DbErr> {
        let Some(mut mark) = self.mark else {
            self.reconciled = None;
            return Ok(());
        };
        let now = Instant::now();
        self.gaps
            .retain(|_, since| now.duration_since(*since) < GAP_WAIT);
        let mut changed = Vec::new();
        if !self.gaps.is_empty() {
            let gaps: Vec<i64> = self.gaps.keys().copied().collect();
            for chunk in gaps.chunks(500) {
                let found: Vec<(i64, i64)> = job_change::Entity::find()
                    .select_only()
                    .columns([job_change::Column::Seq, job_change::Column::JobId])
                    .filter(job_change::Column::Seq.is_in(chunk.to_vec()))
                    .into_tuple()
                    .all(&self.db)
                    .await?;
                for (seq, job_id) in found {
                    self.gaps.remove(&seq);
                    changed.push(job_id);
                }
            }
        }
        for _ in 0..LOG_PAGES_PER_PASS {
            let page: Vec<(i64, i64)> = job_change::Entity::find()
                .select_only()
                .columns([job_change::Column::Seq, job_change::Column::JobId])
                .filter(job_change::Column::Seq.gt(mark))
                .order_by_asc(job_change::Column::Seq)
                .limit(LOG_PAGE)
                .into_tuple()
                .all(&self.db)
                .await?;
            let full = page.len() as u64 == LOG_PAGE;
            for (seq, job_id) in page {
                if seq > mark + 1 {
                    if (seq - mark - 1) as usize + self.gaps.len() > MAX_GAPS {
                        // Pruned past our mark, or a burst of open transactions: compare all.
                        tracing::info!(
                            mark,
                            seq,
                            "the change log skips too many ids; comparing the whole table"
                        );
                        self.reconciled = None;
                        return Ok(());
                    }
                    for gap in mark + 1..seq {
                        self.gaps.insert(gap, now);
                    }
                }
                mark = seq;
                changed.push(job_id);
            }
            if !full {
                break;
            }
        }
        self.mark = Some(mark);
        self.pending.extend(changed);
        if self.pending.is_empty() {
            self.prune(mark).await;
            return Ok(());
        }
        let ids: Vec<i64> = std::mem::take(&mut self.pending).into_iter().collect();
        let mut writes = Vec::new();
        for chunk in ids.chunks(ROW_PAGE as usize) {
            let rows = match job::Entity::find()
                .filter(job::Column::Id.is_in(chunk.to_vec()))
                .all(&self.db)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    self.pending.extend(chunk);
                    self.write(writes, report).await;
                    return Err(e);
                }
            };
            let mut rows: HashMap<i64, job::Model> = rows.into_iter().map(|r| (r.id, r)).collect();
            for id in chunk {
                self.look_at(*id, rows.remove(id), &mut writes, report)
                    .await;
            }
        }
        self.write(writes, report).await;
        self.prune(mark).await;
        Ok(())
    }

    /// Decides what etcd should hold for job `id` (its row, `None` if deleted), records a
    /// changed verdict, and queues the etcd write that makes it so.
    async fn look_at(
        &mut self,
        id: i64,
        row: Option<job::Model>,
        writes: &mut Vec<Write>,
        report: &mut PassReport,
    ) {
        let mut desired = None;
        let mut row = row;
        if let Some(row) = &mut row {
            report.rows += 1;
            let mut verdict = validate(row, &self.machines, self.default_tz);
            if verdict.is_ok()
                && !(row.on_success.trim().is_empty() && row.on_failure.trim().is_empty())
            {
                match gocron_shared::chain::check(&self.db, row).await {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => verdict = Err(JobError::Chain(why)),
                    Err(e) => {
                        // Looked at again next pass.
                        tracing::warn!(job_id = id, error = %e, "cannot check the job's chains");
                        self.pending.insert(id);
                        return;
                    }
                }
            }
            let error = verdict.as_ref().err().map(ToString::to_string);
            if row.last_error != error {
                if !self.record_verdict(row, error.as_deref()).await {
                    // Looked at again next pass, verdict and all.
                    self.pending.insert(id);
                }
                report.verdicts += 1;
                row.last_error = error;
            }
            // A one-shot job that ran (`done_at`) is done, like a disabled one.
            if let Ok(spec) = verdict
                && row.enabled != 0
                && row.done_at.is_none()
            {
                desired = Some(spec);
            }
        }
        if let Some(updates) = &self.updates {
            // Whether etcd already had this rule for the job: the ledger then resumes its ticks.
            let resume = desired.as_ref().is_some_and(|spec| {
                self.published.get(&id).and_then(|p| p.timing)
                    == Some(timing(&spec.rule, &spec.time_zone))
            });
            // The checks may be gone (stopping): nothing to do then.
            let _ = updates.send(JobUpdate::Row(id, row, resume));
        }
        match desired {
            Some(spec) => {
                let value = match serde_json::to_string(&spec) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(job_id = id, error = %e, "cannot encode job");
                        return;
                    }
                };
                let published = Published {
                    value: fingerprint(value.as_bytes()),
                    timing: Some(timing(&spec.rule, &spec.time_zone)),
                };
                if self.published.get(&id) != Some(&published) {
                    writes.push(Write::Put(id, value, published));
                }
            }
            None => {
                if self.published.contains_key(&id) {
                    writes.push(Write::Delete(id));
                }
            }
        }
    }

    /// Makes the queued writes, in transactions of at most [`TXN_OPS`] operations and about
    /// [`TXN_BYTES`]; a failed batch's jobs are looked at again next pass.
    async fn write(&mut self, writes: Vec<Write>, report: &mut PassReport) {
        let mut batch: Vec<Write> = Vec::new();
        let mut bytes = 0;
        let mut writes = writes.into_iter().peekable();
        while let Some(w) = writes.next() {
            bytes += match &w {
                Write::Put(_, value, _) => value.len() + 32,
                Write::Delete(_) => 32,
            };
            batch.push(w);
            if batch.len() >= TXN_OPS || bytes >= TXN_BYTES || writes.peek().is_none() {
                self.commit(std::mem::take(&mut batch), report).await;
                bytes = 0;
            }
        }
    }

    async fn commit(&mut self, batch: Vec<Write>, report: &mut PassReport) {
        let ops: Vec<TxnOp> = batch
            .iter()
            .map(|w| match w {
                Write::Put(id, value, _) => TxnOp::put(self.keys.job(*id), value.as_str(), None),
                Write::Delete(id) => TxnOp::delete(self.keys.job(*id), None),
            })
            .collect();
        let mut etcd = self.etcd.clone();
        let txn = tokio::time::timeout(REQUEST_TIMEOUT, etcd.txn(Txn::new().and_then(ops)));
        let failure = match txn.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        if let Some(e) = failure {
            tracing::warn!(jobs = batch.len(), error = %e, "cannot publish jobs to etcd; will retry");
            self.pending.extend(batch.iter().map(|w| match w {
                Write::Put(id, ..) | Write::Delete(id) => *id,
            }));
            return;
        }
        // Ticks of an old rule are not missed ticks of the new one, nor those of a job while it
        // was withdrawn.
        let mut forget = Vec::new();
        let quiet = batch.len() > 10;
        for w in batch {
            match w {
                Write::Put(id, _, published) => {
                    let before = self.published.insert(id, published);
                    if before.is_some_and(|b| b.timing != published.timing) {
                        forget.push(id);
                    }
                    if !quiet {
                        tracing::info!(job_id = id, "job published");
                    }
                    report.published += 1;
                }
                Write::Delete(id) => {
                    self.published.remove(&id);
                    forget.push(id);
                    if !quiet {
                        tracing::info!(
                            job_id = id,
                            "job withdrawn (disabled, done, invalid or deleted)"
                        );
                    }
                    report.withdrawn += 1;
                }
            }
        }
        if quiet {
            tracing::info!(
                published = report.published,
                withdrawn = report.withdrawn,
                "jobs published to etcd"
            );
        }
        if !forget.is_empty()
            && let Err(e) = self.fences.forget_through(&forget).await
        {
            tracing::warn!(jobs = forget.len(), error = %e, "cannot reset how far jobs were scheduled");
        }
    }

    /// The change log's newest id (0 when empty).
    async fn log_max(&self) -> Result<i64, DbErr> {
        let max: Option<Option<i64>> = job_change::Entity::find()
            .select_only()
            .column_as(job_change::Column::Seq.max(), "max_seq")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(max.flatten().unwrap_or(0))
    }

    /// Deletes change-log rows far below the mark, a bounded range at a time, at most once a
    /// minute (a short statement, never a long lock).
    async fn prune(&mut self, mark: i64) {
        if self
            .pruned
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.pruned = Some(Instant::now());
        let below = mark - LOG_KEEP;
        if below <= 0 {
            return;
        }
        let min: Result<Option<Option<i64>>, DbErr> = job_change::Entity::find()
            .select_only()
            .column_as(job_change::Column::Seq.min(), "min_seq")
            .into_tuple()
            .one(&self.db)
            .await;
        let Ok(Some(Some(min))) = min else { return };
        let mut from = min;
        while from < below {
            let to = (from + 10_000).min(below);
            let deleted = job_change::Entity::delete_many()
                .filter(job_change::Column::Seq.lt(to))
                .exec(&self.db)
                .await;
            if let Err(e) = deleted {
                tracing::warn!(error = %e, "cannot prune the job change log");
                return;
            }
            from = to;
        }
    }

    /// Writes `last_error`; whether it was written.
    async fn record_verdict(&self, row: &job::Model, error: Option<&str>) -> bool {
        match error {
            Some(e) => {
                tracing::warn!(job_id = row.id, job = %row.name, "job row is invalid and not scheduled: {e}")
            }
            None => tracing::info!(job_id = row.id, job = %row.name, "job row is valid again"),
        }
        // Only last_error is written, so a user's concurrent UPDATE of other columns is kept.
        let result = job::Entity::update_many()
            .col_expr(
                job::Column::LastError,
                Expr::value(error.map(str::to_owned)),
            )
            .filter(job::Column::Id.eq(row.id))
            .exec(&self.db)
            .await;
        if let Err(e) = result {
            tracing::warn!(job_id = row.id, error = %e, "cannot record the row's verdict in last_error");
            return false;
        }
        true
    }
}
