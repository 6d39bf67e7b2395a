//! The dispatcher → executor RPC (tarpc over TCP, bincode frames).
//!
//! A call only hands a run over: the executor claims the `cron_run` row, starts the command,
//! and answers at once. The run itself never lives inside the call (tarpc deadlines are seconds;
//! jobs may run for hours): the executor records the outcome in the database.
//!
//! A running run's output is read the same way, in short calls: [`ExecutorRpc::run_output`] is
//! a long-poll (it waits up to [`MAX_OUTPUT_WAIT`] for bytes after an offset), and a follower
//! calls it in a loop, each call starting where the last one ended. tarpc has no streams; the
//! loop is the stream, and each answer is bounded ([`MAX_OUTPUT_CHUNK`]).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::RpcConfig;

use crate::job::{JobSpec, Trigger};

/// The executor's RPC service.
#[tarpc::service]
pub trait ExecutorRpc {
    /// Claims run `request.run_id` and starts it; returns as soon as it has started. The request
    /// is in its first shape ([`v1::RunRequest`]), which dispatchers still send when a run needs
    /// nothing more, so that executors of the release before serve them during a rolling upgrade.
    async fn start_run(request: v1::RunRequest) -> Result<Accepted, Refused>;
    /// Stops run `request.run_id` (its whole process group) if this executor runs it; the run
    /// ends `killed`. Returns once the stop has begun; the status follows in the run row.
    async fn kill_run(request: KillRequest) -> Result<(), Refused>;
    /// The output of run `request.run_id` after byte `request.offset` of its stdout+stderr,
    /// waiting up to `request.wait_ms` (at most [`MAX_OUTPUT_WAIT`]) for bytes when there are
    /// none yet; [`Refused::NotRunning`] when this executor does not hold the run (not started
    /// here yet, or ended a while ago: its outcome is then in the run row).
    async fn run_output(request: OutputRequest) -> Result<OutputChunk, Refused>;
    /// Like [`ExecutorRpc::start_run`], the request being a [`RunRequest`] as JSON: a field added
    /// to the request later (with a default) then passes between releases both ways, where a
    /// bincode frame's shape is fixed. [`Refused::Malformed`] when it does not decode.
    async fn start_run_json(request: String) -> Result<Accepted, Refused>;
    /// How many runs this executor has going, and how many it takes (for the `least_busy`
    /// route). Executors of earlier releases do not answer it (they are asked last).
    async fn load(secret: Secret) -> Result<Load, Refused>;
    /// [`ExecutorRpc::start_run_json`] for several runs at once, each as if alone: `batch` is
    /// a JSON array of [`RunRequest`]s, and the answers are in its order. The whole call is
    /// [`Refused::Malformed`] when the array does not decode. Sent only to executors that say
    /// they take it ([`crate::machine::ExecutorInfo::takes_batches`]).
    async fn start_runs_json(batch: String) -> Result<Vec<Result<Accepted, Refused>>, Refused>;
}

/// The most runs one [`ExecutorRpc::start_runs_json`] call carries.
pub const MAX_BATCH_RUNS: usize = 256;

/// The most bytes of requests one [`ExecutorRpc::start_runs_json`] call carries (a single
/// request larger than that goes alone).
pub const MAX_BATCH_BYTES: usize = MAX_FRAME_BYTES / 2;

const _: () = assert!(MAX_BATCH_BYTES + 64 * 1024 < MAX_FRAME_BYTES);

/// What [`ExecutorRpc::load`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Runs going now.
    pub running: usize,
    /// `[executor] max_concurrent`.
    pub max: usize,
}

/// The most bytes of output one [`OutputChunk`] carries. Shown as text, a byte takes at most 3
/// (a control picture or U+FFFD), so an answer stays well within [`MAX_FRAME_BYTES`].
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// The longest an executor holds a [`ExecutorRpc::run_output`] call waiting for new bytes.
pub const MAX_OUTPUT_WAIT: Duration = Duration::from_secs(5);

const _: () = assert!(3 * MAX_OUTPUT_CHUNK + 4096 < MAX_FRAME_BYTES);

/// A follower's request for a running run's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRequest {
    /// The caller's credential, checked before anything else.
    pub secret: Secret,
    /// The run.
    pub run_id: i64,
    /// The first byte wanted, counted from the run's first byte of output (0: all of it): the
    /// `next` of the previous answer.
    pub offset: u64,
    /// How long to wait for bytes after `offset` when there are none yet (0: answer at once).
    pub wait_ms: u64,
}

/// Output of a running run, from the byte a follower asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The bytes from `offset + skipped` to `next`, as printable text (as `cron_run.output`
    /// shows them: invalid UTF-8 and control characters replaced). Never splits a character:
    /// while the run goes on, an unfinished character (or a CR that may start a CR LF) is kept
    /// for the next answer. Empty when the wait passed without new bytes.
    pub text: String,
    /// Bytes after the requested offset that the executor no longer has: it keeps only the
    /// last `[executor] output_kib` KiB of a run, and drops older bytes a slow follower did not
    /// read in time (0: none).
    pub skipped: u64,
    /// The offset to ask for next.
    pub next: u64,
    /// Whether the job has ended and `text` was the last of its output.
    pub ended: bool,
}

/// An operator's request to stop a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillRequest {
    /// The caller's credential, checked before anything else.
    pub secret: Secret,
    /// The run to stop.
    pub run_id: i64,
    /// Who asks, for logs and the run's `error`.
    pub by: String,
}

/// The shared secret (`[rpc] secret`) every call carries, so that only dispatchers can make an
/// executor run anything. Never printed: its `Debug` is `Secret(***)`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// Whether `other` is this secret, in time independent of where they differ.
    pub fn matches(&self, other: &Secret) -> bool {
        use subtle::ConstantTimeEq as _;
        // Lengths may leak; contents may not. Secrets are required to be long (see config).
        self.0.len() == other.0.len() && bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A run handed to an executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// The caller's credential, checked before anything else.
    pub secret: Secret,
    /// The `cron_run` row, inserted by the dispatcher with status `dispatched`.
    pub run_id: i64,
    /// The job as published; for a run-now with variables of its own, with those on top of
    /// the job's `env`.
    pub job: JobSpec,
    /// The tick, in Unix milliseconds.
    pub scheduled_ms: i64,
    /// The run's timeout in milliseconds, from the tick (0: none): `timeout_secs`, or until the
    /// job's next tick when that is 0. What passing it does is the job's `timeout_policy`.
    pub timeout_ms: u64,
    /// Why the run exists.
    pub trigger: Trigger,
    /// The dispatcher that sends it, for logs.
    pub dispatcher: String,
    /// Which attempt the run is: 1, or 2, 3, … for retries (`GOCRON_ATTEMPT`).
    #[serde(default = "first_attempt")]
    pub attempt: i32,
    /// For an event's run (or a retry of one), the event (`GOCRON_EVENT_ID`,
    /// `GOCRON_EVENT_NAME`, `GOCRON_EVENT_PAYLOAD` and stdin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<crate::job::EventRef>,
    /// For a chained run, its parent run (`GOCRON_PARENT_RUN_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run: Option<i64>,
    /// For one run of a fanned-out tick (route `broadcast` or `shard`), its place
    /// (`GOCRON_SHARD_INDEX`, `GOCRON_SHARD_TOTAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::job::Shard>,
    /// For a run handed over before its tick (`[dispatcher] lead_ms`), when to start it (Unix
    /// ms; the tick): the executor claims it at once and starts it then. Sent only to
    /// executors that say they wait ([`crate::machine::ExecutorInfo::starts_at_tick`]); an
    /// executor of an earlier release would ignore it and start the run early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<i64>,
}

fn first_attempt() -> i32 {
    1
}

/// A run request as it goes on the wire.
#[derive(Debug, Clone)]
pub enum WireRequest {
    /// For [`ExecutorRpc::start_run`].
    V1(v1::RunRequest),
    /// For [`ExecutorRpc::start_run_json`].
    Json(String),
}

impl RunRequest {
    /// The oldest shape that carries the whole request: the first one when the run needs none
    /// of what came after it (`env`, `workdir`).
    pub fn to_wire(&self) -> WireRequest {
        let first_shape = self.job.env.is_empty()
            && self.job.workdir.is_empty()
            && self.attempt == 1
            && self.shard.is_none()
            && self.start_at_ms.is_none()
            && matches!(self.trigger, Trigger::Schedule | Trigger::Manual);
        if first_shape {
            let job = &self.job;
            return WireRequest::V1(v1::RunRequest {
                secret: self.secret.clone(),
                run_id: self.run_id,
                job: v1::Job {
                    id: job.id,
                    name: job.name.clone(),
                    rule: job.rule.clone(),
                    command: job.command.clone(),
                    kind: job.kind,
                    machine: job.machine.clone(),
                    timeout_secs: job.timeout_secs,
                    timeout_policy: job.timeout_policy,
                    time_zone: job.time_zone.clone(),
                    misfire: job.misfire,
                },
                scheduled_ms: self.scheduled_ms,
                timeout_ms: self.timeout_ms,
                trigger: self.trigger,
                dispatcher: self.dispatcher.clone(),
            });
        }
        WireRequest::Json(self.to_json())
    }

    /// The request as [`ExecutorRpc::start_run_json`] and [`ExecutorRpc::start_runs_json`]
    /// carry it.
    pub fn to_json(&self) -> String {
        // Plain data: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a batch sent to [`ExecutorRpc::start_runs_json`].
    pub fn batch_from_json(json: &str) -> Result<Vec<RunRequest>, Refused> {
        serde_json::from_str(json).map_err(|e| Refused::Malformed(e.to_string()))
    }

    /// Decodes a request sent to [`ExecutorRpc::start_run_json`].
    pub fn from_json(json: &str) -> Result<RunRequest, Refused> {
        serde_json::from_str(json).map_err(|e| Refused::Malformed(e.to_string()))
    }
}

impl From<v1::RunRequest> for RunRequest {
    fn from(r: v1::RunRequest) -> RunRequest {
        let job = r.job;
        RunRequest {
            secret: r.secret,
            run_id: r.run_id,
            job: JobSpec {
                id: job.id,
                name: job.name,
                rule: job.rule,
                command: job.command,
                kind: job.kind,
                machine: job.machine,
                timeout_secs: job.timeout_secs,
                timeout_policy: job.timeout_policy,
                time_zone: job.time_zone,
                misfire: job.misfire,
                env: Vec::new(),
                workdir: String::new(),
                route: Default::default(),
            },
            scheduled_ms: r.scheduled_ms,
            timeout_ms: r.timeout_ms,
            trigger: r.trigger,
            dispatcher: r.dispatcher,
            attempt: 1,
            event: None,
            parent_run: None,
            start_at_ms: None,
            shard: None,
        }
    }
}

/// The first shape of a run request, as bincode frames it: fields in this order, none added.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    use super::Secret;
    use crate::job::{JobKind, Misfire, TimeoutPolicy, Trigger};

    /// A job, as the first run requests carried it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct Job {
        pub id: i64,
        pub name: String,
        pub rule: String,
        pub command: String,
        pub kind: JobKind,
        pub machine: String,
        pub timeout_secs: u32,
        pub timeout_policy: TimeoutPolicy,
        pub time_zone: String,
        pub misfire: Misfire,
    }

    /// A run request in its first shape (see [`super::RunRequest`] for the fields).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct RunRequest {
        pub secret: Secret,
        pub run_id: i64,
        pub job: Job,
        pub scheduled_ms: i64,
        pub timeout_ms: u64,
        pub trigger: Trigger,
        pub dispatcher: String,
    }
}

/// The executor claimed the run and started it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// `name@address` of the executor.
    pub executor: String,
}

/// Why an executor did not take a run; each tells the dispatcher what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Occurs when `max_concurrent` runs are going: offer the run to the next executor.
    #[error("busy: {running} of {max} runs going")]
    Busy {
        /// Runs going now.
        running: usize,
        /// `[executor] max_concurrent`.
        max: usize,
    },
    /// Occurs when the run row is no longer `dispatched` (another executor, or this one, has it):
    /// stop, the run is in hand.
    #[error("run already claimed: {0}")]
    AlreadyClaimed(String),
    /// Occurs when the executor is shutting down: offer the run to the next executor.
    #[error("shutting down")]
    ShuttingDown,
    /// Occurs when the call's credential is missing or wrong: the caller is not one of our
    /// dispatchers (or its `[rpc] secret` differs); nothing was done.
    #[error("unauthorized: wrong [rpc] secret")]
    Unauthorized,
    /// Occurs when a kill or an output request names a run this executor is not running
    /// (finished, not started yet, or elsewhere).
    #[error("run {0} is not running on this executor")]
    NotRunning(i64),
    /// Occurs when the executor cannot reach Redis to claim the run: offer it elsewhere.
    #[error("cannot claim the run: {0}")]
    Unavailable(String),
    /// Occurs when `max_unrecorded` outcomes of finished runs are waiting for the database (in
    /// the executor's memory or its spool): offer the run to the next executor.
    #[error(
        "busy: {waiting} outcomes of finished runs are waiting for the database (max_unrecorded {max})"
    )]
    Unrecorded {
        /// Outcomes waiting now.
        waiting: usize,
        /// `[executor] max_unrecorded`.
        max: usize,
    },
    /// Occurs when a request does not decode (a caller of another release, or not ours).
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// How many calls one connection may have in flight: a whole second of a 1000-job burst.
const MAX_IN_FLIGHT: usize = 10_000;

/// The largest frame either side reads (and writes), checked on its length prefix before any
/// byte of it is buffered or decoded: a peer that is not one of ours cannot make an executor
/// hold more than this per connection. The largest legitimate frame is a [`RunRequest`]: the
/// job's texts ([`crate::job::MAX_JOB_TEXT_BYTES`] at most) plus a few hundred bytes in the first
/// shape; as JSON, escaping may make each byte of a text up to 6 (`\u0001`).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

const _: () = assert!(6 * crate::job::MAX_JOB_TEXT_BYTES + 64 * 1024 < MAX_FRAME_BYTES);

/// Frames a stream (TCP, or TLS over TCP) as a tarpc transport (length-delimited bincode).
pub fn transport<S, Item, SinkItem>(
    stream: S,
) -> Transport<S, Item, SinkItem, Bincode<Item, SinkItem>>
where
    S: AsyncRead + AsyncWrite,
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    tarpc::serde_transport::new(Framed::new(stream, codec), Bincode::default())
}

/// A transport whose first frame must arrive within a deadline, or it fails with
/// [`io::ErrorKind::TimedOut`] (which ends a tarpc channel): a peer that connects and sends
/// nothing cannot hold a connection slot forever. Later frames may take as long as they like:
/// a dispatcher keeps its connection between ticks.
pub struct FirstFrameWithin<T> {
    inner: T,
    /// `None` once the first frame arrived.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> FirstFrameWithin<T> {
    /// `inner`, whose first frame must arrive within `timeout` from now.
    pub fn new(inner: T, timeout: Duration) -> FirstFrameWithin<T> {
        FirstFrameWithin {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<T, Item> futures::Stream for FirstFrameWithin<T>
where
    T: futures::Stream<Item = io::Result<Item>> + Unpin,
{
    type Item = io::Result<Item>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.deadline = None;
                Poll::Ready(item)
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    this.deadline = None;
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the first-frame deadline",
                    ))))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl<T, SinkItem> futures::Sink<SinkItem> for FirstFrameWithin<T>
where
    T: futures::Sink<SinkItem, Error = io::Error> + Unpin,
{
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: SinkItem) -> io::Result<()> {
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// TLS for the RPC, as `[rpc]` configures it: the executor's side (accept) and the callers'
/// side (connect), each optional. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tls {
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    connector: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
}

impl Tls {
    /// Loads the PEM files `[rpc]` names; no TLS where none are set. Occurs an error naming the
    /// file when one cannot be read or used.
    pub fn load(config: &RpcConfig) -> anyhow::Result<Tls> {
        use anyhow::Context as _;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = Tls::default();
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("[rpc] tls_cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("[rpc] tls_key {}", key.display()))?;
            let server = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .context("[rpc] tls_cert and tls_key do not make a certificate")?;
            tls.acceptor = Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)));
        }
        if let Some(ca) = &config.tls_ca {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("[rpc] tls_ca {}", ca.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("[rpc] tls_ca {}", ca.display()))?;
            }
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = if config.tls_server_name.is_empty() {
                None
            } else {
                Some(
                    ServerName::try_from(config.tls_server_name.clone())
                        .context("[rpc] tls_server_name")?,
                )
            };
            tls.connector = Some((tokio_rustls::TlsConnector::from(Arc::new(client)), name));
        }
        Ok(tls)
    }

    /// Whether executors accept TLS only.
    pub fn serves(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Serves RPC on an accepted connection: through TLS if configured. The handshake is
    /// bounded by `timeout`.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> io::Result<Box<dyn Stream + Send + Unpin>> {
        let _ = stream.set_nodelay(true);
        match &self.acceptor {
            None => Ok(Box::new(stream)),
            Some(acceptor) => {
                let tls = tokio::time::timeout(timeout, acceptor.accept(stream))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                Ok(Box::new(tls))
            }
        }
    }
}

/// A byte stream an RPC runs on: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite {}
impl<S: AsyncRead + AsyncWrite> Stream for S {}

/// Connects to the executor at `addr` within `timeout` (TLS included, when `tls` says so).
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: &Tls,
) -> io::Result<ExecutorRpcClient> {
    let dial = async {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Stream + Send + Unpin> = match &tls.connector {
            None => Box::new(stream),
            Some((connector, name)) => {
                let name = name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                Box::new(connector.connect(name, stream).await?)
            }
        };
        Ok::<_, io::Error>(stream)
    };
    let stream = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut config = tarpc::client::Config::default();
    config.max_in_flight_requests = MAX_IN_FLIGHT;
    config.pending_request_buffer = 1024;
    Ok(ExecutorRpcClient::new(config, transport(stream)).spawn())
}

/// A call context whose deadline is `timeout` from now.
pub fn context(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}
