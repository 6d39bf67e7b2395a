//! The tick ledger: every tick of every published job ends with a row in `cron_run`.
//!
//! A dispatcher writes a tick's row after winning its lock. If that write fails (the database is
//! down) or the dispatcher dies between the two, no dispatcher fires the tick again: the lock
//! keeps the others off, and the job's scheduling mark in Redis has already moved past it. The
//! ledger is what makes such a tick visible instead of silent, whatever the cause: for each job
//! it walks the ticks of its rule in order and, for a tick that has no row once it is *settled*,
//! inserts a `missed` row saying so (the alarm follows from the row, like any other `missed`).
//!
//! A tick is settled `settle` (2 × the etcd lease TTL + `grace_secs`) after its instant, once no
//! dispatcher can still be about to fire it: a later tick of the job has a row, or the job's
//! scheduling mark has reached it (a dispatcher won it, or won a later one, and handled the
//! misfire window before it), or `catchup_secs` have passed too (no starting dispatcher looks
//! that far back). A row that a slow dispatcher writes after the ledger's is refused by the
//! run table's unique key (`job_id, scheduled_at, trigger, source_id, shard_index`: the ledger's
//! row has the 0s that every write of a tick includes), and that dispatcher does not run the
//! tick: the tick is accounted for once either way.
//!
//! Rows are learnt from the checks' scan of new runs (no query in the steady state); a tick
//! whose row the scan has not shown (a monitor restart, a scan behind) is looked up by its job
//! and instant. How far each job is accounted for is kept in Redis
//! (`{prefix}:accounted`), so a restarted monitor resumes where it was (at most
//! [`MAX_BACKFILL`] back) instead of re-reading history or skipping its own downtime. Jobs are
//! owed ticks from `grace_secs` after the monitor first publishes their rule; a job retimed or
//! withdrawn is still owed the ticks of its old rule up to the change.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use chrono::{DateTime, Utc};
use gocron_shared::entity::run;
use gocron_shared::lock::Fences;
use gocron_shared::rule::Schedule;
use gocron_shared::runs::RunLog;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect};

/// How far back a restarted monitor goes to account for ticks.
pub const MAX_BACKFILL: chrono::TimeDelta = chrono::TimeDelta::hours(6);
/// The most ticks of one job walked in one look; the rest waits for the next pass.
const MAX_TICKS_PER_LOOK: usize = 1000;
/// The most jobs looked at in one pass (a look at a job whose rows the scan showed is a few
/// lookups in memory).
const MAX_LOOKS_PER_PASS: usize = 20_000;
/// A job is looked at no more often than this (frequent rules are accounted in batches).
const LOOK_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// What a `missed` row written by the ledger says.
pub const UNRECORDED: &str = "no run was recorded for this tick: the dispatcher that won it \
could not write its row (database unavailable, or it died in between), or no dispatcher fired it \
within catchup_secs; recorded by the monitor";

/// The ticks of one rule of one job, accounted for up to `through`.
#[derive(Debug, Clone)]
struct Account {
    job_id: i64,
    schedule: Schedule,
    /// Every tick up to this instant is accounted for; the ones after are owed.
    through: DateTime<Utc>,
    /// The rule was replaced or the job withdrawn at this instant: ticks after it are not owed.
    until: Option<DateTime<Utc>>,
    /// Ticks up to this one were looked up in the database and had no row then (the scan shows
    /// any row written since).
    looked_up: DateTime<Utc>,
}

/// A rule to open an account for, at the next pass.
#[derive(Debug, Clone)]
struct Opening {
    job_id: i64,
    schedule: Schedule,
    shape: u64,
    /// Whether the job was published with this rule before this monitor looked (it resumes
    /// from the job's mark), or is new (owed from now).
    resume: bool,
    at: DateTime<Utc>,
}

/// The ledger's memory.
pub struct Ledger {
    settle: chrono::TimeDelta,
    catchup: chrono::TimeDelta,
    grace: chrono::TimeDelta,
    /// Accounts by (job, serial): a job has its current one and, for a while, retired ones.
    accounts: BTreeMap<(i64, u64), Account>,
    /// The current account of each job, and the rule's shape (a hash of rule and zone).
    current: HashMap<i64, (u64, u64)>,
    serial: u64,
    /// The rules to open accounts for, by job (the latest one taken in wins).
    openings: HashMap<i64, Opening>,
    /// When to look at an account again (unix ms), earliest first.
    due: BinaryHeap<Reverse<(i64, i64, u64)>>,
    /// Instants of the scheduled rows seen per job, after its accounts' marks.
    seen: HashMap<i64, BTreeSet<i64>>,
}

/// What one pass of the ledger did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Ticks found without a row and recorded `missed`.
    pub recorded: usize,
}

impl Ledger {
    /// A ledger settling ticks `settle` after their instant (see the module's documentation).
    pub fn new(
        settle: std::time::Duration,
        catchup: std::time::Duration,
        grace: std::time::Duration,
    ) -> Ledger {
        let delta = |d| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        Ledger {
            settle: delta(settle),
            catchup: delta(catchup),
            grace: delta(grace),
            accounts: BTreeMap::new(),
            current: HashMap::new(),
            serial: 0,
            openings: HashMap::new(),
            due: BinaryHeap::new(),
            seen: HashMap::new(),
        }
    }

    /// Takes in a job's rule as published (`None`: not scheduled: disabled, invalid, done,
    /// deleted). `shape` tells rules apart (rule and zone); `resume`: the job was already
    /// published with this rule when this monitor looked.
    pub fn job(
        &mut self,
        job_id: i64,
        scheduled: Option<(Schedule, u64)>,
        resume: bool,
        now: DateTime<Utc>,
    ) {
        if let (Some((_, shape)), Some((_, current))) = (&scheduled, self.current.get(&job_id))
            && shape == current
        {
            return;
        }
        self.openings.remove(&job_id);
        if let Some((serial, _)) = self.current.remove(&job_id)
            && let Some(account) = self.accounts.get_mut(&(job_id, serial))
        {
            // Owed the old rule's ticks up to now; settled like the others, then closed.
            account.until = Some(now);
            self.due
                .push(Reverse((now.timestamp_millis(), job_id, serial)));
        }
        if let Some((schedule, shape)) = scheduled {
            self.openings.insert(
                job_id,
                Opening {
                    job_id,
                    schedule,
                    shape,
                    resume,
                    at: now,
                },
            );
        }
    }

    /// Takes in a scheduled run row of `job_id` for the tick at `scheduled_at`.
    pub fn saw(&mut self, job_id: i64, scheduled_at: DateTime<Utc>) {
        let Some(oldest) = self.oldest_mark(job_id) else {
            return;
        };
        if scheduled_at > oldest {
            self.seen
                .entry(job_id)
                .or_default()
                .insert(scheduled_at.timestamp_millis());
        }
    }

    fn oldest_mark(&self, job_id: i64) -> Option<DateTime<Utc>> {
        self.accounts
            .range((job_id, 0)..=(job_id, u64::MAX))
            .map(|(_, a)| a.through)
            .min()
    }

    /// Opens the accounts taken in since the last pass: a job already published resumes from
    /// its mark in Redis; a new rule is owed from `grace_secs` on (a dispatcher learns of it a
    /// little after the monitor publishes it).
    async fn open(&mut self, fences: &Fences, now: DateTime<Utc>) -> Result<(), String> {
        if self.openings.is_empty() {
            return Ok(());
        }
        let resuming: Vec<i64> = self
            .openings
            .values()
            .filter(|o| o.resume)
            .map(|o| o.job_id)
            .collect();
        let marks: HashMap<i64, i64> = fences
            .accounted(&resuming)
            .await
            .map_err(|e| format!("redis: reading the ledger's marks: {e}"))?
            .into_iter()
            .zip(&resuming)
            .filter_map(|(mark, id)| Some((*id, mark?)))
            .collect();
        let mut writes = Vec::new();
        let mut too_old = 0usize;
        for o in std::mem::take(&mut self.openings).into_values() {
            let fresh = o.at + self.grace;
            let through = match marks
                .get(&o.job_id)
                .and_then(|ms| DateTime::from_timestamp_millis(*ms))
            {
                Some(mark) if mark < now - MAX_BACKFILL => {
                    too_old += 1;
                    now - MAX_BACKFILL
                }
                Some(mark) => mark,
                None => {
                    writes.push((o.job_id, Some(fresh.timestamp_millis())));
                    fresh
                }
            };
            self.serial += 1;
            let serial = self.serial;
            self.accounts.insert(
                (o.job_id, serial),
                Account {
                    job_id: o.job_id,
                    schedule: o.schedule,
                    through,
                    until: None,
                    looked_up: through,
                },
            );
            self.current.insert(o.job_id, (serial, o.shape));
            self.due
                .push(Reverse((now.timestamp_millis(), o.job_id, serial)));
        }
        if too_old > 0 {
            tracing::warn!(
                jobs = too_old,
                hours = MAX_BACKFILL.num_hours(),
                "the tick ledger resumes no further back than this: older ticks without a row are not recorded"
            );
        }
        if let Err(e) = fences.set_accounted(&writes).await {
            tracing::warn!(error = %e, "cannot record where new jobs' ticks are owed from");
        }
        Ok(())
    }

    /// Looks at the accounts due: every settled tick without a row gets a `missed` row.
    /// An error (database, Redis) leaves the accounts where they were, for the next pass.
    pub async fn settle(
        &mut self,
        db: &DatabaseConnection,
        runs: &RunLog,
        fences: &Fences,
        last_tick: &HashMap<i64, DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Settled, DbErr> {
        self.open(fences, now).await.map_err(DbErr::Custom)?;
        let mut settled = Settled::default();
        let mut marks = Vec::new();
        let mut looks = 0;
        let mut result = Ok(());
        while let Some(Reverse((at, job_id, serial))) = self.due.peek().copied() {
            if at > now.timestamp_millis() || looks >= MAX_LOOKS_PER_PASS {
                break;
            }
            self.due.pop();
            let Some(account) = self.accounts.get(&(job_id, serial)).cloned() else {
                continue;
            };
            looks += 1;
            match self
                .look(account, db, runs, fences, last_tick, now, &mut settled)
                .await
            {
                Ok((account, again)) => {
                    let key = (job_id, serial);
                    let before = self.accounts.get(&key).map(|a| a.through);
                    let closed = account.until.is_some_and(|until| {
                        account
                            .schedule
                            .next_after(account.through)
                            .is_none_or(|t| t > until)
                    });
                    if self.current.get(&job_id).is_some_and(|(s, _)| *s == serial)
                        && before != Some(account.through)
                    {
                        marks.push((job_id, Some(account.through.timestamp_millis())));
                    }
                    if closed {
                        self.accounts.remove(&key);
                        if !self.current.contains_key(&job_id) {
                            self.seen.remove(&job_id);
                            marks.push((job_id, None));
                        }
                    } else {
                        self.accounts.insert(key, account);
                        if let Some(again) = again {
                            self.due
                                .push(Reverse((again.timestamp_millis(), job_id, serial)));
                        }
                    }
                    if let Some(oldest) = self.oldest_mark(job_id)
                        && let Some(seen) = self.seen.get_mut(&job_id)
                    {
                        let keep = seen.split_off(&(oldest.timestamp_millis() + 1));
                        *seen = keep;
                    }
                }
                Err(e) => {
                    self.due
                        .push(Reverse((now.timestamp_millis(), job_id, serial)));
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = fences.set_accounted(&marks).await {
            tracing::warn!(error = %e, "cannot record how far jobs' ticks are accounted for");
        }
        result.map(|()| settled)
    }

    /// Walks one account's owed ticks; the account moved forward, and when to look again.
    #[allow(clippy::too_many_arguments)]
    async fn look(
        &mut self,
        mut account: Account,
        db: &DatabaseConnection,
        runs: &RunLog,
        fences: &Fences,
        last_tick: &HashMap<i64, DateTime<Utc>>,
        now: DateTime<Utc>,
        settled: &mut Settled,
    ) -> Result<(Account, Option<DateTime<Utc>>), DbErr> {
        let job_id = account.job_id;
        let horizon = account
            .until
            .map_or(now - self.settle, |until| until.min(now - self.settle));
        let mut ticks = Vec::new();
        let mut at = account.through;
        while ticks.len() < MAX_TICKS_PER_LOOK {
            match account.schedule.next_after(at) {
                Some(t) if t <= horizon => {
                    ticks.push(t);
                    at = t;
                }
                _ => break,
            }
        }
        let full = ticks.len() == MAX_TICKS_PER_LOOK;
        let seen = self.seen.entry(job_id).or_default();
        let unseen: Vec<DateTime<Utc>> = ticks
            .iter()
            .copied()
            .filter(|t| *t > account.looked_up && !seen.contains(&t.timestamp_millis()))
            .collect();
        if let (Some(first), Some(last)) = (unseen.first(), unseen.last()) {
            let found: Vec<DateTime<Utc>> = run::Entity::find()
                .select_only()
                .column(run::Column::ScheduledAt)
                .filter(run::Column::JobId.eq(job_id))
                .filter(run::Column::Trigger.eq("schedule"))
                .filter(run::Column::ScheduledAt.gte(*first))
                .filter(run::Column::ScheduledAt.lte(*last))
                .into_tuple()
                .all(db)
                .await?;
            seen.extend(found.iter().map(|t| t.timestamp_millis()));
            account.looked_up = *last;
        }
        let mut mark: Option<Option<i64>> = None;
        let mut stuck = false;
        for t in ticks {
            let seen = self.seen.entry(job_id).or_default();
            if seen.contains(&t.timestamp_millis()) {
                account.through = t;
                continue;
            }
            let later_row = seen.range(t.timestamp_millis() + 1..).next().is_some()
                || last_tick.get(&job_id).is_some_and(|last| *last > t);
            let mut ready =
                account.until.is_some() || later_row || now - t >= self.catchup + self.settle;
            if !ready {
                if mark.is_none() {
                    let through = fences
                        .scheduled_through(&[job_id])
                        .await
                        .map_err(|e| DbErr::Custom(format!("redis: {e}")))?;
                    mark = Some(through.first().copied().flatten());
                }
                ready = mark.flatten().is_some_and(|ms| ms >= t.timestamp_millis());
            }
            if !ready {
                stuck = true;
                break;
            }
            if runs
                .missed(job_id, t, UNRECORDED.to_owned())
                .await?
                .is_some()
            {
                settled.recorded += 1;
                tracing::warn!(job_id, tick = %t, "a tick had no run row; recorded missed");
            }
            self.seen
                .entry(job_id)
                .or_default()
                .insert(t.timestamp_millis());
            account.through = t;
        }
        let soon = now + LOOK_EVERY;
        let again = if stuck || full {
            Some(soon)
        } else {
            // No next tick: nothing more is owed under this rule.
            account
                .schedule
                .next_after(account.through)
                .map(|next| (next + self.settle).max(soon))
        };
        Ok((account, again))
    }
}
