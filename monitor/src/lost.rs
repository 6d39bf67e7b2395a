//! The sweep for lost runs: every run in flight (the jobs' live hashes in Redis) whose holder is
//! gone is recorded `lost`, for every job and policy, within about the etcd lease TTL of its
//! executor's death, whether or not the job ticks again soon.

use std::collections::HashSet;
use std::sync::Arc;

use gocron_shared::keys::EtcdKeys;
use gocron_shared::live;
use gocron_shared::lock::Fences;
use gocron_shared::runs::RunLog;
use tokio::sync::watch;

/// What a sweep needs.
pub struct Sweeper {
    /// Redis: the live hashes.
    pub fences: Fences,
    /// The run writer.
    pub runs: RunLog,
    /// The executor processes alive in etcd (mirrored).
    pub instances: watch::Receiver<Option<Arc<HashSet<String>>>>,
    /// etcd itself, to confirm a death the mirror shows.
    pub etcd: etcd_client::Client,
    /// etcd keys.
    pub keys: EtcdKeys,
}

impl Sweeper {
    /// One sweep; the number of runs still in flight.
    pub async fn sweep(&self) -> usize {
        let in_flight = match self.fences.all_in_flight().await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the runs in flight");
                return 0;
            }
        };
        let view = self.instances.borrow().clone();
        live::settle(
            in_flight,
            view.as_deref(),
            &self.etcd,
            &self.keys,
            &self.runs,
            &self.fences,
        )
        .await
        .len()
    }
}
