//! The Redis tick lock: exactly one dispatcher of many fires a (job, tick).
//!
//! One script (atomic in Redis) takes the lock if nobody holds it and, only for the winner,
//! `INCR`s the machine group's dispatch counter, in one round trip; the counter gives round-robin
//! across all dispatchers, not just within one. It is idempotent per owner: the winner asking
//! again (a retry after a lost reply) gets its sequence back. Owners are dispatcher names, which
//! must therefore be unique. The lock is never released: it expires after `ttl`, which
//! keeps it a fence against a late dispatcher whose clock lags (set `ttl` well above any skew).
//! The database's unique `(job_id, scheduled_at, trigger)` is the fence behind this one.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::daemon::{Backoff, Cancelled};
use crate::keys::RedisKeys;

// The lock's value is `owner|sequence`. Asking again as the same owner returns the same
// sequence, so a retry after a lost reply (timeout, reset) cannot turn a won tick into a lost one.
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

/// Tick locks on one Redis server.
#[derive(Clone)]
pub struct TickLock {
    conn: ConnectionManager,
    keys: RedisKeys,
    owner: String,
    ttl: Duration,
    script: redis::Script,
}

impl TickLock {
    /// Connects (retrying with backoff until Redis answers, or `cancel`); `owner` is recorded as
    /// the lock value, for whoever inspects Redis.
    pub async fn connect(
        config: &RedisConfig,
        owner: &str,
        ttl: Duration,
        cancel: &CancellationToken,
    ) -> Result<TickLock, Cancelled> {
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
        Ok(TickLock {
            conn,
            keys: RedisKeys::new(&config.prefix),
            owner: owner.to_owned(),
            ttl,
            script: redis::Script::new(ACQUIRE),
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
            .script
            .key(self.keys.tick(job_id, scheduled_ms))
            .key(self.keys.round_robin(machine))
            .arg(&self.owner)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok((n > 0).then_some(n))
    }
}
