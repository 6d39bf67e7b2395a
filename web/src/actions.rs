//! Operator actions: run a job now, kill a run. Both go the way `gocron_shared::control` goes
//! for the command-line tools (an etcd request the dispatchers serve; the executor asked over
//! RPC with the secret), and both are audited once done.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use gocron_shared::control::{self, ControlError};
use gocron_shared::entity::{job, run};
use gocron_shared::job::{RunStatus, parse_env, validate};
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::audit;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{Id, OptionalBody};

/// How long `POST /jobs/{id}/run` waits for a dispatcher to take the request.
pub const TAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kill waits for the executor to answer.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the run table is read while waiting for a dispatcher.
const POLL: Duration = Duration::from_millis(100);

/// The answer to a run-now request: the run a dispatcher made of it.
#[derive(Debug, Serialize)]
pub struct Taken {
    /// The run's id.
    pub run_id: i64,
    /// The job's id.
    pub job_id: i64,
    /// The request's instant: the run's `scheduled_at` (with `trigger = manual`).
    pub scheduled_at: DateTime<Utc>,
    /// The run's status when it was seen (`skipped` when the job's policy said so).
    pub status: String,
}

/// The audit record of a run-now or a kill.
#[derive(Debug, Serialize)]
struct Action {
    run_id: i64,
    scheduled_at: DateTime<Utc>,
    /// The names of a run-now's own variables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
}

/// The body of `POST /api/v1/jobs/{id}/run`, which may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunNowBody {
    /// `KEY=VALUE` lines for this run only, on top of the job's `env`.
    #[serde(default)]
    pub env: String,
}

/// Why job `m` would not run now, if it would not: 409 when it is switched off or done, 422
/// when it is invalid.
fn runnable(state: &AppState, m: &job::Model) -> Result<(), ApiError> {
    if m.enabled == 0 {
        return Err(ApiError::Conflict(format!(
            "job {} is disabled: enable it to run it",
            m.id
        )));
    }
    if m.done_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "job {} is a one-shot job that has run; it is not scheduled any more",
            m.id
        )));
    }
    if let Some(e) = &m.last_error {
        return Err(ApiError::Invalid(format!(
            "job {} is not scheduled: {e}",
            m.id
        )));
    }
    validate(m, state.machines(), state.default_tz())
        .map(|_| ())
        .map_err(|e| ApiError::Invalid(format!("job {} is not scheduled: {e}", m.id)))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("{what} does not answer: {e}"))
}

/// `POST /api/v1/jobs/{id}/run`: puts a run-now request in etcd and answers 202 once a
/// dispatcher has written the run's row; 504 (the request withdrawn) when none does within
/// [`TAKE_TIMEOUT`].
pub async fn run_now(
    State(state): State<AppState>,
    Admin(role): Admin,
    Id(id): Id,
    OptionalBody(body): OptionalBody<RunNowBody>,
) -> Result<(StatusCode, Json<Taken>), ApiError> {
    // Checked before anything is asked of etcd: a bad line is the caller's to fix.
    let env = parse_env(&body.env).map_err(|e| ApiError::bad_request(format!("env {e}")))?;
    let m = job::Entity::find_by_id(id)
        .one(state.db())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    runnable(&state, &m)?;
    let cluster = state.cluster()?;
    let mut etcd = cluster.etcd.clone();
    // Dispatchers serve requests for the jobs published in etcd only; a row the monitor has
    // not published yet would wait for nothing.
    let published = etcd
        .get(cluster.keys.job(id), None)
        .await
        .map_err(|e| unavailable("etcd", e))?;
    if published.kvs().is_empty() {
        return Err(ApiError::Conflict(format!(
            "job {id} is not published yet (the monitor publishes a row within a poll); try again in a moment"
        )));
    }
    let requested = control::run_now(&mut etcd, &cluster.keys, id, &body.env)
        .await
        .map_err(|e| unavailable("etcd", e))?;
    let deadline = tokio::time::Instant::now() + TAKE_TIMEOUT;
    let row = loop {
        let found = run::Entity::find()
            .filter(run::Column::JobId.eq(id))
            .filter(run::Column::ScheduledAt.eq(requested))
            .filter(run::Column::Trigger.eq("manual"))
            .one(state.db())
            .await?;
        if let Some(row) = found {
            break row;
        }
        if tokio::time::Instant::now() >= deadline {
            // Withdrawn, so that it does not run long after the caller was told it did not.
            let key = cluster
                .keys
                .manual_request_key(id, requested.timestamp_millis());
            if let Err(e) = etcd.delete(key, None).await {
                tracing::warn!(job_id = id, error = %e, "cannot withdraw a run-now request");
            }
            return Err(ApiError::Timeout(format!(
                "no dispatcher took the run-now request of job {id} within {} s (are dispatchers running?); the request was withdrawn",
                TAKE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    audit::record(
        state.db(),
        role,
        "job.run",
        Some(id),
        None,
        Some(&Action {
            run_id: row.id,
            scheduled_at: requested,
            // Names only: values may be secrets.
            env: env.into_iter().map(|(k, _)| k).collect(),
        }),
    )
    .await?;
    tracing::info!(
        job_id = id,
        run_id = row.id,
        actor = role.as_str(),
        "job run now through the API"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Taken {
            run_id: row.id,
            job_id: id,
            scheduled_at: requested,
            status: row.status,
        }),
    ))
}

/// The answer to a kill: the executor has accepted to stop the run.
#[derive(Debug, Serialize)]
pub struct Killing {
    /// The run's id.
    pub run_id: i64,
    /// The job's id.
    pub job_id: i64,
}

/// `POST /api/v1/runs/{id}/kill`: asks the executor holding the run to stop it; 202 when it
/// accepted (the row then ends `killed`), 409 when the run is not in flight.
pub async fn kill(
    State(state): State<AppState>,
    Admin(role): Admin,
    Id(id): Id,
) -> Result<(StatusCode, Json<Killing>), ApiError> {
    let row = run::Entity::find_by_id(id)
        .one(state.db())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    let in_flight = matches!(
        row.status.parse::<RunStatus>(),
        Ok(RunStatus::Dispatched | RunStatus::Running)
    );
    if !in_flight {
        return Err(ApiError::Conflict(format!(
            "run {id} is not in flight (status {})",
            row.status
        )));
    }
    let cluster = state.cluster()?;
    let by = format!("{} (HTTP API)", role.as_str());
    control::kill_run(
        &cluster.fences,
        state.secret(),
        &cluster.tls,
        row.job_id,
        id,
        &by,
        KILL_TIMEOUT,
    )
    .await
    .map_err(|e| match e {
        ControlError::NotInFlight(_) | ControlError::InHandOff(..) => {
            ApiError::Conflict(e.to_string())
        }
        ControlError::Unreachable(..) | ControlError::Refused(..) => {
            ApiError::BadGateway(e.to_string())
        }
        other => ApiError::Unavailable(other.to_string()),
    })?;
    audit::record(
        state.db(),
        role,
        "run.kill",
        Some(row.job_id),
        None,
        Some(&Action {
            run_id: id,
            scheduled_at: row.scheduled_at,
            env: Vec::new(),
        }),
    )
    .await?;
    tracing::info!(
        job_id = row.job_id,
        run_id = id,
        actor = role.as_str(),
        "run killed through the API"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Killing {
            run_id: id,
            job_id: row.job_id,
        }),
    ))
}
