//! Async approvals in Redis, shared by replicas.
//!
//! Keys (after `key_prefix`): `ap:<id>` a hash (`rec` JSON of the fixed fields, `status`,
//! `interval`, `updated`, `bind` digest of the binding, `exp`, `owner` of the polling lease),
//! expiring a day after the approval; `ap:leases` a sorted set id → lease deadline (ms, Redis
//! clock); `ap:pending` and `ap:pending:<user digest>` sorted sets member → expiry (s) for the
//! pending limits. Every change is one Lua script, so it is atomic: exactly one of concurrent
//! redemptions consumes an approval, exactly one replica holds a lease, and a poller whose
//! lease was taken over can no longer record an outcome over the new holder's.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::Redis;
use crate::approval::backend::{ApprovalBackend, OpenOrClaim};
use crate::approval::receipts::{Draft, Receipt, Row};
use crate::approval::store::{ApprovalRecord, ApprovalStatus, Binding, Consume};
use crate::config::model::ApprovalLimits;
use crate::policy::Refusal;
use crate::secret::Secret;
use crate::state::{hex, key_digest, StateError};

/// How long a finished record stays readable (status URL), seconds after its expiry.
const RETAIN_SECS: u64 = 86_400;

static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if redis.call('EXPIRETIME', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('EXPIREAT', KEYS[2], ARGV[2])
end
return 0
"#,
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"#,
    )
});

static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'rec', ARGV[2], 'status', 'pending', 'interval', ARGV[3],
  'updated', ARGV[4], 'bind', ARGV[5], 'exp', ARGV[6], 'owner', ARGV[7])
redis.call('EXPIREAT', KEYS[1], ARGV[9])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[8]), ARGV[1])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('EXPIREAT', KEYS[3], ARGV[9])
return 1
"#,
    )
});

static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated', ARGV[3])
return 1
"#,
    )
});

static INTERVAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  redis.call('HSET', KEYS[1], 'interval', ARGV[1])
end
return 0
"#,
    )
});

static CONSUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('HMGET', KEYS[1], 'status', 'bind', 'exp')
if not v[1] then return 'not_found' end
if v[2] ~= ARGV[1] then return 'other_binding' end
local s = v[1]
if (s == 'pending' or s == 'approved') and tonumber(ARGV[2]) >= tonumber(v[3]) then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'updated', ARGV[2])
  return 'expired'
end
if s == 'approved' then
  redis.call('HSET', KEYS[1], 'status', 'used', 'updated', ARGV[2])
  return 'consumed'
end
return s
"#,
    )
});

static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local st = redis.call('HMGET', KEYS[1], 'status', 'owner')
if st[1] ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if st[2] == ARGV[2] or deadline <= now then
  redis.call('HSET', KEYS[1], 'owner', ARGV[2])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// Orphans: leases past their deadline. Reads `ap:<id>` records beyond KEYS (a single Redis
/// or a primary with replicas; not Redis Cluster).
static ADOPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[1] .. id
  if redis.call('HGET', k, 'status') == 'pending' then
    redis.call('HSET', k, 'owner', ARGV[2])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
    table.insert(out, id)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"#,
    )
});

/// The fixed part of a record, as JSON in the `rec` field.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    route: String,
    sub: String,
    agent: Option<String>,
    method: String,
    target: String,
    body_sha256: String,
    auth_req_id: String,
    binding_message: String,
    authorization_details: String,
    created_at: u64,
    expires_at: u64,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    policy_rev: String,
}

pub struct RedisApprovals {
    redis: Arc<Redis>,
    /// This process's lease-holder id (random per start).
    owner: String,
    /// The receipts chain's head as this process last saw it (`receipts`).
    head: std::sync::Mutex<Option<String>>,
}

fn binding_digest(b: &Binding) -> String {
    key_digest(&[
        b.sub.as_bytes(),
        b.agent
            .as_deref()
            .map_or(b"\0none".as_slice(), str::as_bytes),
        b.method.as_bytes(),
        b.target.as_bytes(),
        &b.body_sha256,
    ])
}

fn corrupt(what: &str) -> StateError {
    StateError::Corrupt(format!("approval record: {what}"))
}

impl RedisApprovals {
    pub fn new(redis: Arc<Redis>) -> RedisApprovals {
        RedisApprovals {
            redis,
            owner: uuid::Uuid::new_v4().simple().to_string(),
            head: std::sync::Mutex::new(None),
        }
    }

    /// `ap:join:<digest of route and binding>` → the newest approval id with that binding.
    pub(super) fn join_key(&self, route: &str, b: &Binding) -> String {
        let digest = key_digest(&[route.as_bytes(), binding_digest(b).as_bytes()]);
        self.redis.key(&format!("ap:join:{digest}"))
    }

    /// This process's lease-holder id.
    pub(super) fn owner(&self) -> &str {
        &self.owner
    }

    pub(super) fn redis(&self) -> &Redis {
        &self.redis
    }

    pub(super) fn last_head(&self) -> Option<String> {
        self.head.lock().ok().and_then(|h| h.clone())
    }

    pub(super) fn remember_head(&self, head: Option<String>) {
        if let Ok(mut h) = self.head.lock() {
            *h = head;
        }
    }

    fn record_key(&self, id: &str) -> String {
        self.redis.key(&format!("ap:{id}"))
    }

    fn user_key(&self, sub: &str) -> String {
        self.redis
            .key(&format!("ap:pending:{}", key_digest(&[sub.as_bytes()])))
    }
}

/// An approval id is 22 base64url characters; anything else is not looked up.
fn plausible(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[async_trait]
impl ApprovalBackend for RedisApprovals {
    fn shared(&self) -> bool {
        true
    }

    async fn reserve(
        &self,
        member: &str,
        sub: &str,
        expires_at: u64,
        limits: &ApprovalLimits,
    ) -> Result<Result<(), Refusal>, StateError> {
        let (total, user) = (self.redis.key("ap:pending"), self.user_key(sub));
        let now = crate::auth::now().to_string();
        let (exp, max, per_user) = (
            expires_at.to_string(),
            limits.max_pending.to_string(),
            limits.max_pending_per_user.to_string(),
        );
        let code: u8 = self
            .redis
            .script(
                "approval_reserve",
                &RESERVE,
                &[&total, &user],
                &[member, &exp, &now, &max, &per_user],
            )
            .await?;
        Ok(match code {
            0 => Ok(()),
            2 => Err(Refusal::TooManyApprovals { per_user: true }),
            _ => Err(Refusal::TooManyApprovals { per_user: false }),
        })
    }

    async fn release(&self, member: &str, sub: &str) -> Result<(), StateError> {
        let (total, user) = (self.redis.key("ap:pending"), self.user_key(sub));
        self.redis
            .script::<()>("approval_release", &RELEASE, &[&total, &user], &[member])
            .await
    }

    async fn insert(&self, r: &ApprovalRecord, lease: Duration) -> Result<(), StateError> {
        let b = &r.binding;
        let stored = Stored {
            route: r.route.clone(),
            sub: b.sub.clone(),
            agent: b.agent.clone(),
            method: b.method.clone(),
            target: b.target.clone(),
            body_sha256: hex(&b.body_sha256),
            auth_req_id: r.auth_req_id.expose().to_string(),
            binding_message: r.binding_message.clone(),
            authorization_details: r.authorization_details.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            scope: r.scope.clone(),
            policy_rev: r.policy_rev.clone(),
        };
        let json = serde_json::to_string(&stored).map_err(|e| corrupt(&e.to_string()))?;
        let (key, leases) = (self.record_key(&r.id), self.redis.key("ap:leases"));
        let join = self.join_key(&r.route, b);
        let args = [
            r.id.clone(),
            json,
            r.interval_secs.to_string(),
            r.updated_at.to_string(),
            binding_digest(b),
            r.expires_at.to_string(),
            self.owner.clone(),
            lease.as_millis().to_string(),
            (r.expires_at + RETAIN_SECS).to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let inserted: u8 = self
            .redis
            .script("approval_insert", &INSERT, &[&key, &leases, &join], &args)
            .await?;
        match inserted {
            1 => Ok(()),
            _ => Err(corrupt("duplicate approval id")),
        }
    }

    async fn find_latest(
        &self,
        route: &str,
        b: &Binding,
        now: u64,
    ) -> Result<Option<ApprovalRecord>, StateError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.join_key(route, b));
        let id: Option<String> = self.redis.cmd("approval_join", cmd).await?;
        let Some(id) = id else { return Ok(None) };
        let found = self.get(&id).await?.filter(|r| {
            r.route == route
                && r.binding == *b
                && r.expires_at > now
                && r.status != ApprovalStatus::Failed
        });
        Ok(found)
    }

    async fn open_or_claim(
        &self,
        route: &str,
        b: &Binding,
        now: u64,
        ttl: Duration,
    ) -> Result<OpenOrClaim, StateError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.join_key(route, b));
        let seen: Option<String> = self.redis.cmd("approval_join", cmd).await?;
        let seen = seen.unwrap_or_default();
        if seen.starts_with("claim:") {
            return Ok(OpenOrClaim::Busy);
        }
        if !seen.is_empty() {
            let open = self.get(&seen).await?.filter(|r| {
                r.route == route
                    && r.binding == *b
                    && r.expires_at > now
                    && r.status != ApprovalStatus::Failed
            });
            if let Some(r) = open {
                return Ok(OpenOrClaim::Open(Box::new(r)));
            }
        }
        Ok(match self.claim(route, b, &seen, ttl).await? {
            true => OpenOrClaim::Claimed,
            false => OpenOrClaim::Busy,
        })
    }

    async fn claim_over(
        &self,
        route: &str,
        b: &Binding,
        id: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        self.claim(route, b, id, ttl).await
    }

    async fn unclaim(&self, route: &str, b: &Binding) -> Result<(), StateError> {
        self.release_claim(route, b).await
    }

    async fn get(&self, id: &str) -> Result<Option<ApprovalRecord>, StateError> {
        if !plausible(id) {
            return Ok(None);
        }
        let cmd = redis::cmd("HMGET")
            .arg(self.record_key(id))
            .arg(&["rec", "status", "interval", "updated"])
            .clone();
        let v: Vec<Option<String>> = self.redis.cmd("approval_get", cmd).await?;
        let [Some(rec), Some(status), Some(interval), Some(updated)] =
            <[_; 4]>::try_from(v).map_err(|_| corrupt("fields"))?
        else {
            return Ok(None);
        };
        let s: Stored = serde_json::from_str(&rec).map_err(|_| corrupt("rec"))?;
        let mut body_sha256 = [0u8; 32];
        if s.body_sha256.len() != 64 {
            return Err(corrupt("body hash"));
        }
        for (i, o) in body_sha256.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s.body_sha256[2 * i..2 * i + 2], 16)
                .map_err(|_| corrupt("body hash"))?;
        }
        Ok(Some(ApprovalRecord {
            id: id.to_string(),
            route: s.route,
            binding: Binding {
                sub: s.sub,
                agent: s.agent,
                method: s.method,
                target: s.target,
                body_sha256,
            },
            auth_req_id: Secret::new(s.auth_req_id),
            binding_message: s.binding_message,
            authorization_details: s.authorization_details,
            status: ApprovalStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
            interval_secs: interval.parse().map_err(|_| corrupt("interval"))?,
            created_at: s.created_at,
            expires_at: s.expires_at,
            updated_at: updated.parse().map_err(|_| corrupt("updated"))?,
            scope: s.scope,
            policy_rev: s.policy_rev,
        }))
    }

    async fn finish(
        &self,
        r: &ApprovalRecord,
        to: ApprovalStatus,
        now: u64,
    ) -> Result<bool, StateError> {
        let keys = [
            self.record_key(&r.id),
            self.redis.key("ap:leases"),
            self.redis.key("ap:pending"),
            self.user_key(&r.binding.sub),
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let now = now.to_string();
        let changed: u8 = self
            .redis
            .script(
                "approval_finish",
                &FINISH,
                &keys,
                &[&r.id, to.as_str(), &now],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn set_interval(&self, id: &str, interval_secs: u64) -> Result<(), StateError> {
        let key = self.record_key(id);
        let interval = interval_secs.to_string();
        self.redis
            .script::<()>("approval_interval", &INTERVAL, &[&key], &[&interval])
            .await
    }

    async fn consume(&self, id: &str, b: &Binding, now: u64) -> Result<Consume, StateError> {
        if !plausible(id) {
            return Ok(Consume::NotFound);
        }
        let key = self.record_key(id);
        let (digest, now) = (binding_digest(b), now.to_string());
        let answer: String = self
            .redis
            .script("approval_consume", &CONSUME, &[&key], &[&digest, &now])
            .await?;
        Ok(match answer.as_str() {
            "consumed" => Consume::Consumed,
            "not_found" => Consume::NotFound,
            "other_binding" => Consume::Mismatch,
            "mismatch" => Consume::DetailsMismatch,
            "pending" => Consume::Pending,
            "denied" => Consume::Denied,
            "expired" => Consume::Expired,
            "failed" => Consume::Failed,
            "used" => Consume::AlreadyUsed,
            _ => return Err(corrupt("status")),
        })
    }

    async fn pending(&self) -> Result<Vec<ApprovalRecord>, StateError> {
        Ok(Vec::new())
    }

    async fn lease(&self, id: &str, ttl: Duration) -> Result<bool, StateError> {
        let (key, leases) = (self.record_key(id), self.redis.key("ap:leases"));
        let ttl = ttl.as_millis().to_string();
        let held: u8 = self
            .redis
            .script(
                "approval_lease",
                &LEASE,
                &[&key, &leases],
                &[id, &self.owner, &ttl],
            )
            .await?;
        Ok(held == 1)
    }

    async fn adopt(&self, ttl: Duration, limit: usize) -> Result<Vec<ApprovalRecord>, StateError> {
        let leases = self.redis.key("ap:leases");
        let (prefix, ttl, limit) = (
            self.redis.key("ap:"),
            ttl.as_millis().to_string(),
            limit.to_string(),
        );
        let ids: Vec<String> = self
            .redis
            .script(
                "approval_adopt",
                &ADOPT,
                &[&leases],
                &[&prefix, &self.owner, &ttl, &limit],
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.get(&id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn append_receipt(&self, draft: Draft) -> Result<Receipt, StateError> {
        self.append(draft).await
    }

    async fn receipts(
        &self,
        after: u64,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<Row>, StateError> {
        self.list(after, limit, sub).await
    }
}
