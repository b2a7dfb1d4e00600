//! Token buckets in Redis: one hash per key (`tokens`, `ts` in µs of the Redis server's clock,
//! so replicas' clocks do not matter), refilled and debited by one Lua script — atomic, one
//! round trip per check. Idle buckets expire once they would be full again.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;

use super::Redis;
use crate::ratelimit::Rate;
use crate::state::{key_digest, RateLimits, StateError};

static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) / 1000000 * rate) end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.max(1, math.ceil((1 - tokens) / rate))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"#,
    )
});

pub struct RedisBuckets {
    redis: Arc<Redis>,
}

impl RedisBuckets {
    pub fn new(redis: Arc<Redis>) -> RedisBuckets {
        RedisBuckets { redis }
    }
}

#[async_trait]
impl RateLimits for RedisBuckets {
    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, StateError> {
        // The key names a route, an agent and maybe a tool: digested.
        let k = self
            .redis
            .key(&format!("rl:{}", key_digest(&[key.as_bytes()])));
        let (per_second, burst) = (rate.per_second.to_string(), rate.burst.to_string());
        let wait: u64 = self
            .redis
            .script("rate_limit", &TAKE, &[&k], &[&per_second, &burst])
            .await?;
        Ok(if wait == 0 { Ok(()) } else { Err(wait) })
    }
}
