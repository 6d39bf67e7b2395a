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

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::daemon::{Backoff, Cancelled};
use crate::keys::RedisKeys;

// The lock's value is `owner|sequence`. Asking again as the same owner returns the same
// sequence, so a retry after a lost reply (timeout, reset) cannot turn a won tick into a lost one.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
";

const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local owner, n = string.match(held, '^(.*)|(%d+)$')
  if owner == ARGV[1] then return tonumber(n) end
  return 0
end
local n = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. n, 'PX', ARGV[2])
return n
";

/// Tick locks and run claims on one Redis server.
#[derive(Clone)]
pub struct Fences {
    conn: ConnectionManager,
    keys: RedisKeys,
    owner: String,
    ttl: Duration,
    acquire: redis::Script,
    claim: redis::Script,
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
        Ok(Fences {
            conn,
            keys: RedisKeys::new(&config.prefix),
            owner: owner.to_owned(),
            ttl,
            acquire: redis::Script::new(ACQUIRE),
            claim: redis::Script::new(CLAIM),
        })
    }

    /// Tries to win tick `scheduled_ms` of job `job_id`. `Ok(Some(n))`: this caller won (now or
    /// in an earlier attempt), and `n` is the `machine` group's dispatch count (for
    /// round-robin); `Ok(None)`: another won.
    pub async fn acquire(
        &self,
        job_id: i64,
        scheduled_ms: i64,
        machine: &str,
    ) -> redis::RedisResult<Option<u64>> {
        let mut conn = self.conn.clone();
        let n: u64 = self
            .acquire
            .key(self.keys.tick(job_id, scheduled_ms))
            .key(self.keys.round_robin(machine))
            .arg(&self.owner)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok((n > 0).then_some(n))
    }

    /// Claims run `run_id` as `holder`. `Ok(None)`: `holder` has it (now, or from an earlier
    /// attempt); `Ok(Some(other))`: `other` holds it.
    pub async fn claim_run(&self, run_id: i64, holder: &str) -> redis::RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        let held: String = self
            .claim
            .key(self.keys.run(run_id))
            .arg(holder)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok((held != holder).then_some(held))
    }
}
