//! Running one job: a shell command in its own process group, or an HTTP GET; keeping the tail of
//! its output (the outcome is recorded by [`crate::spool`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd as _;
use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeZone as _, Utc};
use gocron_shared::config::ExecutorConfig;
use gocron_shared::job::{JobKind, RunStatus, TimeoutPolicy};
use gocron_shared::rpc::{MAX_OUTPUT_CHUNK, OutputChunk, RunRequest};
use gocron_shared::runs::{Outcome, RunLog};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::spawn;

/// After the main process exits, how long its output pipes may stay open (a forked daemon can
/// hold them forever) before the run is recorded without the rest.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// A shell job's `PATH` unless `[executor] pass_env` passes the executor's own.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A shell job's `LANG` when the executor has none.
pub const DEFAULT_LANG: &str = "C.UTF-8";

/// How long a run whose output someone follows stays readable after it ended, so that a
/// follower between two calls still gets its last bytes and its end.
pub const FOLLOW_LINGER: Duration = Duration::from_secs(10);

/// The deadline of an HTTP run that has no timeout (a job without a next tick and without
/// `timeout_secs`): no request may hold an executor's slot forever.
pub const HTTP_MAX: Duration = Duration::from_secs(3600);

/// The user jobs run as (`[executor] run_as`).
#[derive(Debug, Clone)]
pub struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
    home: std::path::PathBuf,
}

impl RunAs {
    /// Looks up `[executor] run_as` (`None` when empty). Occurs an error when the user does not
    /// exist, or the executor cannot switch to it (not root).
    pub fn resolve(name: &str) -> anyhow::Result<Option<RunAs>> {
        if name.is_empty() {
            return Ok(None);
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| {
                anyhow::anyhow!("[executor] run_as = {name}: cannot look the user up: {e}")
            })?
            .ok_or_else(|| anyhow::anyhow!("[executor] run_as = {name}: no such user"))?;
        let me = nix::unistd::geteuid();
        if !me.is_root() && me != user.uid {
            anyhow::bail!(
                "[executor] run_as = {name}: switching to another user needs an executor running as root (it runs as uid {me})"
            );
        }
        Ok(Some(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }))
    }
}

/// Runs jobs for one executor; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    runs: RunLog,
    kill_grace: Duration,
    /// Cancelled when the executor's drain time is over: every run still going is stopped.
    stop_all: CancellationToken,
    shell: String,
    executor_name: String,
    output_bytes: usize,
    http: reqwest::Client,
    /// The runs going on, by run id, each with its kill switch and output; and runs that ended
    /// less than [`FOLLOW_LINGER`] ago whose output was followed.
    going: Arc<Mutex<Table>>,
    run_as: Option<RunAs>,
    /// Every shell job's environment, before its run's own `GOCRON_*` variables.
    env: Arc<Vec<(String, std::ffi::OsString)>>,
    /// `/dev/null`, opened once: each job's stdin when it reads nothing. `None` if it could
    /// not be opened (then each run opens it).
    dev_null: Option<Arc<std::fs::File>>,
}

/// Stops one run on an operator's request.
#[derive(Default)]
struct KillSwitch {
    token: CancellationToken,
    by: Mutex<String>,
}

/// A run going on here (or just ended, while its followers read its last bytes).
struct Going {
    switch: KillSwitch,
    output: LiveOutput,
    /// Whether someone read its output: it then stays [`FOLLOW_LINGER`] after its end.
    followed: AtomicBool,
    /// When the run ended, if it did.
    ended_at: OnceLock<Instant>,
}

impl Going {
    fn new(output_bytes: usize) -> Going {
        Going {
            switch: KillSwitch::default(),
            output: LiveOutput::new(output_bytes),
            followed: AtomicBool::new(false),
            ended_at: OnceLock::new(),
        }
    }
}

/// The runs going here, and the followed ones that ended, in the order they ended: what is
/// forgotten costs the runs forgotten, not every run going (a thousand a second end here).
#[derive(Default)]
struct Table {
    runs: HashMap<i64, Arc<Going>>,
    lingering: std::collections::VecDeque<(Instant, i64)>,
}

/// Forgets the runs that ended more than [`FOLLOW_LINGER`] ago.
fn forget_ended(going: &mut Table) {
    while let Some(&(ended, run_id)) = going.lingering.front() {
        if ended.elapsed() < FOLLOW_LINGER {
            break;
        }
        going.lingering.pop_front();
        going.runs.remove(&run_id);
    }
}

/// Why a run was stopped before its end.
enum Stop {
    /// It passed its timeout under the `kill` policy.
    Timeout(Duration),
    /// The executor's drain time was over.
    Drain,
    /// An operator asked.
    OnDemand(String),
}

/// Takes a run out of the table when the run ends, however it ends (a followed run stays a
/// while, ended, for its followers).
pub struct Registered {
    going: Arc<Mutex<Table>>,
    run_id: i64,
    run: Arc<Going>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Whatever the path out (a panic included), followers learn that nothing more comes.
        self.run.output.end();
        let ended = Instant::now();
        let _ = self.run.ended_at.set(ended);
        if let Ok(mut going) = self.going.lock() {
            if self.run.followed.load(Ordering::SeqCst) {
                going.lingering.push_back((ended, self.run_id));
            } else {
                going.runs.remove(&self.run_id);
            }
            forget_ended(&mut going);
        }
    }
}

impl Runner {
    /// A runner that records outcomes in `runs`; `stop_all` stops every run still going.
    pub fn new(
        config: &ExecutorConfig,
        executor_name: &str,
        runs: RunLog,
        stop_all: CancellationToken,
        run_as: Option<RunAs>,
    ) -> Runner {
        Runner {
            runs,
            kill_grace: Duration::from_secs(config.kill_grace_secs),
            stop_all,
            shell: config.shell.clone(),
            executor_name: executor_name.to_owned(),
            output_bytes: config.output_kib * 1024,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            going: Arc::default(),
            env: Arc::new(job_environment(config, run_as.as_ref(), |name| {
                std::env::var_os(name)
            })),
            run_as,
            dev_null: std::fs::File::open("/dev/null").ok().map(Arc::new),
        }
    }

    /// Starts `command` with one pipe for its stdout and stderr, as `2>&1` would (the output
    /// keeps the order the job wrote it in, and a run costs one pipe to watch instead of two),
    /// and on stdin a pipe to write to (`piped_stdin`) or `/dev/null`. Returns the child, the
    /// output's read end and the stdin's write end. This process's copies of the job's ends
    /// are closed on return: the reader sees the end of the output once the job's are closed.
    fn start(
        &self,
        command: &spawn::Command,
        piped_stdin: bool,
    ) -> std::io::Result<(spawn::Child, pipe::Receiver, Option<pipe::Sender>)> {
        let (output, job_output) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // `/dev/null` is the executor's own descriptor, lent to every job (no copy per run).
        let opened_null;
        let (stdin, job_stdin) = if piped_stdin {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            (Some(pipe::Sender::from_owned_fd(write)?), Some(read))
        } else {
            (None, None)
        };
        let stdin_fd = match (&job_stdin, &self.dev_null) {
            (Some(read), _) => read.as_fd(),
            (None, Some(null)) => null.as_fd(),
            (None, None) => {
                opened_null = std::fs::File::open("/dev/null")?;
                opened_null.as_fd()
            }
        };
        let child = command.spawn(stdin_fd, job_output.as_fd(), job_output.as_fd())?;
        Ok((child, pipe::Receiver::from_owned_fd(output)?, stdin))
    }

    /// Stops run `run_id` (status `killed`, saying `by` whom) if it is going here.
    pub fn kill(&self, run_id: i64, by: &str) -> bool {
        let run = self
            .going
            .lock()
            .ok()
            .and_then(|going| going.runs.get(&run_id).cloned());
        let Some(run) = run.filter(|r| r.ended_at.get().is_none()) else {
            return false;
        };
        if let Ok(mut who) = run.switch.by.lock() {
            *who = by.to_owned();
        }
        run.switch.token.cancel();
        true
    }

    /// The output of run `run_id` after byte `offset`, waiting up to `wait` for bytes when
    /// there are none yet (see [`LiveOutput::after`]); `None` when the run is not going here
    /// (and did not end here within [`FOLLOW_LINGER`] after someone read its output).
    pub async fn output(&self, run_id: i64, offset: u64, wait: Duration) -> Option<OutputChunk> {
        let run = {
            let mut going = self.going.lock().ok()?;
            forget_ended(&mut going);
            going.runs.get(&run_id).cloned()?
        };
        run.followed.store(true, Ordering::SeqCst);
        Some(run.output.after(offset, MAX_OUTPUT_CHUNK, wait).await)
    }

    /// Enters run `run_id` among the runs going here (it can be killed, its output followed)
    /// until the returned guard is dropped: from its claim, so that a run waiting for its tick
    /// can be killed too.
    pub fn register(&self, run_id: i64) -> Registered {
        let registered = Registered {
            going: self.going.clone(),
            run_id,
            run: Arc::new(Going::new(self.output_bytes)),
        };
        if let Ok(mut going) = self.going.lock() {
            forget_ended(&mut going);
            going.runs.insert(run_id, registered.run.clone());
        }
        registered
    }

    /// Waits for the instant `at_ms` (Unix ms) to start the run of `registered`: `Err` with
    /// its outcome if it is killed before (on request, or the executor's drain time is over).
    pub async fn until_start(&self, registered: &Registered, at_ms: i64) -> Result<(), Outcome> {
        let switch = &registered.run.switch;
        let error = tokio::select! {
            // A kill that comes with the instant wins: the job is not started to be killed.
            biased;
            () = switch.token.cancelled() => {
                let by = switch.by.lock().map(|b| b.clone()).unwrap_or_default();
                format!("killed on request of {by} before its tick: not started")
            }
            () = self.stop_all.cancelled() => {
                "the executor stopped before the run's tick: not started".to_owned()
            }
            () = gocron_shared::clock::until_ms(at_ms) => return Ok(()),
        };
        Err(Outcome {
            status: RunStatus::Killed,
            exit_code: None,
            error: Some(error),
            output: String::new(),
        })
    }

    /// Runs `request` (entered as `registered`) to its end; the outcome is not recorded yet
    /// (see [`crate::spool`]).
    pub async fn execute(&self, request: &RunRequest, registered: Registered) -> Outcome {
        let (switch, output) = (&registered.run.switch, &registered.run.output);
        let mut outcome = match request.job.kind {
            JobKind::Shell => self.run_shell(request, &registered.run).await,
            JobKind::Http => {
                tokio::select! {
                    outcome = self.run_http(request, output) => outcome,
                    _ = switch.token.cancelled() => Outcome {
                        status: RunStatus::Killed,
                        exit_code: None,
                        error: Some(killed_by(switch)),
                        output: String::new(),
                    },
                }
            }
        };
        drop(registered);
        // Errors quote what others wrote (a URL, a server's words, an operator's name).
        outcome.error = outcome.error.map(|e| printable(e.as_bytes()));
        tracing::info!(
            run_id = request.run_id,
            job_id = request.job.id,
            status = %outcome.status,
            exit_code = ?outcome.exit_code,
            error = outcome.error.as_deref().unwrap_or(""),
            "run finished"
        );
        outcome
    }

    async fn run_shell(&self, request: &RunRequest, run: &Arc<Going>) -> Outcome {
        let (switch, tail) = (&run.switch, &run.output);
        let scheduled = Utc
            .timestamp_millis_opt(request.scheduled_ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        // Like cron: nothing of the executor's environment (its database URL, its RPC secret)
        // reaches a job unless `pass_env` names it. In its own process group (see `spawn`), so
        // that the whole job (children included) can be signalled.
        let mut command = spawn::Command::new(&self.shell);
        command
            .arg("-c")
            .arg(&request.job.command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // The job's own variables may replace the base ones (`PATH`), never gocron's (keys
            // `GOCRON_*` are refused, and those come after).
            .envs(request.job.env.iter().map(|(k, v)| (k, v)))
            .env("GOCRON_JOB_ID", request.job.id.to_string())
            .env("GOCRON_JOB_NAME", &request.job.name)
            .env("GOCRON_RUN_ID", request.run_id.to_string())
            .env("GOCRON_SCHEDULED_AT", scheduled)
            .env("GOCRON_EXECUTOR", &self.executor_name)
            .env("GOCRON_ATTEMPT", request.attempt.to_string());
        if let Some(event) = &request.event {
            command
                .env("GOCRON_EVENT_ID", event.id.to_string())
                .env("GOCRON_EVENT_NAME", &event.name)
                .env("GOCRON_EVENT_PAYLOAD", &event.payload);
        }
        if let Some(parent) = request.parent_run {
            command.env("GOCRON_PARENT_RUN_ID", parent.to_string());
        }
        if let Some(shard) = &request.shard {
            command
                .env("GOCRON_SHARD_INDEX", shard.index.to_string())
                .env("GOCRON_SHARD_TOTAL", shard.total.to_string());
        }
        if !request.job.workdir.is_empty() {
            command.current_dir(&request.job.workdir);
        }
        if let Some(user) = &self.run_as {
            // (HOME, USER and LOGNAME are the user's: see `job_environment`.)
            command.user(user.uid, user.gid);
        }
        let cannot_start = |e: std::io::Error| Outcome {
            status: RunStatus::Failed,
            exit_code: None,
            error: Some(if request.job.workdir.is_empty() {
                format!("cannot start {}: {e}", self.shell)
            } else {
                format!(
                    "cannot start {} in workdir {}: {e}",
                    self.shell, request.job.workdir
                )
            }),
            output: String::new(),
        };
        let spawned = self.start(&command, request.event.is_some());
        let (mut child, output_pipe, stdin) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => return cannot_start(e),
        };
        // The event's payload on stdin, then end of file; a command that does not read it
        // closes the pipe, which is not an error.
        if let (Some(mut stdin), Some(event)) = (stdin, &request.event) {
            let payload = event.payload.clone().into_bytes();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let _ = stdin.write_all(&payload).await;
            });
        }
        // The group's id is the leader's pid; known only until it is reaped.
        let child_group = child.id();
        let stop_reading = CancellationToken::new();
        let reader = tokio::spawn(read_into(output_pipe, run.clone(), stop_reading.clone()));

        // At the timeout, `kill` stops the run; `abandon` and `sync` flag it and let it go on.
        let timeout = (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms));
        let mut deadline = timeout.map(|t| {
            // The timeout counts from the tick, not from the start, like the schedule does.
            let late = Utc::now().timestamp_millis() - request.scheduled_ms;
            tokio::time::Instant::now()
                + t.saturating_sub(Duration::from_millis(late.max(0) as u64))
        });
        let stopped = loop {
            tokio::select! {
                status = child.wait() => break Ok(status),
                _ = sleep_until_some(deadline) => {
                    let timeout = timeout.unwrap_or_default();
                    if request.job.timeout_policy == TimeoutPolicy::Kill {
                        break Err(Stop::Timeout(timeout));
                    }
                    deadline = None;
                    self.flag_overrun(request, timeout);
                }
                _ = self.stop_all.cancelled() => break Err(Stop::Drain),
                _ = switch.token.cancelled() => break Err(Stop::OnDemand(killed_by(switch))),
            }
        };
        let (status, stop_reason) = match stopped {
            Ok(status) => (status, None),
            Err(reason) => {
                let status = self.stop_group(&mut child, request.run_id).await;
                (status, Some(reason))
            }
        };
        if tokio::time::timeout(PIPE_GRACE, reader).await.is_err() {
            stop_reading.cancel();
            tracing::warn!(
                run_id = request.run_id,
                "the job's output stayed open after it exited (a background process?); output may be cut"
            );
        }
        // A program that never started (known once its process ended, see `spawn`).
        if let Some(e) = child.start_error() {
            return cannot_start(e);
        }
        if stop_reason.is_none() && self.has_stragglers(&child_group) {
            tracing::warn!(
                run_id = request.run_id,
                pgid = ?child_group,
                "the job exited but processes of its group are still running (left alone)"
            );
            // In the output itself, so that followers see it too.
            tail.push(
                format!(
                    "\n[gocron: the job exited, but processes of its group {} were still running]\n",
                    child_group.unwrap_or_default()
                )
                .as_bytes(),
            );
        }
        let output = tail.text();
        if let Some(reason) = stop_reason {
            let (run_status, error) = match reason {
                Stop::Timeout(t) => (
                    RunStatus::Timeout,
                    format!(
                        "timed out after {} ms (policy kill): process group stopped",
                        t.as_millis()
                    ),
                ),
                Stop::Drain => (
                    RunStatus::Killed,
                    "stopped: the executor shut down and its drain time was over".to_owned(),
                ),
                Stop::OnDemand(why) => (RunStatus::Killed, why),
            };
            return Outcome {
                status: run_status,
                exit_code: status.as_ref().ok().and_then(|s| s.code()),
                error: Some(error),
                output,
            };
        }
        match status {
            Ok(status) if status.success() => Outcome {
                status: RunStatus::Succeeded,
                exit_code: Some(0),
                error: None,
                output,
            },
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Outcome {
                    status: RunStatus::Failed,
                    exit_code: Some(code),
                    error: Some(format!("exited with code {code}")),
                    output,
                },
                (None, Some(signal)) => Outcome {
                    status: RunStatus::Failed,
                    exit_code: None,
                    error: Some(format!("killed by signal {signal}")),
                    output,
                },
                (None, None) => Outcome {
                    status: RunStatus::Failed,
                    exit_code: None,
                    error: Some(format!("ended abnormally: {status}")),
                    output,
                },
            },
            Err(e) => Outcome {
                status: RunStatus::Failed,
                exit_code: None,
                error: Some(format!("cannot wait for the job: {e}")),
                output,
            },
        }
    }

    /// Stops the job's whole process group: SIGTERM, then after the grace SIGKILL (sent even if
    /// the main process has exited, so that no child of the job survives it).
    async fn stop_group(
        &self,
        child: &mut spawn::Child,
        run_id: i64,
    ) -> std::io::Result<std::process::ExitStatus> {
        let Some(pid) = child.id() else {
            return child.wait().await;
        };
        // The job leads a group whose id is its pid (see `spawn`).
        let group = Pid::from_raw(pid as i32);
        tracing::info!(
            run_id,
            pgid = pid,
            "stopping the job's process group (SIGTERM)"
        );
        // A job stopped just after its start may not lead its group yet: then the leader
        // alone (not reaped, so the pid is still its own).
        let signal = |signal| {
            if killpg(group, signal) == Err(nix::errno::Errno::ESRCH) {
                let _ = nix::sys::signal::kill(group, signal);
            }
        };
        signal(Signal::SIGTERM);
        let status = match tokio::time::timeout(self.kill_grace, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::info!(run_id, pgid = pid, "grace over: SIGKILL");
                signal(Signal::SIGKILL);
                child.wait().await
            }
        };
        // Stragglers that ignored SIGTERM while the leader exited.
        let _ = killpg(group, Signal::SIGKILL);
        status
    }

    async fn run_http(&self, request: &RunRequest, tail: &LiveOutput) -> Outcome {
        // The run's timeout (`timeout_secs`, or until the next tick), counted from the tick like
        // a shell job's; whatever the policy, an HTTP run ends there: the request is aborted.
        let timeout = if request.timeout_ms > 0 {
            Duration::from_millis(request.timeout_ms)
        } else {
            HTTP_MAX
        };
        let late = (Utc::now().timestamp_millis() - request.scheduled_ms).max(0) as u64;
        let deadline =
            tokio::time::Instant::now() + timeout.saturating_sub(Duration::from_millis(late));
        let timed_out = |exit_code, output| Outcome {
            status: RunStatus::Timeout,
            exit_code,
            error: Some(format!(
                "timed out after {} ms: the HTTP request was aborted",
                timeout.as_millis()
            )),
            output,
        };
        let url = request.job.command.trim();
        let mut response = match tokio::time::timeout_at(deadline, self.http.get(url).send()).await
        {
            Err(_) => return timed_out(None, String::new()),
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Outcome {
                    status: RunStatus::Failed,
                    exit_code: None,
                    error: Some(format!("GET {url}: {e}")),
                    output: String::new(),
                };
            }
        };
        let status = response.status();
        let mut body_error = None;
        loop {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => return timed_out(Some(i32::from(status.as_u16())), tail.text()),
                Ok(Ok(Some(chunk))) => tail.push(&chunk),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    body_error = Some(format!("reading the body: {e}"));
                    break;
                }
            }
        }
        let (run_status, error) = if !status.is_success() {
            (RunStatus::Failed, Some(format!("HTTP {status}")))
        } else if let Some(e) = body_error {
            (RunStatus::Failed, Some(e))
        } else {
            (RunStatus::Succeeded, None)
        };
        Outcome {
            status: run_status,
            exit_code: Some(i32::from(status.as_u16())),
            error,
            output: tail.text(),
        }
    }

    /// Whether processes of the job's group outlived its main process (stragglers).
    fn has_stragglers(&self, group: &Option<u32>) -> bool {
        // Signal 0 checks that some process of the group exists, sending nothing.
        group.is_some_and(|pgid| killpg(Pid::from_raw(pgid as i32), None).is_ok())
    }

    /// Flags a run that passed its timeout under `abandon` or `sync` (`cron_run.overrun_at`,
    /// which the monitor alarms on); the run goes on.
    fn flag_overrun(&self, request: &RunRequest, timeout: Duration) {
        tracing::warn!(
            run_id = request.run_id,
            job_id = request.job.id,
            job = %request.job.name,
            policy = %request.job.timeout_policy,
            timeout_ms = timeout.as_millis() as u64,
            "the run passed its timeout; flagged, still running"
        );
        let (runs, run_id) = (self.runs.clone(), request.run_id);
        tokio::spawn(async move {
            if let Err(e) = runs.overrun(run_id).await {
                tracing::warn!(run_id, error = %e, "cannot flag the run's overrun");
            }
        });
    }
}

/// A shell job's environment (before its run's `GOCRON_*` variables), like cron's: `HOME`,
/// `USER` and `LOGNAME` of the user it runs as (`run_as`, or the executor's user), `SHELL`
/// (`[executor] shell`), `PATH` ([`DEFAULT_PATH`]), `LANG` (the executor's, or
/// [`DEFAULT_LANG`]); then each variable `pass_env` names that the executor has (`executor_env`),
/// which may replace those.
pub fn job_environment(
    config: &ExecutorConfig,
    run_as: Option<&RunAs>,
    executor_env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Vec<(String, std::ffi::OsString)> {
    let (home, user, logname) = match run_as {
        Some(user) => (
            user.home.clone().into_os_string(),
            user.name.clone().into(),
            user.name.clone().into(),
        ),
        None => {
            let me = || {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
            };
            let home = executor_env("HOME")
                .or_else(|| me().map(|u| u.dir.into_os_string()))
                .unwrap_or_else(|| "/".into());
            let user = executor_env("USER")
                .or_else(|| executor_env("LOGNAME"))
                .or_else(|| me().map(|u| u.name.into()))
                .unwrap_or_default();
            let logname = executor_env("LOGNAME").unwrap_or_else(|| user.clone());
            (home, user, logname)
        }
    };
    let mut env: Vec<(String, std::ffi::OsString)> = vec![
        ("HOME".into(), home),
        ("USER".into(), user),
        ("LOGNAME".into(), logname),
        ("SHELL".into(), config.shell.clone().into()),
        ("PATH".into(), DEFAULT_PATH.into()),
        (
            "LANG".into(),
            executor_env("LANG").unwrap_or_else(|| DEFAULT_LANG.into()),
        ),
    ];
    for name in &config.pass_env {
        if let Some(value) = executor_env(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), value));
        }
    }
    env
}

/// The run's error when an operator killed it.
fn killed_by(switch: &KillSwitch) -> String {
    let by = switch.by.lock().map(|b| b.clone()).unwrap_or_default();
    format!("killed on request of {by}: process group stopped")
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the job's output pipe into its output as the bytes come, until it ends or `stop`.
async fn read_into(mut pipe: pipe::Receiver, run: Arc<Going>, stop: CancellationToken) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 8192];
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            read = pipe.read(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => run.output.push(&buf[..n]),
        }
    }
}

/// A running job's output as it is produced: its [`Tail`], whether it has ended, and a wake-up
/// for the followers waiting for more.
pub struct LiveOutput {
    state: Mutex<Live>,
    changed: Notify,
}

struct Live {
    tail: Tail,
    ended: bool,
}

impl LiveOutput {
    /// Keeps the last `cap` bytes.
    pub fn new(cap: usize) -> LiveOutput {
        LiveOutput {
            state: Mutex::new(Live {
                tail: Tail::new(cap),
                ended: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // A panic while holding the lock leaves a tail that is still a tail.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `data` and wakes the followers.
    pub fn push(&self, data: &[u8]) {
        self.lock().tail.push(data);
        self.changed.notify_waiters();
    }

    /// Marks the output complete (the job ended) and wakes the followers.
    pub fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_waiters();
    }

    /// The kept bytes as the run's recorded output (see [`Tail::text`]).
    pub fn text(&self) -> String {
        self.lock().tail.text()
    }

    /// The output after byte `offset` (at most `max` bytes; see [`Tail::after`]), waiting up
    /// to `wait` until there is some, or the output ends.
    pub async fn after(&self, offset: u64, max: usize, wait: Duration) -> OutputChunk {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Made before the look, so that a push between the look and the wait wakes it
            // (`notify_waiters` reaches every `Notified` created before it).
            let changed = self.changed.notified();
            let chunk = {
                let live = self.lock();
                live.tail.after(offset, max, live.ended)
            };
            if !chunk.text.is_empty() || chunk.skipped > 0 || chunk.ended || chunk.next != offset {
                return chunk;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return chunk;
            }
        }
    }
}

/// The last `cap` bytes of a stream, and how many came before them. Memory stays at `cap`
/// bytes however long the stream.
#[derive(Debug)]
pub struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl Tail {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Tail {
        Tail {
            // Grown as output comes: most runs print little or nothing.
            buf: VecDeque::new(),
            cap,
            dropped: 0,
        }
    }

    /// How many bytes were pushed in all (dropped ones included): the offset of the next byte.
    pub fn total(&self) -> u64 {
        self.dropped + self.buf.len() as u64
    }

    /// The bytes from `offset` on (at most `max`, `max` >= 4), for a follower that has read
    /// everything before `offset`, as printable text. Bytes this tail no longer holds are
    /// skipped (and counted); an offset beyond the end reads from the end. `complete` says that
    /// no byte will be pushed any more: until then, an unfinished UTF-8 character or a final
    /// CR (which may start a CR LF) at the end is left for the next chunk, so that the texts
    /// of consecutive chunks join into [`printable`] of their bytes.
    pub fn after(&self, offset: u64, max: usize, complete: bool) -> OutputChunk {
        let total = self.total();
        let offset = offset.min(total);
        let mut start = offset.max(self.dropped);
        let byte = |at: u64| self.buf[(at - self.dropped) as usize];
        if start > offset {
            // The cut may have fallen inside a character: the rest of it goes too.
            for _ in 0..3 {
                if start < total && byte(start) & 0xC0 == 0x80 {
                    start += 1;
                }
            }
        }
        let mut end = total.min(start + max as u64);
        let first = (start - self.dropped) as usize;
        let bytes = |end: u64| self.buf.range(first..(end - self.dropped) as usize);
        if !(complete && end == total) {
            let tail: Vec<u8> = bytes(end).rev().take(4).rev().copied().collect();
            let held = unfinished(&tail) as u64;
            // A chunk cut by `max` keeps its last bytes rather than be empty.
            if end == total || held < end - start {
                end -= held;
            }
        }
        let text = printable(&bytes(end).copied().collect::<Vec<u8>>());
        OutputChunk {
            text,
            skipped: start - offset,
            next: end,
            ended: complete && end == total,
        }
    }

    /// Appends `data`, dropping the oldest bytes beyond the cap.
    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            self.dropped += (data.len() - self.cap) as u64;
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let excess = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if excess > 0 {
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
        self.buf.extend(data);
    }

    /// The kept bytes as [`printable`] text of at most `cap` bytes, led by a note of how many
    /// bytes of the stream were dropped before it. The cut never splits a character.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let mut start = 0;
        if self.dropped > 0 {
            // The cut may have fallen inside a character: the rest of it goes too.
            while start < bytes.len().min(3) && bytes[start] & 0xC0 == 0x80 {
                start += 1;
            }
        }
        let kept = &bytes[start..];
        // What is shown can be longer than the bytes (U+FFFD and control pictures take 3
        // bytes): drop whole characters from the front until it fits in `cap`.
        let mut shown = 0;
        for_each_printable(kept, |_, piece| shown += piece.len());
        let mut excess = shown.saturating_sub(self.cap);
        let mut first = None;
        let mut text = String::with_capacity(shown.min(self.cap));
        for_each_printable(kept, |at, piece| {
            if excess > 0 {
                excess = excess.saturating_sub(piece.len());
                return;
            }
            first.get_or_insert(at);
            text.push_str(piece);
        });
        let dropped = self.dropped + start as u64 + first.unwrap_or(kept.len()) as u64;
        if dropped > 0 {
            format!("[... {dropped} earlier bytes dropped ...]\n{text}")
        } else {
            text
        }
    }
}

/// How many bytes at the end of `bytes` may be shown differently once more bytes follow: a
/// final CR (CR LF is kept, a lone CR is not), or the start of a UTF-8 character whose
/// continuation bytes have not all arrived.
fn unfinished(bytes: &[u8]) -> usize {
    if bytes.last() == Some(&b'\r') {
        return 1;
    }
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let length = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if length > back { back } else { 0 };
    }
    0
}

/// Arbitrary bytes as text that every database stores and no console or mail reader obeys:
/// valid UTF-8, each invalid sequence replaced by U+FFFD; the C0 controls (NUL, ESC, BEL, a
/// carriage return not followed by a line feed, ...) and DEL shown as their Unicode control
/// pictures (NUL as `␀` U+2400, ESC as `␛` U+241B, DEL as `␡` U+2421), the C1 controls
/// (U+0080 to U+009F, which some terminals obey like ESC sequences) as U+FFFD. Line feeds, tabs
/// and CR LF line ends are kept.
pub fn printable(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for_each_printable(bytes, |_, piece| text.push_str(piece));
    text
}

/// Calls `emit(offset, piece)` for each character of `bytes` in order, `offset` being where it
/// starts in `bytes` and `piece` how it is shown (see [`printable`]).
fn for_each_printable(bytes: &[u8], mut emit: impl FnMut(usize, &str)) {
    let mut offset = 0;
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut chars = valid.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let mut buf = [0u8; 4];
            let piece: &str = match c {
                '\n' | '\t' => c.encode_utf8(&mut buf),
                '\r' if chars.peek().is_some_and(|&(_, next)| next == '\n') => "\r",
                '\0'..='\x1f' => char::from_u32(0x2400 + c as u32)
                    .unwrap_or('\u{FFFD}')
                    .encode_utf8(&mut buf),
                '\x7f' => "\u{2421}",
                '\u{80}'..='\u{9f}' => "\u{FFFD}",
                c => c.encode_utf8(&mut buf),
            };
            emit(offset + i, piece);
        }
        offset += valid.len();
        if !chunk.invalid().is_empty() {
            emit(offset, "\u{FFFD}");
            offset += chunk.invalid().len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FOLLOW_LINGER, Going, LiveOutput, Registered, Table, Tail, printable};
    use gocron_shared::rpc::OutputChunk;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn register(table: &Arc<Mutex<Table>>, run_id: i64) -> Registered {
        let run = Arc::new(Going::new(64));
        table.lock().unwrap().runs.insert(run_id, run.clone());
        Registered {
            going: table.clone(),
            run_id,
            run,
        }
    }

    #[test]
    fn a_followed_run_stays_its_linger_after_its_end_and_no_longer() {
        let table = Arc::new(Mutex::new(Table::default()));
        let (followed, alone, going) = (
            register(&table, 1),
            register(&table, 2),
            register(&table, 3),
        );
        followed.run.followed.store(true, Ordering::SeqCst);
        drop(followed);
        drop(alone);
        {
            let t = table.lock().unwrap();
            assert!(
                t.runs.contains_key(&1),
                "a followed run stays after its end"
            );
            assert!(
                !t.runs.contains_key(&2),
                "a run nobody followed goes at its end"
            );
            assert!(t.runs.contains_key(&3));
        }
        // Its linger over (as if it had ended FOLLOW_LINGER ago), the next end forgets it.
        table.lock().unwrap().lingering[0].0 = Instant::now() - FOLLOW_LINGER;
        drop(register(&table, 4));
        let t = table.lock().unwrap();
        assert!(!t.runs.contains_key(&1), "forgotten after its linger");
        assert!(t.lingering.is_empty());
        assert!(t.runs.contains_key(&3), "a run going stays");
        drop(t);
        drop(going);
        assert!(table.lock().unwrap().runs.is_empty());
    }

    fn chunk(text: &str, skipped: u64, next: u64, ended: bool) -> OutputChunk {
        OutputChunk {
            text: text.to_owned(),
            skipped,
            next,
            ended,
        }
    }

    #[test]
    fn a_follower_reads_from_its_offset_and_is_told_what_was_dropped() {
        let mut t = Tail::new(5);
        assert_eq!(t.after(0, 64, false), chunk("", 0, 0, false));
        t.push(b"abc");
        assert_eq!(t.after(0, 64, false), chunk("abc", 0, 3, false));
        assert_eq!(t.after(1, 2, false), chunk("bc", 0, 3, false));
        assert_eq!(t.after(3, 64, false), chunk("", 0, 3, false));
        // Five bytes kept of eight: a follower at 0 skips three, one at 2 skips one.
        t.push(b"defgh");
        assert_eq!(t.after(0, 64, false), chunk("defgh", 3, 8, false));
        assert_eq!(t.after(2, 64, false), chunk("defgh", 1, 8, false));
        assert_eq!(t.after(4, 64, false), chunk("efgh", 0, 8, false));
        assert_eq!(t.after(4, 4, true), chunk("efgh", 0, 8, true));
        // Cut by `max`: not the end, even when complete.
        assert_eq!(t.after(3, 4, true), chunk("defg", 0, 7, false));
        // An offset past the end (another run's?) reads from the end.
        assert_eq!(t.after(100, 64, false), chunk("", 0, 8, false));
        // Skipping into a character skips the rest of it.
        let mut t = Tail::new(3);
        t.push("a€b".as_bytes()); // kept: the last two bytes of €, and b
        assert_eq!(t.after(0, 64, false), chunk("b", 4, 5, false));
    }

    #[test]
    fn a_chunk_never_ends_inside_a_character_or_a_cr_lf_until_the_end() {
        let mut t = Tail::new(64);
        t.push(b"x\xe2\x82");
        assert_eq!(t.after(0, 64, false), chunk("x", 0, 1, false));
        t.push(b"\xac\r");
        assert_eq!(t.after(1, 64, false), chunk("€", 0, 4, false));
        t.push(b"\nz\r");
        assert_eq!(t.after(4, 64, false), chunk("\r\nz", 0, 7, false));
        // Complete: the last CR is shown as what it is, a lone CR.
        assert_eq!(t.after(7, 64, true), chunk("\u{240d}", 0, 8, true));
        let mut t = Tail::new(64);
        t.push(b"\xf0\x9f");
        assert_eq!(t.after(0, 64, false), chunk("", 0, 0, false));
        assert_eq!(t.after(0, 64, true), chunk("\u{FFFD}", 0, 2, true));
    }

    #[test]
    fn chunks_read_as_they_come_join_into_the_whole_output() {
        // Bytes of every kind, pushed and read in pieces of every size: what a follower gets,
        // chunk after chunk, is the printable text of all of them, as the recorded output is.
        let alphabet: [&[u8]; 9] = [
            b"a",
            b"\r",
            b"\n",
            "é".as_bytes(),
            "€".as_bytes(),
            "😀".as_bytes(),
            b"\xff",
            b"\x1b[1m",
            b"\xe2\x82",
        ];
        let mut seed = 7u64;
        let mut random = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let mut all = Vec::new();
            for _ in 0..random(60) {
                all.extend_from_slice(alphabet[random(9) as usize]);
            }
            let mut t = Tail::new(1 << 20);
            let (mut pushed, mut offset, mut text) = (0, 0, String::new());
            loop {
                if pushed < all.len() {
                    let n = (1 + random(5) as usize).min(all.len() - pushed);
                    t.push(&all[pushed..pushed + n]);
                    pushed += n;
                }
                let c = t.after(offset, 4 + random(6) as usize, pushed == all.len());
                assert_eq!(c.skipped, 0);
                offset = c.next;
                text.push_str(&c.text);
                if c.ended {
                    break;
                }
            }
            assert_eq!(text, printable(&all), "round {round}: {all:?}");
        }
    }

    #[tokio::test]
    async fn a_follower_waits_for_bytes_and_for_the_end() {
        let live = std::sync::Arc::new(LiveOutput::new(64));
        // Nothing comes: the wait ends empty.
        let short = std::time::Duration::from_millis(20);
        assert_eq!(live.after(0, 64, short).await, chunk("", 0, 0, false));
        // Woken by what comes, long before the wait is over (whether the follower is already
        // waiting or not when it comes).
        let wait = std::time::Duration::from_secs(20);
        let follower = {
            let live = live.clone();
            tokio::spawn(async move { live.after(0, 64, wait).await })
        };
        tokio::task::yield_now().await;
        live.push(b"hello\n");
        assert_eq!(follower.await.unwrap(), chunk("hello\n", 0, 6, false));
        let follower = {
            let live = live.clone();
            tokio::spawn(async move { live.after(6, 64, wait).await })
        };
        tokio::task::yield_now().await;
        live.end();
        assert_eq!(follower.await.unwrap(), chunk("", 0, 6, true));
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        assert_eq!(t.text(), "abc");
        t.push(b"defg");
        assert_eq!(t.text(), "[... 2 earlier bytes dropped ...]\ncdefg");
        t.push(b"0123456789");
        assert_eq!(t.text(), "[... 12 earlier bytes dropped ...]\n56789");
    }

    #[test]
    fn output_becomes_printable_text() {
        assert_eq!(
            printable(b"a\0b\x1b[31mred\x07\x7f\tc\r\nd\re\n"),
            "a\u{2400}b\u{241b}[31mred\u{2407}\u{2421}\tc\r\nd\u{240d}e\n"
        );
        // Invalid UTF-8, and C1 controls (here CSI, U+009B, as UTF-8).
        assert_eq!(
            printable(b"x\xff\xfey\xc2\x9b2Jz\xe2\x82"),
            "x\u{FFFD}\u{FFFD}y\u{FFFD}2Jz\u{FFFD}"
        );
        assert_eq!(printable("grüße ✓\n".as_bytes()), "grüße ✓\n");
        // A CR at the end of a chunk, before an invalid byte, is not a line end.
        assert_eq!(printable(b"a\r\xff"), "a\u{240d}\u{FFFD}");
    }

    #[test]
    fn the_tail_never_splits_a_character_and_stays_within_its_cap() {
        let mut t = Tail::new(5);
        t.push("aé€€".as_bytes()); // 1 + 2 + 3 + 3 bytes: the cut falls inside the first €
        assert_eq!(t.text(), "[... 6 earlier bytes dropped ...]\n€");
        let mut t = Tail::new(6);
        t.push(b"ab\0\0\0"); // shown as 2 + 9 bytes: whole pictures are dropped to fit
        assert_eq!(
            t.text(),
            "[... 3 earlier bytes dropped ...]\n\u{2400}\u{2400}"
        );
        // Tens of megabytes in: the tail stays at its cap.
        let mut t = Tail::new(1024);
        let chunk = vec![b'x'; 8192];
        for _ in 0..(32 * 1024 * 1024 / chunk.len()) {
            t.push(&chunk);
        }
        assert!(t.buf.len() <= 1024 && t.buf.capacity() < 64 * 1024);
        let text = t.text();
        assert!(text.starts_with("[... 33553408 earlier bytes dropped ...]\n"));
        assert!(text.ends_with(&"x".repeat(1024)));
    }

    #[test]
    fn a_job_environment_is_the_jobs() {
        let secret = [("GOCRON__RPC__SECRET".into(), "0123456789abcdef".into())];
        let load = |ini: &str| {
            gocron_shared::config::Config::from_ini(ini, "c.ini", secret.clone())
                .unwrap()
                .executor
        };
        let executor = |name: &str| -> Option<std::ffi::OsString> {
            let value = match name {
                "HOME" => "/home/x",
                "USER" => "x",
                "TZ" => "Europe/Berlin",
                "PATH" => "/opt/bin:/usr/bin",
                "GOCRON__RPC__SECRET" | "GOCRON__DATABASE__URL" => "do not leak",
                _ => return None,
            };
            Some(value.into())
        };
        let get = |env: &[(String, std::ffi::OsString)], name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        let env = super::job_environment(&load("[executor]\nshell = /bin/bash\n"), None, executor);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG"]);
        assert_eq!(get(&env, "HOME").as_deref(), Some("/home/x"));
        assert_eq!(get(&env, "LOGNAME").as_deref(), Some("x"));
        assert_eq!(get(&env, "SHELL").as_deref(), Some("/bin/bash"));
        assert_eq!(get(&env, "PATH").as_deref(), Some(super::DEFAULT_PATH));
        assert_eq!(get(&env, "LANG").as_deref(), Some("C.UTF-8"));
        let config = load("[executor]\npass_env = TZ PATH NOT_SET\n");
        let env = super::job_environment(&config, None, executor);
        assert_eq!(get(&env, "TZ").as_deref(), Some("Europe/Berlin"));
        assert_eq!(get(&env, "PATH").as_deref(), Some("/opt/bin:/usr/bin"));
        assert_eq!(get(&env, "NOT_SET"), None);
        assert!(env.iter().all(|(k, _)| !k.starts_with("GOCRON")));
        // Without HOME and USER in the executor's environment, its user is looked up.
        let env = super::job_environment(&config, None, |_| None);
        assert!(get(&env, "HOME").is_some_and(|h| h.starts_with('/')));
        assert!(get(&env, "USER").is_some_and(|u| !u.is_empty()));
    }
}
