//! The health checks: every `[alarm] check_ms`, find what is wrong and record it as alarms.
//!
//! Runs are read incrementally: `cron_run.id` only grows, so each pass reads the rows above a
//! high-water mark (`run_mark` in `cron_alarm_state`, shared and kept across restarts) and
//! re-reads by id only the runs still open (`dispatched`, `running`) and the ids skipped by a
//! gap (an insert not yet committed, or rolled back), never the whole table (it has no index on
//! `status`, on purpose). `run_floor` (the lowest open run) is where a starting monitor reads
//! again from: a run that ended while no monitor watched is found, and one already alarmed is
//! found recorded (the unique key), so a restart neither replays nor loses a run.
//!
//! Conditions that last (no dispatcher, a group without executor, an invalid row) are alarmed
//! once per episode: the first monitor to see one past `grace_secs` creates `open:{condition}`
//! in `cron_alarm_state`, whose value names the episode in the alarm's key; when the condition
//! is gone the row is deleted, and the next episode is a new alarm.
//!
//! After downtime (no pass recorded in `checked_at` for five `check_ms`), everything the first
//! pass finds is recorded as `summarised` and sent as one `start_summary`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use gocron_shared::alarm::AlarmKind;
use gocron_shared::alarm::config::AlarmConfig;
use gocron_shared::alarm::message::{AlarmFacts, JobFacts, RunFacts};
use gocron_shared::control::{self, RetryRequest};
use gocron_shared::entity::{job, run};
use gocron_shared::job::{EventRef, RunStatus, is_retried, retry_delay, validate};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::machine::{ExecutorInfo, MachineGroups};
use gocron_shared::rule::Schedule;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use gocron_shared::live::HANDOFF_LIMIT;
use gocron_shared::lock::Fences;
use gocron_shared::runs::{RUNNING_AFTER, RunLog};

use crate::alarms::{AlarmStore, Finding, status};
use crate::ledger::Ledger;

/// Rows read per query of the run scan.
const BATCH: u64 = 1000;
/// Batches read per pass at most; the rest waits for the next pass.
const MAX_BATCHES: usize = 20;
/// How long a gap in run ids is watched for a late commit before it is taken as rolled back.
const GAP_WAIT_SECS: i64 = 120;
/// The widest gap tracked id by id.
const MAX_GAP: i64 = 10_000;
/// The most finding keys remembered as recorded before the memory is cleared.
const MAX_REMEMBERED: usize = 100_000;

const RUN_MARK: &str = "run_mark";
const RUN_FLOOR: &str = "run_floor";
const CHECKED_AT: &str = "checked_at";
const OPEN: &str = "open:";

/// What etcd says is alive; `None` until its first read.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Registered executors.
    pub executors: Option<Arc<Vec<ExecutorInfo>>>,
    /// Registered dispatchers (their keys).
    pub dispatchers: Option<usize>,
}

/// What the checks keep of a job row: what alarms show and the timeout check reads, and a
/// fingerprint of the whole row to tell a change; a fraction of the row's size, so that a
/// million jobs fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    fingerprint: u64,
    name: Box<str>,
    rule: Box<str>,
    command: Box<str>,
    machine: Box<str>,
    alarm_emails: Box<str>,
    alarm_mobiles: Box<str>,
    timeout_secs: i32,
    timeout_policy: Box<str>,
    retries: i32,
    retry_delay_secs: i32,
    on_success: Box<str>,
    on_failure: Box<str>,
}

/// Feeds formatted text to a hasher, without building the text.
struct HashWriter<'a>(&'a mut std::collections::hash_map::DefaultHasher);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        std::hash::Hasher::write(self.0, s.as_bytes());
        Ok(())
    }
}

/// A fingerprint of every column of a row (its `Debug` form, so a column added later counts).
fn fingerprint(row: &job::Model) -> u64 {
    use std::fmt::Write as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let _ = write!(HashWriter(&mut h), "{row:?}");
    std::hash::Hasher::finish(&h)
}

impl JobRecord {
    fn new(row: &job::Model) -> JobRecord {
        JobRecord {
            fingerprint: fingerprint(row),
            name: row.name.as_str().into(),
            rule: row.rule.as_str().into(),
            command: row.command.as_str().into(),
            machine: row.machine.trim().into(),
            alarm_emails: row.alarm_emails.as_str().into(),
            alarm_mobiles: row.alarm_mobiles.as_str().into(),
            timeout_secs: row.timeout_secs,
            timeout_policy: row.timeout_policy.as_str().into(),
            retries: row.retries,
            retry_delay_secs: row.retry_delay_secs,
            on_success: row.on_success.trim().into(),
            on_failure: row.on_failure.trim().into(),
        }
    }

    fn facts(&self, id: i64) -> JobFacts {
        JobFacts {
            id,
            name: self.name.to_string(),
            rule: self.rule.to_string(),
            command: self.command.to_string(),
        }
    }
}

/// A run not yet final, or an id not yet seen.
#[derive(Debug, Clone, Copy)]
struct Open {
    since: DateTime<Utc>,
    gap: bool,
}

/// The checks' memory between passes.
pub struct Checker {
    store: AlarmStore,
    config: Arc<AlarmConfig>,
    machines: MachineGroups,
    default_tz: Tz,
    host: String,
    loaded: bool,
    run_mark: i64,
    saved: (i64, i64),
    open: BTreeMap<i64, Open>,
    /// The latest scheduled tick seen per job.
    last_tick: HashMap<i64, DateTime<Utc>>,
    /// Every job row, as the publisher last looked at it (kept up to date by
    /// [`Checker::job_changed`], never read whole per pass).
    jobs: HashMap<i64, JobRecord>,
    /// The schedule of each enabled, valid job, and the generation of its row.
    schedules: HashMap<i64, (Schedule, u64)>,
    generation: u64,
    /// When to look at a job's ticks again: `(unix ms, job id, generation)`, earliest first.
    /// A job is looked at when its next tick would be overdue, not at every pass.
    looks: BinaryHeap<Reverse<(i64, i64, u64)>>,
    /// Jobs whose row is invalid, and why.
    invalid: BTreeMap<i64, String>,
    /// The enabled, valid jobs of each machine group (trimmed; empty: any executor).
    targets: BTreeMap<String, BTreeSet<i64>>,
    /// Since when this monitor has seen each job scheduled as it is (a hash of rule and zone).
    live_since: HashMap<i64, (u64, DateTime<Utc>)>,
    /// Lasting conditions seen, and since when.
    seen: HashMap<String, DateTime<Utc>>,
    /// Episodes of open conditions known: condition → `open:` value.
    episodes: HashMap<String, i64>,
    /// Jobs with a failed run and no recovery yet: job → the failed run.
    failing: HashMap<i64, i64>,
    /// Finding keys already recorded by this monitor (or found recorded).
    recorded: HashSet<String>,
    /// `Some` when the next pass is the first after downtime.
    start_summary: Option<i64>,
    /// Every tick accounted for: a row for each, `missed` if nobody wrote one.
    ledger: Ledger,
    /// Runs seen in flight for over [`HANDOFF_LIMIT`]: (job, run), to look for in Redis.
    orphans: Vec<(i64, i64)>,
    runs: RunLog,
    fences: Fences,
    etcd: etcd_client::Client,
    keys: EtcdKeys,
    /// Retries to request, found by this pass: (job, run to retry, request, where its first
    /// attempt came from).
    retries: Vec<(i64, i64, RetryRequest, Lineage)>,
    /// Chained runs to request, found by this pass: (parent run, its end, which column, the
    /// column's text).
    chains: Vec<(i64, DateTime<Utc>, &'static str, Box<str>)>,
}

/// Where a retried run's first attempt came from.
#[derive(Debug, Clone, Copy)]
enum Lineage {
    /// A tick or a run-now.
    Plain,
    /// This event's run.
    Event(i64),
    /// A chained run of this parent run.
    Chain(i64),
    /// Ask this first attempt.
    FirstRun(i64),
}

/// What the checks need besides the alarm store.
pub struct Seams {
    /// Redis: runs in flight, scheduling marks, the ledger's marks.
    pub fences: Fences,
    /// The run writer (`missed` and `lost` rows).
    pub runs: RunLog,
    /// The tick ledger.
    pub ledger: Ledger,
    /// etcd, for retry requests.
    pub etcd: etcd_client::Client,
    /// etcd's key layout.
    pub keys: EtcdKeys,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Alarm rows recorded.
    pub recorded: usize,
}

fn facts(
    kind: AlarmKind,
    job: Option<JobFacts>,
    run: Option<&run::Model>,
    host: String,
    detail: String,
    now: DateTime<Utc>,
) -> AlarmFacts {
    AlarmFacts {
        kind,
        job,
        run: run.map(RunFacts::from),
        host,
        detail,
        found_at: now,
    }
}

impl Checker {
    /// A checker of `store`'s database; `host` names the monitor in alarms about no machine.
    pub fn new(
        store: AlarmStore,
        config: Arc<AlarmConfig>,
        machines: MachineGroups,
        default_tz: Tz,
        host: String,
        seams: Seams,
    ) -> Checker {
        Checker {
            ledger: seams.ledger,
            orphans: Vec::new(),
            runs: seams.runs,
            fences: seams.fences,
            etcd: seams.etcd,
            keys: seams.keys,
            retries: Vec::new(),
            chains: Vec::new(),
            store,
            config,
            machines,
            default_tz,
            host,
            loaded: false,
            run_mark: 0,
            saved: (-1, -1),
            open: BTreeMap::new(),
            last_tick: HashMap::new(),
            live_since: HashMap::new(),
            seen: HashMap::new(),
            episodes: HashMap::new(),
            failing: HashMap::new(),
            jobs: HashMap::new(),
            schedules: HashMap::new(),
            generation: 0,
            looks: BinaryHeap::new(),
            invalid: BTreeMap::new(),
            targets: BTreeMap::new(),
            recorded: HashSet::new(),
            start_summary: None,
        }
    }

    /// Reads the shared marks and what is open below them.
    async fn load(&mut self) -> Result<(), DbErr> {
        let db = self.store.db().clone();
        let now = Utc::now();
        let checked = self.store.state(CHECKED_AT).await?;
        let downtime = self.config.check_interval.as_millis() as i64 * 5;
        if checked.is_none_or(|at| now.timestamp_millis() - at > downtime) {
            self.start_summary = Some(checked.unwrap_or(0));
        }
        match self.store.state(RUN_MARK).await? {
            Some(mark) => {
                self.run_mark = mark;
                let floor = self.store.state(RUN_FLOOR).await?.unwrap_or(mark + 1);
                // Every run from the floor up is read again: one that was open may have
                // ended while no monitor watched. Those already alarmed are found recorded.
                let ids: Vec<i64> = run::Entity::find()
                    .select_only()
                    .column(run::Column::Id)
                    .filter(run::Column::Id.gte(floor))
                    .filter(run::Column::Id.lte(mark))
                    .into_tuple()
                    .all(&db)
                    .await?;
                for id in ids {
                    self.open.insert(
                        id,
                        Open {
                            since: now,
                            gap: false,
                        },
                    );
                }
            }
            None => {
                // The first monitor with alarms: history before it is not replayed.
                let max: Option<Option<i64>> = run::Entity::find()
                    .select_only()
                    .column_as(run::Column::Id.max(), "max_id")
                    .into_tuple()
                    .one(&db)
                    .await?;
                self.run_mark = max.flatten().unwrap_or(0);
            }
        }
        let ticks: Vec<(i64, Option<DateTime<Utc>>)> = run::Entity::find()
            .select_only()
            .column(run::Column::JobId)
            .column_as(run::Column::ScheduledAt.max(), "last_tick")
            .filter(run::Column::Trigger.eq("schedule"))
            .group_by(run::Column::JobId)
            .into_tuple()
            .all(&db)
            .await?;
        self.last_tick = ticks
            .into_iter()
            .filter_map(|(job, t)| Some((job, t?)))
            .collect();
        let failed: Vec<(i64, Option<i64>)> = gocron_shared::entity::alarm::Entity::find()
            .select_only()
            .column(gocron_shared::entity::alarm::Column::JobId)
            .column_as(
                gocron_shared::entity::alarm::Column::RunId.max(),
                "last_failed",
            )
            .filter(gocron_shared::entity::alarm::Column::Kind.eq(AlarmKind::RunFailed.as_str()))
            .group_by(gocron_shared::entity::alarm::Column::JobId)
            .into_tuple()
            .all(&db)
            .await?;
        self.failing = failed
            .into_iter()
            .filter_map(|(job, run)| Some((job, run?)))
            .collect();
        self.loaded = true;
        Ok(())
    }

    /// One pass of every check; alarms found are recorded before this returns.
    ///
    /// On an error the marks in memory may be ahead of what was recorded, so the next pass
    /// starts again from the marks saved in the database (the unique keys absorb the repeats).
    pub async fn pass(&mut self, live: &Live) -> Result<CheckReport, DbErr> {
        let result = self.try_pass(live).await;
        if result.is_err() {
            self.loaded = false;
            self.open.clear();
            self.saved = (-1, -1);
        }
        result
    }

    async fn try_pass(&mut self, live: &Live) -> Result<CheckReport, DbErr> {
        if !self.loaded {
            self.load().await?;
        }
        if self.recorded.len() > MAX_REMEMBERED {
            // Only a shortcut: the alarm table's unique key is what keeps alarms single.
            self.recorded.clear();
        }
        let now = Utc::now();
        self.learn_jobs_of_new_runs(now).await?;
        // Taken out for the pass (the checks read it while changing the rest), then put back.
        let jobs = std::mem::take(&mut self.jobs);
        let found = self.find(&jobs, live, now).await;
        self.jobs = jobs;
        let findings = found?;
        // Before the marks move past the runs to retry: a request not put is found again.
        for (job_id, run_id, mut request, lineage) in std::mem::take(&mut self.retries) {
            // A retry of an event's run runs for the same event; of a chained run, for the
            // same parent.
            (request.event, request.parent_run) = self.origin_of(lineage).await?;
            control::put_request(
                &mut self.etcd,
                self.keys.retry_request_key(job_id, run_id),
                &request,
            )
            .await
            .map_err(|e| DbErr::Custom(format!("requesting a retry of run {run_id}: {e}")))?;
            tracing::info!(
                job_id,
                run_id,
                attempt = request.attempt,
                due_ms = request.due_ms,
                "retry requested"
            );
        }
        for (parent, ended, column, text) in std::mem::take(&mut self.chains) {
            let db = self.store.db().clone();
            let children = match gocron_shared::chain::resolve(&db, column, &text).await? {
                Ok(ids) => ids,
                Err(why) => {
                    // The job's last_error says so too (the monitor's verdict).
                    tracing::warn!(run_id = parent, "chained runs not started: {why}");
                    continue;
                }
            };
            let request = control::ChainRequest {
                due_ms: ended.timestamp_millis(),
            };
            for child in children {
                control::put_request(
                    &mut self.etcd,
                    self.keys.chain_request_key(child, parent),
                    &request,
                )
                .await
                .map_err(|e| DbErr::Custom(format!("requesting run {parent}'s chain: {e}")))?;
                tracing::info!(
                    run_id = parent,
                    job_id = child,
                    column,
                    "chained run requested"
                );
            }
        }
        self.gauge(live);
        self.settle_orphans().await;
        let db = self.store.db().clone();
        let settled = self
            .ledger
            .settle(&db, &self.runs, &self.fences, &self.last_tick, now)
            .await?;
        if settled.recorded > 0 {
            tracing::warn!(
                ticks = settled.recorded,
                "ticks without a run row recorded missed"
            );
        }

        let mut report = CheckReport::default();
        match self.start_summary.take() {
            Some(since) => report.recorded += self.record_summary(since, findings, now).await?,
            None => {
                for f in findings {
                    if self.recorded.contains(&f.key) {
                        continue;
                    }
                    let rows = self.store.record(&f, None).await?;
                    if !rows.is_empty() {
                        tracing::warn!(kind = %f.facts.kind, key = %f.key, "alarm: {}", f.facts.detail);
                    }
                    report.recorded += rows.len();
                    self.recorded.insert(f.key);
                }
            }
        }
        self.save_marks(now).await?;
        Ok(report)
    }

    /// What a retried run's first attempt ran for: its event, if it was an event's run; its
    /// parent run, if it was a chained run.
    async fn origin_of(&self, lineage: Lineage) -> Result<(Option<EventRef>, Option<i64>), DbErr> {
        let db = self.store.db();
        let event_id = match lineage {
            Lineage::Plain => return Ok((None, None)),
            Lineage::Chain(parent) => return Ok((None, Some(parent))),
            Lineage::Event(id) => id,
            Lineage::FirstRun(first) => {
                let first: Option<(String, i64)> = run::Entity::find_by_id(first)
                    .select_only()
                    .column(run::Column::Trigger)
                    .column(run::Column::SourceId)
                    .into_tuple()
                    .one(db)
                    .await?;
                match first {
                    Some((trigger, id)) if trigger == "event" => id,
                    Some((trigger, parent)) if trigger == "chain" => {
                        return Ok((None, Some(parent)));
                    }
                    _ => return Ok((None, None)),
                }
            }
        };
        // Gone (deleted by hand): the retry runs without it, as a run of that event.
        let row = gocron_shared::entity::event::Entity::find_by_id(event_id)
            .one(db)
            .await?;
        let event = EventRef {
            id: event_id,
            name: row.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
            payload: row.and_then(|e| e.payload).unwrap_or_default(),
            delayed: false,
            requested_ms: 0,
        };
        Ok((Some(event), None))
    }

    async fn find(
        &mut self,
        jobs: &HashMap<i64, JobRecord>,
        live: &Live,
        now: DateTime<Utc>,
    ) -> Result<Vec<Finding>, DbErr> {
        let mut findings = Vec::new();
        self.scan_runs(jobs, now, &mut findings).await?;
        self.check_jobs(jobs, now, &mut findings);
        self.check_lasting(jobs, live, now, &mut findings).await?;
        Ok(findings)
    }

    /// Reads the rows of jobs that new runs belong to and that the publisher has not sent yet
    /// (a run inserted right after its job, or by hand), so that their alarms name the job and
    /// reach its recipients.
    async fn learn_jobs_of_new_runs(&mut self, now: DateTime<Utc>) -> Result<(), DbErr> {
        let limit = self.run_mark + BATCH as i64 * MAX_BATCHES as i64;
        let ids: Vec<i64> = run::Entity::find()
            .select_only()
            .column(run::Column::JobId)
            .filter(run::Column::Id.gt(self.run_mark))
            .filter(run::Column::Id.lte(limit))
            .into_tuple()
            .all(self.store.db())
            .await?;
        let unknown: BTreeSet<i64> = ids
            .into_iter()
            .filter(|id| !self.jobs.contains_key(id))
            .collect();
        let unknown: Vec<i64> = unknown.into_iter().collect();
        for chunk in unknown.chunks(500) {
            let rows = job::Entity::find()
                .filter(job::Column::Id.is_in(chunk.to_vec()))
                .all(self.store.db())
                .await?;
            for row in rows {
                // Its runs exist: it was published before.
                self.job_changed(row.id, Some(row), true, now);
            }
        }
        Ok(())
    }

    /// Takes in a job row as the publisher looked at it (`None`: deleted). Unchanged rows (a
    /// reconcile sends every row) cost one comparison.
    pub fn job_changed(
        &mut self,
        id: i64,
        row: Option<job::Model>,
        resume: bool,
        now: DateTime<Utc>,
    ) {
        if let (Some(new), Some(old)) = (&row, self.jobs.get(&id))
            && fingerprint(new) == old.fingerprint
        {
            return;
        }
        self.invalid.remove(&id);
        if let Some(old) = self.jobs.get(&id)
            && let Some(ids) = self.targets.get_mut(&*old.machine)
        {
            ids.remove(&id);
            if ids.is_empty() {
                self.targets.remove(&*old.machine);
            }
        }
        let Some(row) = row else {
            self.jobs.remove(&id);
            self.schedules.remove(&id);
            self.live_since.remove(&id);
            self.ledger.job(id, None, false, now);
            return;
        };
        if let Some(error) = &row.last_error {
            self.invalid.insert(id, error.clone());
        } else if row.enabled != 0 {
            self.targets
                .entry(row.machine.trim().to_owned())
                .or_default()
                .insert(id);
        }
        let spec = (row.enabled != 0 && row.last_error.is_none())
            .then(|| validate(&row, &self.machines, self.default_tz).ok())
            .flatten();
        match spec.and_then(|spec| Some((spec.schedule(self.default_tz).ok()?, spec))) {
            Some((schedule, spec)) => {
                let shape = {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    std::hash::Hash::hash(&(&spec.rule, &spec.time_zone), &mut h);
                    std::hash::Hasher::finish(&h)
                };
                if self.live_since.get(&id).is_none_or(|(s, _)| *s != shape) {
                    self.live_since.insert(id, (shape, now));
                }
                self.generation += 1;
                self.ledger
                    .job(id, Some((schedule.clone(), shape)), resume, now);
                self.schedules.insert(id, (schedule, self.generation));
                self.looks
                    .push(Reverse((now.timestamp_millis(), id, self.generation)));
            }
            None => {
                self.schedules.remove(&id);
                self.live_since.remove(&id);
                self.ledger.job(id, None, false, now);
            }
        }
        self.jobs.insert(id, JobRecord::new(&row));
    }

    async fn save_marks(&mut self, now: DateTime<Utc>) -> Result<(), DbErr> {
        let floor = self
            .open
            .keys()
            .next()
            .copied()
            .unwrap_or(self.run_mark + 1);
        if self.saved != (self.run_mark, floor) {
            self.store.set_state(RUN_MARK, self.run_mark).await?;
            self.store.set_state(RUN_FLOOR, floor).await?;
            self.saved = (self.run_mark, floor);
        }
        self.store
            .set_state(CHECKED_AT, now.timestamp_millis())
            .await
    }

    /// Records every finding as summarised, and one `start_summary` listing them.
    async fn record_summary(
        &mut self,
        since: i64,
        findings: Vec<Finding>,
        now: DateTime<Utc>,
    ) -> Result<usize, DbErr> {
        let mut lines = Vec::new();
        let mut emails = Vec::new();
        let mut mobiles = Vec::new();
        let mut recorded = 0;
        let mut counts: BTreeMap<AlarmKind, usize> = BTreeMap::new();
        for f in findings {
            let rows = self
                .store
                .record(
                    &f,
                    Some((
                        status::SUMMARISED,
                        "found at the monitor's start after downtime; in the start_summary",
                    )),
                )
                .await?;
            self.recorded.insert(f.key.clone());
            if rows.is_empty() {
                continue;
            }
            recorded += rows.len();
            *counts.entry(f.facts.kind).or_default() += 1;
            let about = match &f.facts.job {
                Some(j) => format!("job {} \"{}\": ", j.id, j.name),
                None => String::new(),
            };
            lines.push(format!("- {}: {about}{}", f.facts.kind, f.facts.detail));
            emails.push(f.emails);
            mobiles.push(f.mobiles);
        }
        if lines.is_empty() {
            return Ok(recorded);
        }
        let total: usize = counts.values().sum();
        let by_kind: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let since_text = DateTime::from_timestamp_millis(since)
            .filter(|_| since > 0)
            .map_or_else(
                || "its first start".to_owned(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        let mut detail = format!(
            "The monitor found {total} condition(s) at start, after no check since {since_text}: {}.\n\
             They are recorded in cron_alarm (status summarised) and not sent one by one.\n\n",
            by_kind.join(", ")
        );
        detail.push_str(&lines.join("\n"));
        let summary = Finding {
            key: format!("start_summary:{since}"),
            facts: facts(
                AlarmKind::StartSummary,
                None,
                None,
                self.host.clone(),
                detail,
                now,
            ),
            emails: emails.join(","),
            mobiles: mobiles.join(","),
        };
        let rows = self.store.record(&summary, None).await?;
        tracing::warn!(
            conditions = total,
            "alarm: conditions found at start after downtime, summarised in one alarm"
        );
        Ok(recorded + rows.len())
    }

    fn job_facts(jobs: &HashMap<i64, JobRecord>, id: i64) -> Option<JobFacts> {
        Some(jobs.get(&id).map_or_else(
            || JobFacts {
                id,
                name: "(deleted)".into(),
                rule: String::new(),
                command: String::new(),
            },
            |job| job.facts(id),
        ))
    }

    fn finding(
        &self,
        key: String,
        kind: AlarmKind,
        jobs: &HashMap<i64, JobRecord>,
        job_id: Option<i64>,
        run: Option<&run::Model>,
        detail: String,
    ) -> Finding {
        let job_row = job_id.and_then(|id| jobs.get(&id));
        let host = match run {
            Some(r) if !r.executor.is_empty() => r.executor.clone(),
            _ => self.host.clone(),
        };
        Finding {
            key,
            facts: facts(
                kind,
                job_id.and_then(|id| Self::job_facts(jobs, id)),
                run,
                host,
                detail,
                Utc::now(),
            ),
            emails: job_row
                .map(|j| j.alarm_emails.to_string())
                .unwrap_or_default(),
            mobiles: job_row
                .map(|j| j.alarm_mobiles.to_string())
                .unwrap_or_default(),
        }
    }

    async fn scan_runs(
        &mut self,
        jobs: &HashMap<i64, JobRecord>,
        now: DateTime<Utc>,
        findings: &mut Vec<Finding>,
    ) -> Result<(), DbErr> {
        let db = self.store.db().clone();
        let rechecked: Vec<i64> = self.open.keys().copied().collect();
        // After downtime everything goes into the one summary, however much there is.
        let batches = if self.start_summary.is_some() {
            usize::MAX
        } else {
            MAX_BATCHES
        };
        for _ in 0..batches {
            let rows = read_runs(
                &db,
                heads()
                    .filter(run::Column::Id.gt(self.run_mark))
                    .order_by_asc(run::Column::Id)
                    .limit(BATCH),
            )
            .await?;
            let n = rows.len() as u64;
            for row in rows {
                if row.id - self.run_mark <= MAX_GAP {
                    for gap in self.run_mark + 1..row.id {
                        self.open.insert(
                            gap,
                            Open {
                                since: now,
                                gap: true,
                            },
                        );
                    }
                }
                self.run_mark = row.id;
                self.examine(&row, jobs, now, findings);
            }
            if n < BATCH {
                break;
            }
        }
        for chunk in rechecked.chunks(500) {
            let rows =
                read_runs(&db, heads().filter(run::Column::Id.is_in(chunk.to_vec()))).await?;
            let found: HashSet<i64> = rows.iter().map(|r| r.id).collect();
            for row in &rows {
                if let Some(open) = self.open.get_mut(&row.id) {
                    open.gap = false;
                }
                self.examine(row, jobs, now, findings);
            }
            for id in chunk {
                if !found.contains(id)
                    && self
                        .open
                        .get(id)
                        .is_some_and(|o| o.gap && (now - o.since).num_seconds() > GAP_WAIT_SECS)
                {
                    self.open.remove(id);
                }
            }
        }
        Ok(())
    }

    /// What one run row says: an alarm, a recovery, or a run to keep watching.
    fn examine(
        &mut self,
        row: &run::Model,
        jobs: &HashMap<i64, JobRecord>,
        now: DateTime<Utc>,
        findings: &mut Vec<Finding>,
    ) {
        if row.trigger == "schedule" {
            let t = self.last_tick.entry(row.job_id).or_insert(row.scheduled_at);
            *t = (*t).max(row.scheduled_at);
            self.ledger.saw(row.job_id, row.scheduled_at);
        }
        let Ok(status) = row.status.parse::<RunStatus>() else {
            self.open.remove(&row.id);
            return;
        };
        let job = Some(row.job_id);
        match status {
            RunStatus::Dispatched | RunStatus::Running => {
                let open = self.open.entry(row.id).or_insert(Open {
                    since: now,
                    gap: false,
                });
                let limit = chrono::Duration::from_std(HANDOFF_LIMIT).unwrap_or_default();
                if now - open.since > limit && now - row.scheduled_at > limit {
                    self.orphans.push((row.job_id, row.id));
                }
                if let Some(detail) = self.overdue(row, row.job_id, jobs.get(&row.job_id), now) {
                    findings.push(self.finding(
                        format!("run_overdue:run={}", row.id),
                        AlarmKind::RunOverdue,
                        jobs,
                        job,
                        Some(row),
                        detail,
                    ));
                }
                return;
            }
            RunStatus::Failed
            | RunStatus::Timeout
            | RunStatus::Lost
            | RunStatus::NoExecutor
            | RunStatus::Skipped => {
                let record = jobs.get(&row.job_id);
                if let Some(request) = retry(row, status, record) {
                    // Not alarmed: the last attempt's failure is.
                    let lineage = match row.trigger.as_str() {
                        "event" => Lineage::Event(row.source_id),
                        "chain" => Lineage::Chain(row.source_id),
                        "retry" => Lineage::FirstRun(request.first_run),
                        _ => Lineage::Plain,
                    };
                    self.retries.push((row.job_id, row.id, request, lineage));
                    self.open.remove(&row.id);
                    return;
                }
                if let Some(job) = record
                    && !job.on_failure.is_empty()
                    && is_retried(status)
                {
                    let ended = row.finished_at.unwrap_or(row.scheduled_at);
                    self.chains
                        .push((row.id, ended, "on_failure", job.on_failure.clone()));
                }
                let why = row.error.as_deref().unwrap_or("no reason recorded");
                let retries = record.map_or(0, |j| j.retries);
                let attempts = if row.attempt > 1 || retries > 0 {
                    format!(
                        " (attempt {} of {}, none left)",
                        row.attempt,
                        row.attempt.max(retries + 1)
                    )
                } else {
                    String::new()
                };
                findings.push(self.finding(
                    format!("run_failed:run={}", row.id),
                    AlarmKind::RunFailed,
                    jobs,
                    job,
                    Some(row),
                    format!("run {} ended {}: {why}{attempts}", row.id, row.status),
                ));
                let last = self.failing.entry(row.job_id).or_insert(row.id);
                *last = (*last).max(row.id);
            }
            RunStatus::Succeeded => {
                if let Some(job) = jobs.get(&row.job_id)
                    && !job.on_success.is_empty()
                {
                    let ended = row.finished_at.unwrap_or(row.scheduled_at);
                    self.chains
                        .push((row.id, ended, "on_success", job.on_success.clone()));
                }
                if let Some(&failed) = self.failing.get(&row.job_id)
                    && failed < row.id
                {
                    self.failing.remove(&row.job_id);
                    findings.push(self.finding(
                        format!("recovered:job={}:after={failed}", row.job_id),
                        AlarmKind::Recovered,
                        jobs,
                        job,
                        Some(row),
                        format!(
                            "the job recovered: run {} succeeded after run {failed} failed",
                            row.id
                        ),
                    ));
                }
            }
            // Keyed by the tick, like the alarm of a tick overdue: one alarm per tick.
            RunStatus::Missed => findings.push(self.finding(
                format!(
                    "tick_missed:job={}:tick={}",
                    row.job_id,
                    row.scheduled_at.timestamp_millis()
                ),
                AlarmKind::TickMissed,
                jobs,
                job,
                Some(row),
                format!(
                    "the tick at {} was missed: no dispatcher could fire it",
                    row.scheduled_at
                ),
            )),
            RunStatus::Killed => {}
        }
        self.open.remove(&row.id);
    }

    /// Sets the gauges of jobs by state and of live executors by group.
    fn gauge(&self, live: &Live) {
        let m = gocron_shared::metrics::metrics();
        let valid = self.schedules.len() as i64;
        let invalid = self.invalid.len() as i64;
        m.jobs.with_label_values(&["valid"]).set(valid);
        m.jobs.with_label_values(&["invalid"]).set(invalid);
        m.jobs
            .with_label_values(&["disabled"])
            .set((self.jobs.len() as i64 - valid - invalid).max(0));
        if let Some(executors) = &live.executors {
            m.executors_live.reset();
            for group in self.machines.names().chain(std::iter::once("")) {
                let n = self
                    .machines
                    .select(group, executors)
                    .map_or(0, |e| e.len());
                let name = if group.is_empty() { "*" } else { group };
                m.executors_live.with_label_values(&[name]).set(n as i64);
            }
        }
    }

    /// Runs in flight for over [`HANDOFF_LIMIT`] that nobody holds in Redis (the hand-off was
    /// never entered: Redis was down, or the dispatcher died between the row and the entry)
    /// become `lost`: nothing else would ever end them. A run held there is the lost-run
    /// sweep's to judge.
    async fn settle_orphans(&mut self) {
        let orphans = std::mem::take(&mut self.orphans);
        let mut held: HashMap<i64, HashSet<i64>> = HashMap::new();
        for (job_id, run_id) in orphans {
            let runs = match held.entry(job_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match self.fences.in_flight(job_id).await {
                        Ok(runs) => e.insert(runs.iter().map(|r| r.run_id).collect()),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot read runs in flight; orphans looked at later");
                            return;
                        }
                    }
                }
            };
            if runs.contains(&run_id) {
                continue;
            }
            let why = format!(
                "no dispatcher or executor holds the run after {} s: its hand-off was never \
                 entered in Redis (Redis unavailable, or the dispatcher died at the hand-off)",
                HANDOFF_LIMIT.as_secs()
            );
            match self.runs.lost(run_id, why).await {
                Ok(true) => tracing::warn!(run_id, job_id, "a run nobody held is recorded lost"),
                Ok(false) => {}
                Err(e) => tracing::warn!(run_id, error = %e, "cannot record an orphaned run lost"),
            }
        }
    }

    /// Why an open run is overdue, if it is.
    fn overdue(
        &self,
        row: &run::Model,
        job_id: i64,
        job: Option<&JobRecord>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let grace = chrono::Duration::from_std(self.config.grace).unwrap_or_default();
        if row.status == RunStatus::Dispatched.as_str() {
            // A run started is marked `running` only after RUNNING_AFTER.
            let started = chrono::Duration::from_std(RUNNING_AFTER).unwrap_or_default();
            return (now - row.scheduled_at > grace + started).then(|| {
                format!(
                    "run {} was dispatched for {} and has not started after grace_secs = {}",
                    row.id,
                    row.scheduled_at,
                    self.config.grace.as_secs()
                )
            });
        }
        if let Some(at) = row.overrun_at {
            return Some(format!(
                "run {} passed its timeout at {at} and is still running (overrun)",
                row.id
            ));
        }
        let job = job?;
        let deadline = if job.timeout_secs > 0 {
            row.scheduled_at + chrono::Duration::seconds(i64::from(job.timeout_secs))
        } else {
            self.schedules
                .get(&job_id)?
                .0
                .next_after(row.scheduled_at)?
        };
        (now > deadline + grace).then(|| {
            format!(
                "run {} is still running past its timeout at {deadline} (policy {})",
                row.id, job.timeout_policy
            )
        })
    }

    /// Missed ticks of the enabled, valid jobs: only those whose next tick is due to be looked
    /// at, each then put back for when its following tick would be overdue.
    fn check_jobs(
        &mut self,
        jobs: &HashMap<i64, JobRecord>,
        now: DateTime<Utc>,
        findings: &mut Vec<Finding>,
    ) {
        let grace = chrono::Duration::from_std(self.config.grace).unwrap_or_default();
        while let Some(Reverse((at, id, generation))) = self.looks.peek().copied() {
            if at > now.timestamp_millis() {
                break;
            }
            self.looks.pop();
            let Some((schedule, current)) = self.schedules.get(&id) else {
                continue;
            };
            if *current != generation {
                continue;
            }
            let Some((_, since)) = self.live_since.get(&id) else {
                continue;
            };
            // A job is fired from the first tick after a dispatcher learns of it, which may be
            // a little after this monitor first saw it: its first tick is owed from `grace` on.
            let since = *since + grace;
            let reference = self.last_tick.get(&id).map_or(since, |t| (*t).max(since));
            let Some(next) = schedule.next_after(reference) else {
                continue;
            };
            if now - next > grace {
                let last = self
                    .last_tick
                    .get(&id)
                    .map_or_else(|| "none".to_owned(), ToString::to_string);
                findings.push(self.finding(
                    format!("tick_missed:job={id}:tick={}", next.timestamp_millis()),
                    AlarmKind::TickMissed,
                    jobs,
                    Some(id),
                    None,
                    format!(
                        "the tick at {next} has no run after grace_secs = {} (last tick run: {last}); is a dispatcher alive?",
                        self.config.grace.as_secs()
                    ),
                ));
            }
            // Looked at again once the next tick that could be missed is overdue.
            if let Some(again) = schedule.next_after(reference.max(now - grace)) {
                let at = (again + grace).timestamp_millis() + 1;
                self.looks.push(Reverse((at, id, generation)));
            }
        }
    }

    /// Lasting conditions: invalid rows, groups without executor, no dispatcher.
    async fn check_lasting(
        &mut self,
        jobs: &HashMap<i64, JobRecord>,
        live: &Live,
        now: DateTime<Utc>,
        findings: &mut Vec<Finding>,
    ) -> Result<(), DbErr> {
        // (condition, kind, job, detail, needs grace)
        let mut present: Vec<(String, AlarmKind, Option<i64>, String, bool)> = Vec::new();
        for (id, error) in &self.invalid {
            present.push((
                format!("job_invalid:job={id}"),
                AlarmKind::JobInvalid,
                Some(*id),
                format!("the job row is invalid and not scheduled: {error}"),
                false,
            ));
        }
        if let Some(executors) = &live.executors {
            for (group, ids) in &self.targets {
                let alive = self
                    .machines
                    .select(group, executors)
                    .is_none_or(|e| !e.is_empty());
                if !alive {
                    let name = if group.is_empty() { "*" } else { group };
                    // A group of a hundred thousand jobs is named by its first ones.
                    let mut list: Vec<String> =
                        ids.iter().take(20).map(ToString::to_string).collect();
                    if ids.len() > 20 {
                        list.push(format!("and {} more", ids.len() - 20));
                    }
                    present.push((
                        format!("group_down:{name}"),
                        AlarmKind::GroupDown,
                        None,
                        format!(
                            "machine group {name:?} has no live executor; enabled jobs target it: {}",
                            list.join(", ")
                        ),
                        true,
                    ));
                }
            }
        }
        if live.dispatchers == Some(0) {
            present.push((
                "no_dispatcher".to_owned(),
                AlarmKind::NoDispatcher,
                None,
                "no dispatcher is registered in etcd: no job is being fired".to_owned(),
                true,
            ));
        }

        let grace = chrono::Duration::from_std(self.config.grace).unwrap_or_default();
        let current: HashSet<String> = present.iter().map(|p| p.0.clone()).collect();
        self.seen.retain(|c, _| current.contains(c));
        for (condition, kind, job, detail, needs_grace) in present {
            let since = *self.seen.entry(condition.clone()).or_insert(now);
            if needs_grace && now - since < grace {
                continue;
            }
            let episode = match self.episodes.get(&condition) {
                Some(e) => *e,
                None => {
                    let name = format!("{OPEN}{condition}");
                    self.store
                        .create_state(&name, now.timestamp_millis())
                        .await?;
                    let e = self
                        .store
                        .state(&name)
                        .await?
                        .unwrap_or(now.timestamp_millis());
                    self.episodes.insert(condition.clone(), e);
                    e
                }
            };
            findings.push(self.finding(
                format!("{condition}@{episode}"),
                kind,
                jobs,
                job,
                None,
                detail,
            ));
        }
        // Episodes end when their condition is gone, as far as this monitor can tell.
        for (name, _) in self.store.states_with_prefix(OPEN).await? {
            let condition = &name[OPEN.len()..];
            let knowable = if condition.starts_with("group_down:") {
                live.executors.is_some()
            } else if condition == "no_dispatcher" {
                live.dispatchers.is_some()
            } else {
                true
            };
            if knowable && !current.contains(condition) {
                tracing::info!(condition, "alarm condition cleared");
                self.store.delete_state(&name).await?;
                self.episodes.remove(condition);
            }
        }
        Ok(())
    }
}

/// A run row without its output, which can be 64 KiB.
#[derive(Debug, sea_orm::FromQueryResult)]
struct RunHead {
    id: i64,
    job_id: i64,
    scheduled_at: DateTime<Utc>,
    status: String,
    executor: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    error: Option<String>,
    trigger: String,
    overrun_at: Option<DateTime<Utc>>,
    attempt: i32,
    retry_of: Option<i64>,
    source_id: i64,
    shard_index: i32,
    shard_total: i32,
}

/// A query of run rows without their output.
fn heads() -> sea_orm::Select<run::Entity> {
    use run::Column as C;
    run::Entity::find().select_only().columns([
        C::Id,
        C::JobId,
        C::ScheduledAt,
        C::Status,
        C::Executor,
        C::StartedAt,
        C::FinishedAt,
        C::ExitCode,
        C::Error,
        C::Trigger,
        C::OverrunAt,
        C::Attempt,
        C::RetryOf,
        C::SourceId,
        C::ShardIndex,
        C::ShardTotal,
    ])
}

/// The runs `query` selects; only those that failed (whose alarm quotes it) with their output.
async fn read_runs(
    db: &sea_orm::DatabaseConnection,
    query: sea_orm::Select<run::Entity>,
) -> Result<Vec<run::Model>, DbErr> {
    let heads: Vec<RunHead> = query.into_model().all(db).await?;
    let mut rows: Vec<run::Model> = heads
        .into_iter()
        .map(|h| run::Model {
            id: h.id,
            job_id: h.job_id,
            scheduled_at: h.scheduled_at,
            status: h.status,
            executor: h.executor,
            started_at: h.started_at,
            finished_at: h.finished_at,
            exit_code: h.exit_code,
            output: None,
            error: h.error,
            trigger: h.trigger,
            overrun_at: h.overrun_at,
            attempt: h.attempt,
            retry_of: h.retry_of,
            source_id: h.source_id,
            shard_index: h.shard_index,
            shard_total: h.shard_total,
        })
        .collect();
    let failed: Vec<i64> = rows
        .iter()
        .filter(|r| is_failure(&r.status))
        .map(|r| r.id)
        .collect();
    if !failed.is_empty() {
        let outputs: HashMap<i64, Option<String>> = run::Entity::find()
            .select_only()
            .column(run::Column::Id)
            .column(run::Column::Output)
            .filter(run::Column::Id.is_in(failed))
            .into_tuple::<(i64, Option<String>)>()
            .all(db)
            .await?
            .into_iter()
            .collect();
        for row in &mut rows {
            if let Some(output) = outputs.get(&row.id) {
                row.output.clone_from(output);
            }
        }
    }
    Ok(rows)
}

/// The request to retry run `row`, which ended `status`, when its job has attempts left.
fn retry(row: &run::Model, status: RunStatus, job: Option<&JobRecord>) -> Option<RetryRequest> {
    let job = job?;
    if !is_retried(status) || row.attempt > job.retries {
        return None;
    }
    let ended = row.finished_at.unwrap_or(row.scheduled_at);
    let due = ended + retry_delay(job.retry_delay_secs, row.attempt);
    Some(RetryRequest {
        due_ms: due.timestamp_millis(),
        attempt: row.attempt + 1,
        first_run: row.retry_of.unwrap_or(row.id),
        event: None,
        parent_run: None,
        // One run of a fanned-out tick: its retry keeps the place, and goes back to the
        // executor that had it (`name@address` in the row), if it is live.
        shard: (row.shard_total > 0).then(|| gocron_shared::job::Shard {
            index: row.shard_index,
            total: row.shard_total,
            executor: row
                .executor
                .rsplit_once('@')
                .map_or(row.executor.as_str(), |(name, _)| name)
                .to_owned(),
        }),
    })
}

/// Whether a run status is a `run_failed` alarm.
fn is_failure(status: &str) -> bool {
    matches!(
        status.parse::<RunStatus>(),
        Ok(RunStatus::Failed
            | RunStatus::Timeout
            | RunStatus::Lost
            | RunStatus::NoExecutor
            | RunStatus::Skipped)
    )
}
