//! The console's read-only pages: dashboard, jobs, a job's runs, a run, executors, alarms,
//! audit. Each reads through the API's handler of the same data.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, DurationRound as _, Utc};
use gocron_shared::entity::{alarm, job, run};
use maud::{Markup, html};
use sea_orm::{
    ColumnTrait as _, EntityTrait as _, FromQueryResult, PaginatorTrait as _, QueryFilter as _,
    QueryOrder as _, QuerySelect as _, Statement,
};
use serde::Deserialize;

use super::view::{self, Section};
use super::{Ids, PageError, Params, Signed};
use crate::auth::Reader;
use crate::extract::{DEFAULT_PER_PAGE, Id, Query};
use crate::{AppState, alarms, audit, cluster, jobs, runs};

/// The most recent runs the dashboard's chart counts (the chart says when it holds fewer
/// than the last 24 hours).
pub const CHART_RUNS: i64 = 50_000;

/// The most recent scheduled runs the dashboard's fire lag is computed over.
pub const LAG_RUNS: u64 = 1_000;

/// The statuses in the order the chart stacks them.
const CHART_STATUSES: [&str; 10] = [
    "succeeded",
    "failed",
    "timeout",
    "killed",
    "lost",
    "no_executor",
    "missed",
    "skipped",
    "running",
    "dispatched",
];

/// Alarm statuses that still need someone: not delivered yet, or delivery failed.
const OPEN_ALARMS: [&str; 4] = ["pending", "sending", "failed", "held"];

/// `GET /`: jobs by state, the last 24 hours of runs, fire lag, executors, dispatchers and
/// open alarms.
pub async fn dashboard(State(state): State<AppState>, signed: Signed) -> Result<Markup, PageError> {
    let db = state.db();
    let tz = state.default_tz();
    let states = job_states(&state).await?;
    let count = |name: &str| states.get(name).copied().unwrap_or(0);
    let (scheduled, invalid, disabled, done) = (
        count("scheduled"),
        count("invalid"),
        count("disabled"),
        count("done"),
    );

    let now = Utc::now();
    let max_id: Option<i64> = run::Entity::find()
        .select_only()
        .column_as(run::Column::Id.max(), "max")
        .into_tuple()
        .one(db)
        .await?
        .flatten();
    let chart = RunChart::read(&state, now, max_id).await?;
    let lag = fire_lag(&state, max_id).await?;
    let open_alarms = alarm::Entity::find()
        .filter(alarm::Column::Status.is_in(OPEN_ALARMS))
        .count(db)
        .await?;
    let recent_alarms = alarm::Entity::find()
        .filter(alarm::Column::Status.is_in(OPEN_ALARMS))
        .order_by_desc(alarm::Column::Id)
        .limit(5)
        .all(db)
        .await?;
    let reader = Reader(signed.0.role);
    let executors = cluster::executors(State(state.clone()), reader).await;
    let dispatchers = cluster::dispatchers(State(state.clone()), reader).await;

    let body = html! {
        h1 { "Dashboard" }
        section.tiles {
            a.tile href="/jobs?state=scheduled" { strong { (scheduled) } span { "scheduled jobs" } }
            a.tile.bad[invalid > 0] href="/jobs?state=error" {
                strong { (invalid) } span { "invalid jobs" }
            }
            a.tile href="/jobs?state=disabled" { strong { (disabled) } span { "disabled" } }
            div.tile { strong { (done) } span { "one-shot, done" } }
            div.tile #fire-lag {
                strong { (lag.as_ref().map_or("–".to_owned(), |l| ms(l.p99))) }
                span { "fire lag p99" }
                @if let Some(l) = &lag {
                    small { "p50 " (ms(l.p50)) " over the last " (l.runs) " scheduled runs" }
                }
            }
            a.tile.bad[open_alarms > 0] href="/alarms" {
                strong { (open_alarms) } span { "open alarms" }
            }
        }
        section.card {
            h2 { "Runs in the last 24 hours" }
            (chart.markup(tz))
        }
        div.columns {
            section.card #executors {
                h2 { "Live executors" }
                @match &executors {
                    Ok(list) => {
                        @let groups = live_per_group(&state, &list.0);
                        @if list.0.executors.is_empty() { p.error-text { "No executor is live." } }
                        table {
                            thead { tr { th { "Group" } th { "Live" } } }
                            tbody {
                                @for (group, live) in &groups {
                                    tr.bad[*live == 0] { td { (group) } td { (live) } }
                                }
                            }
                        }
                        p { a href="/executors" { (list.0.executors.len()) " executors" } }
                    }
                    Err(e) => p.error-text { (e.to_string()) },
                }
            }
            section.card #dispatchers {
                h2 { "Dispatchers" }
                @match &dispatchers {
                    Ok(list) => {
                        @if list.0.dispatchers.is_empty() { p.error-text { "No dispatcher is live." } }
                        ul { @for d in &list.0.dispatchers { li { (d.name) } } }
                    }
                    Err(e) => p.error-text { (e.to_string()) },
                }
            }
            section.card #open-alarms {
                h2 { "Open alarms" }
                @if recent_alarms.is_empty() { p { "None." } }
                ul {
                    @for a in &recent_alarms {
                        li {
                            (view::status(&a.status)) " " (a.subject)
                            " · " (view::time(a.created_at, tz))
                        }
                    }
                }
            }
        }
    };
    Ok(view::page("Dashboard", Section::Dashboard, &signed.0, body))
}

/// Jobs by state, in one pass over the table: `disabled` (switched off), `invalid`
/// (`last_error` set), `done` (a one-shot job that ran), `scheduled` (the rest).
async fn job_states(state: &AppState) -> Result<BTreeMap<String, u64>, PageError> {
    #[derive(FromQueryResult)]
    struct Count {
        state: String,
        n: i64,
    }
    let db = state.db();
    let sql = "SELECT CASE WHEN enabled = 0 THEN 'disabled' \
               WHEN last_error IS NOT NULL THEN 'invalid' \
               WHEN done_at IS NOT NULL THEN 'done' ELSE 'scheduled' END AS state, \
               COUNT(*) AS n FROM cron_job GROUP BY 1";
    let rows = Count::find_by_statement(Statement::from_string(db.get_database_backend(), sql))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.state, u64::try_from(r.n).unwrap_or(0)))
        .collect())
}

fn ms(d: Duration) -> String {
    let ms = d.num_milliseconds();
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// Each configured group (and "any", for jobs with no `machine`) with its live executors.
fn live_per_group(state: &AppState, list: &cluster::ExecutorList) -> BTreeMap<String, usize> {
    let mut groups: BTreeMap<String, usize> = state
        .machines()
        .names()
        .map(|name| (name.to_owned(), 0))
        .collect();
    for e in &list.executors {
        for g in &e.groups {
            *groups.entry(g.clone()).or_default() += 1;
        }
    }
    groups.insert("(any: machine empty)".into(), list.executors.len());
    groups
}

/// Fire lag (tick to start) over the last [`LAG_RUNS`] scheduled runs that started, among the
/// last [`CHART_RUNS`] runs.
struct Lag {
    p50: Duration,
    p99: Duration,
    runs: usize,
}

async fn fire_lag(state: &AppState, max_id: Option<i64>) -> Result<Option<Lag>, PageError> {
    let Some(max_id) = max_id else {
        return Ok(None);
    };
    let rows: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = run::Entity::find()
        .select_only()
        .columns([run::Column::ScheduledAt, run::Column::StartedAt])
        // Among the last runs by id only: an index range however large the table.
        .filter(run::Column::Id.gt(max_id - CHART_RUNS))
        .filter(run::Column::Trigger.eq("schedule"))
        .filter(run::Column::StartedAt.is_not_null())
        .order_by_desc(run::Column::Id)
        .limit(LAG_RUNS)
        .into_tuple()
        .all(state.db())
        .await?;
    let mut lags: Vec<Duration> = rows
        .into_iter()
        .filter_map(|(tick, started)| started.map(|s| (s - tick).max(Duration::zero())))
        .collect();
    if lags.is_empty() {
        return Ok(None);
    }
    lags.sort();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    Ok(Some(Lag {
        p50: at(0.5),
        p99: at(0.99),
        runs: lags.len(),
    }))
}

/// Runs per hour and status over the last 24 hours.
struct RunChart {
    /// The first hour's start.
    start: DateTime<Utc>,
    /// Per hour, per status.
    hours: Vec<BTreeMap<String, u64>>,
    /// Whether [`CHART_RUNS`] cut the window (the oldest hours then count fewer runs).
    cut: Option<DateTime<Utc>>,
}

impl RunChart {
    /// Reads the last [`CHART_RUNS`] runs by id (an index range, however large the table).
    async fn read(
        state: &AppState,
        now: DateTime<Utc>,
        max: Option<i64>,
    ) -> Result<RunChart, PageError> {
        let db = state.db();
        let hour = Duration::hours(1);
        let start = now.duration_trunc(hour).unwrap_or(now) - Duration::hours(23);
        let mut hours = vec![BTreeMap::new(); 24];
        let mut cut = None;
        if let Some(max) = max {
            let rows: Vec<(DateTime<Utc>, String)> = run::Entity::find()
                .select_only()
                .columns([run::Column::ScheduledAt, run::Column::Status])
                .filter(run::Column::Id.gt(max - CHART_RUNS))
                .filter(run::Column::ScheduledAt.gte(start))
                .into_tuple()
                .all(db)
                .await?;
            if rows.len() as i64 >= CHART_RUNS {
                cut = rows.iter().map(|r| r.0).min();
            }
            for (tick, status) in rows {
                let i = ((tick - start).num_seconds() / 3600).clamp(0, 23) as usize;
                *hours[i].entry(status).or_default() += 1;
            }
        }
        Ok(RunChart { start, hours, cut })
    }

    /// A stacked bar per hour (SVG, coloured by the stylesheet), and the totals by status.
    fn markup(&self, tz: chrono_tz::Tz) -> Markup {
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for h in &self.hours {
            for (s, n) in h {
                *totals.entry(s.as_str()).or_default() += n;
            }
        }
        let highest = self
            .hours
            .iter()
            .map(|h| h.values().sum::<u64>())
            .max()
            .unwrap_or(0)
            .max(1);
        let (width, height, bar) = (720.0, 160.0, 30.0);
        // Per hour, its segments bottom up: (status, runs, top, height).
        let bars: Vec<Vec<(&str, u64, f64, f64)>> = self
            .hours
            .iter()
            .map(|h| {
                let mut y = height;
                CHART_STATUSES
                    .iter()
                    .filter_map(|s| h.get(*s).map(|n| (*s, *n)))
                    .map(|(s, n)| {
                        let tall = n as f64 / highest as f64 * height;
                        y -= tall;
                        (s, n, y, tall)
                    })
                    .collect()
            })
            .collect();
        html! {
            svg.chart #runs-chart viewBox={ "0 0 " (width) " " (height + 20.0) } role="img"
                aria-label="runs per hour by status" {
                @for (i, segments) in bars.iter().enumerate() {
                    @for (s, n, y, tall) in segments {
                        rect class={ "st-" (s) } x=(i as f64 * bar) y=(y) width=(bar - 4.0)
                            height=(tall) {
                            title { (n) " " (s) }
                        }
                    }
                    @if i % 3 == 0 {
                        text x=(i as f64 * bar) y=(height + 16.0) {
                            ((self.start + Duration::hours(i as i64)).with_timezone(&tz).format("%H:00"))
                        }
                    }
                }
            }
            ul.legend {
                @if totals.is_empty() { li { "No runs in the last 24 hours." } }
                @for (s, n) in &totals { li { (view::status(s)) " " (n) } }
            }
            @if let Some(cut) = self.cut {
                p.hint { "Counts the last " (CHART_RUNS) " runs, since " (view::time(cut, tz)) "." }
            }
        }
    }
}

/// The query of the jobs page (a form's empty fields are empty strings, not absent).
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    /// Name search.
    #[serde(default)]
    pub q: String,
    /// Machine group.
    #[serde(default)]
    pub machine: String,
    /// `scheduled`, `enabled`, `disabled` or `error`; empty: all.
    #[serde(default)]
    pub state: String,
    /// The page.
    #[serde(default)]
    pub page: Option<u64>,
}

impl JobsQuery {
    fn link(&self, page: u64) -> String {
        use gocron_shared::config::percent_encode as enc;
        format!(
            "/jobs?q={}&machine={}&state={}&page={page}",
            enc(&self.q),
            enc(&self.machine),
            enc(&self.state)
        )
    }
}

/// `GET /jobs`: search, filters, one page (the API's `GET /jobs`).
pub async fn jobs(
    State(state): State<AppState>,
    signed: Signed,
    Params(query): Params<JobsQuery>,
) -> Result<Markup, PageError> {
    let tz = state.default_tz();
    let (enabled, has_error) = match query.state.as_str() {
        "enabled" => (Some(true), None),
        "scheduled" => (Some(true), Some(false)),
        "disabled" => (Some(false), None),
        "error" => (Some(true), Some(true)),
        _ => (None, None),
    };
    let page = query.page.unwrap_or(1).max(1);
    let list = jobs::list(
        State(state.clone()),
        Reader(signed.0.role),
        Query(jobs::ListQuery {
            q: Some(query.q.clone()).filter(|q| !q.trim().is_empty()),
            machine: Some(query.machine.clone()).filter(|m| !m.trim().is_empty()),
            enabled,
            has_error,
            page: Some(page),
            per_page: Some(DEFAULT_PER_PAGE),
        }),
    )
    .await?
    .0;
    let groups: Vec<&str> = state.machines().names().collect();
    let body = html! {
        div.title-row {
            h1 { "Jobs" }
            @if view::is_admin(&signed.0) { a.button href="/jobs/new" { "New job" } }
        }
        form.filters method="get" action="/jobs" {
            input type="search" name="q" placeholder="Search names" value=(query.q);
            select name="machine" {
                option value="" { "Any group" }
                @for g in &groups { option value=(g) selected[query.machine == *g] { (g) } }
            }
            select name="state" {
                @for (value, label) in [("", "Any state"), ("scheduled", "Scheduled"),
                    ("enabled", "Enabled"), ("disabled", "Disabled"), ("error", "Invalid")] {
                    option value=(value) selected[query.state == value] { (label) }
                }
            }
            button type="submit" { "Filter" }
        }
        table.jobs {
            thead { tr {
                th { "Id" } th { "Name" } th { "Rule" } th { "Group" } th { "State" }
                th { "Next fire" } th { "Last run" }
            } }
            tbody {
                @for j in &list.jobs {
                    tr {
                        td { (j.row.id) }
                        td { a href={ "/jobs/" (j.row.id) } { (j.row.name) } }
                        td { code { (j.row.rule) } }
                        td { (j.row.machine) }
                        td { (job_state(&j.row)) }
                        td { (view::maybe_time(j.next_fire_at, tz)) }
                        td {
                            @if let Some(r) = &j.last_run {
                                a href={ "/jobs/" (j.row.id) "/runs/" (r.id) } { (view::status(&r.status)) }
                            } @else { span.none { "–" } }
                        }
                    }
                }
            }
        }
        @if list.jobs.is_empty() { p { "No job matches." } }
        (view::pager(page, DEFAULT_PER_PAGE, list.total, |p| query.link(p)))
    };
    Ok(view::page("Jobs", Section::Jobs, &signed.0, body))
}

/// A job's state as a badge.
pub fn job_state(row: &jobs::JobRow) -> Markup {
    let (class, label) = if !row.enabled {
        ("disabled", "disabled")
    } else if row.last_error.is_some() {
        ("invalid", "invalid")
    } else if row.done_at.is_some() {
        ("done", "done")
    } else {
        ("scheduled", "scheduled")
    };
    html! { span class={ "state state-" (class) } { (label) } }
}

/// The query of a job's runs page.
#[derive(Debug, Default, Deserialize)]
pub struct RunsPageQuery {
    /// A status, or empty for all.
    #[serde(default)]
    pub status: String,
    /// The page.
    #[serde(default)]
    pub page: Option<u64>,
}

/// `GET /jobs/{id}/runs`: a job's runs, newest first, by status.
pub async fn runs(
    State(state): State<AppState>,
    signed: Signed,
    Ids(id): Ids<i64>,
    Params(query): Params<RunsPageQuery>,
) -> Result<Markup, PageError> {
    let tz = state.default_tz();
    let reader = Reader(signed.0.role);
    let job = jobs::show(State(state.clone()), reader, Id(id)).await?.0;
    let page = query.page.unwrap_or(1).max(1);
    let list = runs::of_job(
        State(state.clone()),
        reader,
        Id(id),
        Query(runs::RunsQuery {
            status: Some(query.status.clone()).filter(|s| !s.is_empty()),
            page: Some(page),
            per_page: Some(DEFAULT_PER_PAGE),
        }),
    )
    .await?
    .0;
    let body = html! {
        p.crumbs { a href="/jobs" { "Jobs" } " / " a href={ "/jobs/" (id) } { (job.row.name) } " / runs" }
        h1 { "Runs of " (job.row.name) }
        form.filters method="get" action={ "/jobs/" (id) "/runs" } {
            select name="status" {
                option value="" { "Any status" }
                @for s in CHART_STATUSES { option value=(s) selected[query.status == s] { (s) } }
            }
            button type="submit" { "Filter" }
        }
        (run_table(id, &list.runs, tz))
        @if list.runs.is_empty() { p { "No run yet." } }
        (view::pager(page, DEFAULT_PER_PAGE, list.total, |p| format!(
            "/jobs/{id}/runs?status={}&page={p}",
            gocron_shared::config::percent_encode(&query.status)
        )))
    };
    Ok(view::page("Runs", Section::Jobs, &signed.0, body))
}

/// A table of runs, each linking to its page.
pub fn run_table(job_id: i64, list: &[runs::RunSummary], tz: chrono_tz::Tz) -> Markup {
    html! {
        table.runs {
            thead { tr {
                th { "Run" } th { "Tick" } th { "Status" } th { "Started" } th { "Duration" }
                th { "Executor" } th { "Exit" } th { "Trigger" } th { "Error" }
            } }
            tbody {
                @for r in list {
                    tr {
                        td { a href={ "/jobs/" (job_id) "/runs/" (r.id) } { (r.id) } }
                        td { (view::time(r.scheduled_at, tz)) }
                        td { (view::status(&r.status)) }
                        td { (view::maybe_time(r.started_at, tz)) }
                        td { (view::duration(r.started_at, r.finished_at)) }
                        td { (r.executor) }
                        td { @if let Some(c) = r.exit_code { (c) } }
                        td {
                            (r.trigger)
                            // A retry names its attempt and the first one.
                            @if let Some(first) = r.retry_of {
                                " " span.hint title={ "retry of run " (first) } { "#" (r.attempt) }
                            }
                            // One run of a fanned-out tick names its place.
                            @if r.shard_total > 0 {
                                " " span.hint title="shard index / total" { (r.shard_index) "/" (r.shard_total) }
                            }
                        }
                        td.error-text { @if let Some(e) = &r.error { (e) } }
                    }
                }
            }
        }
    }
}

/// `GET /jobs/{job}/runs/{run}`: a run, its output (a live tail while it runs), kill. The page
/// alarm mails link to.
pub async fn run(
    State(state): State<AppState>,
    signed: Signed,
    Ids((job_id, run_id)): Ids<(i64, i64)>,
) -> Result<Response, PageError> {
    let tz = state.default_tz();
    let reader = Reader(signed.0.role);
    let r = runs::show(State(state.clone()), reader, Id(run_id))
        .await?
        .0;
    if r.job_id != job_id {
        return Ok(Redirect::to(&format!("/jobs/{}/runs/{run_id}", r.job_id)).into_response());
    }
    // The job may be gone; its runs stay.
    let name = job::Entity::find_by_id(job_id)
        .one(state.db())
        .await?
        .map_or_else(|| format!("job {job_id} (deleted)"), |j| j.name);
    let in_flight = matches!(r.status.as_str(), "dispatched" | "running");
    let body = html! {
        p.crumbs {
            a href="/jobs" { "Jobs" } " / " a href={ "/jobs/" (job_id) } { (name) }
            " / " a href={ "/jobs/" (job_id) "/runs" } { "runs" } " / " (run_id)
        }
        div.title-row {
            h1 { "Run " (run_id) " " (view::status(&r.status)) }
            @if in_flight && view::is_admin(&signed.0) {
                (view::button(&signed.0, &format!("/runs/{run_id}/kill"), "Kill",
                    Some("Kill this run?")))
            }
        }
        dl.facts {
            dt { "Tick" } dd { (view::time(r.scheduled_at, tz)) }
            dt { "Trigger" } dd { (r.trigger) }
            @if let Some(first) = r.retry_of {
                dt { "Attempt" }
                dd { (r.attempt) ", retry of " a href={ "/jobs/" (r.job_id) "/runs/" (first) } { "run " (first) } }
            }
            @if r.trigger == "event" {
                dt { "Event" } dd { (r.source_id) }
            }
            @if r.trigger == "chain" {
                dt { "Parent run" } dd { (r.source_id) }
            }
            @if r.shard_total > 0 {
                dt { "Shard" } dd { (r.shard_index) " of " (r.shard_total) " (index from 0)" }
            }
            dt { "Executor" } dd { (r.executor) }
            dt { "Started" } dd { (view::maybe_time(r.started_at, tz)) }
            dt { "Finished" } dd { (view::maybe_time(r.finished_at, tz)) }
            dt { "Duration" } dd { (view::duration(r.started_at, r.finished_at)) }
            dt { "Exit code" } dd { @if let Some(c) = r.exit_code { (c) } @else { "–" } }
            @if let Some(at) = r.overrun_at { dt { "Overran at" } dd { (view::time(at, tz)) } }
            @if let Some(e) = &r.error { dt { "Error" } dd.error-text { (e) } }
        }
        h2 { "Output" @if in_flight { " " span.live #live { "live" } } }
        pre #output data-follow=[in_flight.then(|| format!("/api/v1/runs/{run_id}/output?follow=true"))] {
            (r.output.as_deref().unwrap_or(""))
        }
    };
    Ok(view::page(&format!("Run {run_id}"), Section::Jobs, &signed.0, body).into_response())
}

/// `GET /executors`: live executors, the groups they serve, dispatchers.
pub async fn executors(State(state): State<AppState>, signed: Signed) -> Result<Markup, PageError> {
    let reader = Reader(signed.0.role);
    let list = cluster::executors(State(state.clone()), reader).await?.0;
    let dispatchers = cluster::dispatchers(State(state.clone()), reader).await?.0;
    let groups = live_per_group(&state, &list);
    let body = html! {
        h1 { "Executors" }
        table.executors {
            thead { tr {
                th { "Name" } th { "Address" } th { "Groups" } th { "Runs in flight" }
                th { "Since" } th { "Version" }
            } }
            tbody {
                @for e in &list.executors {
                    tr {
                        td { (e.name) } td { (e.address.to_string()) } td { (e.groups.join(", ")) }
                        td { (e.runs_in_flight) } td { (e.since) } td { (e.version) }
                    }
                }
            }
        }
        @if list.executors.is_empty() { p.error-text { "No executor is live." } }
        h2 { "Groups" }
        table {
            thead { tr { th { "Group ([machine])" } th { "Live executors" } } }
            tbody { @for (g, n) in &groups { tr.bad[*n == 0] { td { (g) } td { (n) } } } }
        }
        h2 { "Dispatchers" }
        table {
            thead { tr { th { "Name" } th { "Since" } th { "Version" } } }
            tbody {
                @for d in &dispatchers.dispatchers {
                    tr {
                        td { (d.name) }
                        td { (d.since.as_deref().unwrap_or("–")) }
                        td { (d.version.as_deref().unwrap_or("–")) }
                    }
                }
            }
        }
    };
    Ok(view::page("Executors", Section::Executors, &signed.0, body))
}

/// The query of a paged list.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// The page.
    #[serde(default)]
    pub page: Option<u64>,
    /// The audit of this job only.
    #[serde(default)]
    pub job_id: Option<i64>,
}

/// `GET /alarms`: newest first.
pub async fn alarms(
    State(state): State<AppState>,
    signed: Signed,
    Params(query): Params<PageQuery>,
) -> Result<Markup, PageError> {
    let tz = state.default_tz();
    let page = query.page.unwrap_or(1).max(1);
    let list = alarms::list(
        State(state.clone()),
        Reader(signed.0.role),
        Query(alarms::AlarmsQuery {
            page: Some(page),
            per_page: Some(DEFAULT_PER_PAGE),
            ..Default::default()
        }),
    )
    .await?
    .0;
    let body = html! {
        h1 { "Alarms" }
        table.alarms {
            thead { tr {
                th { "Id" } th { "When" } th { "Kind" } th { "Channel" } th { "Status" }
                th { "Subject" } th { "Job" } th { "Run" } th { "Error" }
            } }
            tbody {
                @for a in &list.alarms {
                    tr {
                        td { (a.id) } td { (view::time(a.created_at, tz)) } td { (a.kind) }
                        td { (a.channel) } td { (view::status(&a.status)) } td { (a.subject) }
                        td { @if a.job_id != 0 { a href={ "/jobs/" (a.job_id) } { (a.job_id) } } }
                        td { @if let Some(r) = a.run_id {
                            a href={ "/jobs/" (a.job_id) "/runs/" (r) } { (r) }
                        } }
                        td.error-text { @if let Some(e) = &a.error { (e) } }
                    }
                }
            }
        }
        @if list.alarms.is_empty() { p { "No alarm yet." } }
        (view::pager(page, DEFAULT_PER_PAGE, list.total, |p| format!("/alarms?page={p}")))
    };
    Ok(view::page("Alarms", Section::Alarms, &signed.0, body))
}

/// `GET /audit`: every change made through the API or the console, newest first, with the
/// columns each changed.
pub async fn audit(
    State(state): State<AppState>,
    signed: Signed,
    Params(query): Params<PageQuery>,
) -> Result<Markup, PageError> {
    let tz = state.default_tz();
    let page = query.page.unwrap_or(1).max(1);
    let list = audit::list(
        State(state.clone()),
        Reader(signed.0.role),
        Query(audit::AuditQuery {
            job_id: query.job_id,
            page: Some(page),
            per_page: Some(DEFAULT_PER_PAGE),
        }),
    )
    .await?
    .0;
    let body = html! {
        h1 { "Audit" }
        table.audit {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "Job" } th { "Change" } } }
            tbody {
                @for a in &list.audit {
                    tr {
                        td { (view::time(a.at, tz)) } td { (a.actor) } td { (a.action) }
                        td { @if let Some(j) = a.job_id { a href={ "/jobs/" (j) } { (j) } } }
                        td { ul.changes {
                            @for (column, before, after) in changes(a.before.as_ref(), a.after.as_ref()) {
                                li { code { (column) } ": " del { (before) } " → " ins { (after) } }
                            }
                        } }
                    }
                }
            }
        }
        @if list.audit.is_empty() { p { "No change recorded yet." } }
        (view::pager(page, DEFAULT_PER_PAGE, list.total, |p| match query.job_id {
            Some(j) => format!("/audit?job_id={j}&page={p}"),
            None => format!("/audit?page={p}"),
        }))
    };
    Ok(view::page("Audit", Section::Audit, &signed.0, body))
}

/// The columns that differ between two audited rows (JSON objects), with both values.
pub fn changes(
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> Vec<(String, String, String)> {
    let empty = serde_json::Map::new();
    let b = before.and_then(|v| v.as_object()).unwrap_or(&empty);
    let a = after.and_then(|v| v.as_object()).unwrap_or(&empty);
    let show = |v: Option<&serde_json::Value>| match v {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let empty = |v: Option<&serde_json::Value>| {
        matches!(v, None | Some(serde_json::Value::Null))
            || v.is_some_and(|v| v.as_str() == Some(""))
    };
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k) && k.as_str() != "updated_at")
        .filter(|k| !(empty(b.get(*k)) && empty(a.get(*k))))
        .map(|k| (k.clone(), show(b.get(k)), show(a.get(k))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_changes_name_the_columns_that_differ() {
        let before =
            serde_json::json!({"name": "a", "rule": "@daily", "enabled": true, "updated_at": 1});
        let after =
            serde_json::json!({"name": "a", "rule": "@hourly", "enabled": false, "updated_at": 2});
        assert_eq!(
            changes(Some(&before), Some(&after)),
            vec![
                ("enabled".into(), "true".into(), "false".into()),
                ("rule".into(), "@daily".into(), "@hourly".into()),
            ]
        );
        // A creation: every column given is new; empty ones are not shown.
        let created =
            serde_json::json!({"name": "a", "machine": "", "done_at": null, "enabled": true});
        assert_eq!(changes(None, Some(&created)).len(), 2);
    }
}
