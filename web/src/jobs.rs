//! `cron_job` through the API. Every write is validated as the monitor validates rows (a bad
//! row is a 422 with the words `last_error` would hold) and audited in its own transaction.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, DurationRound as _, Utc};
use chrono_tz::Tz;
use gocron_shared::entity::job;
use gocron_shared::job::validate;
use sea_orm::sea_query::{Expr, ExprTrait as _, Func, LikeExpr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait as _, Condition, ConnectionTrait, DatabaseTransaction,
    EntityTrait as _, FromQueryResult, PaginatorTrait as _, QueryFilter as _, QueryOrder as _,
    QuerySelect as _, Statement, TransactionTrait as _,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::audit;
use crate::auth::{Admin, Reader};
use crate::error::ApiError;
use crate::extract::{Body, Id, Query, paging};

/// A `cron_job` row as the API shows it (and as `cron_audit` records it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRow {
    /// `id`.
    pub id: i64,
    /// `name`.
    pub name: String,
    /// `rule`.
    pub rule: String,
    /// `command`.
    pub command: String,
    /// `kind`.
    pub kind: String,
    /// `machine`.
    pub machine: String,
    /// `timeout_secs`.
    pub timeout_secs: i32,
    /// `timeout_policy`.
    pub timeout_policy: String,
    /// `time_zone`.
    pub time_zone: String,
    /// `enabled` (the column holds 1 or 0).
    pub enabled: bool,
    /// `alarm_emails`.
    pub alarm_emails: String,
    /// `alarm_mobiles`.
    pub alarm_mobiles: String,
    /// `misfire`.
    pub misfire: String,
    /// `env`: `KEY=VALUE` lines.
    pub env: String,
    /// `workdir`.
    pub workdir: String,
    /// `retries`.
    pub retries: i32,
    /// `retry_delay_secs`.
    pub retry_delay_secs: i32,
    /// `delay_secs`: for an `@event` job, how long after the event it runs.
    pub delay_secs: i32,
    /// `on_success`: jobs (ids or names) started when a run succeeds.
    pub on_success: String,
    /// `on_failure`: jobs started when a run fails for good.
    pub on_failure: String,
    /// `route`: which executor of the group gets a run first.
    pub route: String,
    /// `created_at`.
    pub created_at: DateTime<Utc>,
    /// `updated_at`.
    pub updated_at: DateTime<Utc>,
    /// `last_error`: the monitor's verdict; null when the row is fine.
    pub last_error: Option<String>,
    /// `done_at`: when a one-shot job ran.
    pub done_at: Option<DateTime<Utc>>,
}

impl From<&job::Model> for JobRow {
    fn from(m: &job::Model) -> JobRow {
        JobRow {
            id: m.id,
            name: m.name.clone(),
            rule: m.rule.clone(),
            command: m.command.clone(),
            kind: m.kind.clone(),
            machine: m.machine.clone(),
            timeout_secs: m.timeout_secs,
            timeout_policy: m.timeout_policy.clone(),
            time_zone: m.time_zone.clone(),
            enabled: m.enabled != 0,
            alarm_emails: m.alarm_emails.clone(),
            alarm_mobiles: m.alarm_mobiles.clone(),
            misfire: m.misfire.clone(),
            env: m.env.clone(),
            workdir: m.workdir.clone(),
            retries: m.retries,
            retry_delay_secs: m.retry_delay_secs,
            delay_secs: m.delay_secs,
            on_success: m.on_success.clone(),
            on_failure: m.on_failure.clone(),
            route: m.route.clone(),
            created_at: m.created_at,
            updated_at: m.updated_at,
            last_error: m.last_error.clone(),
            done_at: m.done_at,
        }
    }
}

/// A job as the API returns it: its columns and when it fires next.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// The columns.
    #[serde(flatten)]
    pub row: JobRow,
    /// The next tick after now, by shared's rule engine; null when the job is disabled, done,
    /// invalid, or never fires again.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Its run of the newest tick (null: it has none).
    pub last_run: Option<LastRun>,
}

/// A job's run of its newest tick, in a job's view.
#[derive(Debug, Clone, Serialize, FromQueryResult)]
pub struct LastRun {
    /// The run's `id`.
    pub id: i64,
    /// The job's `id`.
    #[serde(skip)]
    pub job_id: i64,
    /// `status`.
    pub status: String,
    /// `scheduled_at`.
    pub scheduled_at: DateTime<Utc>,
}

/// The last run of each of `job_ids` that has one, in one statement for a whole page: the
/// newest tick by the `(job_id, scheduled_at, trigger)` key, the newest row among that tick's
/// (a schedule and a manual run may share an instant).
pub async fn last_runs(
    db: &impl ConnectionTrait,
    job_ids: &[i64],
) -> Result<HashMap<i64, LastRun>, ApiError> {
    if job_ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Integers, so written into the text rather than bound (placeholders differ by backend).
    let ids = job_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT id, job_id, status, scheduled_at FROM cron_run WHERE id IN (\
            SELECT MAX(r.id) FROM cron_run r JOIN (\
                SELECT job_id, MAX(scheduled_at) AS newest FROM cron_run \
                WHERE job_id IN ({ids}) GROUP BY job_id\
            ) m ON r.job_id = m.job_id AND r.scheduled_at = m.newest \
            GROUP BY r.job_id)"
    );
    let rows = LastRun::find_by_statement(Statement::from_string(db.get_database_backend(), sql))
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|r| (r.job_id, r)).collect())
}

impl JobView {
    /// The view of `m` with its `last_run`, its next tick computed in `state`'s default zone.
    pub fn of(
        m: &job::Model,
        state: &AppState,
        now: DateTime<Utc>,
        last_run: Option<LastRun>,
    ) -> JobView {
        let next_fire_at = (m.enabled != 0 && m.done_at.is_none())
            .then(|| validate(m, state.machines(), state.default_tz()).ok())
            .flatten()
            .and_then(|spec| spec.schedule(state.default_tz()).ok())
            .and_then(|schedule| schedule.next_after(now));
        JobView {
            row: JobRow::from(m),
            next_fire_at,
            last_run,
        }
    }
}

/// `enabled` in a request: `true`/`false`, or the column's `1`/`0`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Enabled {
    /// `true` or `false`.
    Bool(bool),
    /// `1` or `0` (any other number is refused).
    Int(i64),
}

impl Enabled {
    fn column(self) -> Result<i32, ApiError> {
        match self {
            Enabled::Bool(b) => Ok(i32::from(b)),
            Enabled::Int(n @ (0 | 1)) => Ok(n as i32),
            Enabled::Int(n) => Err(ApiError::Invalid(format!(
                "enabled {n} must be true, false, 1 or 0"
            ))),
        }
    }
}

/// The writable columns of a job: all of them for `POST` (`name`, `rule` and `command`
/// required, the rest defaulting as in the table), the ones to change for `PATCH`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// `name`.
    pub name: Option<String>,
    /// `rule`.
    pub rule: Option<String>,
    /// `command`.
    pub command: Option<String>,
    /// `kind` (default `shell`).
    pub kind: Option<String>,
    /// `machine` (default empty: any executor).
    pub machine: Option<String>,
    /// `timeout_secs` (default 0).
    pub timeout_secs: Option<i32>,
    /// `timeout_policy` (default `abandon`).
    pub timeout_policy: Option<String>,
    /// `time_zone` (default empty: `[dispatcher] time_zone`).
    pub time_zone: Option<String>,
    /// `enabled` (default true).
    pub enabled: Option<Enabled>,
    /// `alarm_emails` (default empty).
    pub alarm_emails: Option<String>,
    /// `alarm_mobiles` (default empty).
    pub alarm_mobiles: Option<String>,
    /// `misfire` (default `skip`).
    pub misfire: Option<String>,
    /// `env` (default empty): `KEY=VALUE` lines.
    pub env: Option<String>,
    /// `workdir` (default empty: the executor's own).
    pub workdir: Option<String>,
    /// `retries` (default 0).
    pub retries: Option<i32>,
    /// `retry_delay_secs` (default 10).
    pub retry_delay_secs: Option<i32>,
    /// `delay_secs` (default 0): for an `@event` job.
    pub delay_secs: Option<i32>,
    /// `on_success` (default empty).
    pub on_success: Option<String>,
    /// `on_failure` (default empty).
    pub on_failure: Option<String>,
    /// `route` (default `round_robin`).
    pub route: Option<String>,
}

impl JobInput {
    /// Writes the given columns into `row` (to validate it) and `active` (to store just them).
    fn apply(self, row: &mut job::Model, active: &mut job::ActiveModel) -> Result<(), ApiError> {
        macro_rules! put {
            ($($field:ident),+) => {$(
                if let Some(value) = self.$field {
                    row.$field = value.clone();
                    active.$field = Set(value);
                }
            )+};
        }
        put!(
            name,
            rule,
            command,
            kind,
            machine,
            timeout_secs,
            timeout_policy,
            time_zone,
            alarm_emails,
            alarm_mobiles,
            misfire,
            env,
            workdir,
            retries,
            retry_delay_secs,
            delay_secs,
            on_success,
            on_failure,
            route
        );
        if let Some(enabled) = self.enabled {
            row.enabled = enabled.column()?;
            active.enabled = Set(row.enabled);
        }
        Ok(())
    }
}

/// The query of `GET /jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Jobs whose name contains this (case-insensitive).
    pub q: Option<String>,
    /// Jobs of this machine group (`""`: the jobs for any executor).
    pub machine: Option<String>,
    /// Enabled (`true`) or disabled (`false`) jobs.
    pub enabled: Option<bool>,
    /// Jobs with (`true`) or without (`false`) a `last_error`.
    pub has_error: Option<bool>,
    /// The page, from 1.
    pub page: Option<u64>,
    /// Jobs a page (default 50, at most 500).
    pub per_page: Option<u64>,
}

/// A page of jobs and how many match in all.
#[derive(Debug, Serialize)]
pub struct JobPage {
    /// The page, in id order.
    pub jobs: Vec<JobView>,
    /// Jobs matching the filters, on every page.
    pub total: u64,
}

/// The `LIKE` pattern matching texts that contain `text`, its wildcards escaped with `\`.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `GET /api/v1/jobs`: one page (LIMIT/OFFSET on the primary key) and a COUNT.
pub async fn list(
    State(state): State<AppState>,
    _: Reader,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let (offset, limit) = paging(query.page, query.per_page)?;
    let mut filter = Condition::all();
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        filter = filter.add(
            Expr::expr(Func::lower(Expr::col(job::Column::Name)))
                .like(LikeExpr::new(contains_pattern(q)).escape('\\')),
        );
    }
    if let Some(machine) = &query.machine {
        filter = filter.add(job::Column::Machine.eq(machine.trim()));
    }
    if let Some(enabled) = query.enabled {
        filter = filter.add(if enabled {
            job::Column::Enabled.ne(0)
        } else {
            job::Column::Enabled.eq(0)
        });
    }
    if let Some(has_error) = query.has_error {
        filter = filter.add(if has_error {
            job::Column::LastError.is_not_null()
        } else {
            job::Column::LastError.is_null()
        });
    }
    let select = job::Entity::find().filter(filter);
    let total = select.clone().count(state.db()).await?;
    let rows = select
        .order_by_asc(job::Column::Id)
        .offset(offset)
        .limit(limit)
        .all(state.db())
        .await?;
    let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
    let mut last = last_runs(state.db(), &ids).await?;
    let now = Utc::now();
    Ok(Json(JobPage {
        jobs: rows
            .iter()
            .map(|m| JobView::of(m, &state, now, last.remove(&m.id)))
            .collect(),
        total,
    }))
}

/// Whether `row` would be scheduled; the error is `last_error`'s words.
fn check(state: &AppState, row: &job::Model) -> Result<(), ApiError> {
    validate(row, state.machines(), state.default_tz())
        .map(|_| ())
        .map_err(|e| ApiError::Invalid(e.to_string()))
}

/// Now, at the millisecond precision the tables keep.
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    now.duration_trunc(chrono::Duration::milliseconds(1))
        .unwrap_or(now)
}

/// `POST /api/v1/jobs`: inserts the row (201 with it); the monitor publishes it as any row.
pub async fn create(
    State(state): State<AppState>,
    Admin(role): Admin,
    Body(input): Body<JobInput>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    for (field, given) in [
        ("name", input.name.is_some()),
        ("rule", input.rule.is_some()),
        ("command", input.command.is_some()),
    ] {
        if !given {
            return Err(ApiError::Invalid(format!("{field} is required")));
        }
    }
    let now = now_ms();
    // The table's defaults, then what was given.
    let mut row = job::Model {
        id: 0,
        name: String::new(),
        rule: String::new(),
        command: String::new(),
        kind: "shell".into(),
        machine: String::new(),
        timeout_secs: 0,
        timeout_policy: "abandon".into(),
        time_zone: String::new(),
        enabled: 1,
        alarm_emails: String::new(),
        alarm_mobiles: String::new(),
        created_at: now,
        updated_at: now,
        last_error: None,
        misfire: "skip".into(),
        done_at: None,
        env: String::new(),
        workdir: String::new(),
        retries: 0,
        retry_delay_secs: 10,
        delay_secs: 0,
        on_success: String::new(),
        on_failure: String::new(),
        route: "round_robin".into(),
    };
    let mut active = job::ActiveModel {
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    input.apply(&mut row, &mut active)?;
    // Every column the API writes is set, so the row does not depend on backend defaults.
    active.kind = Set(row.kind.clone());
    active.machine = Set(row.machine.clone());
    active.timeout_secs = Set(row.timeout_secs);
    active.timeout_policy = Set(row.timeout_policy.clone());
    active.time_zone = Set(row.time_zone.clone());
    active.enabled = Set(row.enabled);
    active.alarm_emails = Set(row.alarm_emails.clone());
    active.alarm_mobiles = Set(row.alarm_mobiles.clone());
    active.misfire = Set(row.misfire.clone());
    active.env = Set(row.env.clone());
    active.workdir = Set(row.workdir.clone());
    active.retries = Set(row.retries);
    active.retry_delay_secs = Set(row.retry_delay_secs);
    active.delay_secs = Set(row.delay_secs);
    active.on_success = Set(row.on_success.clone());
    active.on_failure = Set(row.on_failure.clone());
    active.route = Set(row.route.clone());
    check(&state, &row)?;
    let txn = state.db().begin().await?;
    let id = job::Entity::insert(active).exec(&txn).await?.last_insert_id;
    let stored = find(&txn, id).await?;
    audit::record(
        &txn,
        role,
        "job.create",
        Some(id),
        None,
        Some(&JobRow::from(&stored)),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(
        job_id = id,
        actor = role.as_str(),
        "job created through the API"
    );
    Ok((
        StatusCode::CREATED,
        Json(JobView::of(&stored, &state, Utc::now(), None)),
    ))
}

/// Job `id` read in `txn`, locked for update where the backend can (not SQLite, whose writers
/// are serialized anyway).
async fn find(txn: &DatabaseTransaction, id: i64) -> Result<job::Model, ApiError> {
    job::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| no_job(id))
}

fn no_job(id: i64) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}

/// `GET /api/v1/jobs/{id}`.
pub async fn show(
    State(state): State<AppState>,
    _: Reader,
    Id(id): Id,
) -> Result<Json<JobView>, ApiError> {
    let row = job::Entity::find_by_id(id)
        .one(state.db())
        .await?
        .ok_or_else(|| no_job(id))?;
    let last = last_runs(state.db(), &[id]).await?.remove(&id);
    Ok(Json(JobView::of(&row, &state, Utc::now(), last)))
}

/// `PATCH /api/v1/jobs/{id}`: writes only the given columns (and `updated_at`), if the row
/// they make is valid (a change of nothing but `enabled` to false is always allowed).
pub async fn update(
    State(state): State<AppState>,
    Admin(role): Admin,
    Id(id): Id,
    Body(input): Body<JobInput>,
) -> Result<Json<JobView>, ApiError> {
    let txn = state.db().begin().await?;
    let before = find(&txn, id).await?;
    let mut row = before.clone();
    let mut active = job::ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(id),
        ..Default::default()
    };
    // Switching a job off is always allowed, even when its row would not be scheduled.
    let only_disables = matches!(
        input,
        JobInput {
            enabled: Some(Enabled::Bool(false) | Enabled::Int(0)),
            name: None,
            rule: None,
            command: None,
            kind: None,
            machine: None,
            timeout_secs: None,
            timeout_policy: None,
            time_zone: None,
            alarm_emails: None,
            alarm_mobiles: None,
            misfire: None,
            env: None,
            workdir: None,
            retries: None,
            retry_delay_secs: None,
            delay_secs: None,
            on_success: None,
            on_failure: None,
            route: None,
        }
    );
    input.apply(&mut row, &mut active)?;
    if !only_disables {
        check(&state, &row)?;
    }
    active.updated_at = Set(now_ms());
    job::Entity::update(active).exec(&txn).await?;
    let after = find(&txn, id).await?;
    audit::record(
        &txn,
        role,
        "job.update",
        Some(id),
        Some(&JobRow::from(&before)),
        Some(&JobRow::from(&after)),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(
        job_id = id,
        actor = role.as_str(),
        "job changed through the API"
    );
    let last = last_runs(state.db(), &[id]).await?.remove(&id);
    Ok(Json(JobView::of(&after, &state, Utc::now(), last)))
}

/// `DELETE /api/v1/jobs/{id}`: 204; its runs stay.
pub async fn delete(
    State(state): State<AppState>,
    Admin(role): Admin,
    Id(id): Id,
) -> Result<StatusCode, ApiError> {
    let txn = state.db().begin().await?;
    let before = find(&txn, id).await?;
    job::Entity::delete_many()
        .filter(job::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        role,
        "job.delete",
        Some(id),
        Some(&JobRow::from(&before)),
        None,
    )
    .await?;
    txn.commit().await?;
    tracing::info!(
        job_id = id,
        actor = role.as_str(),
        "job deleted through the API"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The next `count` fire times of `rule` in `time_zone` (empty: `default_tz`) from now, with
/// the zone they are in, or the words `last_error` would hold (empty when the rule is empty).
pub fn next_fires(
    rule: &str,
    time_zone: &str,
    default_tz: Tz,
    count: usize,
) -> Result<(Vec<DateTime<Utc>>, Tz), String> {
    let rule = rule.trim();
    if rule.is_empty() {
        return Err(String::new());
    }
    let schedule = gocron_shared::job::schedule(rule, time_zone.trim(), default_tz)
        .map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(count);
    let mut after = Utc::now();
    while times.len() < count {
        match schedule.next_after(after) {
            Some(t) => {
                times.push(t);
                after = t;
            }
            None => break,
        }
    }
    Ok((times, schedule.time_zone()))
}

/// An instant as the console shows it: in `tz`, to the millisecond, with the zone's
/// abbreviation.
pub fn shown(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S%.3f %Z")
        .to_string()
}

/// The query of `GET /rules/next`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextQuery {
    /// The rule.
    pub rule: String,
    /// The zone (empty or absent: `[dispatcher] time_zone`).
    #[serde(default)]
    pub time_zone: String,
    /// How many (default 5, at most 50).
    pub count: Option<usize>,
}

/// `GET /rules/next`'s answer.
#[derive(Debug, Serialize)]
pub struct NextFires {
    /// The next fire times (fewer when the rule ends).
    pub next: Vec<DateTime<Utc>>,
    /// The same in the rule's zone, as people read them.
    pub shown: Vec<String>,
    /// The rule's zone.
    pub time_zone: String,
}

/// `GET /api/v1/rules/next`: a rule's next fire times (what the console shows as you type);
/// 422 with `last_error`'s words when the rule or zone is not valid.
pub async fn next(
    State(state): State<AppState>,
    _: Reader,
    Query(query): Query<NextQuery>,
) -> Result<Json<NextFires>, ApiError> {
    let count = query.count.unwrap_or(5).clamp(1, 50);
    let (next, tz) =
        next_fires(&query.rule, &query.time_zone, state.default_tz(), count).map_err(|e| {
            ApiError::Invalid(if e.is_empty() {
                "rule is empty".into()
            } else {
                e
            })
        })?;
    Ok(Json(NextFires {
        shown: next.iter().map(|t| shown(*t, tz)).collect(),
        next,
        time_zone: tz.name().to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fires_follow_the_rule_in_its_zone() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let (times, zone) = next_fires("0 12 * * *", "", tz, 3).unwrap();
        assert_eq!((times.len(), zone), (3, tz));
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], chrono::Duration::days(1));
        }
        assert!(
            times
                .iter()
                .all(|t| t.with_timezone(&tz).format("%H:%M").to_string() == "12:00")
        );
        let (utc, zone) = next_fires("0 12 * * *", "UTC", tz, 1).unwrap();
        assert_eq!(utc[0].format("%H:%M").to_string(), "12:00");
        assert!(shown(utc[0], zone).ends_with("12:00:00.000 UTC"));
        assert!(
            next_fires("61 * * * *", "", tz, 5)
                .unwrap_err()
                .contains("61")
        );
        assert!(
            next_fires("@daily", "Mars/Base", tz, 5)
                .unwrap_err()
                .contains("Mars/Base")
        );
        assert_eq!(next_fires("  ", "", tz, 5).unwrap_err(), "");
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(contains_pattern("Back_up 100%"), "%back\\_up 100\\%%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
    }

    #[test]
    fn enabled_takes_booleans_and_the_column_values() {
        let parse = |s: &str| serde_json::from_str::<Enabled>(s).unwrap().column();
        assert_eq!(parse("true").unwrap(), 1);
        assert_eq!(parse("0").unwrap(), 0);
        assert!(parse("2").is_err());
    }
}
