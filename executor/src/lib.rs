//! The gocron executor: registers in etcd under a lease, accepts runs from dispatchers over RPC,
//! runs each job's command and records the outcome in `cron_run`.
//!
//! Modules:
//! - [`service`]: the RPC handler: refuse when busy, claim the run row, start the run, answer.
//! - [`runner`]: running one shell or HTTP job, keeping the tail of its output (which followers
//!   read while it runs: [`gocron_shared::rpc::ExecutorRpc::run_output`]).
//! - [`spawn`]: starting a shell job's process (a clone that shares the executor's memory until
//!   its `execve`, on a reused stack; the one module allowed `unsafe`).
//! - [`spool`]: recording each outcome: retried until recorded, spooled to `data_dir` while the
//!   database refuses it, replayed after a restart.
//!
//! [`run`] is the whole daemon; `main` only parses flags and handles signals.

pub mod runner;
pub mod service;
pub mod spawn;
pub mod spool;

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use gocron_shared::config::Config;
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::machine::ExecutorInfo;
use gocron_shared::registry::{self, Registration};
use gocron_shared::rpc::{self, ExecutorRpc as _};
use gocron_shared::runs::RunLog;
use tarpc::server::{BaseChannel, Channel as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::runner::RunAs;

use crate::service::Service;
use crate::spool::{Outcomes, Spool};

/// How long a connecting peer may take over its TLS handshake, and then again to send its first
/// request (a dispatcher sends one as soon as it is connected).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one log line per this long about connections refused over `max_connections`.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Runs the executor until `shutdown` is cancelled, then drains: it leaves etcd first (so no new
/// runs arrive), refuses calls, waits up to `[executor] drain_secs` for running jobs, then stops
/// those still going (their process groups, status `killed`) and records every outcome.
///
/// The `gocron-executor` process: flags, configuration, logging, signals (the first SIGTERM or
/// SIGINT drains, the second stops the jobs at once), then [`run_until`].
pub async fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    gocron_shared::daemon::init_tracing();
    let args = gocron_shared::daemon::Args::parse();
    let config = Config::load(&args.config)?;
    let (shutdown, hurry) = gocron_shared::daemon::shutdown_and_hurry_on_signals();
    run_until(config, shutdown, hurry).await
}

/// `[executor] listen` may use port 0 (tests do): the bound port is then advertised.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_until(config, shutdown, CancellationToken::new()).await
}

/// [`run`], where cancelling `hurry` during the drain stops the running jobs at once (as when
/// the drain time is over), still recording their status.
pub async fn run_until(
    config: Config,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> anyhow::Result<()> {
    let run_as = RunAs::resolve(&config.executor.run_as)?;
    let spool = Spool::open(&config.executor.data_dir)?;
    let tls = rpc::Tls::load(&config.rpc)?;
    // `/metrics`, served until this function returns (through a drain, for an executor).
    let metrics_stop = CancellationToken::new();
    let _metrics_stop = metrics_stop.clone().drop_guard();
    if let Some(listen) = config.metrics.listen {
        gocron_shared::metrics::serve(listen, metrics_stop.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))?;
    }
    let listener = TcpListener::bind(config.executor.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.executor.listen))?;
    let mut advertise = config.executor.advertise;
    if advertise.port() == 0 {
        advertise.set_port(listener.local_addr()?.port());
    }
    let info = ExecutorInfo {
        name: config.executor.name.clone(),
        address: advertise,
        version: gocron_shared::VERSION.to_owned(),
        started_at: chrono::Utc::now().to_rfc3339(),
        instance: ExecutorInfo::new_instance(),
        starts_at_tick: true,
        takes_batches: true,
    };

    let Ok(db) = gocron_shared::db::connect_and_migrate(&config.database, &shutdown).await else {
        return Ok(());
    };
    let Ok(etcd) = registry::connect(&config.etcd, &shutdown).await else {
        return Ok(());
    };
    let Ok(fences) = Fences::connect(
        &config.redis,
        &info.to_string(),
        config.dispatcher.lock_ttl,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };

    let run_log = RunLog::spawn(db);
    let outcomes = Outcomes::new(
        spool,
        run_log.clone(),
        fences.clone(),
        config.executor.max_unrecorded,
    );
    // The spool of a previous process is replayed at once; the task lives as long as runs may
    // still spool, so it stops only after the drain.
    let stop_replay = CancellationToken::new();
    let replay = tokio::spawn(outcomes.clone().replay(stop_replay.clone()));
    let runs = TaskTracker::new();
    let stop_runs = CancellationToken::new();
    let service = Service::new(
        config.rpc.secret.clone(),
        &config.executor,
        &info,
        run_log,
        fences,
        outcomes.clone(),
        runs.clone(),
        stop_runs.clone(),
        run_as,
    );
    let keys = EtcdKeys::new(&config.etcd.prefix);
    // Alive until the very end, drain included: runs held by this process count as live while
    // this key exists (see `gocron_shared::live`), even after it stopped taking runs.
    // Its keep-alive must outlive `shutdown`, so it gets a token of its own.
    let own = CancellationToken::new();
    let alive = tokio::select! {
        alive = Registration::start(
            etcd.clone(),
            keys.instance(&info.instance),
            info.to_string(),
            config.etcd.lease_ttl,
            &own,
        ) => alive,
        _ = shutdown.cancelled() => {
            stop_replay.cancel();
            return Ok(());
        }
    };
    let Ok(alive) = alive else {
        stop_replay.cancel();
        return Ok(());
    };
    let value = serde_json::to_string(&info)?;
    let Ok(registration) = Registration::start(
        etcd,
        keys.executor(&info.name),
        value,
        config.etcd.lease_ttl,
        &shutdown,
    )
    .await
    else {
        stop_replay.cancel();
        alive.revoke().await;
        return Ok(());
    };
    tracing::info!(executor = %info, listen = %config.executor.listen, "executor ready");

    let connections = TaskTracker::new();
    let stop_connections = CancellationToken::new();
    // Every connection holds a slot from accept to close, whoever the peer: the secret is only
    // checked on a call, so until then a connection costs us without proving anything.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(config.executor.max_connections));
    let mut refused = RefusedLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.note(peer, config.executor.max_connections);
            drop(stream);
            continue;
        };
        tracing::debug!(%peer, "dispatcher connected");
        let (stop, tls, service) = (
            stop_connections.clone(),
            tls.clone(),
            service.for_peer(peer),
        );
        // The TLS handshake, if any, happens in the connection's task: a slow or hostile peer
        // never holds up the accept loop.
        let connection = async move {
            let _slot = slot;
            let stream = match tls.accept(stream, HANDSHAKE_TIMEOUT).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "refused a connection: TLS handshake failed");
                    return;
                }
            };
            // Frames over `rpc::MAX_FRAME_BYTES`, a first request later than the deadline, or
            // bytes that do not decode end the connection (tarpc logs it, in this span).
            let transport = rpc::FirstFrameWithin::new(rpc::transport(stream), HANDSHAKE_TIMEOUT);
            let serve = BaseChannel::with_defaults(transport)
                .execute(service.serve())
                .for_each_concurrent(None, |response| response);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve => tracing::debug!(%peer, "dispatcher disconnected"),
            }
        };
        connections.spawn(connection.instrument(tracing::info_span!("connection", %peer)));
    }

    // Leave etcd first so that dispatchers stop choosing us, then refuse what still arrives.
    registration.revoke().await;
    service.refuse_new_runs();
    drop(listener);
    runs.close();
    let drain = Duration::from_secs(config.executor.drain_secs);
    if !runs.is_empty() {
        tracing::info!(
            running = runs.len(),
            drain_secs = drain.as_secs(),
            "waiting for running jobs"
        );
    }
    let drained = tokio::select! {
        _ = runs.wait() => true,
        _ = tokio::time::sleep(drain) => false,
        _ = hurry.cancelled() => false,
    };
    if !drained {
        tracing::warn!(
            running = runs.len(),
            "stopping the jobs still running (status killed)"
        );
        stop_runs.cancel();
        runs.wait().await;
    }
    stop_connections.cancel();
    connections.close();
    connections.wait().await;
    stop_replay.cancel();
    let _ = replay.await;
    if outcomes.spooled() > 0 {
        tracing::warn!(
            outcomes = outcomes.spooled(),
            data_dir = %config.executor.data_dir.display(),
            "outcomes the database refused stay in the spool; the executor replays them when it starts again (with the same data_dir)"
        );
    }
    alive.revoke().await;
    tracing::info!(executor = %info, "executor stopped");
    Ok(())
}

/// The log of connections refused over `[executor] max_connections`: one line per
/// [`REFUSED_LOG_EVERY`] at most, counting the others, so that a flood cannot flood the log.
#[derive(Default)]
struct RefusedLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusedLog {
    fn note(&mut self, peer: std::net::SocketAddr, max: usize) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSED_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            %peer,
            max_connections = max,
            refused_since_last_line = self.unlogged,
            "refused a connection: max_connections connections are open"
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}
