//! Outcomes on their way to `cron_run`: never dropped while the executor lives, and kept on disk
//! across its restarts.
//!
//! A run's outcome is first written as usual, once. When the database answers an error (not
//! "already final", which settles it), the outcome goes to the spool, `spool/` under
//! `[executor] data_dir`, one JSON file per run written atomically (temp file, fsync, rename,
//! fsync of the folder), and leaves memory. One task per executor replays the spool oldest
//! first, with backoff (logged at most every 10 s), for as long as the process lives; each
//! outcome recorded has its file deleted, and only then its run leaves the job's live runs in
//! Redis. Until then the run counts as live: if this process dies, the monitor makes it `lost`,
//! and the next start of the executor on the same `data_dir` replays the spool, whose outcome
//! replaces `lost` (see [`gocron_shared::runs`]).
//!
//! [`Outcomes::waiting`] counts outcomes not recorded yet, in memory or spooled; from
//! `max_unrecorded` on, the executor answers busy ([`Refused::Unrecorded`]), so a slow or absent
//! database costs bounded memory and disk (at most `max_unrecorded` + `max_concurrent` outcomes).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use gocron_shared::daemon::Backoff;
use gocron_shared::lock::Fences;
use gocron_shared::rpc::Refused;
use gocron_shared::runs::{Outcome, RunLog};
use sea_orm::DbErr;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Passes in which a spooled outcome was refused while the next one went through, before it is
/// recorded without its output.
const STRIKES: u32 = 3;

/// A finished run whose outcome is to be recorded: what a spool file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// The run.
    pub run_id: i64,
    /// Its job (for its live runs in Redis).
    pub job_id: i64,
    /// `name@address` of the executor process that ran it.
    pub executor: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (a spool file written before this field existed reads as its replay's
    /// time, as those outcomes were recorded then).
    #[serde(default = "Utc::now")]
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The spool folder, locked by this process.
pub struct Spool {
    dir: PathBuf,
    /// Held while the process lives: two executors replaying one spool would race for its files.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// Files found at start.
    found: usize,
}

impl Spool {
    /// Creates `data_dir/spool` if missing and locks `data_dir`. Occurs an error when the folder
    /// cannot be made or written, or another executor process holds it.
    pub fn open(data_dir: &Path) -> anyhow::Result<Spool> {
        let dir = data_dir.join("spool");
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "[executor] data_dir: cannot create {} (the executor's outcome spool)",
                dir.display()
            )
        })?;
        let lock_path = data_dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("[executor] data_dir: cannot open {}", lock_path.display()))?;
        let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            Ok(lock) => lock,
            Err((_, e)) => anyhow::bail!(
                "[executor] data_dir: {} is in use by another executor process ({e}); give each executor a data_dir of its own",
                data_dir.display()
            ),
        };
        let mut found = 0;
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("[executor] data_dir: cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                // A write cut short by a crash: its outcome was still in memory, and died with it.
                let _ = std::fs::remove_file(entry.path());
            } else if is_spooled(&name) {
                found += 1;
            }
        }
        Ok(Spool {
            dir,
            _lock: lock,
            found,
        })
    }

    /// The spooled files, oldest first.
    fn list(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter(|e| is_spooled(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        files.sort();
        Ok(files)
    }
}

/// Whether a file name in the spool is a spooled outcome: not a write in progress
/// (`.tmp-<run>.json`, renamed once written and synced; a crash before that leaves it
/// unfinished, and the next start removes it).
pub fn is_spooled(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".json")
}

/// Writes `bytes` as `dir/name`, whole or not at all, and durably.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".tmp-{name}"));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dir.join(name))?;
        // The rename itself is durable once the folder is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The outcomes of this executor's runs until each is recorded; cheap to clone.
#[derive(Clone)]
pub struct Outcomes {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    runs: RunLog,
    fences: Fences,
    max: usize,
    /// Outcomes in memory, not recorded yet (see [`Waiting`]).
    in_memory: AtomicUsize,
    /// Files in the spool.
    spooled: AtomicUsize,
    /// Woken when a file is added to the spool.
    added: Notify,
}

/// One outcome counted as waiting for the database, until this is dropped.
pub struct Waiting {
    inner: Arc<Inner>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.inner.in_memory.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Outcomes {
    /// Outcomes recorded in `runs`, spooled in `spool`; the runs leave their live runs in
    /// `fences` once recorded. From `max` waiting on, [`Outcomes::full`] refuses new runs.
    pub fn new(spool: Spool, runs: RunLog, fences: Fences, max: usize) -> Outcomes {
        let spooled = AtomicUsize::new(spool.found);
        Outcomes {
            inner: Arc::new(Inner {
                spool,
                runs,
                fences,
                max,
                in_memory: AtomicUsize::new(0),
                spooled,
                added: Notify::new(),
            }),
        }
    }

    /// Outcomes not recorded yet: in memory, and in the spool.
    pub fn waiting(&self) -> usize {
        self.inner.in_memory.load(Ordering::SeqCst) + self.inner.spooled.load(Ordering::SeqCst)
    }

    /// Why a new run is refused when `max_unrecorded` outcomes are waiting; `None` otherwise.
    pub fn full(&self) -> Option<Refused> {
        let waiting = self.waiting();
        (waiting >= self.inner.max).then_some(Refused::Unrecorded {
            waiting,
            max: self.inner.max,
        })
    }

    /// Counts one more outcome as waiting (a run just ended), until the returned guard drops.
    pub fn wait(&self) -> Waiting {
        self.inner.in_memory.fetch_add(1, Ordering::SeqCst);
        Waiting {
            inner: self.inner.clone(),
        }
    }

    /// Records `finished` (counted by `waiting`): once; when the database answers an error, in
    /// the spool, for [`Outcomes::replay`]. Only when the spool cannot be written either does the
    /// outcome stay in memory, retried with backoff while the process lives.
    pub async fn record(&self, finished: Finished, waiting: Waiting) {
        let mut backoff = Backoff::new("database (recording a run; the spool is not writable)");
        let never = CancellationToken::new();
        loop {
            match self.write(&finished).await {
                Ok(()) => {
                    drop(waiting);
                    self.release(&finished).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        run_id = finished.run_id,
                        error = %e,
                        "cannot record the run's outcome; spooling it for a retry"
                    );
                    match self.spool(&finished).await {
                        Ok(()) => return,
                        Err(io) => {
                            tracing::error!(
                                run_id = finished.run_id,
                                spool = %self.inner.spool.dir.display(),
                                error = %io,
                                "cannot write the outcome to the spool; it stays in memory"
                            );
                            let _ = backoff.wait(&e, &never).await;
                        }
                    }
                }
            }
        }
    }

    /// One try at writing the outcome; `Ok` when the row is final (now, or already).
    async fn write(&self, finished: &Finished) -> Result<(), DbErr> {
        let recorded = self
            .inner
            .runs
            .finish(
                finished.run_id,
                &finished.executor,
                (finished.started_at, finished.finished_at),
                finished.outcome.clone(),
            )
            .await?;
        if !recorded {
            tracing::warn!(
                run_id = finished.run_id,
                "the run row was already final; outcome not recorded"
            );
        }
        Ok(())
    }

    /// Out of the job's live runs, once the outcome is safe in the database.
    async fn release(&self, finished: &Finished) {
        if let Err(e) = self
            .inner
            .fences
            .release(finished.job_id, finished.run_id)
            .await
        {
            tracing::warn!(run_id = finished.run_id, error = %e, "cannot drop the run from the job's live runs");
        }
    }

    /// Writes `finished` to the spool and counts it there.
    async fn spool(&self, finished: &Finished) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(finished).map_err(std::io::Error::other)?;
        // Named by when it was spooled: the names sort oldest first.
        let name = format!(
            "{:020}-{}.json",
            Utc::now().timestamp_micros().max(0),
            finished.run_id
        );
        let dir = self.inner.spool.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        self.inner.spooled.fetch_add(1, Ordering::SeqCst);
        self.inner.added.notify_one();
        Ok(())
    }

    /// Replays the spool until `stop`: oldest first, with backoff while the database refuses,
    /// again whenever an outcome is spooled.
    pub async fn replay(self, stop: CancellationToken) {
        let found = self.inner.spooled.load(Ordering::SeqCst);
        if found > 0 {
            tracing::info!(
                outcomes = found,
                spool = %self.inner.spool.dir.display(),
                "replaying the outcomes a previous executor process spooled"
            );
        }
        let mut backoff = Backoff::new("database (recording spooled outcomes)");
        let mut strikes = HashMap::new();
        loop {
            match self.replay_pass(&mut strikes).await {
                Ok(()) => {
                    backoff.reset();
                    tokio::select! {
                        _ = self.inner.added.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    let waiting = self.inner.spooled.load(Ordering::SeqCst);
                    let e = format!("{e} ({waiting} outcomes in the spool)");
                    if backoff.wait(e, &stop).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Tries every spooled outcome once, oldest first; `Ok` only when none is left. It stops at
    /// the second outcome refused in a row (the database is away). One refused while the next
    /// goes through is refused for its own sake: a strike in `strikes`; at [`STRIKES`] it is
    /// recorded without its output.
    async fn replay_pass(&self, strikes: &mut HashMap<PathBuf, u32>) -> Result<(), String> {
        let files = self
            .inner
            .spool
            .list()
            .map_err(|e| format!("cannot read the spool: {e}"))?;
        let mut refused: Option<(PathBuf, Finished)> = None;
        let mut left = 0;
        let mut last_error = String::new();
        for path in files {
            let Some(finished) = self.read(&path).await else {
                continue;
            };
            match self.write(&finished).await {
                Ok(()) => {
                    strikes.remove(&path);
                    self.done(&path, &finished).await;
                    if let Some((path, finished)) = refused.take() {
                        let n = strikes.entry(path.clone()).or_insert(0);
                        *n += 1;
                        if *n >= STRIKES && self.record_without_output(&path, finished).await {
                            strikes.remove(&path);
                            left -= 1;
                        }
                    }
                }
                Err(e) if refused.is_some() => return Err(e.to_string()),
                Err(e) => {
                    tracing::debug!(run_id = finished.run_id, error = %e, "a spooled outcome was refused");
                    left += 1;
                    last_error = e.to_string();
                    refused = Some((path, finished));
                }
            }
        }
        if left > 0 {
            return Err(format!(
                "{left} spooled outcomes still refused, the last: {last_error}"
            ));
        }
        Ok(())
    }

    /// The database took other outcomes but not this one, pass after pass: what it refuses is
    /// likely the output (the rest is numbers and our own words), so the outcome is recorded
    /// without it. Whether it was recorded.
    async fn record_without_output(&self, path: &Path, mut finished: Finished) -> bool {
        finished.outcome.output =
            "[gocron: the database refused this run's output; it was not recorded]".to_owned();
        match self.write(&finished).await {
            Ok(()) => {
                tracing::error!(
                    run_id = finished.run_id,
                    "the database refused the run's output: its outcome was recorded without it"
                );
                self.done(path, &finished).await;
                true
            }
            Err(e) => {
                tracing::error!(run_id = finished.run_id, error = %e, "the database refuses the run's outcome, even without its output; kept in the spool");
                false
            }
        }
    }

    /// A spooled outcome, or `None` when its file is gone or unreadable (set aside as
    /// `*.bad`, logged: nothing can replay it).
    async fn read(&self, path: &Path) -> Option<Finished> {
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a spooled outcome");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(finished) => Some(finished),
            Err(e) => {
                let bad = path.with_extension("bad");
                tracing::error!(
                    path = %path.display(),
                    moved_to = %bad.display(),
                    error = %e,
                    "a spooled outcome cannot be decoded; set aside"
                );
                if tokio::fs::rename(path, &bad).await.is_ok() {
                    self.inner.spooled.fetch_sub(1, Ordering::SeqCst);
                }
                None
            }
        }
    }

    /// Deletes a recorded outcome's file, then drops its run from the job's live runs.
    async fn done(&self, path: &Path, finished: &Finished) {
        match tokio::fs::remove_file(path).await {
            Ok(()) => {
                self.inner.spooled.fetch_sub(1, Ordering::SeqCst);
            }
            Err(e) => {
                // Replayed again later: the row is final by then, so that changes nothing.
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a recorded outcome from the spool");
                return;
            }
        }
        tracing::info!(
            run_id = finished.run_id,
            status = %finished.outcome.status,
            "a spooled outcome was recorded"
        );
        self.release(finished).await;
    }

    /// Outcomes still in the spool (for the log at exit).
    pub fn spooled(&self) -> usize {
        self.inner.spooled.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::{Finished, Spool, write_atomically};
    use gocron_shared::job::RunStatus;
    use gocron_shared::runs::Outcome;

    #[test]
    fn a_spool_file_is_whole_and_sorted_oldest_first() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::open(data.path()).unwrap();
        let finished = Finished {
            run_id: 7,
            job_id: 3,
            executor: "a@127.0.0.1:1".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            outcome: Outcome {
                status: RunStatus::Failed,
                exit_code: Some(3),
                error: Some("exited with code 3".into()),
                output: "a\u{2400}b\n".into(),
            },
        };
        let bytes = serde_json::to_vec(&finished).unwrap();
        for name in ["00000000000000000002-7.json", "00000000000000000001-8.json"] {
            write_atomically(&spool.dir, name, &bytes).unwrap();
        }
        std::fs::write(spool.dir.join(".tmp-x.json"), b"{").unwrap();
        let names: Vec<String> = spool
            .list()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["00000000000000000001-8.json", "00000000000000000002-7.json"]
        );
        let back: Finished =
            serde_json::from_slice(&std::fs::read(spool.list().unwrap()[0].clone()).unwrap())
                .unwrap();
        assert_eq!(back, finished);
        // A second process on the same folder is refused; the next one counts the files and
        // clears the half-written one.
        let err = Spool::open(data.path()).err().unwrap().to_string();
        assert!(err.contains("in use by another executor process"), "{err}");
        drop(spool);
        let spool = Spool::open(data.path()).unwrap();
        assert_eq!(spool.found, 2);
        assert!(!spool.dir.join(".tmp-x.json").exists());
    }
}
