//! etcd: registration under a lease, and mirroring a key prefix without gaps.
//!
//! Registration: grant a lease, put the key under it, and keep it alive from our own loop (one
//! ping every third of the TTL, each under a timeout). If the lease is lost (etcd restarted, a
//! long pause), the loop grants a new one and puts the key again. [`Registration::revoke`] ends
//! the loop and revokes the lease, so peers see the daemon leave at once, not after the TTL.
//!
//! Mirroring: read the prefix in pages at one revision, watch from revision + 1; when the watch
//! breaks (etcd down, compaction, cancellation), read again and re-watch. Consumers get
//! `Resync`, the keys read, `Synced`, then `Put`/`Delete` events, so they can never miss one.
//! No read is one response: a prefix of any size (a million jobs) loads page by page, far below
//! the client's 4 MiB message limit (raised too, to [`MAX_MESSAGE_BYTES`], as a second line).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;
use crate::daemon::{Backoff, Cancelled};
use crate::keys::EtcdKeys;
use crate::machine::ExecutorInfo;

/// How long one etcd request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to etcd, retrying with backoff until it answers, or `cancel`.
pub async fn connect(config: &EtcdConfig, cancel: &CancellationToken) -> Result<Client, Cancelled> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    let mut backoff = Backoff::new("etcd");
    loop {
        let attempt = async {
            let mut client = Client::connect(&config.endpoints, Some(options.clone())).await?;
            // Connecting may be lazy; one read proves the cluster answers.
            client
                .get("/", Some(GetOptions::new().with_count_only()))
                .await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => backoff.wait(&e, cancel).await?,
            Err(_) => backoff.wait(&"timed out", cancel).await?,
        }
    }
}

/// A key kept alive under a lease for as long as the daemon runs.
pub struct Registration {
    client: Client,
    key: String,
    lease: Arc<AtomicI64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Registration {
    /// Registers `key = value` under a lease of `ttl` seconds, retrying until it is in place
    /// (or `cancel`), then keeps it alive in the background.
    pub async fn start(
        client: Client,
        key: String,
        value: String,
        ttl: u64,
        cancel: &CancellationToken,
    ) -> Result<Registration, Cancelled> {
        let lease = Arc::new(AtomicI64::new(0));
        let mut backoff = Backoff::new("etcd registration");
        loop {
            match register(&client, &key, &value, ttl).await {
                Ok(id) => {
                    lease.store(id, Ordering::SeqCst);
                    break;
                }
                Err(e) => backoff.wait(&e, cancel).await?,
            }
        }
        tracing::info!(%key, lease = lease.load(Ordering::SeqCst), ttl, "registered in etcd");
        let stop = cancel.child_token();
        let task = tokio::spawn(keep_alive(
            client.clone(),
            key.clone(),
            value,
            ttl,
            lease.clone(),
            stop.clone(),
        ));
        Ok(Registration {
            client,
            key,
            lease,
            stop,
            task,
        })
    }

    /// The current lease id.
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Stops the keep-alive loop and revokes the lease, so the key disappears now.
    pub async fn revoke(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let id = self.lease.load(Ordering::SeqCst);
        let mut client = self.client;
        match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(id)).await {
            Ok(Ok(_)) => tracing::info!(key = %self.key, "registration revoked"),
            Ok(Err(e)) => {
                tracing::warn!(key = %self.key, error = %e, "cannot revoke lease; it expires by TTL")
            }
            Err(_) => {
                tracing::warn!(key = %self.key, "revoking the lease timed out; it expires by TTL")
            }
        }
    }
}

async fn register(client: &Client, key: &str, value: &str, ttl: u64) -> Result<i64, String> {
    let mut client = client.clone();
    let work = async {
        let lease = client.lease_grant(ttl as i64, None).await?;
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease.id())))
            .await?;
        Ok::<_, etcd_client::Error>(lease.id())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

async fn keep_alive(
    client: Client,
    key: String,
    value: String,
    ttl: u64,
    lease: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let period = Duration::from_millis((ttl * 1000 / 3).max(100));
    let mut last_ok = tokio::time::Instant::now();
    let mut backoff = Backoff::new("etcd registration");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let id = lease.load(Ordering::SeqCst);
        match ping(&client, id).await {
            Ok(remaining) if remaining > 0 => {
                last_ok = tokio::time::Instant::now();
                continue;
            }
            Ok(_) => tracing::warn!(%key, lease = id, "lease expired; registering again"),
            Err(e) if last_ok.elapsed() < Duration::from_secs(ttl) => {
                tracing::warn!(%key, lease = id, error = %e, "lease keep-alive failed; will retry");
                continue;
            }
            Err(e) => {
                tracing::warn!(%key, lease = id, error = %e, "lease presumed lost; registering again")
            }
        }
        loop {
            match register(&client, &key, &value, ttl).await {
                Ok(new_id) => {
                    lease.store(new_id, Ordering::SeqCst);
                    last_ok = tokio::time::Instant::now();
                    backoff.reset();
                    tracing::info!(%key, lease = new_id, "registered in etcd again");
                    break;
                }
                Err(e) => {
                    if backoff.wait(&e, &stop).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// One keep-alive round trip; the lease's remaining TTL (0 = gone).
async fn ping(client: &Client, id: i64) -> Result<i64, String> {
    let mut client = client.clone();
    let work = async {
        let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(resp) => Ok(resp.ttl()),
            None => Ok(0),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        // etcd-client reports a lease that is gone as this error, not as a TTL of 0.
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => Ok(0),
        Ok(result) => result.map_err(|e: etcd_client::Error| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// A change under a mirrored prefix.
///
/// A (re)read of the prefix arrives as `Resync`, one `Put` per key read (in pages, all at one
/// revision), then `Synced`; after it, the watch's `Put`s and `Delete`s. A consumer keeps what
/// it knew until `Synced`, then forgets every key that the read did not bring: so a re-read
/// after a broken watch never empties its view, not even for a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorEvent {
    /// A (re)read of the whole prefix begins.
    Resync,
    /// A key was read, created or changed.
    Put(String, Vec<u8>),
    /// A key was deleted (or its lease expired).
    Delete(String),
    /// The (re)read is complete: keys known before `Resync` and not put since are gone.
    Synced,
}

/// What a consumer of [`MirrorEvent`]s needs to forget keys at `Synced`: the keys put since
/// `Resync`.
#[derive(Debug)]
pub struct Resync<K> {
    seen: Option<HashSet<K>>,
}

impl<K> Default for Resync<K> {
    fn default() -> Self {
        Resync { seen: None }
    }
}

impl<K: std::hash::Hash + Eq> Resync<K> {
    /// A (re)read begins.
    pub fn begin(&mut self) {
        self.seen = Some(HashSet::new());
    }

    /// `key` was put: during a (re)read, it is one of the keys that stay.
    pub fn put(&mut self, key: K) {
        if let Some(seen) = &mut self.seen {
            seen.insert(key);
        }
    }

    /// Whether a (re)read is under way.
    pub fn in_progress(&self) -> bool {
        self.seen.is_some()
    }

    /// The (re)read is complete: the keys it brought (`None` if none was under way).
    pub fn end(&mut self) -> Option<HashSet<K>> {
        self.seen.take()
    }
}

/// Keys read per page when a prefix is (re)read at first: about 5 MB of typical jobs a
/// response. Few pages matter: etcd 3.4 walks every key left in the range for each page (to
/// count them), so a prefix's read costs about keys² / page. A page over the client's message
/// limit (jobs with big definitions) is asked for again at half the size.
pub const PAGE_KEYS: i64 = 16_384;

/// The smallest page asked for.
const MIN_PAGE_KEYS: i64 = 16;

/// The client's limit on one decoded response, a second line behind paging (a single value can
/// still be large; etcd's own default request limit is 1.5 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The end of the key range of `prefix`: the prefix with its last byte incremented (bytes 0xff
/// carried), as etcd's own `WithPrefix` computes it.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// A read of every key under a prefix, in pages of at most [`PAGE_KEYS`] keys, all at the
/// revision of the first page (so the pages are one consistent snapshot).
pub struct PagedRead {
    kv: etcd_client::KvClient,
    end: Vec<u8>,
    from: Vec<u8>,
    revision: i64,
    keys_only: bool,
    done: bool,
    /// Keys per page: [`PAGE_KEYS`], halved when a page is too large.
    limit: i64,
}

impl PagedRead {
    /// A read of `prefix`; `keys_only` leaves the values empty.
    pub fn new(client: &Client, prefix: &str, keys_only: bool) -> PagedRead {
        PagedRead {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            end: prefix_end(prefix.as_bytes()),
            from: prefix.as_bytes().to_vec(),
            revision: 0,
            keys_only,
            done: false,
            limit: PAGE_KEYS,
        }
    }

    /// The same read with the client's decode limit at `bytes` instead of
    /// [`MAX_MESSAGE_BYTES`] (pages over it are asked for again, smaller).
    pub fn with_message_limit(mut self, bytes: usize) -> PagedRead {
        self.kv = self.kv.max_decoding_message_size(bytes);
        self
    }

    /// The number of keys the next page asks for.
    pub fn page_keys(&self) -> i64 {
        self.limit
    }

    /// The revision the pages are read at (0 before the first page).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next page, or `None` when every key has been read. A revision compacted between two
    /// pages is an error: read again from the start.
    pub async fn next_page(&mut self) -> Result<Option<Vec<(String, Vec<u8>)>>, String> {
        if self.done {
            return Ok(None);
        }
        let mut response = loop {
            let mut options = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.limit);
            if self.revision > 0 {
                options = options.with_revision(self.revision);
            }
            if self.keys_only {
                options = options.with_keys_only();
            }
            let get = self.kv.get(self.from.clone(), Some(options));
            match tokio::time::timeout(REQUEST_TIMEOUT, get)
                .await
                .map_err(|_| "reading the prefix timed out".to_owned())?
            {
                Ok(response) => break response,
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::OutOfRange && self.limit > MIN_PAGE_KEYS =>
                {
                    self.limit /= 2;
                    tracing::debug!(
                        limit = self.limit,
                        "an etcd page was too large; asking for smaller ones"
                    );
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        if self.revision == 0 {
            self.revision = response.header().map_or(0, |h| h.revision());
        }
        let kvs = response.take_kvs();
        self.done = !response.more() || kvs.is_empty();
        if let Some(last) = kvs.last() {
            // The next page starts just after the last key read.
            self.from = last.key().to_vec();
            self.from.push(0);
        }
        Ok(Some(
            kvs.into_iter()
                .map(|kv| {
                    let (key, value) = kv.into_key_value();
                    (String::from_utf8_lossy(&key).into_owned(), value)
                })
                .collect(),
        ))
    }
}

/// Mirrors everything under `prefix` into the returned channel until `cancel`.
pub fn mirror(
    client: Client,
    prefix: String,
    cancel: CancellationToken,
) -> mpsc::Receiver<MirrorEvent> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut backoff = Backoff::new("etcd watch");
        loop {
            match mirror_once(&client, &prefix, &tx, &cancel).await {
                Ok(()) => return,
                Err(e) => {
                    if backoff.wait(&e, &cancel).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// One read-then-watch cycle. `Ok` means stop for good (cancelled, or nobody listens).
async fn mirror_once(
    client: &Client,
    prefix: &str,
    tx: &mpsc::Sender<MirrorEvent>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    if tx.send(MirrorEvent::Resync).await.is_err() {
        return Ok(());
    }
    let mut read = PagedRead::new(client, prefix, false);
    while let Some(page) = read.next_page().await? {
        for (key, value) in page {
            if tx.send(MirrorEvent::Put(key, value)).await.is_err() {
                return Ok(());
            }
        }
    }
    let revision = read.revision();
    if tx.send(MirrorEvent::Synced).await.is_err() {
        return Ok(());
    }
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watcher = client
        .watch_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = tokio::time::timeout(REQUEST_TIMEOUT, watcher.watch(prefix, Some(options)))
        .await
        .map_err(|_| "starting the watch timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = stream.message() => m,
        };
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return Err("the watch stream ended".to_owned()),
            Err(e) => return Err(e.to_string()),
        };
        if response.canceled() {
            return Err(format!(
                "the watch was cancelled ({}); reading again",
                response.cancel_reason()
            ));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let change = match event.event_type() {
                EventType::Put => MirrorEvent::Put(key, kv.value().to_vec()),
                EventType::Delete => MirrorEvent::Delete(key),
            };
            if tx.send(change).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The executor processes alive right now (their instance ids), read from etcd rather than
/// from a mirror that may lag: for confirming that a run's executor is gone before calling the
/// run lost.
pub async fn read_instances(
    client: &Client,
    keys: &EtcdKeys,
) -> Result<HashSet<String>, etcd_client::Error> {
    let prefix = keys.instances();
    let mut read = PagedRead::new(client, &prefix, true);
    let mut alive = HashSet::new();
    while let Some(page) = read
        .next_page()
        .await
        .map_err(etcd_client::Error::InvalidArgs)?
    {
        alive.extend(
            page.into_iter()
                .filter_map(|(key, _)| Some(key.strip_prefix(&prefix)?.to_owned())),
        );
    }
    Ok(alive)
}

/// The executor processes alive (instance ids), kept up to date from etcd until `cancel`;
/// `None` until etcd has been read.
pub fn live_instances(
    client: Client,
    keys: &EtcdKeys,
    cancel: CancellationToken,
) -> watch::Receiver<Option<Arc<HashSet<String>>>> {
    let (tx, rx) = watch::channel(None);
    let prefix = keys.instances();
    let mut events = mirror(client, prefix.clone(), cancel);
    tokio::spawn(async move {
        let mut known = HashSet::new();
        let mut resync = Resync::default();
        let id = |key: &str| key.strip_prefix(&prefix).map(str::to_owned);
        while let Some(event) = events.recv().await {
            match event {
                MirrorEvent::Resync => resync.begin(),
                MirrorEvent::Put(key, _) => {
                    if let Some(i) = id(&key) {
                        resync.put(i.clone());
                        known.insert(i);
                    }
                }
                MirrorEvent::Delete(key) => {
                    if let Some(i) = id(&key) {
                        known.remove(&i);
                    }
                }
                MirrorEvent::Synced => {
                    if let Some(seen) = resync.end() {
                        known.retain(|i| seen.contains(i));
                    }
                }
            }
            if !resync.in_progress() {
                tx.send_replace(Some(Arc::new(known.clone())));
            }
        }
    });
    rx
}

/// The live executors, sorted by name, kept up to date from etcd until `cancel`. The receiver
/// sees its first `changed()` once etcd has been read.
pub fn live_executors(
    client: Client,
    keys: &EtcdKeys,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<Vec<ExecutorInfo>>> {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let mut events = mirror(client, keys.executors(), cancel);
    tokio::spawn(async move {
        let mut known = std::collections::BTreeMap::<String, ExecutorInfo>::new();
        let mut first = true;
        let mut resync = Resync::default();
        while let Some(event) = events.recv().await {
            let decode = |key: &str, value: &[u8]| match serde_json::from_slice::<ExecutorInfo>(
                value,
            ) {
                Ok(info) => Some(info),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "ignoring an executor registration that is not valid JSON");
                    None
                }
            };
            match event {
                MirrorEvent::Resync => resync.begin(),
                MirrorEvent::Put(key, value) => {
                    resync.put(key.clone());
                    if let Some(info) = decode(&key, &value) {
                        known.insert(key, info);
                    }
                }
                MirrorEvent::Delete(key) => {
                    known.remove(&key);
                }
                MirrorEvent::Synced => {
                    if let Some(seen) = resync.end() {
                        known.retain(|k, _| seen.contains(k));
                    }
                }
            }
            if resync.in_progress() {
                continue;
            }
            let mut list: Vec<ExecutorInfo> = known.values().cloned().collect();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            // The first read is always announced, even if empty: it tells the receiver the
            // list is now known (see `changed()`), not just initialised.
            if first || **tx.borrow() != list {
                first = false;
                tracing::info!(
                    executors = %list.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    "live executors changed"
                );
                tx.send_replace(Arc::new(list));
            }
        }
    });
    rx
}
