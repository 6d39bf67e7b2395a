//! The daemons registered in etcd: executors (with the groups they serve and their runs in
//! flight) and dispatchers.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::State;
use gocron_shared::live::Holder;
use gocron_shared::machine::ExecutorInfo;
use gocron_shared::registry::PagedRead;
use serde::Serialize;

use crate::AppState;
use crate::auth::Reader;
use crate::error::ApiError;

/// An executor as the API shows it.
#[derive(Debug, Serialize)]
pub struct ExecutorView {
    /// Its name.
    pub name: String,
    /// The address dispatchers dial.
    pub address: SocketAddr,
    /// The `[machine]` groups it is a member of (jobs with an empty `machine` run on any).
    pub groups: Vec<String>,
    /// Runs it holds in Redis's live hashes now.
    pub runs_in_flight: usize,
    /// When it started and registered (RFC 3339).
    pub since: String,
    /// The gocron version it runs.
    pub version: String,
}

/// `GET /executors`.
#[derive(Debug, Serialize)]
pub struct ExecutorList {
    /// By name.
    pub executors: Vec<ExecutorView>,
}

/// A dispatcher as the API shows it.
#[derive(Debug, Serialize)]
pub struct DispatcherView {
    /// Its name.
    pub name: String,
    /// When it started (RFC 3339), if its registration says.
    pub since: Option<String>,
    /// The gocron version it runs, if its registration says.
    pub version: Option<String>,
}

/// `GET /dispatchers`.
#[derive(Debug, Serialize)]
pub struct DispatcherList {
    /// By name.
    pub dispatchers: Vec<DispatcherView>,
}

/// Every key and value under `prefix`, read in pages at one revision.
async fn read_prefix(
    etcd: &etcd_client::Client,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut read = PagedRead::new(etcd, prefix, false);
    let mut all = Vec::new();
    while let Some(page) = read
        .next_page()
        .await
        .map_err(|e| ApiError::Unavailable(format!("etcd does not answer: {e}")))?
    {
        all.extend(page);
    }
    Ok(all)
}

/// `GET /api/v1/executors`: the registrations in etcd, each with its groups and the runs the
/// live hashes in Redis say it holds.
pub async fn executors(
    State(state): State<AppState>,
    _: Reader,
) -> Result<Json<ExecutorList>, ApiError> {
    let cluster = state.cluster()?;
    let mut infos: Vec<ExecutorInfo> = read_prefix(&cluster.etcd, &cluster.keys.executors())
        .await?
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
        .collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let runs = cluster
        .fences
        .all_in_flight()
        .await
        .map_err(|e| ApiError::Unavailable(format!("redis does not answer: {e}")))?;
    // Counted by process (instance), falling back on the label for registrations without one.
    let mut held: HashMap<String, usize> = HashMap::new();
    for run in runs {
        if let Some(Holder::Executor {
            instance, label, ..
        }) = run.holder
        {
            *held.entry(instance).or_default() += 1;
            *held.entry(format!("label {label}")).or_default() += 1;
        }
    }
    let executors = infos
        .into_iter()
        .map(|info| {
            let groups = state
                .machines()
                .names()
                .filter(|group| {
                    state
                        .machines()
                        .select(group, std::slice::from_ref(&info))
                        .is_some_and(|members| !members.is_empty())
                })
                .map(str::to_owned)
                .collect();
            let runs_in_flight = if info.instance.is_empty() {
                held.get(&format!("label {info}"))
            } else {
                held.get(&info.instance)
            }
            .copied()
            .unwrap_or(0);
            ExecutorView {
                name: info.name,
                address: info.address,
                groups,
                runs_in_flight,
                since: info.started_at,
                version: info.version,
            }
        })
        .collect();
    Ok(Json(ExecutorList { executors }))
}

/// `GET /api/v1/dispatchers`: the registrations in etcd.
pub async fn dispatchers(
    State(state): State<AppState>,
    _: Reader,
) -> Result<Json<DispatcherList>, ApiError> {
    let cluster = state.cluster()?;
    let prefix = cluster.keys.dispatchers();
    let mut dispatchers: Vec<DispatcherView> = read_prefix(&cluster.etcd, &prefix)
        .await?
        .into_iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(&prefix)?.to_owned();
            let value: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
            let text = |k: &str| value[k].as_str().map(str::to_owned);
            Some(DispatcherView {
                name,
                since: text("started_at"),
                version: text("version"),
            })
        })
        .collect();
    dispatchers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(DispatcherList { dispatchers }))
}
