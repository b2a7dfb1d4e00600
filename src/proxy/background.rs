//! Background work on pingora's background runtime: JWKS refresh per issuer (honouring
//! max-age, backing off on failure), the token-cache sweep, resuming pending async
//! approvals after a restart and, with a shared state backend, taking over (once a second)
//! the approvals whose polling replica died. On each configuration reload the per-issuer refresh tasks are
//! replaced by tasks for the new configuration's issuers (which kept their schedule when
//! their JWKS did not change).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::jwks::IssuerKeys;
use crate::auth::now;
use crate::config::model::KeySource;
use crate::gateway::Gateway;

pub struct Refresher {
    pub state: Arc<ArcSwap<Gateway>>,
    /// The configuration generation; changes on every successful reload.
    pub generation: watch::Receiver<u64>,
}

async fn refresh_issuer(keys: Arc<IssuerKeys>) {
    if let Some(due) = keys.next_due() {
        tokio::time::sleep_until(due.into()).await;
    }
    let mut failures = 0u32;
    loop {
        let outcome = keys.refresh().await;
        match &outcome {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(issuer = %keys.spec.name, error = %e, "JWKS refresh failed; keeping cached keys");
            }
        }
        let wait = keys.next_refresh(&outcome, failures);
        keys.set_next_due(Some(std::time::Instant::now() + wait));
        tokio::time::sleep(wait).await;
    }
}

/// One refresh task per `jwks_uri` issuer of `g`.
fn spawn_refreshers(g: &Gateway) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for keys in &g.verifier.issuers {
        if let KeySource::Uri(_) = keys.spec.keys {
            tasks.spawn(refresh_issuer(keys.clone()));
        }
    }
    tasks
}

/// Whether approvals are shared with other replicas (fixed for the process's life).
fn g_shared(state: &ArcSwap<Gateway>) -> bool {
    state.load().state.redis.is_some()
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut generation = self.generation.clone();
        generation.mark_unchanged();
        let g = self.state.load_full();
        let mut refreshers = spawn_refreshers(&g);
        let resumed = g.approvals.resume(|route| g.approval_client(route)).await;
        if resumed > 0 {
            tracing::info!(resumed, "resumed polling for pending approvals");
        }
        drop(g);
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        let mut orphans = tokio::time::interval(Duration::from_secs(1));
        orphans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = g_shared(&self.state);
        let mut reloads = true;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    refreshers.abort_all();
                    return;
                }
                changed = generation.changed(), if reloads => {
                    if changed.is_err() {
                        reloads = false; // no reloader: keep the current tasks
                        continue;
                    }
                    refreshers.abort_all();
                    refreshers = spawn_refreshers(&self.state.load_full());
                }
                _ = orphans.tick(), if shared => {
                    let g = self.state.load_full();
                    let adopted = g.approvals.adopt_orphans(|route| g.approval_client(route)).await;
                    if adopted > 0 {
                        tracing::info!(adopted, "took over polling of approvals whose replica stopped");
                    }
                }
                _ = tick.tick() => {
                    let g = self.state.load_full();
                    g.verifier.cache.sweep(now());
                    g.metrics.token_cache_entries.set(g.verifier.cache.len() as i64);
                }
            }
        }
    }
}
