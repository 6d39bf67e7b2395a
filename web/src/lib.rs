//! gocron's HTTP API, served by the monitor when `[http] listen` is set.
//!
//! The table stays the source of truth: a job created or changed here is a `cron_job` row
//! written like one from plain SQL, which the monitor then validates and publishes as usual.
//! What this layer adds is a checked, authenticated and audited way to write it: the same
//! validation the monitor applies (a bad row is refused with the words `last_error` would hold),
//! bearer tokens with two roles, and one `cron_audit` row per change, in the change's
//! transaction.
//!
//! Modules:
//! - [`auth`]: bearer tokens and console sessions → the caller's role (admin, viewer).
//! - [`console`]: the operators' web pages, rendered here, on the same handlers as the API.
//! - [`error`]: every error becomes a JSON `{"error": ...}` response here, and only here.
//! - [`extract`]: the request extractors whose rejections are [`error::ApiError`]s.
//! - [`jobs`]: `cron_job` through the API: list (filtered, paged), create, read, change, delete.
//! - [`runs`]: a job's runs and one run.
//! - [`output`]: a run's output, and its live stream while it runs (from the executor, over
//!   the RPC).
//! - [`actions`]: run a job now, kill a run (through [`gocron_shared::control`]).
//! - [`cluster`]: the executors and dispatchers registered in etcd.
//! - [`alarms`]: the alarm table, without the bodies.
//! - [`audit`]: records changes and lists them.
//! - [`openapi`]: the OpenAPI document of the routes below.

// The OpenAPI document is one `json!` literal, deeper than the default limit lets it expand.
#![recursion_limit = "256"]

pub mod actions;
pub mod alarms;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod console;
pub mod error;
pub mod events;
pub mod extract;
pub mod jobs;
pub mod openapi;
pub mod output;
pub mod runs;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono_tz::Tz;
use gocron_shared::config::Config;
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::machine::MachineGroups;
use gocron_shared::rpc::{Secret, Tls};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::auth::{Sessions, Throttle, Tokens};
use crate::error::ApiError;

/// How long requests in flight may go on after shutdown is asked before they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler sees: the database, what validation needs, and the tokens.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    machines: MachineGroups,
    default_tz: Tz,
    tokens: Tokens,
    sessions: Sessions,
    throttle: Throttle,
    secure_cookie: bool,
    secret: Secret,
    cluster: OnceLock<Cluster>,
}

/// What the operator actions and the cluster views need besides the database: given by the
/// monitor once it has connected to etcd and Redis (the API serves the rest before that).
#[derive(Clone)]
pub struct Cluster {
    /// etcd: registrations and run-now requests.
    pub etcd: etcd_client::Client,
    /// The key layout under `[etcd] prefix`.
    pub keys: EtcdKeys,
    /// Redis: the runs in flight.
    pub fences: Fences,
    /// `[rpc]` TLS, to reach executors.
    pub tls: Tls,
}

impl AppState {
    /// The state of an API on `db`, validating jobs as the monitor of `config` does.
    pub fn new(db: DatabaseConnection, config: &Config) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                db,
                machines: config.machines.clone(),
                default_tz: config.dispatcher.time_zone,
                tokens: Tokens::new(&config.http),
                sessions: Sessions::default(),
                throttle: Throttle::default(),
                secure_cookie: config.http.secure_cookie,
                secret: config.rpc.secret.clone(),
                cluster: OnceLock::new(),
            }),
        }
    }

    /// Gives the API etcd and Redis (once; a second call changes nothing).
    pub fn connect_cluster(&self, cluster: Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// etcd and Redis, or a 503 until the monitor has connected to them.
    pub fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.inner.cluster.get().ok_or_else(|| {
            ApiError::Unavailable("the monitor is not connected to etcd and Redis yet".into())
        })
    }

    /// `[rpc] secret`, which executors ask of a kill.
    pub fn secret(&self) -> &Secret {
        &self.inner.secret
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The `[machine]` groups a job's `machine` must name.
    pub fn machines(&self) -> &MachineGroups {
        &self.inner.machines
    }

    /// The zone of jobs whose `time_zone` is empty (`[dispatcher] time_zone`).
    pub fn default_tz(&self) -> Tz {
        self.inner.default_tz
    }

    /// The configured tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// The console's open sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// Wrong tokens by client address.
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    /// Whether the session cookie is marked `Secure` (`[http] secure_cookie`).
    pub fn secure_cookie(&self) -> bool {
        self.inner.secure_cookie
    }
}

/// `GET /metrics`: the monitor's Prometheus metrics (no token, like `/healthz`).
async fn metrics() -> impl axum::response::IntoResponse {
    use gocron_shared::metrics;
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::metrics().render(),
    )
}

/// Every route of the API (the OpenAPI document in [`openapi`] describes the same).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route(
            "/jobs/{id}",
            get(jobs::show).patch(jobs::update).delete(jobs::delete),
        )
        .route("/jobs/{id}/runs", get(runs::of_job))
        .route("/jobs/{id}/run", post(actions::run_now))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/output", get(output::output))
        .route("/runs/{id}/kill", post(actions::kill))
        .route("/executors", get(cluster::executors))
        .route("/dispatchers", get(cluster::dispatchers))
        .route("/alarms", get(alarms::list))
        .route("/events", get(events::list).post(events::create))
        .route("/audit", get(audit::list))
        .route("/rules/next", get(jobs::next))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .merge(console::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(console::guard))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown`; requests in flight then get
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let service = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server =
        axum::serve(listener, service).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        result = server => result,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("HTTP requests still in flight after the shutdown grace were dropped");
            Ok(())
        }
    }
}

/// `GET /healthz`: 200 when the database answers, 503 otherwise; needs no token.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.db().ping().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => {
            ApiError::Unavailable(format!("the database does not answer: {e}")).into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Logs each request's method, path (never its headers: they carry the token) and outcome.
async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "http request"
    );
    response
}
