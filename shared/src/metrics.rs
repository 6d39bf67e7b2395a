//! Prometheus metrics: what each daemon counts, in one registry per process, served in the
//! Prometheus text format (the `prometheus` crate's encoder) at `/metrics`: by the monitor on
//! `[http] listen`, by dispatchers and executors on `[metrics] listen` when it is set.
//!
//! - `gocron_ticks_total{outcome}` (dispatcher): each tick this dispatcher tried, by how it
//!   ended: `fired`, `lost_race` (another dispatcher won it), `no_executor`, `missed`,
//!   `skipped`, `failed` (Redis or the database failed).
//! - `gocron_fire_lag_seconds` (executor): from a scheduled tick's instant to its command's
//!   start.
//! - `gocron_runs_total{status}`, `gocron_runs_running` (executor): runs ended by status, runs
//!   going now.
//! - `gocron_alarms_total{kind,channel}` (monitor): alarms recorded.
//! - `gocron_run_write_batches_total`, `gocron_run_writes_total` (every daemon): transactions
//!   the run writer committed or tried, and the run-row writes in them.
//! - `gocron_handover_calls_total`, `gocron_handover_runs_total` (dispatcher): calls that
//!   handed runs to executors, and the runs they carried (several a call to executors that take
//!   batches).
//! - `gocron_live_write_calls_total`, `gocron_live_writes_total` (dispatcher, executor): Redis
//!   calls writing the live runs (runs entered as handed over, marked ended, taken out once
//!   recorded), and the writes they carried.
//! - `gocron_outcome_delay_seconds` (executor): from a job's end to its outcome's commit in
//!   `cron_run` (a spooled outcome counts when its replay commits).
//! - `gocron_jobs{state}` (`valid`, `invalid`, `disabled`) and `gocron_executors_live{group}`
//!   (monitor), as of its last check.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// The metrics of this process.
pub struct Metrics {
    registry: Registry,
    /// `gocron_ticks_total{outcome}`.
    pub ticks: IntCounterVec,
    /// `gocron_fire_lag_seconds`.
    pub fire_lag: Histogram,
    /// `gocron_runs_total{status}`.
    pub runs: IntCounterVec,
    /// `gocron_runs_running`.
    pub running: IntGauge,
    /// `gocron_alarms_total{kind,channel}`.
    pub alarms: IntCounterVec,
    /// `gocron_jobs{state}`.
    pub jobs: IntGaugeVec,
    /// `gocron_executors_live{group}`.
    pub executors_live: IntGaugeVec,
    /// `gocron_run_write_batches_total`.
    pub write_batches: IntCounter,
    /// `gocron_run_writes_total`.
    pub writes: IntCounter,
    /// `gocron_outcome_delay_seconds`.
    pub outcome_delay: Histogram,
    /// `gocron_handover_calls_total`.
    pub handover_calls: IntCounter,
    /// `gocron_handover_runs_total`.
    pub handover_runs: IntCounter,
    /// `gocron_live_write_calls_total`.
    pub live_write_calls: IntCounter,
    /// `gocron_live_writes_total`.
    pub live_writes: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        // The names and labels are constants: a failure here is a bug caught by the tests.
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let ticks = counter(
            "gocron_ticks_total",
            "Ticks this dispatcher tried, by outcome.",
            &["outcome"],
        );
        let runs = counter(
            "gocron_runs_total",
            "Runs this executor ended, by status.",
            &["status"],
        );
        let alarms = counter(
            "gocron_alarms_total",
            "Alarms this monitor recorded, by kind and channel.",
            &["kind", "channel"],
        );
        let jobs = gauges(
            "gocron_jobs",
            "Jobs in the table by state, as of the monitor's last check.",
            &["state"],
        );
        let executors_live = gauges(
            "gocron_executors_live",
            "Live executors of each machine group, as of the monitor's last check.",
            &["group"],
        );
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let write_batches = plain(
            "gocron_run_write_batches_total",
            "Transactions this process's run writer committed or tried.",
        );
        let writes = plain(
            "gocron_run_writes_total",
            "Run-row writes in this process's run writer's transactions.",
        );
        let handover_calls = plain(
            "gocron_handover_calls_total",
            "Calls this dispatcher made to hand runs to executors.",
        );
        let handover_runs = plain(
            "gocron_handover_runs_total",
            "Runs this dispatcher's hand-over calls carried.",
        );
        let live_write_calls = plain(
            "gocron_live_write_calls_total",
            "Redis calls this process made to write the live runs.",
        );
        let live_writes = plain(
            "gocron_live_writes_total",
            "Writes of the live runs this process's calls carried.",
        );
        let running = IntGauge::new("gocron_runs_running", "Runs this executor has going now.")
            .expect("metric");
        registry
            .register(Box::new(running.clone()))
            .expect("register");
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("metric");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        let fire_lag = histogram(
            "gocron_fire_lag_seconds",
            "From a scheduled tick's instant to its command's start.",
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        );
        let outcome_delay = histogram(
            "gocron_outcome_delay_seconds",
            "From a job's end to its outcome's commit in cron_run.",
            &[
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        );
        Metrics {
            registry,
            ticks,
            fire_lag,
            runs,
            running,
            alarms,
            jobs,
            executors_live,
            write_batches,
            writes,
            outcome_delay,
            handover_calls,
            handover_runs,
            live_write_calls,
            live_writes,
        }
    }

    /// Every metric, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listen` until `shutdown` (for dispatchers and executors; the
/// monitor serves it with its API). The address bound, once bound.
pub async fn serve(
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                metrics().render(),
            )
        }),
    );
    tracing::info!(address = %bound, "metrics served at /metrics");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics server failed");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::metrics;

    #[test]
    fn every_metric_is_rendered_in_the_text_format() {
        let m = metrics();
        m.ticks.with_label_values(&["fired"]).inc();
        m.fire_lag.observe(0.003);
        m.runs.with_label_values(&["succeeded"]).inc();
        m.alarms.with_label_values(&["run_failed", "mail"]).inc();
        m.jobs.with_label_values(&["valid"]).set(3);
        m.executors_live.with_label_values(&["php"]).set(2);
        m.running.set(1);
        m.write_batches.inc();
        m.writes.inc_by(3);
        let text = m.render();
        for line in [
            "gocron_ticks_total{outcome=\"fired\"} ",
            "gocron_fire_lag_seconds_bucket{le=\"0.005\"} ",
            "gocron_runs_total{status=\"succeeded\"} ",
            "gocron_alarms_total{channel=\"mail\",kind=\"run_failed\"} ",
            "gocron_jobs{state=\"valid\"} 3",
            "gocron_executors_live{group=\"php\"} 2",
            "gocron_runs_running 1",
            "gocron_run_write_batches_total ",
            "gocron_run_writes_total ",
            "# TYPE gocron_fire_lag_seconds histogram",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
    }
}
