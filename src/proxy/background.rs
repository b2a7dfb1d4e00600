//! Background work on pingora's background runtime: JWKS refresh per issuer (honouring
//! max-age, backing off on failure), the token-cache sweep, and resuming pending async
//! approvals after a restart.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::auth::now;
use crate::config::model::KeySource;
use crate::gateway::Gateway;

pub struct Refresher {
    pub state: Arc<ArcSwap<Gateway>>,
}

async fn refresh_issuer(state: Arc<ArcSwap<Gateway>>, index: usize, mut shutdown: ShutdownWatch) {
    let mut failures = 0u32;
    loop {
        let g = state.load_full();
        let keys = g.verifier.issuers[index].clone();
        let outcome = keys.refresh().await;
        match &outcome {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(issuer = %keys.spec.name, error = %e, "JWKS refresh failed; keeping cached keys");
            }
        }
        let wait = keys.next_refresh(&outcome, failures);
        drop(g);
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let g = self.state.load_full();
        for (i, spec) in g.config.issuers.iter().enumerate() {
            if let KeySource::Uri(_) = spec.keys {
                tokio::spawn(refresh_issuer(self.state.clone(), i, shutdown.clone()));
            }
        }
        let resumed = g.approvals.resume(|route| g.approval_client(route)).await;
        if resumed > 0 {
            tracing::info!(resumed, "resumed polling for pending approvals");
        }
        drop(g);
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let g = self.state.load_full();
                    g.verifier.cache.sweep(now());
                    g.metrics.token_cache_entries.set(g.verifier.cache.len() as i64);
                }
            }
        }
    }
}
