//! The console's changes: the job form (create, edit), enable, disable, run now, delete, kill.
//! Each checks the session's CSRF token and role, then calls the API's handler, so the
//! validation, the audit row and the log line are the API's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{job_state, run_table};
use super::view::{self, Section};
use super::{AdminAction, Ids, PageError, Posted, Signed};
use crate::auth::{Admin, Reader, Role, Session};
use crate::error::ApiError;
use crate::extract::{Body, Id, OptionalBody, Query};
use crate::jobs::{self, Enabled, JobInput, JobRow};
use crate::{AppState, actions, runs};

/// How many of a job's runs its page shows (the runs page has them all).
const RECENT_RUNS: u64 = 10;

/// The job form: every writable column as text, as a browser sends it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `rule`.
    #[serde(default)]
    pub rule: String,
    /// `command`.
    #[serde(default)]
    pub command: String,
    /// `kind`.
    #[serde(default)]
    pub kind: String,
    /// `machine`.
    #[serde(default)]
    pub machine: String,
    /// `timeout_secs`.
    #[serde(default)]
    pub timeout_secs: String,
    /// `timeout_policy`.
    #[serde(default)]
    pub timeout_policy: String,
    /// `time_zone`.
    #[serde(default)]
    pub time_zone: String,
    /// `misfire`.
    #[serde(default)]
    pub misfire: String,
    /// `env`.
    #[serde(default)]
    pub env: String,
    /// `workdir`.
    #[serde(default)]
    pub workdir: String,
    /// `retries`.
    #[serde(default)]
    pub retries: String,
    /// `retry_delay_secs`.
    #[serde(default)]
    pub retry_delay_secs: String,
    /// `delay_secs`.
    #[serde(default)]
    pub delay_secs: String,
    /// `on_success`.
    #[serde(default)]
    pub on_success: String,
    /// `on_failure`.
    #[serde(default)]
    pub on_failure: String,
    /// `route`.
    #[serde(default)]
    pub route: String,
    /// `alarm_emails`.
    #[serde(default)]
    pub alarm_emails: String,
    /// `alarm_mobiles`.
    #[serde(default)]
    pub alarm_mobiles: String,
    /// `enabled`: present (a checked box) or absent.
    #[serde(default)]
    pub enabled: Option<String>,
}

impl JobForm {
    /// The form of a stored row.
    fn of(row: &JobRow) -> JobForm {
        JobForm {
            csrf: String::new(),
            name: row.name.clone(),
            rule: row.rule.clone(),
            command: row.command.clone(),
            kind: row.kind.clone(),
            machine: row.machine.clone(),
            timeout_secs: row.timeout_secs.to_string(),
            timeout_policy: row.timeout_policy.clone(),
            time_zone: row.time_zone.clone(),
            misfire: row.misfire.clone(),
            env: row.env.clone(),
            workdir: row.workdir.clone(),
            retries: row.retries.to_string(),
            retry_delay_secs: row.retry_delay_secs.to_string(),
            delay_secs: row.delay_secs.to_string(),
            on_success: row.on_success.clone(),
            on_failure: row.on_failure.clone(),
            route: row.route.clone(),
            alarm_emails: row.alarm_emails.clone(),
            alarm_mobiles: row.alarm_mobiles.clone(),
            enabled: row.enabled.then(|| "on".into()),
        }
    }

    /// A new job's form: the table's defaults.
    fn blank() -> JobForm {
        JobForm {
            kind: "shell".into(),
            timeout_secs: "0".into(),
            timeout_policy: "abandon".into(),
            misfire: "skip".into(),
            retries: "0".into(),
            retry_delay_secs: "10".into(),
            delay_secs: "0".into(),
            route: "round_robin".into(),
            enabled: Some("on".into()),
            ..JobForm::default()
        }
    }

    /// The API's input: every column, `enabled` included when `with_enabled` (a new job; an
    /// existing one is switched with its buttons, so a form opened before someone disabled it
    /// cannot enable it again).
    fn input(&self, with_enabled: bool) -> Result<JobInput, ApiError> {
        let number = |name: &str, text: &str, empty: i32| {
            let text = text.trim();
            if text.is_empty() {
                return Ok(empty);
            }
            text.parse()
                .map_err(|_| ApiError::Invalid(format!("{name} {text:?} must be a whole number")))
        };
        let timeout_secs = number("timeout_secs", &self.timeout_secs, 0)?;
        let retries = number("retries", &self.retries, 0)?;
        let retry_delay_secs = number("retry_delay_secs", &self.retry_delay_secs, 10)?;
        let delay_secs = number("delay_secs", &self.delay_secs, 0)?;
        Ok(JobInput {
            name: Some(self.name.trim().to_owned()),
            rule: Some(self.rule.trim().to_owned()),
            // Browsers send a textarea's line ends as CRLF; `sh -c` wants LF.
            command: Some(self.command.replace("\r\n", "\n")),
            kind: Some(self.kind.clone()),
            machine: Some(self.machine.trim().to_owned()),
            timeout_secs: Some(timeout_secs),
            timeout_policy: Some(self.timeout_policy.clone()),
            time_zone: Some(self.time_zone.trim().to_owned()),
            enabled: with_enabled.then_some(Enabled::Bool(self.enabled.is_some())),
            alarm_emails: Some(self.alarm_emails.trim().to_owned()),
            alarm_mobiles: Some(self.alarm_mobiles.trim().to_owned()),
            misfire: Some(self.misfire.clone()),
            env: Some(self.env.replace("\r\n", "\n")),
            workdir: Some(self.workdir.trim().to_owned()),
            retries: Some(retries),
            retry_delay_secs: Some(retry_delay_secs),
            delay_secs: Some(delay_secs),
            on_success: Some(self.on_success.trim().to_owned()),
            on_failure: Some(self.on_failure.trim().to_owned()),
            route: (!self.route.is_empty()).then(|| self.route.clone()),
        })
    }
}

/// The job form, posting to `action`, with `error` above it when the last try was refused.
fn job_form(
    state: &AppState,
    session: &Session,
    action: &str,
    form: &JobForm,
    error: Option<&str>,
) -> Markup {
    let tz = state.default_tz();
    let groups: Vec<&str> = state.machines().names().collect();
    let admin = view::is_admin(session);
    // The stored value as validation reads it (trimmed, any case), so that saving the form
    // never changes a column it did not touch.
    let choice = |name: &str, options: &[&str], current: &str| {
        let current = current.trim();
        html! {
            select #(name) name=(name) disabled[!admin] {
                @for o in options {
                    option value=(o) selected[o.eq_ignore_ascii_case(current)] { (o) }
                }
            }
        }
    };
    let new = action == "/jobs";
    let next = jobs::next_fires(&form.rule, &form.time_zone, tz, 5);
    html! {
        form.card.job-form method="post" action=(action) {
            @if let Some(error) = error { p.error-text role="alert" #form-error { (error) } }
            (view::csrf(session))
            fieldset disabled[!admin] {
                label for="name" { "Name" }
                input #name type="text" name="name" value=(form.name) required;
                label for="rule" { "Rule" }
                input #rule type="text" name="rule" value=(form.rule) required
                    placeholder="*/5 * * * *, @daily, @every 30s, @at 2026-12-24T18:00:00";
                label for="time_zone" { "Time zone" }
                input #time_zone type="text" name="time_zone" value=(form.time_zone)
                    placeholder={ "empty: " (tz.name()) };
                div #next-fires data-preview="/api/v1/rules/next" {
                    (next_list(&next))
                }
                label for="command" { "Command" }
                // The parser drops one newline right after <textarea>: this one, not the
                // command's own.
                textarea #command name="command" rows="3" required { "\n" (form.command) }
                div.row {
                    div { label for="kind" { "Kind" } (choice("kind", &["shell", "http"], &form.kind)) }
                    div {
                        label for="machine" { "Machine group" }
                        select #machine name="machine" {
                            option value="" selected[form.machine.is_empty()] { "any executor" }
                            @for g in &groups { option value=(g) selected[form.machine == *g] { (g) } }
                            @if !form.machine.is_empty() && !groups.contains(&form.machine.as_str()) {
                                option value=(form.machine) selected { (form.machine) " (unknown)" }
                            }
                        }
                    }
                    div { label for="misfire" { "Misfire" } (choice("misfire", &["skip", "once", "all"], &form.misfire)) }
                }
                div.row {
                    div {
                        label for="timeout_secs" { "Timeout (s, 0: none)" }
                        input #timeout_secs type="number" min="0" name="timeout_secs" value=(form.timeout_secs);
                    }
                    div {
                        label for="timeout_policy" { "Timeout policy" }
                        (choice("timeout_policy", &["abandon", "kill", "sync"], &form.timeout_policy))
                    }
                }
                div.row {
                    div {
                        label for="retries" { "Retries (0: none)" }
                        input #retries type="number" min="0" max="100" name="retries" value=(form.retries);
                    }
                    div {
                        label for="retry_delay_secs" { "First retry after (s, doubling)" }
                        input #retry_delay_secs type="number" min="0" max="3600" name="retry_delay_secs" value=(form.retry_delay_secs);
                    }
                    div {
                        label for="delay_secs" { "Event delay (s, @event jobs)" }
                        input #delay_secs type="number" min="0" max="2592000" name="delay_secs" value=(form.delay_secs);
                    }
                }
                div.row {
                    div {
                        label for="on_success" { "On success, start (job ids or names)" }
                        input #on_success type="text" name="on_success" value=(form.on_success);
                    }
                    div {
                        label for="on_failure" { "On failure, start" }
                        input #on_failure type="text" name="on_failure" value=(form.on_failure);
                    }
                    div {
                        label for="route" { "Route" }
                        (choice("route", &["round_robin", "random", "least_busy", "hash", "broadcast", "shard"], &form.route))
                    }
                }
                label for="env" { "Environment (KEY=VALUE lines, shell jobs)" }
                textarea #env name="env" rows="2" placeholder="PATH=/opt/app/bin:/usr/bin:/bin" { "\n" (form.env) }
                label for="workdir" { "Working directory (shell jobs)" }
                input #workdir type="text" name="workdir" value=(form.workdir)
                    placeholder="empty: the executor's own";
                label for="alarm_emails" { "Alarm mails (comma-separated)" }
                input #alarm_emails type="text" name="alarm_emails" value=(form.alarm_emails);
                label for="alarm_mobiles" { "Alarm SMS (comma-separated)" }
                input #alarm_mobiles type="text" name="alarm_mobiles" value=(form.alarm_mobiles);
                @if new {
                    label.check { input #enabled type="checkbox" name="enabled" checked[form.enabled.is_some()]; " Enabled" }
                }
                @if admin { button #save type="submit" { "Save" } }
            }
        }
    }
}

/// The next fire times of a rule, or why it has none.
fn next_list(next: &Result<(Vec<chrono::DateTime<Utc>>, chrono_tz::Tz), String>) -> Markup {
    html! {
        @match next {
            Ok((times, _)) if times.is_empty() => p.hint { "This rule fires no more." },
            Ok((times, tz)) => {
                p.hint { "Next fire times:" }
                ol { @for t in times { li { (view::time(*t, *tz)) } } }
            }
            Err(e) if e.is_empty() => {},
            Err(e) => p.error-text { (e) },
        }
    }
}

/// `GET /jobs/new`.
pub async fn new_job(State(state): State<AppState>, signed: Signed) -> Result<Markup, PageError> {
    signed.admin()?;
    Ok(new_page(&state, &signed.0, &JobForm::blank(), None))
}

fn new_page(state: &AppState, session: &Session, form: &JobForm, error: Option<&str>) -> Markup {
    let body = html! {
        p.crumbs { a href="/jobs" { "Jobs" } " / new" }
        h1 { "New job" }
        (job_form(state, session, "/jobs", form, error))
    };
    view::page("New job", Section::Jobs, session, body)
}

/// Whether an error is the user's to mend in the form (shown there) rather than a failure.
fn form_error(e: &ApiError) -> bool {
    matches!(e, ApiError::Invalid(_) | ApiError::BadRequest { .. })
}

/// `POST /jobs`: creates the job (the API's `POST /jobs`), then shows it.
pub async fn create(
    State(state): State<AppState>,
    signed: Signed,
    Posted(form): Posted<JobForm>,
) -> Result<Response, PageError> {
    signed.check_csrf(&form.csrf)?;
    let role = signed.admin()?;
    let created = match form.input(true) {
        Ok(input) => jobs::create(State(state.clone()), Admin(role), Body(input)).await,
        Err(e) => Err(e),
    };
    match created {
        Ok((_, view)) => Ok(Redirect::to(&format!("/jobs/{}", view.0.row.id)).into_response()),
        Err(e) if form_error(&e) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            new_page(&state, &signed.0, &form, Some(&e.to_string())),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /jobs/{id}`: the job, its actions, its form and its last runs.
pub async fn job(
    State(state): State<AppState>,
    signed: Signed,
    Ids(id): Ids<i64>,
) -> Result<Markup, PageError> {
    job_page(&state, &signed.0, id, None, None).await
}

async fn job_page(
    state: &AppState,
    session: &Session,
    id: i64,
    form: Option<&JobForm>,
    error: Option<&str>,
) -> Result<Markup, PageError> {
    let reader = Reader(session.role);
    let tz = state.default_tz();
    let job = jobs::show(State(state.clone()), reader, Id(id)).await?.0;
    let recent = runs::of_job(
        State(state.clone()),
        reader,
        Id(id),
        Query(runs::RunsQuery {
            per_page: Some(RECENT_RUNS),
            ..Default::default()
        }),
    )
    .await?
    .0;
    let stored = JobForm::of(&job.row);
    let row = &job.row;
    let body = html! {
        p.crumbs { a href="/jobs" { "Jobs" } " / " (row.id) }
        div.title-row {
            h1 { (row.name) " " (job_state(row)) }
            @if view::is_admin(session) {
                div.actions {
                    (view::button(session, &format!("/jobs/{id}/run"), "Run now", None))
                    @if row.enabled {
                        (view::button(session, &format!("/jobs/{id}/disable"), "Disable", None))
                    } @else {
                        (view::button(session, &format!("/jobs/{id}/enable"), "Enable", None))
                    }
                    (view::button(session, &format!("/jobs/{id}/delete"), "Delete",
                        Some("Delete this job? Its runs stay.")))
                }
            }
        }
        @if let Some(e) = &row.last_error { p.error-text.banner #last-error { "Not scheduled: " (e) } }
        dl.facts {
            dt { "Next fire" } dd { (view::maybe_time(job.next_fire_at, tz)) }
            dt { "Created" } dd { (view::time(row.created_at, tz)) }
            dt { "Changed" } dd { (view::time(row.updated_at, tz)) }
            @if let Some(done) = row.done_at { dt { "Done" } dd { (view::time(done, tz)) } }
        }
        h2 { "Last runs" }
        (run_table(id, &recent.runs, tz))
        p {
            a href={ "/jobs/" (id) "/runs" } { "All " (recent.total) " runs" }
            " · " a href={ "/audit?job_id=" (id) } { "Changes" }
        }
        h2 { "Definition" }
        (job_form(state, session, &format!("/jobs/{id}"), form.unwrap_or(&stored), error))
    };
    Ok(view::page(&row.name, Section::Jobs, session, body))
}

/// `POST /jobs/{id}`: saves the form (the API's `PATCH /jobs/{id}` with every column).
pub async fn update(
    State(state): State<AppState>,
    signed: Signed,
    Ids(id): Ids<i64>,
    Posted(form): Posted<JobForm>,
) -> Result<Response, PageError> {
    signed.check_csrf(&form.csrf)?;
    let role = signed.admin()?;
    let updated = match form.input(false) {
        Ok(input) => jobs::update(State(state.clone()), Admin(role), Id(id), Body(input)).await,
        Err(e) => Err(e),
    };
    match updated {
        Ok(_) => Ok(Redirect::to(&format!("/jobs/{id}")).into_response()),
        Err(e) if form_error(&e) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            job_page(&state, &signed.0, id, Some(&form), Some(&e.to_string())).await?,
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

async fn switch(state: AppState, role: Role, id: i64, on: bool) -> Result<Response, PageError> {
    let input = JobInput {
        enabled: Some(Enabled::Bool(on)),
        ..JobInput::default()
    };
    let _changed = jobs::update(State(state), Admin(role), Id(id), Body(input)).await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// `POST /jobs/{id}/enable`.
pub async fn enable(
    State(state): State<AppState>,
    Ids(id): Ids<i64>,
    AdminAction(role): AdminAction,
) -> Result<Response, PageError> {
    switch(state, role, id, true).await
}

/// `POST /jobs/{id}/disable`.
pub async fn disable(
    State(state): State<AppState>,
    Ids(id): Ids<i64>,
    AdminAction(role): AdminAction,
) -> Result<Response, PageError> {
    switch(state, role, id, false).await
}

/// `POST /jobs/{id}/run`: runs it now (the API's `POST /jobs/{id}/run`), then shows the run.
pub async fn run_now(
    State(state): State<AppState>,
    Ids(id): Ids<i64>,
    AdminAction(role): AdminAction,
) -> Result<Response, PageError> {
    let (_, taken) = actions::run_now(
        State(state),
        Admin(role),
        Id(id),
        OptionalBody(actions::RunNowBody::default()),
    )
    .await?;
    Ok(Redirect::to(&format!("/jobs/{id}/runs/{}", taken.0.run_id)).into_response())
}

/// `POST /jobs/{id}/delete`: deletes it (its runs stay), then shows the jobs.
pub async fn delete(
    State(state): State<AppState>,
    Ids(id): Ids<i64>,
    AdminAction(role): AdminAction,
) -> Result<Response, PageError> {
    jobs::delete(State(state), Admin(role), Id(id)).await?;
    Ok(Redirect::to("/jobs").into_response())
}

/// `POST /runs/{id}/kill`: asks its executor to stop it, then shows the run.
pub async fn kill(
    State(state): State<AppState>,
    Ids(id): Ids<i64>,
    AdminAction(role): AdminAction,
) -> Result<Response, PageError> {
    let (_, killing) = actions::kill(State(state), Admin(role), Id(id)).await?;
    Ok(Redirect::to(&format!("/jobs/{}/runs/{id}", killing.0.job_id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_sends_lf_line_ends_and_enabled_only_for_a_new_job() {
        let form = JobForm {
            command: "set -e\r\ncd /srv\r\nmake".into(),
            timeout_secs: " 30 ".into(),
            enabled: None,
            ..JobForm::blank()
        };
        let new = form.input(true).unwrap();
        assert_eq!(new.command.as_deref(), Some("set -e\ncd /srv\nmake"));
        assert_eq!(new.timeout_secs, Some(30));
        assert!(matches!(new.enabled, Some(Enabled::Bool(false))));
        assert!(form.input(false).unwrap().enabled.is_none());
        let bad = JobForm {
            timeout_secs: "soon".into(),
            ..JobForm::blank()
        };
        assert!(bad.input(true).unwrap_err().to_string().contains("soon"));
    }
}
