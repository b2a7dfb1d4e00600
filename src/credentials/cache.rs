//! Upstream-token cache with single-flight. One slot per (route, issuer, sub, agent): a hit
//! reads the slot's current token under a short std mutex; a miss takes the slot's async
//! fetch lock, so N concurrent misses cause exactly one fetch and the others wait for its
//! result (success or failure). Entries expire a margin before the upstream token does and
//! never outlive the subject token. Bounded: when full, expired slots are swept; if still
//! full, the fetch happens uncached.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;

use crate::policy::Refusal;
use crate::secret::Secret;

pub type SlotKey = [u8; 32];

/// A token to send upstream and when it stops being usable (unix seconds).
#[derive(Debug)]
pub struct UpstreamToken {
    pub value: Secret,
    pub valid_until: u64,
}

/// Whether a token came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Fetched,
}

struct Failure {
    at: Instant,
    refusal: Refusal,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<UpstreamToken>>>,
    fetch: tokio::sync::Mutex<Option<Failure>>,
    /// The user this slot belongs to (for revocation).
    sub: String,
}

impl Slot {
    fn live(&self, now: u64) -> Option<Arc<UpstreamToken>> {
        let cur = self.current.lock().ok()?;
        cur.as_ref().filter(|t| t.valid_until > now).cloned()
    }
}

pub struct TokenCache {
    slots: DashMap<SlotKey, Arc<Slot>>,
    capacity: usize,
}

/// The slot key of a request: hash of route, issuer, subject and agent.
pub fn key(route: &str, issuer: &str, sub: &str, agent: Option<&str>) -> SlotKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [route, issuer, sub, agent.unwrap_or("")] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl TokenCache {
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            slots: DashMap::new(),
            capacity,
        }
    }

    /// The cached token for `key`, or the result of `fetch` — run once for all concurrent
    /// callers. `fetch` returns the token with its own expiry; `limit` caps it (the subject
    /// token's expiry).
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: SlotKey,
        sub: &str,
        now: u64,
        limit: u64,
        fetch: F,
    ) -> Result<(Arc<UpstreamToken>, Source), Refusal>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UpstreamToken, Refusal>>,
    {
        let slot = match self.slots.get(&key) {
            Some(s) => {
                if let Some(t) = s.live(now) {
                    return Ok((t, Source::Cache));
                }
                s.clone()
            }
            None => {
                if self.slots.len() >= self.capacity {
                    self.sweep(now);
                }
                if self.slots.len() >= self.capacity {
                    let t = fetch().await?;
                    return Ok((Arc::new(cap(t, limit)), Source::Fetched));
                }
                self.slots
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(Slot {
                            sub: sub.to_string(),
                            ..Slot::default()
                        })
                    })
                    .clone()
            }
        };
        let arrived = Instant::now();
        let mut failure = slot.fetch.lock().await;
        // Someone else fetched while this request waited.
        if let Some(t) = slot.live(now) {
            return Ok((t, Source::Cache));
        }
        if let Some(f) = failure.as_ref().filter(|f| f.at >= arrived) {
            return Err(f.refusal.clone());
        }
        match fetch().await {
            Ok(t) => {
                let t = Arc::new(cap(t, limit));
                if let Ok(mut cur) = slot.current.lock() {
                    *cur = Some(t.clone());
                }
                *failure = None;
                Ok((t, Source::Fetched))
            }
            Err(refusal) => {
                *failure = Some(Failure {
                    at: Instant::now(),
                    refusal: refusal.clone(),
                });
                Err(refusal)
            }
        }
    }

    /// Forget every cached token of `sub` (after a revocation).
    pub fn forget_user(&self, sub: &str) {
        self.slots.retain(|_, s| s.sub != sub);
    }

    /// Drop slots holding no live token and not being fetched.
    pub fn sweep(&self, now: u64) {
        self.slots
            .retain(|_, s| s.live(now).is_some() || s.fetch.try_lock().is_err());
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn cap(mut t: UpstreamToken, limit: u64) -> UpstreamToken {
    t.valid_until = t.valid_until.min(limit);
    t
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::{key, Source, TokenCache, UpstreamToken};
    use crate::policy::Refusal;
    use crate::secret::Secret;

    fn token(v: &str, until: u64) -> UpstreamToken {
        UpstreamToken {
            value: Secret::new(v.into()),
            valid_until: until,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_fetch_once() {
        let cache = Arc::new(TokenCache::new(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let k = key("r", "i", "alice", Some("a"));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(k, "alice", 100, 1000, || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(token("t1", 500))
                    })
                    .await
            }));
        }
        for t in tasks {
            let (tok, _) = t.await.unwrap().unwrap();
            assert_eq!(tok.value.expose(), "t1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (_, src) = cache
            .get_or_fetch(k, "alice", 100, 1000, || async { Ok(token("t2", 500)) })
            .await
            .unwrap();
        assert_eq!(src, Source::Cache);
    }

    #[tokio::test]
    async fn expiry_is_capped_by_the_subject_and_failures_are_shared() {
        let cache = TokenCache::new(10);
        let k = key("r", "i", "bob", None);
        let (t, _) = cache
            .get_or_fetch(k, "bob", 100, 150, || async { Ok(token("t", 900)) })
            .await
            .unwrap();
        assert_eq!(t.valid_until, 150);
        // Past the cap: fetched again.
        let (t, src) = cache
            .get_or_fetch(k, "bob", 200, 1000, || async { Ok(token("t2", 900)) })
            .await
            .unwrap();
        assert_eq!((t.value.expose(), src), ("t2", Source::Fetched));
        let err = cache
            .get_or_fetch(key("r", "i", "carol", None), "carol", 0, 10, || async {
                Err(Refusal::NoRoute)
            })
            .await;
        assert_eq!(err.unwrap_err(), Refusal::NoRoute);
        cache.forget_user("bob");
        assert_eq!(cache.len(), 1);
    }
}
