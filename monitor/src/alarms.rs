//! The alarm table: recording an alarm once, and sending it once, across monitors.
//!
//! Every condition the checks find becomes one `cron_alarm` row per channel *before* anything
//! is sent. The row's `dedup_key` is unique: two monitors finding the same condition race on
//! the insert and one wins, so the alarm exists once. Sending starts with a claim, a
//! conditional `UPDATE` on the row's status and attempt count, so one monitor sends a row;
//! a claim lapses after [`CLAIM`] (its monitor died), and the row is tried again.
//!
//! On its first attempt a row passes two shared counters in `cron_alarm_state`, each changed
//! only by a conditional `UPDATE`, so monitors agree on them:
//! - the quiet period `quiet:{kind}:{job}:{channel}` (until when): taken, the row is sent;
//!   not, the row is `held` until the period ends, when all held rows of that condition go
//!   out as one `held_summary`;
//! - the daily cap `cap:{day}:{recipient}` (a count): recipients over it are dropped from the
//!   row (and named in its `error`); a row left without recipients is `capped`.
//!
//! A delivery that fails is retried with backoff (`check_ms` doubling up to [`MAX_BACKOFF`]),
//! [`MAX_ATTEMPTS`] times, and stays visible in the table with its error meanwhile and after.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use gocron_shared::alarm::config::AlarmConfig;
use gocron_shared::alarm::mail::{Mailer, is_address};
use gocron_shared::alarm::message::AlarmFacts;
use gocron_shared::alarm::sms::SmsGateway;
use gocron_shared::alarm::{AlarmKind, Channel, split_list};
use gocron_shared::db::is_unique_violation;
use gocron_shared::entity::{alarm, alarm_state};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TryInsertResult,
};

/// How long a claim on a row lasts; far above one delivery's timeouts.
pub const CLAIM: Duration = Duration::from_secs(120);
/// The longest wait between two attempts of one row.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Attempts after which a row is given up (`failed`).
pub const MAX_ATTEMPTS: i32 = 30;
/// Rows sent at once.
const PARALLEL: usize = 8;
/// Rows tried per pass at most.
const MAX_PER_PASS: usize = 500;

/// `cron_alarm.status` values.
pub mod status {
    /// Recorded, to be sent (or retried) from `next_attempt_at`.
    pub const PENDING: &str = "pending";
    /// Claimed by `claimed_by` until `next_attempt_at`.
    pub const SENDING: &str = "sending";
    /// Delivered at `sent_at`.
    pub const SENT: &str = "sent";
    /// Given up after every attempt failed; `error` says why.
    pub const FAILED: &str = "failed";
    /// Held by the quiet period until `next_attempt_at`, then counted in a `held_summary`.
    pub const HELD: &str = "held";
    /// Counted in a summary (held back, or found at start after downtime) instead of sent.
    pub const SUMMARISED: &str = "summarised";
    /// Every recipient had reached the daily cap.
    pub const CAPPED: &str = "capped";
    /// No channel is configured, or nobody to send it to: recorded for the record only.
    pub const NO_RECIPIENT: &str = "no_recipient";
}

/// A condition the checks found: what makes it one, and what it says.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Unique per occurrence, without the channel: `run_failed:run=42`.
    pub key: String,
    /// What the alarm says.
    pub facts: AlarmFacts,
    /// The job's own `alarm_emails`.
    pub emails: String,
    /// The job's own `alarm_mobiles`.
    pub mobiles: String,
}

/// One row a finding becomes, before it is inserted.
struct Draft {
    channel: &'static str,
    to: Vec<String>,
    subject: String,
    body: String,
    note: Option<String>,
}

/// The alarm table and the shared counters, for one monitor.
#[derive(Clone)]
pub struct AlarmStore {
    db: DatabaseConnection,
    config: Arc<AlarmConfig>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl AlarmStore {
    /// A store on `db` with `config`'s recipients and limits.
    pub fn new(db: DatabaseConnection, config: Arc<AlarmConfig>) -> AlarmStore {
        AlarmStore { db, config }
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The rows a finding becomes: one per configured channel with recipients, or one
    /// `none` row when there is none, so that the alarm is on record all the same.
    /// A job's malformed addresses are left out (and named in the row's `error`) rather than
    /// fail the whole mail.
    fn rows(&self, f: &Finding) -> Vec<Draft> {
        let mut rows = Vec::new();
        if self.config.smtp.is_some() {
            let mut to = self.config.mail_list.clone();
            to.extend(split_list(&f.emails));
            let (to, bad): (Vec<String>, Vec<String>) = split_list(&to.join(","))
                .into_iter()
                .partition(|a| is_address(a));
            let note = (!bad.is_empty())
                .then(|| format!("left out, not mail addresses: {}", bad.join(", ")));
            if !to.is_empty() {
                let body = f.facts.mail_body(&self.config.base_url);
                rows.push(Draft {
                    channel: "mail",
                    to,
                    subject: f.facts.subject(),
                    body,
                    note,
                });
            }
        }
        if self.config.sms.is_some() {
            let mut to = self.config.sms_mobiles.clone();
            to.extend(split_list(&f.mobiles));
            let to = split_list(&to.join(","));
            if !to.is_empty() {
                let text = f.facts.sms_text();
                rows.push(Draft {
                    channel: "sms",
                    to,
                    subject: text.clone(),
                    body: text,
                    note: None,
                });
            }
        }
        if rows.is_empty() {
            let body = f.facts.mail_body(&self.config.base_url);
            rows.push(Draft {
                channel: "none",
                to: Vec::new(),
                subject: f.facts.subject(),
                body,
                note: None,
            });
        }
        rows
    }

    /// Records `finding` (one row per channel) as `pending`, or with `status` and `note`;
    /// returns the rows inserted (0: another monitor, or an earlier pass, has it already).
    pub async fn record(
        &self,
        f: &Finding,
        as_status: Option<(&str, &str)>,
    ) -> Result<Vec<alarm::Model>, DbErr> {
        let now = Utc::now();
        let mut inserted = Vec::new();
        for Draft {
            channel,
            to,
            subject,
            body,
            note,
        } in self.rows(f)
        {
            let (row_status, error) = match (as_status, channel) {
                (Some((s, why)), _) => (s.to_owned(), Some(why.to_owned())),
                (None, "none") => (status::NO_RECIPIENT.to_owned(), None),
                (None, _) => (status::PENDING.to_owned(), note),
            };
            let row = alarm::ActiveModel {
                dedup_key: Set(format!("{}:{channel}", f.key)),
                kind: Set(f.facts.kind.as_str().to_owned()),
                channel: Set(channel.to_owned()),
                job_id: Set(f.facts.job.as_ref().map_or(0, |j| j.id)),
                run_id: Set(f.facts.run.as_ref().map(|r| r.id)),
                status: Set(row_status),
                recipients: Set(to.join(",")),
                subject: Set(subject),
                body: Set(body),
                attempts: Set(0),
                error: Set(error),
                created_at: Set(now),
                next_attempt_at: Set(now),
                sent_at: Set(None),
                claimed_by: Set(String::new()),
                ..Default::default()
            };
            match alarm::Entity::insert(row)
                .exec_with_returning(&self.db)
                .await
            {
                Ok(model) => {
                    gocron_shared::metrics::metrics()
                        .alarms
                        .with_label_values(&[model.kind.as_str(), model.channel.as_str()])
                        .inc();
                    inserted.push(model);
                }
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(inserted)
    }

    /// The value of counter `name`.
    pub async fn state(&self, name: &str) -> Result<Option<i64>, DbErr> {
        Ok(alarm_state::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?
            .map(|r| r.value))
    }

    /// Creates counter `name` with `value` unless it exists; whether this call created it.
    pub async fn create_state(&self, name: &str, value: i64) -> Result<bool, DbErr> {
        let row = alarm_state::ActiveModel {
            name: Set(name.to_owned()),
            value: Set(value),
        };
        // ON CONFLICT DO NOTHING (MySQL: a no-op update) rather than a caught error: most
        // calls find the counter there, and PostgreSQL would log each error.
        let result = alarm_state::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec_without_returning(&self.db)
            .await;
        match result {
            Ok(TryInsertResult::Inserted(n)) => Ok(n > 0),
            Ok(TryInsertResult::Conflicted | TryInsertResult::Empty) => Ok(false),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets counter `name` to `value`, creating it if needed.
    pub async fn set_state(&self, name: &str, value: i64) -> Result<(), DbErr> {
        let updated = alarm_state::Entity::update_many()
            .col_expr(alarm_state::Column::Value, Expr::value(value))
            .filter(alarm_state::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        // MySQL counts an unchanged row as not affected, so create only if it is missing.
        if updated.rows_affected == 0 && self.state(name).await?.is_none() {
            self.create_state(name, value).await?;
        }
        Ok(())
    }

    /// Deletes counter `name`.
    pub async fn delete_state(&self, name: &str) -> Result<(), DbErr> {
        alarm_state::Entity::delete_many()
            .filter(alarm_state::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Every counter whose name starts with `prefix`.
    pub async fn states_with_prefix(&self, prefix: &str) -> Result<Vec<(String, i64)>, DbErr> {
        Ok(alarm_state::Entity::find()
            .filter(alarm_state::Column::Name.starts_with(prefix))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.name, r.value))
            .collect())
    }

    /// Takes the quiet period of (kind, job, channel) if it is free: `Ok(None)` when taken
    /// (send), `Ok(Some(until))` when another alarm holds it until then (hold).
    async fn take_quiet(
        &self,
        kind: &str,
        job_id: i64,
        channel: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, DbErr> {
        if self.config.quiet.is_zero() {
            return Ok(None);
        }
        let name = format!("quiet:{kind}:{job_id}:{channel}");
        self.create_state(&name, 0).await?;
        let until = ms(now) + self.config.quiet.as_millis() as i64;
        let taken = alarm_state::Entity::update_many()
            .col_expr(alarm_state::Column::Value, Expr::value(until))
            .filter(alarm_state::Column::Name.eq(&name))
            .filter(alarm_state::Column::Value.lte(ms(now)))
            .exec(&self.db)
            .await?;
        if taken.rows_affected == 1 {
            return Ok(None);
        }
        let held_until = self.state(&name).await?.unwrap_or(until);
        Ok(Some(
            DateTime::from_timestamp_millis(held_until).unwrap_or(now + self.config.quiet),
        ))
    }

    /// Counts one alarm against `recipient`'s cap of the day; whether it is still under it.
    async fn take_cap(&self, recipient: &str, now: DateTime<Utc>) -> Result<bool, DbErr> {
        let cap = self.config.daily_cap;
        if cap == 0 {
            return Ok(true);
        }
        let who: String = recipient.chars().take(200).collect();
        let name = format!("cap:{}:{who}", now.format("%Y-%m-%d"));
        self.create_state(&name, 0).await?;
        let counted = alarm_state::Entity::update_many()
            .col_expr(
                alarm_state::Column::Value,
                sea_orm::sea_query::ExprTrait::add(Expr::col(alarm_state::Column::Value), 1),
            )
            .filter(alarm_state::Column::Name.eq(&name))
            .filter(alarm_state::Column::Value.lt(i64::from(cap)))
            .exec(&self.db)
            .await?;
        Ok(counted.rows_affected == 1)
    }

    /// Forgets the caps of days before `now`'s.
    pub async fn prune_caps(&self, now: DateTime<Utc>) -> Result<(), DbErr> {
        let today = format!("cap:{}:", now.format("%Y-%m-%d"));
        alarm_state::Entity::delete_many()
            .filter(alarm_state::Column::Name.starts_with("cap:"))
            .filter(alarm_state::Column::Name.lt(today))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// Sends what is due in the alarm table on one channel; one per channel and monitor, so that
/// a hanging SMTP server does not hold SMS back, nor a hanging gateway mail.
pub struct Sender {
    store: AlarmStore,
    config: Arc<AlarmConfig>,
    channel: Channel,
    mailer: Option<Mailer>,
    sms: Option<SmsGateway>,
    me: String,
}

/// What a delivery attempt came to.
enum Delivery {
    Sent,
    /// Held by the quiet period until then.
    Held(DateTime<Utc>),
    /// Every recipient was over the daily cap.
    Capped(String),
    /// Failed; retry these recipients.
    Failed(String, Vec<String>),
}

impl Sender {
    /// A sender of `channel`'s rows named `me` (in `claimed_by`); a channel whose set-up
    /// fails is logged, and its rows wait with the error.
    pub fn new(
        store: AlarmStore,
        config: Arc<AlarmConfig>,
        me: String,
        channel: Channel,
    ) -> Sender {
        let mailer = config.smtp.as_ref().and_then(|c| match Mailer::new(c) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "alarm mail is off: [alarm] SMTP settings unusable");
                None
            }
        });
        let sms = config.sms.as_ref().and_then(|c| match SmsGateway::new(c) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(error = %e, "alarm SMS is off: [alarm] SMS settings unusable");
                None
            }
        });
        Sender {
            store,
            config,
            channel,
            mailer,
            sms,
            me,
        }
    }

    /// One round: summarise held rows whose quiet period ended, then send every due row.
    pub async fn pass(&self) -> Result<(), DbErr> {
        self.summarise_held().await?;
        let now = Utc::now();
        // Times are compared here rather than in SQL, where SQLite would compare text; only
        // the due rows are read whole, a bounded number per pass, so a long outage's backlog
        // costs little while it waits.
        let waiting: Vec<(i64, DateTime<Utc>)> = alarm::Entity::find()
            .select_only()
            .column(alarm::Column::Id)
            .column(alarm::Column::NextAttemptAt)
            .filter(alarm::Column::Status.is_in([status::PENDING, status::SENDING]))
            .filter(alarm::Column::Channel.eq(self.channel.as_str()))
            .order_by_asc(alarm::Column::Id)
            .into_tuple()
            .all(self.store.db())
            .await?;
        let due_ids: Vec<i64> = waiting
            .into_iter()
            .filter(|(_, at)| *at <= now)
            .map(|(id, _)| id)
            .take(MAX_PER_PASS)
            .collect();
        if due_ids.is_empty() {
            return Ok(());
        }
        // Read again, and due again: a row claimed meanwhile by another monitor is now due in
        // the future. (A claim matches the status and attempt count read, and every claim
        // bumps the count, so a row read before another's claim cannot be claimed twice.)
        let due: Vec<alarm::Model> = alarm::Entity::find()
            .filter(alarm::Column::Id.is_in(due_ids))
            .order_by_asc(alarm::Column::Id)
            .all(self.store.db())
            .await?
            .into_iter()
            .filter(|r| {
                (r.status == status::PENDING || r.status == status::SENDING)
                    && r.next_attempt_at <= now
            })
            .collect();
        futures::stream::iter(due)
            .for_each_concurrent(PARALLEL, |row| async move {
                let id = row.id;
                if let Err(e) = self.attempt(row).await {
                    tracing::warn!(alarm_id = id, error = %e, "cannot record an alarm's delivery; will retry");
                }
            })
            .await;
        Ok(())
    }

    /// Hands back the rows this sender claimed (deliveries cut by shutdown), so that another
    /// monitor, or the next start, sends them now rather than when the claims lapse.
    pub async fn release(&self) -> Result<u64, DbErr> {
        let released = alarm::Entity::update_many()
            .col_expr(alarm::Column::Status, Expr::value(status::PENDING))
            .col_expr(alarm::Column::NextAttemptAt, Expr::value(Utc::now()))
            .filter(alarm::Column::Status.eq(status::SENDING))
            .filter(alarm::Column::Channel.eq(self.channel.as_str()))
            .filter(alarm::Column::ClaimedBy.eq(self.me.clone()))
            .exec(self.store.db())
            .await?;
        Ok(released.rows_affected)
    }

    /// Forgets the daily caps of past days.
    pub async fn prune(&self) -> Result<(), DbErr> {
        self.store.prune_caps(Utc::now()).await
    }

    /// Claims, sends and records one row.
    async fn attempt(&self, row: alarm::Model) -> Result<(), DbErr> {
        let now = Utc::now();
        let claim_until = now + CLAIM;
        let claimed = alarm::Entity::update_many()
            .col_expr(alarm::Column::Status, Expr::value(status::SENDING))
            .col_expr(alarm::Column::ClaimedBy, Expr::value(self.me.clone()))
            .col_expr(alarm::Column::Attempts, Expr::value(row.attempts + 1))
            .col_expr(alarm::Column::NextAttemptAt, Expr::value(claim_until))
            .filter(alarm::Column::Id.eq(row.id))
            .filter(alarm::Column::Status.eq(&row.status))
            .filter(alarm::Column::Attempts.eq(row.attempts))
            .exec(self.store.db())
            .await?;
        if claimed.rows_affected != 1 {
            return Ok(()); // another monitor has it
        }
        let attempts = row.attempts + 1;
        let mut recipients = split_list(&row.recipients);
        let mut note = None;
        let delivery = 'd: {
            if row.attempts == 0 {
                let kind: Option<AlarmKind> = row.kind.parse().ok();
                if kind.is_some_and(AlarmKind::is_quieted)
                    && let Some(until) = self
                        .store
                        .take_quiet(&row.kind, row.job_id, &row.channel, now)
                        .await?
                {
                    break 'd Delivery::Held(until);
                }
                let mut kept = Vec::new();
                let mut over = Vec::new();
                for r in recipients {
                    if self.store.take_cap(&r, now).await? {
                        kept.push(r);
                    } else {
                        over.push(r);
                    }
                }
                if !over.is_empty() {
                    note = Some(format!(
                        "daily cap of {} reached for {}",
                        self.config.daily_cap,
                        over.join(", ")
                    ));
                }
                recipients = kept;
                if recipients.is_empty() {
                    break 'd Delivery::Capped(note.clone().unwrap_or_default());
                }
            }
            self.deliver(&row, &recipients).await
        };
        let done = Utc::now();
        let update = alarm::Entity::update_many()
            .filter(alarm::Column::Id.eq(row.id))
            .filter(alarm::Column::Status.eq(status::SENDING))
            .filter(alarm::Column::ClaimedBy.eq(self.me.clone()))
            .filter(alarm::Column::Attempts.eq(attempts));
        let update = match delivery {
            Delivery::Sent => {
                tracing::info!(alarm_id = row.id, kind = %row.kind, channel = %row.channel, job_id = row.job_id, to = %recipients.join(","), "alarm sent");
                let update = update
                    .col_expr(alarm::Column::Status, Expr::value(status::SENT))
                    .col_expr(alarm::Column::SentAt, Expr::value(Some(done)))
                    .col_expr(alarm::Column::Recipients, Expr::value(recipients.join(",")));
                // Otherwise `error` keeps what it said: addresses left out, or the last
                // delivery error before this success.
                match note {
                    Some(note) => update.col_expr(alarm::Column::Error, Expr::value(Some(note))),
                    None => update,
                }
            }
            Delivery::Held(until) => {
                tracing::info!(alarm_id = row.id, kind = %row.kind, job_id = row.job_id, "alarm held by the quiet period");
                update
                    .col_expr(alarm::Column::Status, Expr::value(status::HELD))
                    .col_expr(alarm::Column::NextAttemptAt, Expr::value(until))
                    .col_expr(
                        alarm::Column::Error,
                        Expr::value(Some(format!(
                            "held: the same alarm was sent less than quiet_secs = {} ago",
                            self.config.quiet.as_secs()
                        ))),
                    )
            }
            Delivery::Capped(why) => {
                tracing::warn!(alarm_id = row.id, kind = %row.kind, job_id = row.job_id, "alarm not sent: {why}");
                update
                    .col_expr(alarm::Column::Status, Expr::value(status::CAPPED))
                    .col_expr(alarm::Column::Error, Expr::value(Some(why)))
            }
            Delivery::Failed(error, left) => {
                let give_up = attempts >= MAX_ATTEMPTS;
                let backoff = self
                    .config
                    .check_interval
                    .saturating_mul(1 << (attempts - 1).clamp(0, 20))
                    .min(MAX_BACKOFF);
                if give_up {
                    tracing::error!(alarm_id = row.id, kind = %row.kind, channel = %row.channel, attempts, error = %error, "alarm given up");
                } else {
                    tracing::warn!(alarm_id = row.id, kind = %row.kind, channel = %row.channel, attempts, error = %error, retry_in_ms = backoff.as_millis() as u64, "alarm not delivered; will retry");
                }
                let status = if give_up {
                    status::FAILED
                } else {
                    status::PENDING
                };
                update
                    .col_expr(alarm::Column::Status, Expr::value(status))
                    .col_expr(alarm::Column::NextAttemptAt, Expr::value(done + backoff))
                    .col_expr(alarm::Column::Recipients, Expr::value(left.join(",")))
                    .col_expr(alarm::Column::Error, Expr::value(Some(error)))
            }
        };
        update.exec(self.store.db()).await?;
        Ok(())
    }

    /// Sends `row` to `recipients` on its channel.
    async fn deliver(&self, row: &alarm::Model, recipients: &[String]) -> Delivery {
        let channel: Result<Channel, _> = row.channel.parse();
        match channel {
            Ok(Channel::Mail) => match &self.mailer {
                Some(mailer) => match mailer
                    .send(
                        recipients,
                        &row.subject,
                        &row.body,
                        &format!(
                            "gocron-alarm-{}-{}",
                            row.id,
                            row.created_at.timestamp_millis()
                        ),
                    )
                    .await
                {
                    Ok(()) => Delivery::Sent,
                    Err(e) => Delivery::Failed(e.to_string(), recipients.to_vec()),
                },
                None => Delivery::Failed("mail is not configured".into(), recipients.to_vec()),
            },
            Ok(Channel::Sms) => match &self.sms {
                Some(gateway) => {
                    // One request per mobile; only those that failed are tried again.
                    let mut left = Vec::new();
                    let mut errors = Vec::new();
                    for mobile in recipients {
                        if let Err(e) = gateway.send(mobile, &row.body).await {
                            errors.push(format!("{mobile}: {e}"));
                            left.push(mobile.clone());
                        }
                    }
                    if left.is_empty() {
                        Delivery::Sent
                    } else {
                        Delivery::Failed(errors.join("; "), left)
                    }
                }
                None => Delivery::Failed("SMS is not configured".into(), recipients.to_vec()),
            },
            Err(e) => Delivery::Failed(e, recipients.to_vec()),
        }
    }

    /// Turns the held rows of each (kind, job, channel) whose quiet period ended into one
    /// `held_summary` row.
    async fn summarise_held(&self) -> Result<(), DbErr> {
        let now = Utc::now();
        let held: Vec<alarm::Model> = alarm::Entity::find()
            .filter(alarm::Column::Status.eq(status::HELD))
            .filter(alarm::Column::Channel.eq(self.channel.as_str()))
            .order_by_asc(alarm::Column::Id)
            .all(self.store.db())
            .await?
            .into_iter()
            .filter(|r| r.next_attempt_at <= now)
            .collect();
        let mut groups: std::collections::BTreeMap<(String, i64, String), Vec<alarm::Model>> =
            Default::default();
        for row in held {
            groups
                .entry((row.kind.clone(), row.job_id, row.channel.clone()))
                .or_default()
                .push(row);
        }
        for ((kind, job_id, channel), rows) in groups {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let last = *ids.last().unwrap_or(&0);
            let taken = alarm::Entity::update_many()
                .col_expr(alarm::Column::Status, Expr::value(status::SUMMARISED))
                .col_expr(
                    alarm::Column::Error,
                    Expr::value(Some(format!(
                        "counted in the held_summary after alarm {last}"
                    ))),
                )
                .filter(alarm::Column::Id.is_in(ids.clone()))
                .filter(alarm::Column::Status.eq(status::HELD))
                .exec(self.store.db())
                .await?;
            if taken.rows_affected == 0 {
                continue; // another monitor summarised them
            }
            let n = taken.rows_affected;
            let mut recipients: Vec<String> = Vec::new();
            for r in &rows {
                recipients.extend(split_list(&r.recipients));
            }
            let recipients = split_list(&recipients.join(","));
            let job = if job_id == 0 {
                String::new()
            } else {
                format!(" of job {job_id}")
            };
            let subject = format!("[gocron] held_summary: {n} more {kind} alarm(s){job}");
            let mut body = format!(
                "{n} more {kind} alarm(s){job} were held back by the quiet period \
                 (quiet_secs = {}); they are in cron_alarm with status summarised.\n\n",
                self.config.quiet.as_secs()
            );
            for r in &rows {
                body.push_str(&format!(
                    "- alarm {} at {}: {}\n",
                    r.id,
                    r.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.subject
                ));
            }
            let text = format!("gocron: {n} more {kind} alarm(s){job} held back");
            let (subject, body) = if channel == "sms" {
                (text.clone(), text)
            } else {
                (subject, body)
            };
            let row = alarm::ActiveModel {
                dedup_key: Set(format!("held_summary:{kind}:{job_id}:{last}:{channel}")),
                kind: Set(AlarmKind::HeldSummary.as_str().to_owned()),
                channel: Set(channel),
                job_id: Set(job_id),
                run_id: Set(None),
                status: Set(status::PENDING.to_owned()),
                recipients: Set(recipients.join(",")),
                subject: Set(subject),
                body: Set(body),
                attempts: Set(0),
                error: Set(None),
                created_at: Set(now),
                next_attempt_at: Set(now),
                sent_at: Set(None),
                claimed_by: Set(String::new()),
                ..Default::default()
            };
            match alarm::Entity::insert(row).exec(self.store.db()).await {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
