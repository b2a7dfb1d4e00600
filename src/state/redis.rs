//! The Redis backend: one multiplexed connection (`redis::aio::ConnectionManager`, which
//! reconnects with exponential back-off) driven by a small runtime of its own, so it does not
//! depend on which of pingora's runtimes calls it. Every operation is bounded by
//! `state.redis.timeout_ms`, timed and counted; failures mark the backend down until an
//! operation (or the once-a-second `PING`) succeeds again. Keys are `key_prefix` + a fixed
//! name + digests or random ids: never a token, a user name or another secret.

pub mod approvals;
pub mod buckets;
mod claim;
pub mod receipts;
pub mod tokens;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisResult, Script};

use super::metrics::StateMetrics;
use super::{count_operation, StateError};
use crate::config::model::RedisSpec;

pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    metrics: StateMetrics,
    up: AtomicBool,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let rt = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rt) = rt {
            // Allowed anywhere, also inside another runtime.
            rt.shutdown_background();
        }
    }
}

impl Redis {
    /// A client for `spec`; connects lazily (a gateway starts while Redis is down and fails
    /// closed on the decisions that need it until Redis answers).
    pub fn open(spec: &RedisSpec, metrics: StateMetrics) -> Result<Arc<Redis>, String> {
        let url = spec.url.expose();
        let client = if url.starts_with("rediss://") {
            // Both of rustls's providers are in the build: pick one for redis's TLS.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let root_cert = match &spec.ca_file {
                Some(f) => Some(
                    std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?,
                ),
                None => None,
            };
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert,
            };
            redis::Client::build_with_tls(url, certs)
        } else {
            redis::Client::open(url)
        }
        .map_err(|e| format!("cannot use the Redis URL ({:?})", e.kind()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-state")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the state runtime: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(spec.timeout))
            .set_response_timeout(Some(spec.timeout))
            .set_number_of_retries(4)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2));
        let conn = {
            let _inside = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| format!("cannot create the Redis connection ({:?})", e.kind()))?
        };
        let handle = runtime.handle().clone();
        metrics.up.set(0);
        let redis = Arc::new(Redis {
            conn,
            prefix: spec.key_prefix.clone(),
            timeout: spec.timeout,
            metrics,
            up: AtomicBool::new(false),
            runtime: Mutex::new(Some(runtime)),
        });
        let weak = Arc::downgrade(&redis);
        handle.spawn(async move {
            loop {
                let Some(r) = weak.upgrade() else { return };
                let _ = r.ping().await;
                drop(r);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(redis)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `key_prefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), StateError> {
        let mut c = self.conn.clone();
        let cmd = redis::cmd("PING");
        self.timed::<String>("ping", async move { cmd.query_async(&mut c).await })
            .await
            .map(drop)
    }

    /// Run `script` (EVALSHA, loading it on NOSCRIPT) as one operation of kind `op`.
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StateError> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut c = self.conn.clone();
        count_operation();
        self.timed(op, async move { inv.invoke_async(&mut c).await })
            .await
    }

    /// Run one command as an operation of kind `op`.
    pub async fn cmd<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, StateError> {
        let mut c = self.conn.clone();
        count_operation();
        self.timed(op, async move { cmd.query_async(&mut c).await })
            .await
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() => {
                Err(StateError::Unavailable(format!("{:?}", e.kind())))
            }
            Ok(Err(e)) => Err(StateError::Corrupt(format!("{:?}", e.kind()))),
            Err(_) => Err(StateError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        };
        let ok = result.is_ok();
        self.metrics
            .observe(op, started.elapsed().as_secs_f64(), ok);
        let reachable = !matches!(result, Err(StateError::Unavailable(_)));
        if self.up.swap(reachable, Ordering::Relaxed) != reachable {
            if reachable {
                tracing::info!("state backend (Redis) reachable");
            } else if let Err(e) = &result {
                tracing::error!(error = %e, "state backend (Redis) unreachable; decisions that need it are refused (503)");
            }
        }
        self.metrics.up.set(i64::from(reachable));
        if let Err(e) = &result {
            tracing::warn!(op, error = %e, "state operation failed");
        }
        result
    }
}
