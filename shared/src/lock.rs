//! Redis fences: the tick lock (exactly one dispatcher of many fires a (job, tick)) and the run
//! claim (exactly one executor, or the dispatcher's "nobody", owns a run).
//!
//! One script (atomic in Redis) takes the lock if nobody holds it and, only for the winner,
//! `INCR`s the machine group's dispatch counter, in one round trip; the counter gives round-robin
//! across all dispatchers, not just within one. It is idempotent per owner: the winner asking
//! again (a retry after a lost reply) gets its sequence back. Owners are dispatcher names, which
//! must therefore be unique. The lock is never released: it expires after `ttl`, which
//! keeps it a fence against a late dispatcher whose clock lags (set `ttl` well above any skew).
//! The database's unique `(job_id, scheduled_at, trigger)` is the fence behind this one.
//!
//! The run claim replaces a database write on the RPC path: an executor claims a run before
//! starting it, and a dispatcher that found no taker claims it as "nobody" before recording
//! `no_executor`. Whoever holds the claim owns the run, so a hand-over retried after a lost
//! answer can neither start the run twice nor record it as unrun while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::daemon::{Backoff, Cancelled};
use crate::job::Trigger;
use crate::keys::RedisKeys;
use crate::live::{Holder, LiveRun};

// The lock's value is `owner|sequence`. Asking again as the same owner returns the same
// sequence, so a retry after a lost reply (timeout, reset) cannot turn a won tick into a lost one.
// The winner also gets the job's runs in flight (the live hash), for the `abandon` policy, and
// how far the job had been scheduled before this tick (for the misfire policy), which a tick of
// the rule (ARGV[3] = '1') moves forward, never back. The winner's retry gets the same answer:
// the previous mark is kept in the lock's value. One call takes any number of ticks' locks
// (KEYS five per tick, ARGV two per tick after the owner and the TTL), each as if alone, in
// order: a dispatcher takes all the ticks due at an instant in one round trip. A tick's KEYS are
// its lock, a second lock won with it (a retry's lock by due time, kept for dispatchers of
// earlier releases; else the lock again), its group's dispatch counter, its job's live hash and
// its job's mark: the tick is won when neither lock is another owner's.
const ACQUIRE: &str = r"
local function owned(held)
  return string.match(held, '^(.*)|%d+|%-?%d*$') == ARGV[1]
end
local function acquire(lock, also, counter, live, through, rule, ms)
  local n, before
  local held = redis.call('GET', lock)
  local other = also ~= lock and redis.call('GET', also)
  if (held and not owned(held)) or (other and not owned(other)) then return {0} end
  if held then
    local seq, prev = string.match(held, '|(%d+)|(%-?%d*)$')
    n = tonumber(seq)
    before = prev
  else
    n = redis.call('INCR', counter)
    before = redis.call('GET', through) or ''
    redis.call('SET', lock, ARGV[1] .. '|' .. n .. '|' .. before, 'PX', ARGV[2])
    if also ~= lock then
      redis.call('SET', also, ARGV[1] .. '|' .. n .. '|' .. before, 'PX', ARGV[2])
    end
    if rule == '1' and (before == '' or tonumber(before) < tonumber(ms)) then
      redis.call('SET', through, ms)
    end
  end
  local reply = redis.call('HGETALL', live)
  table.insert(reply, 1, before)
  table.insert(reply, 1, n)
  return reply
end
local out = {}
for i = 0, #KEYS / 5 - 1 do
  out[i + 1] = acquire(KEYS[5 * i + 1], KEYS[5 * i + 2], KEYS[5 * i + 3], KEYS[5 * i + 4],
    KEYS[5 * i + 5], ARGV[2 * i + 3], ARGV[2 * i + 4])
end
return out
";

// Claims the run (first holder wins; the same holder asking again wins again) and, for the
// winner, puts it in the job's live hash (an executor) or takes it out (the dispatcher's
// "nobody": the run will not happen). KEYS[1], the set of jobs with runs in flight, follows the
// hash: a job is in it exactly while its hash is not empty (every writer of a live hash keeps
// that, in the same atomic step). One call claims any number of runs for one holder, each as if
// alone: KEYS two per run after the first (its claim, its job's live hash), ARGV two per run
// after the holder, the TTL and the live value (the run id, the job id).
const CLAIM: &str = r"
local function claim(run, live, run_id, job_id)
  local held = redis.call('GET', run)
  if not held then
    redis.call('SET', run, ARGV[1], 'PX', ARGV[2])
    held = ARGV[1]
  end
  if held == ARGV[1] then
    if ARGV[3] == '' then
      redis.call('HDEL', live, run_id)
      if redis.call('HLEN', live) == 0 then redis.call('SREM', KEYS[1], job_id) end
    else
      redis.call('HSET', live, run_id, ARGV[3])
      redis.call('SADD', KEYS[1], job_id)
    end
  end
  return held
end
local out = {}
for i = 0, (#KEYS - 1) / 2 - 1 do
  out[i + 1] = claim(KEYS[2 * i + 2], KEYS[2 * i + 3], ARGV[2 * i + 4], ARGV[2 * i + 5])
end
return out
";

// Writes entries of live hashes, in order, each as if alone: KEYS[1] is the index of jobs with
// runs in flight, then one key per write (the job's live hash); ARGV three per write (the job
// id, the run id, the holder). A holder enters the run in the hash and the job in the index; an
// empty holder takes the run out, and the job out of the index when it was the last.
const LIVE: &str = r"
for i = 0, #KEYS - 2 do
  local live, job_id, run_id, value = KEYS[i + 2], ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
  if value == '' then
    redis.call('HDEL', live, run_id)
    if redis.call('HLEN', live) == 0 then redis.call('SREM', KEYS[1], job_id) end
  else
    redis.call('HSET', live, run_id, value)
    redis.call('SADD', KEYS[1], job_id)
  end
end
return 0
";

/// A tick won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Won {
    /// The machine group's dispatch count (for round-robin).
    pub sequence: u64,
    /// The job's runs in flight when the tick was won.
    pub in_flight: Vec<LiveRun>,
    /// The latest tick of the job's rule fired before this one (Unix ms), if one is on record:
    /// the ticks in between were missed.
    pub scheduled_through: Option<i64>,
}

/// The most ticks (or runs) one call of the tick-lock (or claim) script takes: a call blocks
/// Redis while it runs.
pub const MAX_TICKS_PER_CALL: usize = 500;

/// A tick to win: see [`Fences::acquire`].
#[derive(Debug, Clone, Copy)]
pub struct TickKey<'a> {
    /// The job.
    pub job_id: i64,
    /// The tick (or run-now request, or retry), Unix ms.
    pub scheduled_ms: i64,
    /// Why the run would exist.
    pub trigger: Trigger,
    /// The event, the parent run or the failed run, for `Trigger::Event`, `Trigger::Chain`
    /// and `Trigger::Retry`.
    pub source_id: i64,
    /// The job's machine group (its round-robin count).
    pub machine: &'a str,
}

/// Tick locks and run claims on one Redis server.
#[derive(Clone)]
pub struct Fences {
    conn: ConnectionManager,
    keys: RedisKeys,
    owner: String,
    ttl: Duration,
    acquire: redis::Script,
    claim: redis::Script,
    live: mpsc::UnboundedSender<LiveWrite>,
    /// The calls its writer made and the writes they carried (also counted, for the whole
    /// process, in `gocron_live_write_calls_total` and `gocron_live_writes_total`).
    live_counts: Arc<(AtomicU64, AtomicU64)>,
}

/// A write of a live hash waiting for the writer ([`write_live`]).
struct LiveWrite {
    job_id: i64,
    run_id: i64,
    /// The holder; empty: take the run out.
    holder: String,
    done: oneshot::Sender<redis::RedisResult<()>>,
}

impl Fences {
    /// Connects (retrying with backoff until Redis answers, or `cancel`); `owner` is recorded as
    /// the lock value, for whoever inspects Redis.
    pub async fn connect(
        config: &RedisConfig,
        owner: &str,
        ttl: Duration,
        cancel: &CancellationToken,
    ) -> Result<Fences, Cancelled> {
        let mut backoff = Backoff::new("redis");
        let conn = loop {
            let attempt = async {
                let client = redis::Client::open(config.url.as_str())?;
                let manager_config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(2);
                ConnectionManager::new_with_config(client, manager_config).await
            };
            match attempt.await {
                Ok(conn) => break conn,
                Err(e) => backoff.wait(&e, cancel).await?,
            }
        };
        let keys = RedisKeys::new(&config.prefix);
        let (live, queue) = mpsc::unbounded_channel();
        let live_counts = Arc::default();
        tokio::spawn(write_live(
            conn.clone(),
            keys.clone(),
            queue,
            Arc::clone(&live_counts),
        ));
        Ok(Fences {
            conn,
            keys,
            owner: owner.to_owned(),
            ttl,
            acquire: redis::Script::new(ACQUIRE),
            claim: redis::Script::new(CLAIM),
            live,
            live_counts,
        })
    }

    /// Tries to win tick `scheduled_ms` of job `job_id` (for `Trigger::Manual`, the run-now
    /// request made at that instant; for `Trigger::Retry`, the retry of run `source_id`,
    /// whenever it is due; for `Trigger::Event`, event `source_id`; for `Trigger::Chain`, the
    /// run after parent run `source_id`). `Ok(Some(won))`: this caller won (now or in an
    /// earlier attempt); `Ok(None)`: another won.
    pub async fn acquire(
        &self,
        job_id: i64,
        scheduled_ms: i64,
        trigger: Trigger,
        source_id: i64,
        machine: &str,
    ) -> redis::RedisResult<Option<Won>> {
        let tick = TickKey {
            job_id,
            scheduled_ms,
            trigger,
            source_id,
            machine,
        };
        let mut won = self.acquire_many(&[tick]).await?;
        Ok(won.pop().flatten())
    }

    /// [`Fences::acquire`] for each of `ticks`, in one round trip per [`MAX_TICKS_PER_CALL`];
    /// the answers in the order of `ticks`.
    pub async fn acquire_many(
        &self,
        ticks: &[TickKey<'_>],
    ) -> redis::RedisResult<Vec<Option<Won>>> {
        let mut conn = self.conn.clone();
        let mut answers = Vec::with_capacity(ticks.len());
        for chunk in ticks.chunks(MAX_TICKS_PER_CALL) {
            let mut call = self.acquire.prepare_invoke();
            call.arg(&self.owner).arg(self.ttl.as_millis() as u64);
            for tick in chunk {
                let key = match tick.trigger {
                    Trigger::Schedule => self.keys.tick(tick.job_id, tick.scheduled_ms),
                    Trigger::Manual => self.keys.manual(tick.job_id, tick.scheduled_ms),
                    Trigger::Retry => self.keys.retry_of(tick.job_id, tick.source_id),
                    Trigger::Event => self.keys.event(tick.job_id, tick.source_id),
                    Trigger::Chain => self.keys.chain(tick.job_id, tick.source_id),
                };
                // A retry also takes the lock of earlier releases (by due time), which their
                // dispatchers take during a rolling upgrade; any other tick, its one lock twice.
                let also = (tick.trigger == Trigger::Retry)
                    .then(|| self.keys.retry(tick.job_id, tick.scheduled_ms));
                call.key(&key)
                    .key(also.as_ref().unwrap_or(&key))
                    .key(self.keys.round_robin(tick.machine))
                    .key(self.keys.live(tick.job_id))
                    .key(self.keys.through(tick.job_id))
                    .arg(if tick.trigger == Trigger::Schedule {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(tick.scheduled_ms);
            }
            let replies: Vec<Vec<redis::Value>> = call.invoke_async(&mut conn).await?;
            if replies.len() != chunk.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "the tick-lock script answered for another number of ticks",
                )));
            }
            for (tick, reply) in chunk.iter().zip(replies) {
                answers.push(won(tick.job_id, reply)?);
            }
        }
        Ok(answers)
    }

    /// Claims run `run_id` of job `job_id` as `holder`. `Ok(None)`: `holder` has it (now, or
    /// from an earlier attempt); `Ok(Some(other))`: `other` holds it. An executor (`live` is
    /// its [`Holder`]) enters the run in the job's live hash with the claim; the dispatcher's
    /// "nobody" (`live` is `None`) takes it out.
    pub async fn claim_run(
        &self,
        job_id: i64,
        run_id: i64,
        holder: &str,
        live: Option<&Holder>,
    ) -> redis::RedisResult<Option<String>> {
        let mut held = self.claim_runs(&[(job_id, run_id)], holder, live).await?;
        Ok(held.pop().flatten())
    }

    /// [`Fences::claim_run`] for each `(job id, run id)` of `runs`, all for one holder, in one
    /// round trip per [`MAX_TICKS_PER_CALL`] runs; the answers in the order of `runs`.
    pub async fn claim_runs(
        &self,
        runs: &[(i64, i64)],
        holder: &str,
        live: Option<&Holder>,
    ) -> redis::RedisResult<Vec<Option<String>>> {
        let mut conn = self.conn.clone();
        let live = live.map(ToString::to_string).unwrap_or_default();
        let mut answers = Vec::with_capacity(runs.len());
        for chunk in runs.chunks(MAX_TICKS_PER_CALL) {
            let mut call = self.claim.prepare_invoke();
            call.key(self.keys.live_jobs())
                .arg(holder)
                .arg(self.ttl.as_millis() as u64)
                .arg(&live);
            for (job_id, run_id) in chunk {
                call.key(self.keys.run(*run_id))
                    .key(self.keys.live(*job_id))
                    .arg(run_id)
                    .arg(job_id);
            }
            let held: Vec<String> = call.invoke_async(&mut conn).await?;
            if held.len() != chunk.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "the claim script answered for another number of runs",
                )));
            }
            answers.extend(held.into_iter().map(|h| (h != holder).then_some(h)));
        }
        Ok(answers)
    }

    /// How far each of `job_ids` has been scheduled (the latest tick fired, Unix ms), in order.
    pub async fn scheduled_through(&self, job_ids: &[i64]) -> redis::RedisResult<Vec<Option<i64>>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("MGET");
        for id in job_ids {
            get.arg(self.keys.through(*id));
        }
        get.query_async(&mut conn).await
    }

    /// Forgets how far each of `job_ids` has been scheduled: they were withdrawn (disabled,
    /// deleted) or retimed, so their ticks until they come back are not missed ones.
    pub async fn forget_through(&self, job_ids: &[i64]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        for chunk in job_ids.chunks(1000) {
            let mut del = redis::cmd("DEL");
            for id in chunk {
                del.arg(self.keys.through(*id));
            }
            del.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    /// How far each of `job_ids`'s ticks are accounted for (the monitor's ledger), in order.
    pub async fn accounted(&self, job_ids: &[i64]) -> redis::RedisResult<Vec<Option<i64>>> {
        let mut conn = self.conn.clone();
        let mut marks = Vec::with_capacity(job_ids.len());
        for chunk in job_ids.chunks(1000) {
            let mut get = redis::cmd("HMGET");
            get.arg(self.keys.accounted()).arg(chunk);
            let got: Vec<Option<i64>> = get.query_async(&mut conn).await?;
            marks.extend(got);
        }
        Ok(marks)
    }

    /// Records how far jobs' ticks are accounted for: `(job id, Some(ms))` sets the mark,
    /// `(job id, None)` forgets it (the job is gone).
    pub async fn set_accounted(&self, marks: &[(i64, Option<i64>)]) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        for chunk in marks.chunks(1000) {
            let mut pipe = redis::pipe();
            for (id, mark) in chunk {
                match mark {
                    Some(ms) => pipe.cmd("HSET").arg(self.keys.accounted()).arg(id).arg(ms),
                    None => pipe.cmd("HDEL").arg(self.keys.accounted()).arg(id),
                }
                .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    /// Enters run `run_id` in job `job_id`'s live hash, held by `holder`.
    pub async fn hold(&self, job_id: i64, run_id: i64, holder: &Holder) -> redis::RedisResult<()> {
        self.write_live(job_id, run_id, holder.to_string()).await
    }

    /// Takes run `run_id` out of job `job_id`'s live hash.
    pub async fn release(&self, job_id: i64, run_id: i64) -> redis::RedisResult<()> {
        self.write_live(job_id, run_id, String::new()).await
    }

    /// The Redis calls these fences' writer of the live runs made so far, and the writes they
    /// carried.
    pub fn live_write_counts(&self) -> (u64, u64) {
        let (calls, writes) = &*self.live_counts;
        (
            calls.load(Ordering::Relaxed),
            writes.load(Ordering::Relaxed),
        )
    }

    /// Queues a write of a live hash for the writer, and waits for its answer.
    async fn write_live(&self, job_id: i64, run_id: i64, holder: String) -> redis::RedisResult<()> {
        let (done, answer) = oneshot::channel();
        let write = LiveWrite {
            job_id,
            run_id,
            holder,
            done,
        };
        let stopped = || {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "the writer of the live runs stopped (its runtime is shutting down)",
            ))
        };
        self.live.send(write).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Job `job_id`'s runs in flight.
    pub async fn in_flight(&self, job_id: i64) -> redis::RedisResult<Vec<LiveRun>> {
        let mut conn = self.conn.clone();
        let flat: Vec<String> = redis::cmd("HGETALL")
            .arg(self.keys.live(job_id))
            .query_async(&mut conn)
            .await?;
        Ok(pairs(job_id, flat))
    }

    /// Every job's runs in flight, for the monitor's sweep: the jobs in the index of live
    /// hashes, each hash read in pipelined batches (never a scan of the keyspace, which at
    /// 1,000 runs a second holds millions of tick locks and claims).
    pub async fn all_in_flight(&self) -> redis::RedisResult<Vec<LiveRun>> {
        let mut conn = self.conn.clone();
        let jobs: Vec<i64> = redis::cmd("SMEMBERS")
            .arg(self.keys.live_jobs())
            .query_async(&mut conn)
            .await?;
        let mut runs = Vec::new();
        for chunk in jobs.chunks(500) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HGETALL").arg(self.keys.live(*id));
            }
            let hashes: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
            for (id, flat) in chunk.iter().zip(hashes) {
                runs.extend(pairs(*id, flat));
            }
        }
        Ok(runs)
    }

    /// Puts every non-empty live hash into the index (one `SCAN` of the keyspace): for live
    /// hashes written by a version before the index, at a monitor's start. The number indexed.
    pub async fn index_live_hashes(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut indexed = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.keys.live_pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let ids: Vec<i64> = batch.iter().filter_map(|k| self.keys.live_job(k)).collect();
            if !ids.is_empty() {
                let _: () = redis::cmd("SADD")
                    .arg(self.keys.live_jobs())
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await?;
                indexed += ids.len();
            }
            if next == 0 {
                return Ok(indexed);
            }
            cursor = next;
        }
    }
}

/// Writes the live hashes: the writes queued while a call is on the wire go in the next call,
/// in the order they were queued (up to [`MAX_TICKS_PER_CALL`] a call). At a thousand runs a
/// second, each run enters its job's live hash as handed over, is marked ended and is taken out
/// once recorded: one script call for all of them at an instant instead of three per run. A
/// caller waits for its call's answer; a failed call is every one of its writes' error. Ends
/// when the last [`Fences`] is dropped.
async fn write_live(
    mut conn: ConnectionManager,
    keys: RedisKeys,
    mut queue: mpsc::UnboundedReceiver<LiveWrite>,
    counts: Arc<(AtomicU64, AtomicU64)>,
) {
    let script = redis::Script::new(LIVE);
    let mut batch = Vec::with_capacity(MAX_TICKS_PER_CALL);
    while queue.recv_many(&mut batch, MAX_TICKS_PER_CALL).await > 0 {
        let mut call = script.prepare_invoke();
        call.key(keys.live_jobs());
        for write in &batch {
            call.key(keys.live(write.job_id))
                .arg(write.job_id)
                .arg(write.run_id)
                .arg(&write.holder);
        }
        let answer: redis::RedisResult<()> = call.invoke_async(&mut conn).await;
        let m = crate::metrics::metrics();
        m.live_write_calls.inc();
        m.live_writes.inc_by(batch.len() as u64);
        counts.0.fetch_add(1, Ordering::Relaxed);
        counts.1.fetch_add(batch.len() as u64, Ordering::Relaxed);
        for write in batch.drain(..) {
            // A caller that gave up waiting is no one to tell.
            let _ = write.done.send(answer.clone());
        }
    }
}

/// Reads the tick-lock script's answer for one tick of job `job_id`.
fn won(job_id: i64, reply: Vec<redis::Value>) -> redis::RedisResult<Option<Won>> {
    let mut values = reply.into_iter();
    let sequence: u64 = match values.next() {
        Some(v) => redis::from_redis_value(v)?,
        None => 0,
    };
    if sequence == 0 {
        return Ok(None);
    }
    let mut rest: Vec<String> = values
        .map(redis::from_redis_value)
        .collect::<Result<_, _>>()?;
    let before = if rest.is_empty() {
        String::new()
    } else {
        rest.remove(0)
    };
    Ok(Some(Won {
        sequence,
        in_flight: pairs(job_id, rest),
        scheduled_through: before.parse().ok(),
    }))
}

/// Reads `HGETALL`'s flat field/value list of a live hash.
fn pairs(job_id: i64, flat: Vec<String>) -> Vec<LiveRun> {
    flat.chunks_exact(2)
        .filter_map(|kv| {
            Some(LiveRun {
                job_id,
                run_id: kv[0].parse().ok()?,
                holder: Holder::parse(&kv[1]),
            })
        })
        .collect()
}
