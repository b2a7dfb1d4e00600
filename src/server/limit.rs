//! A bound on open downstream connections, around pingora's HTTP app.
//!
//! pingora 0.9.1 hands each accepted connection to `ServerApp::process_new`, and hands a
//! kept-alive HTTP/1.1 connection back to it once per request. `Limited` runs that reuse loop
//! itself, so one call of its `process_new` is exactly one connection: a slot is taken when
//! the connection arrives and given back (RAII) when it ends, however it ends. A connection
//! over the limit is answered `503` with `Connection: close` and closed, before any request of
//! it is read or proxied.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use tokio::io::AsyncWriteExt;

use crate::metrics::ConnectionMetrics;

/// The body of the refusal, like every other refusal's JSON.
const REFUSAL: &str = "{\"error\":\"too_many_connections\",\"error_description\":\"the gateway has reached its connection limit; retry later\"}";

/// `inner`, admitting at most `max` connections at once.
pub struct Limited<A> {
    inner: Arc<A>,
    max: usize,
    open: Arc<AtomicUsize>,
    metrics: ConnectionMetrics,
}

impl<A> Limited<A> {
    pub fn new(inner: A, max: usize, metrics: ConnectionMetrics) -> Limited<A> {
        Limited {
            inner: Arc::new(inner),
            max,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// A slot for one more connection, or `None` at the limit.
    fn admit(&self) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            return None;
        }
        self.metrics.open.inc();
        Some(Slot {
            open: self.open.clone(),
            gauge: self.metrics.open.clone(),
        })
    }
}

/// One admitted connection; dropping it frees the slot.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.admit() else {
            self.metrics.refused.inc();
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{REFUSAL}",
                REFUSAL.len()
            );
            // Best effort: the peer may already be gone, or speak h2c (then it sees a close).
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.flush().await;
            return None;
        };
        // The reuse loop of pingora's listening service, run here so the slot spans the
        // whole connection (an idle kept-alive connection waits inside `process_new`).
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
