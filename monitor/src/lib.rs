//! The gocron monitor: brings `cron_job` rows live.
//!
//! Every `[monitor] poll_ms` it reads the job table's change log (kept by triggers, so plain
//! SQL counts), validates the rows that changed (rule, time zone, machine group, columns),
//! writes the verdict to `last_error`, and makes the published jobs in etcd
//! (`{prefix}/jobs/{id}`) equal to the valid, enabled rows. Dispatchers watch that prefix, so a
//! row inserted, changed, disabled or deleted with plain SQL is live everywhere within about one
//! poll. Every `reconcile_secs` the whole table is compared with etcd, in pages, to heal what
//! the log cannot show. Work per poll is proportional to what changed, not to the table.
//!
//! If the monitor is down, dispatchers keep the jobs they know (etcd keeps them); when it comes
//! back, the first pass publishes what changed meanwhile. Two monitors may run: they compute the
//! same state and their writes are idempotent.
//!
//! It also sweeps for lost runs (see [`lost`]): a run whose executor died is recorded `lost`
//! within about the etcd lease TTL. And it watches over jobs, runs, executors and dispatchers,
//! and tells people by mail and SMS when something is wrong: once, deduplicated across monitors,
//! quiet-period- and cap-limited.
//!
//! With `[http] listen` set, it also serves the HTTP API (the `gocron-web` crate) on its
//! database, stopping it with the rest on shutdown.
//!
//! Modules:
//! - [`sync`]: change log (or, now and then, the whole table) → verdicts → etcd.
//! - [`lost`]: runs in flight whose holder is gone become `lost`.
//! - [`checks`]: the health checks, each pass's findings recorded as alarms.
//! - [`events`]: `cron_event` rows → one request per subscribed `@event` job → dispatchers.
//! - [`alarms`]: the alarm table: record once, claim, quiet period, daily cap, send, retry.
//! - [`ledger`]: every tick of every job ends with a row (`missed` when nobody wrote one).
//! - [`health`]: the checks and sender loops and their etcd views.
//! - [`retention`]: old final runs and alarms deleted in small batches (`keep_days`, ...).

pub mod alarms;
pub mod checks;
pub mod events;
pub mod health;
pub mod ledger;
pub mod lost;
pub mod retention;
pub mod sync;

use std::time::Duration;

use anyhow::Context as _;
use chrono_tz::Tz;
use gocron_shared::config::Config;
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::registry;
use gocron_shared::runs::RunLog;
use tokio_util::sync::CancellationToken;

use crate::lost::Sweeper;
use crate::sync::Publisher;

/// Runs the monitor until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, None).await
}

/// [`run`], telling `http_bound` the address the HTTP API listens on once it does (so that a
/// caller who asked for port 0 learns the port).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    http_bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let Ok(db) = gocron_shared::db::connect_and_migrate(&config.database, &shutdown).await else {
        return Ok(());
    };
    let http = match config.http.listen {
        None => None,
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on [http] listen = {listen}"))?;
            let address = listener.local_addr()?;
            if config.http.admin_token.is_none() && config.http.viewer_token.is_none() {
                tracing::warn!(
                    "[http] admin_token and viewer_token are empty: the API answers 401 to every call but /healthz"
                );
            }
            tracing::info!(%address, "HTTP API listening");
            if let Some(bound) = http_bound {
                let _ = bound.send(address);
            }
            let state = gocron_web::AppState::new(db.clone(), &config);
            // Kill reaches executors as the dispatchers do.
            let tls = gocron_shared::rpc::Tls::load(&config.rpc)
                .context("cannot load [rpc] TLS for the HTTP API's kill")?;
            // A child of `shutdown`: the early returns below happen only once it is cancelled,
            // so the server is never left running.
            let stop = shutdown.child_token();
            let task = tokio::spawn(gocron_web::serve(listener, state.clone(), stop.clone()));
            Some((stop, task, state, tls))
        }
    };
    let Ok(etcd) = registry::connect(&config.etcd, &shutdown).await else {
        return Ok(());
    };
    let Ok(fences) = Fences::connect(
        &config.redis,
        "monitor",
        config.dispatcher.lock_ttl,
        &shutdown,
    )
    .await
    else {
        return Ok(());
    };
    let keys = EtcdKeys::new(&config.etcd.prefix);
    if let Some((_, _, state, tls)) = &http {
        // Until now, run-now, kill and the cluster views answered 503.
        state.connect_cluster(gocron_web::Cluster {
            etcd: etcd.clone(),
            keys: keys.clone(),
            fences: fences.clone(),
            tls: tls.clone(),
        });
    }
    match fences.index_live_hashes().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            jobs = n,
            "jobs with runs in flight indexed for the lost-run sweep"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot index the jobs with runs in flight"),
    }
    // The rows the publisher looks at reach the checks through this.
    let (updates, job_updates) = tokio::sync::mpsc::unbounded_channel();
    // Its own token: the loop below may also end because a watch ended.
    let health_stop = shutdown.child_token();
    let health = tokio::spawn({
        let (config, db, etcd, keys) = (config.clone(), db.clone(), etcd.clone(), keys.clone());
        let (fences, stop) = (fences.clone(), health_stop.clone());
        async move { health::run(&config, db, etcd, &keys, fences, job_updates, stop).await }
    });
    let retention = tokio::spawn(retention::run(
        db.clone(),
        retention::Keep::from_config(&config.monitor),
        config.monitor.retention_interval,
        health_stop.clone(),
    ));
    let mut published = registry::mirror(etcd.clone(), keys.jobs(), shutdown.child_token());
    let mut instances = registry::live_instances(etcd.clone(), &keys, shutdown.child_token());
    let sweeper = Sweeper {
        fences: fences.clone(),
        runs: RunLog::spawn(db.clone()),
        instances: instances.clone(),
        etcd: etcd.clone(),
        keys: keys.clone(),
    };
    // A third of the lease TTL: a dead executor's runs are lost within about one TTL.
    let mut sweep = tokio::time::interval(Duration::from_millis(
        (config.etcd.lease_ttl * 1000 / 3).max(500),
    ));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until the executor instances have been read, every run would look lost.
    let mut seen_instances = false;
    let default_tz: Tz = config.dispatcher.time_zone;
    let mut events = events::EventFeed::new(
        db.clone(),
        etcd.clone(),
        keys.clone(),
        config.machines.clone(),
        default_tz,
    );
    let mut publisher = Publisher::new(
        db,
        etcd,
        keys,
        config.machines.clone(),
        default_tz,
        fences,
        config.monitor.reconcile_interval,
    )
    .with_updates(updates);
    let mut poll = tokio::time::interval(config.monitor.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("monitor ready");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = published.recv() => match event {
                Some(event) => publisher.observe(event),
                None => break,
            },
            _ = instances.changed(), if !seen_instances => seen_instances = true,
            _ = sweep.tick(), if seen_instances => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = sweeper.sweep() => {}
                }
            }
            // Publishing before etcd has been read whole would re-put every job and miss stale
            // keys.
            _ = poll.tick(), if publisher.is_synced() => {
                // A pass is idempotent, so one cut short by shutdown loses nothing.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = publisher.pass() => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    result = events.pass() => if let Err(e) = result {
                        tracing::warn!(error = %e, "cannot hand events over; trying again at the next poll");
                    },
                }
            }
        }
    }
    health_stop.cancel();
    if let Err(e) = health.await {
        tracing::error!(error = %e, "the alarm checks ended abnormally");
    }
    if let Err(e) = retention.await {
        tracing::error!(error = %e, "the retention task ended abnormally");
    }
    if let Some((stop, task, ..)) = http {
        // The loop may also end because a watch ended: stop the API with the rest.
        stop.cancel();
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the HTTP API failed"),
            Err(e) => tracing::error!(error = %e, "the HTTP API ended abnormally"),
        }
    }
    tracing::info!("monitor stopped");
    Ok(())
}
