//! Approval holds: when the policy answers `require_approval`, the gateway asks the user on
//! their own device through OpenID CIBA (poll mode) and forwards the call only once approved.
//! Sync holds keep the client's connection open; async holds answer 202 and are redeemed by
//! re-sending the same request with `Portcullis-Approval: <id>` (persisted, single-use, bound
//! to the request). One lightweight task polls per pending approval; limits cap them in total
//! and per user. Async approvals live in an [`backend::ApprovalBackend`]: SQLite (embedded) or
//! Redis, where any replica can redeem them, one replica at a time polls each (a lease), and
//! the limits count every replica's approvals. Sync holds stay with the replica holding the
//! connection (with Redis their slots still count against the shared limits).

pub mod backend;
pub mod cancel;
pub mod ciba;
pub mod cli;
pub mod confirm;
pub mod join;
mod limits;
mod poll;
pub mod receipts;
pub mod request_state;
pub mod store;
mod stored;
#[cfg(test)]
mod suite;
mod sync;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::auth::jwks::IssuerKeys;
use crate::claims::Identity;
use crate::config::model::{ApprovalLimits, ApprovalSpec, Config};
use crate::credentials::oauth::{OAuthError, TokenClient};
use crate::metrics::ApprovalMetrics;
use crate::policy::{ApprovalRequest, Refusal};
use crate::state::StateError;
use backend::ApprovalBackend;
use limits::Counts;
use receipts::Draft;
use store::ApprovalStatus;

pub use stored::{PollSpec, Redeemed};
pub use sync::Held;

/// Header carrying an async approval id on the retried request.
pub const APPROVAL_HEADER: &str = "portcullis-approval";
/// Path prefix (main listener) where an async approval's status can be polled.
pub const STATUS_PREFIX: &str = "/.portcullis/approvals/";

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Denied,
    Expired,
    TimedOut,
    Failed,
    /// The answer did not cover what was asked (`confirm`): what differed.
    Mismatch(&'static str),
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed => "failed",
            Outcome::Mismatch(_) => "mismatch",
        }
    }

    /// The refusal for every outcome but approval.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Outcome::Approved => None,
            Outcome::Denied => Some(Refusal::ApprovalDenied),
            Outcome::Expired => Some(Refusal::ApprovalExpired),
            Outcome::TimedOut => Some(Refusal::ApprovalTimeout),
            Outcome::Failed => Some(Refusal::ApprovalFailed),
            Outcome::Mismatch(code) => Some(Refusal::ApprovalMismatch { code }),
        }
    }

    pub(crate) fn status(self) -> ApprovalStatus {
        match self {
            Outcome::Approved => ApprovalStatus::Approved,
            Outcome::Denied => ApprovalStatus::Denied,
            Outcome::Expired | Outcome::TimedOut => ApprovalStatus::Expired,
            Outcome::Failed => ApprovalStatus::Failed,
            Outcome::Mismatch(_) => ApprovalStatus::Mismatch,
        }
    }
}

/// The 202 answer of a new async approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub id: String,
    pub retry_after: u64,
    pub expires_in: u64,
}

pub struct Approvals {
    clients: Vec<Arc<TokenClient>>,
    store: Option<Arc<dyn ApprovalBackend>>,
    counts: Arc<Counts>,
    limits: ApprovalLimits,
    metrics: ApprovalMetrics,
    /// Held MCP calls a `notifications/cancelled` can stop (kept across reloads).
    pub cancels: cancel::Cancels,
    /// Identical calls asking at once: the first asks the user, the others join.
    joining: Arc<DashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Calls per open MCP approval (first call and re-calls), with the first call's time.
    rounds: Arc<DashMap<String, (u32, u64)>>,
    /// Keys sealing MCP `requestState`: `approvals.state_key_*`, else random per process.
    state_keys: Arc<crate::vault::VaultKeys>,
    state_keys_configured: bool,
    /// The configured issuers: the CIBA answer's access token is verified with their keys.
    issuers: Arc<[Arc<IssuerKeys>]>,
    /// Each route's revision in the configuration serving now (shared across reloads).
    live: Arc<ArcSwap<HashMap<String, RouteRevision>>>,
    /// Sync holds waiting for the user, by binding: identical calls join them.
    syncs: Arc<DashMap<String, Weak<sync::Shared>>>,
}

/// A route's revision (its policies and configuration) and whether its approvals outlive a
/// change of it (`keep_on_policy_change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRevision {
    pub rev: String,
    pub keep: bool,
}

/// The `requestState` keys of `config`: checked at load; else a random key for this process.
fn state_keys(config: &Config) -> crate::vault::VaultKeys {
    use crate::vault::VaultKeys;
    let configured = config
        .approvals
        .state_key
        .as_ref()
        .and_then(|k| VaultKeys::parse(k.expose()).ok());
    configured.unwrap_or_else(|| {
        if !matches!(config.state, crate::config::model::StateSpec::Embedded) {
            tracing::warn!("approvals.state_key_env is not set: MCP requestState is sealed with a key of this replica only, so another replica refuses it");
        }
        let key = VaultKeys::generate().expect("random key");
        VaultKeys::parse(&key).expect("generated key")
    })
}

impl Approvals {
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        store: Option<Arc<dyn ApprovalBackend>>,
        metrics: ApprovalMetrics,
        issuers: Vec<Arc<IssuerKeys>>,
    ) -> Approvals {
        Approvals {
            clients: config
                .clients
                .iter()
                .map(|c| Arc::new(TokenClient::new(c.clone(), http.clone())))
                .collect(),
            store,
            counts: Arc::new(Counts::default()),
            limits: config.approvals.clone(),
            metrics,
            cancels: cancel::Cancels::default(),
            joining: Arc::default(),
            rounds: Arc::default(),
            state_keys: Arc::new(state_keys(config)),
            state_keys_configured: config.approvals.state_key.is_some(),
            issuers: Arc::from(issuers),
            live: Arc::default(),
            syncs: Arc::default(),
        }
    }

    /// The configuration serving now has these route revisions (called when it is installed).
    pub fn publish_revisions(&self, revisions: HashMap<String, RouteRevision>) {
        self.live.store(Arc::new(revisions));
    }

    /// Whether an approval asked for under `asked` on `route` still counts in the
    /// configuration serving now.
    pub fn check_revision(&self, route: &str, asked: &str) -> Result<(), Refusal> {
        let live = self.live.load();
        match live.get(route) {
            Some(r) if r.keep || r.rev == asked => Ok(()),
            now => Err(Refusal::ApprovalRevised {
                asked: asked.to_string(),
                now: now.map(|r| r.rev.clone()).unwrap_or_default(),
            }),
        }
    }

    /// After a reload: count against the limits the approvals `old` still holds (their
    /// pollers keep running; they release their slots in the shared counts).
    pub fn carry_pending(&mut self, old: &Approvals) {
        self.counts = old.counts.clone();
        self.cancels = old.cancels.clone();
        self.joining = old.joining.clone();
        self.rounds = old.rounds.clone();
        self.live = old.live.clone();
        self.syncs = old.syncs.clone();
        if !self.state_keys_configured && !old.state_keys_configured {
            // Still the random key: states issued before the reload stay valid.
            self.state_keys = old.state_keys.clone();
        }
    }

    /// The async-approval store, if configured.
    pub fn store(&self) -> Option<&Arc<dyn ApprovalBackend>> {
        self.store.as_ref()
    }

    /// Keys sealing MCP `requestState`.
    pub fn state_keys(&self) -> &crate::vault::VaultKeys {
        &self.state_keys
    }

    pub fn metrics(&self) -> &ApprovalMetrics {
        &self.metrics
    }

    /// Pending approvals held by this process.
    pub fn pending(&self) -> usize {
        self.counts.total.load(Ordering::SeqCst)
    }

    /// What the user is asked to approve, to check their answer against.
    fn asked(
        &self,
        spec: &ApprovalSpec,
        sub: &str,
        details: String,
        scope: String,
    ) -> confirm::Asked {
        confirm::Asked {
            sub: sub.to_string(),
            details,
            scope,
            require_details: spec.require_details,
            issuers: self.issuers.clone(),
        }
    }

    fn store_error(&self, e: impl Into<StateError>) -> Refusal {
        let e: StateError = e.into();
        tracing::error!(error = %e, "approval store error; denying");
        e.into()
    }

    /// Append a receipt to the store's chain (nothing without a store). A failure is logged
    /// and returned: where a call would go on, the caller refuses it (fail closed).
    async fn receipt(&self, draft: Draft) -> Result<(), Refusal> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        append_receipt(store, &self.metrics, draft).await
    }

    /// polling interval.
    async fn ask(
        &self,
        spec: &ApprovalSpec,
        who: &Identity,
        iss: &str,
        req: &ApprovalRequest,
    ) -> Result<ciba::Started, Refusal> {
        let client = &self.clients[spec.client];
        let hint = ciba::login_hint(spec.login_hint, iss, &who.sub);
        let params = ciba::params(spec, req, hint);
        let span = crate::telemetry::span("ciba start");
        tracing::Instrument::instrument(ciba::start(client, &spec.backchannel_endpoint, params), span)
            .await
            .map_err(|e| {
                self.metrics.finished("start", "failed");
                let endpoint = spec.backchannel_endpoint.as_str();
                match e {
                    OAuthError::Unreachable(why) => {
                        tracing::warn!(endpoint, error = %why, "CIBA backchannel endpoint unreachable; denying");
                        Refusal::ApprovalFailed
                    }
                    OAuthError::Rejected { error, .. } if error == "unknown_user_id" => {
                        tracing::warn!(endpoint, "the CIBA backchannel endpoint does not know the user (unknown_user_id); denying");
                        Refusal::ApprovalUnknownUser
                    }
                    e => {
                        tracing::warn!(endpoint, error = %e, "CIBA backchannel request refused; denying");
                        Refusal::ApprovalRejected
                    }
                }
            })
    }
}

/// Append a receipt with `store` (from a poller task as well).
async fn append_receipt(
    store: &Arc<dyn ApprovalBackend>,
    metrics: &ApprovalMetrics,
    draft: Draft,
) -> Result<(), Refusal> {
    let event = draft.event.clone();
    match store.append_receipt(draft).await {
        Ok(_) => Ok(()),
        Err(e) => {
            metrics.receipt_failed();
            tracing::error!(error = %e, event, "cannot append an approval receipt");
            Err(e.into())
        }
    }
}
