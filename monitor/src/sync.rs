//! One pass of the monitor: job table → verdicts (`last_error`) → published jobs in etcd.

use std::collections::HashMap;

use chrono_tz::Tz;
use etcd_client::Client;
use gocron_shared::entity::job;
use gocron_shared::job::{JobSpec, validate};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::lock::Fences;
use gocron_shared::machine::MachineGroups;
use gocron_shared::registry::{MirrorEvent, REQUEST_TIMEOUT};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

/// Keeps etcd's published jobs equal to the valid, enabled rows.
pub struct Publisher {
    db: DatabaseConnection,
    etcd: Client,
    keys: EtcdKeys,
    machines: MachineGroups,
    default_tz: Tz,
    /// Redis: a withdrawn job, or one whose rule or time zone changed, forgets how far it was
    /// scheduled, so that its ticks meanwhile do not count as missed.
    fences: Fences,
    /// What etcd holds, from the mirror plus our own writes; `None` for a value that does not
    /// decode, so that the next pass overwrites or deletes it.
    published: HashMap<i64, Option<JobSpec>>,
    /// Whether the last pass could read the table, so that an outage is logged once.
    table_ok: bool,
}

/// What one pass changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs put into etcd.
    pub published: usize,
    /// Jobs removed from etcd.
    pub withdrawn: usize,
    /// Rows whose `last_error` changed.
    pub verdicts: usize,
}

impl Publisher {
    /// A publisher that validates rows against `machines` and `default_tz`.
    pub fn new(
        db: DatabaseConnection,
        etcd: Client,
        keys: EtcdKeys,
        machines: MachineGroups,
        default_tz: Tz,
        fences: Fences,
    ) -> Publisher {
        Publisher {
            db,
            etcd,
            keys,
            machines,
            default_tz,
            fences,
            published: HashMap::new(),
            table_ok: true,
        }
    }

    /// Takes in a change of etcd's published jobs.
    pub fn observe(&mut self, event: MirrorEvent) {
        match event {
            MirrorEvent::Reset(all) => {
                self.published.clear();
                for (key, value) in all {
                    self.observe_put(&key, &value);
                }
            }
            MirrorEvent::Put(key, value) => self.observe_put(&key, &value),
            MirrorEvent::Delete(key) => {
                if let Some(id) = self.keys.job_id(&key) {
                    self.published.remove(&id);
                }
            }
        }
    }

    fn observe_put(&mut self, key: &str, value: &[u8]) {
        if let Some(id) = self.keys.job_id(key) {
            self.published
                .insert(id, serde_json::from_slice::<JobSpec>(value).ok());
        }
    }

    /// Reads the table and brings verdicts and etcd up to date; failures are logged and the
    /// next pass tries again (nothing is withdrawn from etcd while the table cannot be read).
    pub async fn pass(&mut self) -> PassReport {
        let mut report = PassReport::default();
        let rows = match job::Entity::find().all(&self.db).await {
            Ok(rows) => {
                if !self.table_ok {
                    tracing::info!("the job table can be read again");
                }
                self.table_ok = true;
                rows
            }
            Err(e) => {
                if self.table_ok {
                    tracing::error!(error = %e, "cannot read the job table; published jobs stay as they are");
                }
                self.table_ok = false;
                return report;
            }
        };

        let mut desired = HashMap::with_capacity(rows.len());
        for row in &rows {
            let verdict = validate(row, &self.machines, self.default_tz);
            let error = verdict.as_ref().err().map(ToString::to_string);
            if row.last_error != error {
                self.record_verdict(row, error.as_deref()).await;
                report.verdicts += 1;
            }
            // A one-shot job that ran (`done_at`) is done, like a disabled one.
            if let Ok(spec) = verdict
                && row.enabled != 0
                && row.done_at.is_none()
            {
                desired.insert(row.id, spec);
            }
        }

        for (id, spec) in &desired {
            if self
                .published
                .get(id)
                .is_some_and(|p| p.as_ref() == Some(spec))
            {
                continue;
            }
            let value = match serde_json::to_string(spec) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(job_id = id, error = %e, "cannot encode job");
                    continue;
                }
            };
            let retimed = self.published.get(id).is_some_and(|p| {
                p.as_ref()
                    .is_none_or(|p| p.rule != spec.rule || p.time_zone != spec.time_zone)
            });
            if retimed {
                // Ticks of the old rule are not missed ticks of the new one.
                self.forget_through(*id).await;
            }
            let mut etcd = self.etcd.clone();
            let put =
                tokio::time::timeout(REQUEST_TIMEOUT, etcd.put(self.keys.job(*id), value, None));
            match put.await {
                Ok(Ok(_)) => {
                    tracing::info!(job_id = id, job = %spec.name, rule = %spec.rule, "job published");
                    self.published.insert(*id, Some(spec.clone()));
                    report.published += 1;
                }
                Ok(Err(e)) => {
                    tracing::warn!(job_id = id, error = %e, "cannot publish job; will retry")
                }
                Err(_) => tracing::warn!(job_id = id, "publishing job timed out; will retry"),
            }
        }

        let withdrawn: Vec<i64> = self
            .published
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for id in withdrawn {
            let mut etcd = self.etcd.clone();
            let delete =
                tokio::time::timeout(REQUEST_TIMEOUT, etcd.delete(self.keys.job(id), None));
            match delete.await {
                Ok(Ok(_)) => {
                    tracing::info!(
                        job_id = id,
                        "job withdrawn (disabled, done, invalid or deleted)"
                    );
                    self.forget_through(id).await;
                    self.published.remove(&id);
                    report.withdrawn += 1;
                }
                Ok(Err(e)) => {
                    tracing::warn!(job_id = id, error = %e, "cannot withdraw job; will retry")
                }
                Err(_) => tracing::warn!(job_id = id, "withdrawing job timed out; will retry"),
            }
        }
        report
    }

    async fn forget_through(&self, id: i64) {
        if let Err(e) = self.fences.forget_through(id).await {
            tracing::warn!(job_id = id, error = %e, "cannot reset how far the job was scheduled");
        }
    }

    async fn record_verdict(&self, row: &job::Model, error: Option<&str>) {
        match error {
            Some(e) => {
                tracing::warn!(job_id = row.id, job = %row.name, "job row is invalid and not scheduled: {e}")
            }
            None => tracing::info!(job_id = row.id, job = %row.name, "job row is valid again"),
        }
        // Only last_error is written, so a user's concurrent UPDATE of other columns is kept.
        let result = job::Entity::update_many()
            .col_expr(
                job::Column::LastError,
                Expr::value(error.map(str::to_owned)),
            )
            .filter(job::Column::Id.eq(row.id))
            .exec(&self.db)
            .await;
        if let Err(e) = result {
            tracing::warn!(job_id = row.id, error = %e, "cannot record the row's verdict in last_error");
        }
    }
}
