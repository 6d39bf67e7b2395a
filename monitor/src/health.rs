//! The alarm side of the monitor: its etcd views, the checks loop and the sender loop.
//!
//! Checks and sending are separate tasks (one sender per channel), so that a down or hanging
//! SMTP server or SMS gateway (each delivery under a timeout) never delays the checks, nor the
//! other channel; the checks wake the senders when they record an alarm, and they also run
//! every `check_ms` for retries and held summaries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use gocron_shared::config::{Config, host_name};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::registry::{self, MirrorEvent, Resync};
use gocron_shared::runs::RunLog;
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use gocron_shared::alarm::Channel;

use crate::alarms::{AlarmStore, Sender};
use crate::checks::{Checker, Live, Seams};
use crate::ledger::Ledger;
use crate::sync::JobUpdate;

/// How long handing back cut deliveries may take at shutdown.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How often the daily caps of past days are deleted.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Tells monitors of one process apart in `claimed_by` (tests run two in one process).
static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// How long after its instant a tick without a row counts as missed (see [`crate::ledger`]):
/// twice the etcd lease TTL (a dispatcher or executor that died is known dead) plus
/// `grace_secs`.
pub fn settle(config: &Config) -> std::time::Duration {
    std::time::Duration::from_secs(2 * config.etcd.lease_ttl) + config.alarm.grace
}

/// Runs the checks and the sender until `shutdown`.
pub async fn run(
    config: &Config,
    db: DatabaseConnection,
    etcd: etcd_client::Client,
    keys: &EtcdKeys,
    fences: Fences,
    mut jobs: mpsc::UnboundedReceiver<JobUpdate>,
    shutdown: CancellationToken,
) {
    let alarm = Arc::new(config.alarm.clone());
    let host = host_name();
    let me = format!(
        "{host}-{}-{}",
        std::process::id(),
        INSTANCE.fetch_add(1, Ordering::Relaxed)
    );
    let db_for_runs = db.clone();
    let store = AlarmStore::new(db, alarm.clone());
    let mut wakes = Vec::new();
    let mut send_tasks = Vec::new();
    for (channel, on) in [
        (Channel::Mail, alarm.smtp.is_some()),
        (Channel::Sms, alarm.sms.is_some()),
    ] {
        if !on {
            continue;
        }
        let wake = Arc::new(Notify::new());
        let sender = Sender::new(store.clone(), alarm.clone(), me.clone(), channel);
        send_tasks.push(tokio::spawn(send_loop(
            sender,
            alarm.check_interval,
            wake.clone(),
            shutdown.clone(),
        )));
        wakes.push(wake);
    }

    let mut checker = Checker::new(
        store.clone(),
        alarm.clone(),
        config.machines.clone(),
        config.dispatcher.time_zone,
        host,
        Seams {
            fences,
            runs: RunLog::spawn(db_for_runs),
            ledger: Ledger::new(settle(config), config.dispatcher.catchup, alarm.grace),
            etcd: etcd.clone(),
            keys: keys.clone(),
        },
    );
    let mut executors = registry::live_executors(etcd.clone(), keys, shutdown.child_token());
    let mut dispatchers = registry::mirror(etcd, keys.dispatchers(), shutdown.child_token());
    let mut dispatcher_keys = std::collections::BTreeSet::new();
    let mut resync = Resync::default();
    let mut live = Live::default();
    let mut tick = tokio::time::interval(alarm.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut db_ok = true;
    let mut jobs_known = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = executors.changed() => {
                if changed.is_err() { break; }
                live.executors = Some(executors.borrow_and_update().clone());
            }
            event = dispatchers.recv() => {
                match event {
                    Some(MirrorEvent::Resync) => resync.begin(),
                    Some(MirrorEvent::Put(k, _)) => {
                        resync.put(k.clone());
                        dispatcher_keys.insert(k);
                    }
                    Some(MirrorEvent::Delete(k)) => {
                        dispatcher_keys.remove(&k);
                    }
                    Some(MirrorEvent::Synced) => {
                        if let Some(seen) = resync.end() {
                            dispatcher_keys.retain(|k| seen.contains(k));
                        }
                    }
                    None => break,
                }
                if !resync.in_progress() {
                    live.dispatchers = Some(dispatcher_keys.len());
                }
            }
            update = jobs.recv() => match update {
                Some(JobUpdate::Row(id, row, resume)) => {
                    checker.job_changed(id, row, resume, Utc::now())
                }
                Some(JobUpdate::Reconciled) => jobs_known = true,
                None => break,
            },
            // Before every job is known, episodes of invalid rows would look ended.
            _ = tick.tick(), if jobs_known => {
                // Every job change sent so far is taken in before the pass (a million at a
                // monitor's start: a shutdown meanwhile is not kept waiting for them all).
                let mut taken = 0u32;
                while let Ok(update) = jobs.try_recv() {
                    if let JobUpdate::Row(id, row, resume) = update {
                        checker.job_changed(id, row, resume, Utc::now());
                    }
                    taken += 1;
                    if taken % 10_000 == 0 && shutdown.is_cancelled() {
                        break;
                    }
                }
                if shutdown.is_cancelled() {
                    break;
                }
                let pass = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    pass = checker.pass(&live) => pass,
                };
                match pass {
                    Ok(report) => {
                        if !db_ok {
                            tracing::info!("alarm checks can read the database again");
                        }
                        db_ok = true;
                        if report.recorded > 0 {
                            for wake in &wakes {
                                wake.notify_one();
                            }
                        }
                    }
                    Err(e) => {
                        if db_ok {
                            tracing::error!(error = %e, "alarm checks cannot use the database; will retry");
                        }
                        db_ok = false;
                    }
                }
            }
        }
    }
    for task in send_tasks {
        let _ = task.await;
    }
}

async fn send_loop(
    sender: Sender,
    every: std::time::Duration,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut ok = true;
    let mut pruned: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        let pass = tokio::select! {
            _ = shutdown.cancelled() => break,
            pass = sender.pass() => pass,
        };
        if pruned.is_none_or(|at| at.elapsed() > PRUNE_EVERY) && pass.is_ok() {
            match sender.prune().await {
                Ok(()) => pruned = Some(tokio::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "cannot prune past daily caps; will retry"),
            }
        }
        match pass {
            Ok(()) => ok = true,
            Err(e) => {
                if ok {
                    tracing::error!(error = %e, "alarm sender cannot use the database; will retry");
                }
                ok = false;
            }
        }
    }
    // Deliveries under way were cut: hand their rows back (or their claims lapse).
    match tokio::time::timeout(RELEASE_TIMEOUT, sender.release()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(alarms = n, "alarm deliveries cut by shutdown handed back"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot hand back alarm deliveries; their claims lapse")
        }
        Err(_) => tracing::warn!("handing back alarm deliveries timed out; their claims lapse"),
    }
}
