//! Running one job: a shell command in its own process group, or an HTTP GET; keeping the tail of
//! its output (the outcome is recorded by [`crate::spool`]).

use std::collections::{HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone as _, Utc};
use gocron_shared::config::ExecutorConfig;
use gocron_shared::job::{JobKind, RunStatus, TimeoutPolicy};
use gocron_shared::rpc::RunRequest;
use gocron_shared::runs::{Outcome, RunLog};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::sync::CancellationToken;

/// After the main process exits, how long its output pipes may stay open (a forked daemon can
/// hold them forever) before the run is recorded without the rest.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// A shell job's `PATH` unless `[executor] pass_env` passes the executor's own.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A shell job's `LANG` when the executor has none.
pub const DEFAULT_LANG: &str = "C.UTF-8";

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
    /// The runs going on, by run id, each with its kill switch.
    kills: Arc<Mutex<HashMap<i64, Arc<KillSwitch>>>>,
    run_as: Option<RunAs>,
    /// Every shell job's environment, before its run's own `GOCRON_*` variables.
    env: Arc<Vec<(String, std::ffi::OsString)>>,
}

/// Stops one run on an operator's request.
#[derive(Default)]
struct KillSwitch {
    token: CancellationToken,
    by: Mutex<String>,
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

/// Takes a run's kill switch out of the table when the run ends, however it ends.
struct Registered<'a> {
    kills: &'a Mutex<HashMap<i64, Arc<KillSwitch>>>,
    run_id: i64,
    switch: Arc<KillSwitch>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut kills) = self.kills.lock() {
            kills.remove(&self.run_id);
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
            kills: Arc::default(),
            env: Arc::new(job_environment(config, run_as.as_ref(), |name| {
                std::env::var_os(name)
            })),
            run_as,
        }
    }

    /// Stops run `run_id` (status `killed`, saying `by` whom) if it is going here.
    pub fn kill(&self, run_id: i64, by: &str) -> bool {
        let switch = self
            .kills
            .lock()
            .ok()
            .and_then(|kills| kills.get(&run_id).cloned());
        let Some(switch) = switch else {
            return false;
        };
        if let Ok(mut who) = switch.by.lock() {
            *who = by.to_owned();
        }
        switch.token.cancel();
        true
    }

    /// Runs `request` to its end; the outcome is not recorded yet (see [`crate::spool`]).
    pub async fn execute(&self, request: &RunRequest) -> Outcome {
        let registered = Registered {
            kills: &self.kills,
            run_id: request.run_id,
            switch: Arc::default(),
        };
        if let Ok(mut kills) = self.kills.lock() {
            kills.insert(request.run_id, registered.switch.clone());
        }
        let mut outcome = match request.job.kind {
            JobKind::Shell => self.run_shell(request, &registered.switch).await,
            JobKind::Http => {
                tokio::select! {
                    outcome = self.run_http(request) => outcome,
                    _ = registered.switch.token.cancelled() => Outcome {
                        status: RunStatus::Killed,
                        exit_code: None,
                        error: Some(killed_by(&registered.switch)),
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

    async fn run_shell(&self, request: &RunRequest, switch: &KillSwitch) -> Outcome {
        let scheduled = Utc
            .timestamp_millis_opt(request.scheduled_ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut command = tokio::process::Command::new(&self.shell);
        command
            .arg("-c")
            .arg(&request.job.command)
            // Like cron: nothing of the executor's environment (its database URL, its RPC
            // secret) reaches a job unless `pass_env` names it.
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("GOCRON_JOB_ID", request.job.id.to_string())
            .env("GOCRON_JOB_NAME", &request.job.name)
            .env("GOCRON_RUN_ID", request.run_id.to_string())
            .env("GOCRON_SCHEDULED_AT", scheduled)
            .env("GOCRON_EXECUTOR", &self.executor_name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that the whole job (children included) can be signalled.
            .process_group(0);
        if let Some(user) = &self.run_as {
            // std drops the supplementary groups when a root parent switches the uid.
            // (HOME, USER and LOGNAME are the user's: see `job_environment`.)
            command.uid(user.uid).gid(user.gid);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Outcome {
                    status: RunStatus::Failed,
                    exit_code: None,
                    error: Some(format!("cannot start {}: {e}", self.shell)),
                    output: String::new(),
                };
            }
        };
        // The group's id is the leader's pid (`process_group(0)`); known only until it is reaped.
        let child_group = child.id();
        let tail = Arc::new(Mutex::new(Tail::new(self.output_bytes)));
        let stop_reading = CancellationToken::new();
        let readers = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        .map(|r| tokio::spawn(read_into(r, tail.clone(), stop_reading.clone())))
        .collect::<Vec<_>>();

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
        let all_read = async {
            for reader in readers {
                let _ = reader.await;
            }
        };
        if tokio::time::timeout(PIPE_GRACE, all_read).await.is_err() {
            stop_reading.cancel();
            tracing::warn!(
                run_id = request.run_id,
                "the job's output stayed open after it exited (a background process?); output may be cut"
            );
        }
        let mut output = tail.lock().map(|t| t.text()).unwrap_or_default();
        if stop_reason.is_none() && self.has_stragglers(&child_group) {
            tracing::warn!(
                run_id = request.run_id,
                pgid = ?child_group,
                "the job exited but processes of its group are still running (left alone)"
            );
            output.push_str(&format!(
                "\n[gocron: the job exited, but processes of its group {} were still running]\n",
                child_group.unwrap_or_default()
            ));
        }
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
        child: &mut tokio::process::Child,
        run_id: i64,
    ) -> std::io::Result<std::process::ExitStatus> {
        let Some(pid) = child.id() else {
            return child.wait().await;
        };
        // `process_group(0)` made the job the leader of a group whose id is its pid.
        let group = Pid::from_raw(pid as i32);
        tracing::info!(
            run_id,
            pgid = pid,
            "stopping the job's process group (SIGTERM)"
        );
        let _ = killpg(group, Signal::SIGTERM);
        let status = match tokio::time::timeout(self.kill_grace, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::info!(run_id, pgid = pid, "grace over: SIGKILL");
                let _ = killpg(group, Signal::SIGKILL);
                child.wait().await
            }
        };
        // Stragglers that ignored SIGTERM while the leader exited.
        let _ = killpg(group, Signal::SIGKILL);
        status
    }

    async fn run_http(&self, request: &RunRequest) -> Outcome {
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
        let mut tail = Tail::new(self.output_bytes);
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

async fn read_into(
    mut reader: Box<dyn AsyncRead + Send + Unpin>,
    tail: Arc<Mutex<Tail>>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = reader.read(&mut buf) => n,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut t) = tail.lock() {
                    t.push(&buf[..n]);
                }
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
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            cap,
            dropped: 0,
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
    use super::{Tail, printable};

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
