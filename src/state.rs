//! State shared by replicas, behind small traits so backends are swappable: rate-limit
//! buckets ([`RateLimits`]), the approval store ([`crate::approval::backend::ApprovalBackend`])
//! and the upstream-token cache ([`SharedTokens`]). `embedded` keeps today's single-process
//! behaviour (in-memory buckets, SQLite approvals, per-process token cache); `redis` shares
//! them. A decision that needs the backend fails closed when it is unreachable
//! ([`StateError::Unavailable`] → 503 `state_unavailable`).

pub mod metrics;
pub mod redis;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::config::model::{Config, StateSpec};
use crate::credentials::cache::{SlotKey, UpstreamToken};
use crate::policy::Refusal;
use crate::ratelimit::{Rate, RateLimiter};
use metrics::StateMetrics;

/// Why a state operation failed. Messages never contain a key's secret part or a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backend could not be reached or did not answer in time.
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this build cannot read.
    #[error("state backend answered unexpectedly: {0}")]
    Corrupt(String),
    /// The embedded (SQLite) approval store failed.
    #[error("{0}")]
    Store(String),
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Refusal {
        match e {
            StateError::Store(_) => Refusal::ApprovalFailed,
            _ => Refusal::StateUnavailable,
        }
    }
}

/// Token buckets: take one token from `key`'s bucket.
#[async_trait]
pub trait RateLimits: Send + Sync {
    /// `Ok(Ok(()))`: allowed; `Ok(Err(seconds))`: empty, retry after; `Err`: backend failed.
    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, StateError>;
}

#[async_trait]
impl RateLimits for RateLimiter {
    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, StateError> {
        Ok(self.check(key, rate, Instant::now()))
    }
}

/// Upstream tokens shared by replicas (the per-process `TokenCache` sits in front).
#[async_trait]
pub trait SharedTokens: Send + Sync {
    /// The live token of `key`, if another replica (or this one) stored it.
    async fn get(&self, key: &SlotKey, now: u64) -> Result<Option<UpstreamToken>, StateError>;
    /// Store `token` until its `valid_until`.
    async fn put(&self, key: &SlotKey, token: &UpstreamToken, now: u64) -> Result<(), StateError>;
}

/// The state of one process, kept across reloads (`state:` cannot change without a restart).
pub struct State {
    pub rate_limits: Arc<dyn RateLimits>,
    /// Local buckets in front of shared ones: a key whose local bucket is empty is refused
    /// without asking the backend (exact: the shared bucket can only hold fewer tokens).
    local_buckets: Option<Arc<RateLimiter>>,
    pub tokens: Option<Arc<dyn SharedTokens>>,
    pub redis: Option<Arc<redis::Redis>>,
    pub metrics: StateMetrics,
}

impl State {
    /// The state for `config`: embedded, or a (lazily connecting) Redis client. `vault_key`:
    /// text of the vault's keys, the fallback key of the shared token cache.
    pub fn open(
        config: &Config,
        metrics: StateMetrics,
        vault_key: Option<&str>,
    ) -> Result<State, String> {
        match &config.state {
            StateSpec::Embedded => {
                metrics.up.set(1);
                Ok(State {
                    rate_limits: Arc::new(RateLimiter::default()),
                    local_buckets: None,
                    tokens: None,
                    redis: None,
                    metrics,
                })
            }
            StateSpec::Redis(spec) => {
                let r = redis::Redis::open(spec, metrics.clone())?;
                let key = spec
                    .cache_key
                    .as_ref()
                    .map(|k| k.expose().to_string())
                    .or(vault_key.map(str::to_string));
                let tokens: Option<Arc<dyn SharedTokens>> = match key {
                    Some(k) => Some(Arc::new(redis::tokens::RedisTokens::new(r.clone(), &k)?)),
                    None => None,
                };
                Ok(State {
                    rate_limits: Arc::new(redis::buckets::RedisBuckets::new(r.clone())),
                    local_buckets: Some(Arc::new(RateLimiter::default())),
                    tokens,
                    redis: Some(r),
                    metrics,
                })
            }
        }
    }

    /// Whether the backend answers (always true for `embedded`).
    pub fn up(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.is_up())
    }

    /// `embedded` or `redis`.
    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "embedded"
        }
    }

    /// Take a token from `key`'s bucket (local pre-check first when the buckets are shared).
    pub async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, StateError> {
        let Some(local) = &self.local_buckets else {
            return self.rate_limits.take(key, rate).await;
        };
        let now = Instant::now();
        if let Err(wait) = local.check(key, rate, now) {
            return Ok(Err(wait));
        }
        let shared = self.rate_limits.take(key, rate).await;
        if !matches!(shared, Ok(Ok(()))) {
            // Not spent after all: the local bucket must never hold fewer tokens than the
            // shared one, or it would refuse wrongly.
            local.refund(key, rate);
        }
        shared
    }
}

tokio::task_local! {
    /// State operations made for the request being handled.
    static OPERATIONS: Cell<u32>;
}

/// Run `f`, counting the state-backend operations it makes (for the per-request metric).
pub async fn counting<F: Future>(f: F) -> (F::Output, u32) {
    OPERATIONS
        .scope(Cell::new(0), async {
            let out = f.await;
            (out, OPERATIONS.with(Cell::get))
        })
        .await
}

/// Count one operation against the current request, if any.
pub(crate) fn count_operation() {
    let _ = OPERATIONS.try_with(|c| c.set(c.get() + 1));
}

/// Hex of the first 16 bytes of SHA-256 of `parts` (length-prefixed): how user-chosen or
/// identifying values appear in Redis keys.
pub fn key_digest(parts: &[&[u8]]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    hex(&ctx.finish().as_ref()[..16])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
