//! Events → runs: every `poll_ms` the monitor reads the `cron_event` rows above its mark and,
//! for each, puts one request per subscribed job (enabled, valid, rule `@event NAME`) in etcd
//! (`{prefix}/event/{job}/{event}`, no lease), due at the event's `created_at` plus the job's
//! `delay_secs`. Dispatchers keep the requests until they are due and race for each one's lock
//! (keyed by job and event); the run row's unique key `(job, scheduled_at, 'event', event id)`
//! is the fence behind it, so each event runs each job once, however often its request is put.
//!
//! Ids come from an auto-increment, so an id skipped by the mark (a transaction not committed
//! yet) is a gap, read again by id each pass until it shows up or [`GAP_WAIT`] passes. The
//! mark saved in `cron_alarm_state` (`event_mark`) stays below the oldest gap, so that a
//! restarted monitor reads from there again: what it puts twice runs once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use gocron_shared::control::{self, EventRequest};
use gocron_shared::entity::{alarm_state, event, job};
use gocron_shared::job::{EventRef, MAX_EVENT_PAYLOAD_BYTES, Origin, RunStatus, Trigger, validate};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::machine::MachineGroups;
use gocron_shared::runs::RunLog;
use sea_orm::sea_query::{Expr, ExprTrait as _, Func};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

/// Events read per pass at most; the rest waits for the next pass.
const PAGE: u64 = 500;
/// How long a gap in event ids is read again before it is taken as a rolled-back insert.
pub const GAP_WAIT: Duration = Duration::from_secs(600);
/// The widest gap tracked id by id.
const MAX_GAP: i64 = 10_000;
/// The shared mark's name in `cron_alarm_state`.
const EVENT_MARK: &str = "event_mark";

/// A job subscribed to an event.
#[derive(Debug, Clone)]
struct Subscriber {
    job_id: i64,
    delay_secs: i32,
}

/// Turns events into requests for the dispatchers.
pub struct EventFeed {
    db: DatabaseConnection,
    etcd: etcd_client::Client,
    keys: EtcdKeys,
    machines: MachineGroups,
    default_tz: Tz,
    runs: RunLog,
    /// Events are read above this; `None` until read from the database.
    mark: Option<i64>,
    /// Ids skipped by the mark, and since when.
    gaps: BTreeMap<i64, Instant>,
    /// The mark last saved.
    saved: Option<i64>,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedReport {
    /// Events read.
    pub events: usize,
    /// Requests put (one per event and subscribed job).
    pub requested: usize,
}

impl EventFeed {
    /// A feed of `db`'s events into etcd; jobs are validated as the publisher does.
    pub fn new(
        db: DatabaseConnection,
        etcd: etcd_client::Client,
        keys: EtcdKeys,
        machines: MachineGroups,
        default_tz: Tz,
    ) -> EventFeed {
        EventFeed {
            runs: RunLog::spawn(db.clone()),
            db,
            etcd,
            keys,
            machines,
            default_tz,
            mark: None,
            gaps: BTreeMap::new(),
            saved: None,
        }
    }

    /// One pass; on an error nothing is lost: the events not handed over are read again.
    pub async fn pass(&mut self) -> Result<FeedReport, DbErr> {
        let result = self.try_pass().await;
        if result.is_err() {
            // Read again from the saved mark (what was put already runs once).
            self.mark = None;
            self.gaps.clear();
        }
        result
    }

    async fn try_pass(&mut self) -> Result<FeedReport, DbErr> {
        let mark = match self.mark {
            Some(mark) => mark,
            None => {
                let saved = alarm_state::Entity::find_by_id(EVENT_MARK.to_owned())
                    .one(&self.db)
                    .await?
                    .map_or(0, |r| r.value);
                self.saved = Some(saved);
                self.mark = Some(saved);
                saved
            }
        };
        let now = Instant::now();
        self.gaps.retain(|id, since| {
            let waiting = now.duration_since(*since) < GAP_WAIT;
            if !waiting {
                // A refused duplicate (`dedup_key`) also leaves a gap on MySQL and PostgreSQL.
                tracing::debug!(
                    event_id = id,
                    "an event id skipped {} s ago never showed up; taken as a rolled-back insert (an event committed later than that is not fired)",
                    GAP_WAIT.as_secs()
                );
            }
            waiting
        });
        let mut rows = event::Entity::find()
            .filter(event::Column::Id.gt(mark))
            .order_by_asc(event::Column::Id)
            .limit(PAGE)
            .all(&self.db)
            .await?;
        if !self.gaps.is_empty() {
            let ids: Vec<i64> = self.gaps.keys().copied().collect();
            for chunk in ids.chunks(500) {
                rows.extend(
                    event::Entity::find()
                        .filter(event::Column::Id.is_in(chunk.to_vec()))
                        .all(&self.db)
                        .await?,
                );
            }
        }
        let mut report = FeedReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        let subscribers = self.subscribers().await?;
        let mut new_mark = mark;
        for row in &rows {
            report.requested += self.hand_over(row, &subscribers).await?;
            report.events += 1;
            if row.id > new_mark {
                if row.id - new_mark <= MAX_GAP {
                    for gap in new_mark + 1..row.id {
                        self.gaps.insert(gap, now);
                    }
                } else {
                    tracing::warn!(
                        from = new_mark + 1,
                        to = row.id - 1,
                        "event ids skipped by more than {MAX_GAP} at once are not waited for"
                    );
                }
                new_mark = row.id;
            }
            self.gaps.remove(&row.id);
        }
        self.mark = Some(new_mark);
        // A restart reads again from below the oldest gap.
        let keep = self
            .gaps
            .keys()
            .next()
            .map_or(new_mark, |gap| std::cmp::min(gap - 1, new_mark));
        if self.saved != Some(keep) {
            save_mark(&self.db, keep).await?;
            self.saved = Some(keep);
        }
        Ok(report)
    }

    /// The enabled, valid `@event` jobs, by event name.
    async fn subscribers(&self) -> Result<HashMap<String, Vec<Subscriber>>, DbErr> {
        let rows = job::Entity::find()
            .filter(job::Column::Enabled.ne(0))
            .filter(job::Column::DoneAt.is_null())
            .filter(Expr::expr(Func::lower(Expr::col(job::Column::Rule))).like("%@event%"))
            .all(&self.db)
            .await?;
        let mut by_name: HashMap<String, Vec<Subscriber>> = HashMap::new();
        for row in rows {
            let Ok(spec) = validate(&row, &self.machines, self.default_tz) else {
                // Its `last_error` says why (the publisher writes it).
                continue;
            };
            let Ok(schedule) = spec.schedule(self.default_tz) else {
                continue;
            };
            if let Some(name) = schedule.rule().event() {
                by_name
                    .entry(name.to_owned())
                    .or_default()
                    .push(Subscriber {
                        job_id: row.id,
                        delay_secs: row.delay_secs,
                    });
            }
        }
        Ok(by_name)
    }

    /// Puts the requests of one event; how many.
    async fn hand_over(
        &mut self,
        row: &event::Model,
        subscribers: &HashMap<String, Vec<Subscriber>>,
    ) -> Result<usize, DbErr> {
        let Some(jobs) = subscribers.get(row.name.trim()) else {
            tracing::debug!(event_id = row.id, name = %row.name, "event without subscribed jobs");
            return Ok(0);
        };
        let payload = row.payload.clone().unwrap_or_default();
        let mut put = 0;
        for job in jobs {
            let due = row.created_at + chrono::Duration::seconds(i64::from(job.delay_secs));
            let event = EventRef {
                id: row.id,
                name: row.name.trim().to_owned(),
                payload: payload.clone(),
                delayed: job.delay_secs > 0,
                requested_ms: Utc::now().timestamp_millis(),
            };
            if payload.len() > MAX_EVENT_PAYLOAD_BYTES {
                let why = format!(
                    "the event's payload is {} bytes; at most {MAX_EVENT_PAYLOAD_BYTES} are handed to a command",
                    payload.len()
                );
                self.unrunnable(row, job.job_id, due, why).await?;
                continue;
            }
            if payload.contains('\0') {
                let why = "the event's payload holds a NUL byte, which no environment variable can"
                    .to_owned();
                self.unrunnable(row, job.job_id, due, why).await?;
                continue;
            }
            let request = EventRequest {
                due_ms: due.timestamp_millis(),
                event,
            };
            control::put_request(
                &mut self.etcd,
                self.keys.event_request_key(job.job_id, row.id),
                &request,
            )
            .await
            .map_err(|e| DbErr::Custom(format!("requesting event {}'s run: {e}", row.id)))?;
            tracing::info!(
                event_id = row.id,
                name = %row.name,
                job_id = job.job_id,
                due_ms = request.due_ms,
                "event run requested"
            );
            put += 1;
        }
        Ok(put)
    }

    /// Records a run that cannot be handed to a command (its payload), saying why.
    async fn unrunnable(
        &self,
        row: &event::Model,
        job_id: i64,
        due: DateTime<Utc>,
        why: String,
    ) -> Result<(), DbErr> {
        tracing::error!(event_id = row.id, job_id, "{why}");
        let origin = Origin {
            attempt: 1,
            first_run: None,
            source_id: row.id,
            ..Origin::default()
        };
        self.runs
            .settled(
                job_id,
                due,
                Trigger::Event,
                Some(&origin),
                RunStatus::Skipped,
                why,
            )
            .await?;
        Ok(())
    }
}

/// Saves the shared mark.
async fn save_mark(db: &DatabaseConnection, value: i64) -> Result<(), DbErr> {
    let updated = alarm_state::Entity::update_many()
        .col_expr(alarm_state::Column::Value, Expr::value(value))
        .filter(alarm_state::Column::Name.eq(EVENT_MARK))
        .exec(db)
        .await?;
    // MySQL counts an unchanged row as not affected: create it only if it is missing.
    if updated.rows_affected == 0
        && alarm_state::Entity::find_by_id(EVENT_MARK.to_owned())
            .one(db)
            .await?
            .is_none()
    {
        let row = alarm_state::ActiveModel {
            name: Set(EVENT_MARK.to_owned()),
            value: Set(value),
        };
        // Another monitor may create it at the same moment: either value is fine.
        let _ = alarm_state::Entity::insert(row).exec(db).await;
    }
    Ok(())
}
