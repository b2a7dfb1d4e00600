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
pub mod join;
mod poll;
pub mod request_state;
pub mod store;
#[cfg(test)]
mod suite;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::auth::now;
use crate::claims::Identity;
use crate::config::model::{ApprovalLimits, ApprovalSpec, Config};
use crate::credentials::oauth::{OAuthError, TokenClient};
use crate::metrics::ApprovalMetrics;
use crate::policy::{ApprovalRequest, Refusal};
use crate::state::StateError;
use backend::ApprovalBackend;
use poll::{lease_ttl, lifetime, poll_until, ADOPT_LEASE};
use store::{ApprovalRecord, ApprovalStatus, Binding, Consume};

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
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed => "failed",
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
        }
    }

    fn status(self) -> ApprovalStatus {
        match self {
            Outcome::Approved => ApprovalStatus::Approved,
            Outcome::Denied => ApprovalStatus::Denied,
            Outcome::Expired | Outcome::TimedOut => ApprovalStatus::Expired,
            Outcome::Failed => ApprovalStatus::Failed,
        }
    }
}

/// A slot in the pending limits: counted in this process (embedded) or in the shared
/// backend; released on drop.
enum Slot {
    Local { _held: Reservation },
    Shared { _held: SharedSlot },
}

struct SharedSlot {
    store: Arc<dyn ApprovalBackend>,
    member: String,
    sub: String,
    /// Release on drop: sync holds, and async approvals not stored yet. A stored async
    /// approval's slot is released by `finish` (or expires with it), never by a poller that
    /// stops because another replica took over.
    armed: bool,
}

impl Slot {
    /// The approval is stored: its shared slot now goes with the record.
    fn stored(&mut self) {
        if let Slot::Shared { _held } = self {
            _held.armed = false;
        }
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        // A replica that dies leaves the slot to expire with the approval.
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, member, sub) = (
                self.store.clone(),
                std::mem::take(&mut self.member),
                std::mem::take(&mut self.sub),
            );
            rt.spawn(async move {
                let _ = store.release(&member, &sub).await;
            });
        }
    }
}

/// A slot in the pending limits of this process, released on drop.
struct Reservation {
    owner: Arc<Counts>,
    sub: String,
}

#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_user: DashMap<String, usize>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.owner.total.fetch_sub(1, Ordering::SeqCst);
        if let Some(mut n) = self.owner.per_user.get_mut(&self.sub) {
            *n = n.saturating_sub(1);
        }
        self.owner.per_user.remove_if(&self.sub, |_, n| *n == 0);
    }
}

/// A sync hold in progress. Dropping it (client gone, time-out) stops the polling.
pub struct Held {
    outcome: watch::Receiver<Option<Outcome>>,
    task: tokio::task::AbortHandle,
}

impl Held {
    /// Wait for the user's answer, at most `limit`.
    pub async fn wait(&mut self, limit: Duration) -> Outcome {
        let answer = self.outcome.wait_for(Option::is_some);
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(v)) => v.unwrap_or(Outcome::Failed),
            Ok(Err(_)) => Outcome::Failed,
            Err(_) => Outcome::TimedOut,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
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
        }
    }

    /// After a reload: count against the limits the approvals `old` still holds (their
    /// pollers keep running; they release their slots in the shared counts).
    pub fn carry_pending(&mut self, old: &Approvals) {
        self.counts = old.counts.clone();
        self.cancels = old.cancels.clone();
        self.joining = old.joining.clone();
        self.rounds = old.rounds.clone();
        if !self.state_keys_configured && !old.state_keys_configured {
            // Still the random key: states issued before the reload stay valid.
            self.state_keys = old.state_keys.clone();
        }
    }

    /// The async-approval store, if configured.
    pub fn store(&self) -> Option<&Arc<dyn ApprovalBackend>> {
        self.store.as_ref()
    }

    /// Pending approvals held by this process.
    /// Keys sealing MCP `requestState`.
    pub fn state_keys(&self) -> &crate::vault::VaultKeys {
        &self.state_keys
    }

    pub fn metrics(&self) -> &ApprovalMetrics {
        &self.metrics
    }

    pub fn pending(&self) -> usize {
        self.counts.total.load(Ordering::SeqCst)
    }

    /// A slot in the pending limits for `member` (an approval id or a sync hold's id).
    async fn slot(&self, member: &str, sub: &str, expires_at: u64) -> Result<Slot, Refusal> {
        match self.store.as_ref().filter(|s| s.shared()) {
            None => self.reserve(sub).map(|r| Slot::Local { _held: r }),
            Some(store) => {
                store
                    .reserve(member, sub, expires_at, &self.limits)
                    .await??;
                Ok(Slot::Shared {
                    _held: SharedSlot {
                        store: store.clone(),
                        member: member.to_string(),
                        sub: sub.to_string(),
                        armed: true,
                    },
                })
            }
        }
    }

    fn reserve(&self, sub: &str) -> Result<Reservation, Refusal> {
        let mut n = self.counts.per_user.entry(sub.to_string()).or_insert(0);
        if *n >= self.limits.max_pending_per_user {
            return Err(Refusal::TooManyApprovals { per_user: true });
        }
        if self.counts.total.fetch_add(1, Ordering::SeqCst) >= self.limits.max_pending {
            self.counts.total.fetch_sub(1, Ordering::SeqCst);
            let empty = *n == 0;
            drop(n);
            if empty {
                self.counts.per_user.remove_if(sub, |_, n| *n == 0);
            }
            return Err(Refusal::TooManyApprovals { per_user: false });
        }
        *n += 1;
        Ok(Reservation {
            owner: self.counts.clone(),
            sub: sub.to_string(),
        })
    }

    /// Ask the user: send the backchannel request. Returns the request id, its lifetime and
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
        ciba::start(client, &spec.backchannel_endpoint, params)
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

    /// Start a sync hold: the caller waits on the returned `Held`.
    pub async fn start_sync(
        &self,
        spec: &ApprovalSpec,
        who: &Identity,
        iss: &str,
        req: &ApprovalRequest,
    ) -> Result<Held, Refusal> {
        let member = format!("sync:{}", uuid::Uuid::new_v4().simple());
        let expires_at = now() + spec.max_wait.as_secs();
        let reservation = self.slot(&member, &who.sub, expires_at).await?;
        let started = self.ask(spec, who, iss, req).await?;
        let client = self.clients[spec.client].clone();
        let interval = started.interval.unwrap_or(ciba::DEFAULT_INTERVAL);
        let deadline = Instant::now() + Duration::from_secs(lifetime(spec, &started));
        let (tx, rx) = watch::channel(None);
        let metrics = self.metrics.clone();
        let gauge = metrics.pending_guard();
        let asked = Instant::now();
        let task = tokio::spawn(async move {
            let _slot = reservation;
            let _gauge = gauge;
            let keep = |_| std::future::ready(true);
            let outcome = poll_until(
                &client,
                &started.auth_req_id,
                interval,
                deadline,
                |_| {},
                keep,
            )
            .await
            .unwrap_or(Outcome::Failed);
            metrics.finished("sync", outcome.label());
            if matches!(outcome, Outcome::Approved | Outcome::Denied) {
                metrics.decided_after(asked.elapsed().as_secs_f64());
            }
            let _ = tx.send(Some(outcome));
        });
        Ok(Held {
            outcome: rx,
            task: task.abort_handle(),
        })
    }

    /// Start an async approval bound to `binding`; answered with 202.
    pub async fn start_async(
        &self,
        spec: &ApprovalSpec,
        route: &str,
        who: &Identity,
        iss: &str,
        req: &ApprovalRequest,
        binding: Binding,
    ) -> Result<Accepted, Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalFailed)?;
        let id = store::new_id().map_err(|e| self.store_error(StateError::Store(e.to_string())))?;
        let mut reservation = self
            .slot(&id, &who.sub, now() + spec.max_wait.as_secs())
            .await?;
        let started = self.ask(spec, who, iss, req).await?;
        let now = now();
        let lifetime = lifetime(spec, &started);
        let interval = started.interval.unwrap_or(ciba::DEFAULT_INTERVAL);
        let record = ApprovalRecord {
            id,
            route: route.to_string(),
            binding,
            auth_req_id: started.auth_req_id,
            binding_message: req.binding_message.clone(),
            authorization_details: req.authorization_details.to_string(),
            status: ApprovalStatus::Pending,
            interval_secs: interval,
            created_at: now,
            expires_at: now + lifetime,
            updated_at: now,
        };
        store
            .insert(&record, lease_ttl(interval))
            .await
            .map_err(|e| self.store_error(e))?;
        reservation.stored();
        self.spawn_async_poller(spec.client, record.clone(), reservation);
        Ok(Accepted {
            id: record.id,
            retry_after: interval,
            expires_in: lifetime,
        })
    }

    fn store_error(&self, e: impl Into<StateError>) -> Refusal {
        let e: StateError = e.into();
        tracing::error!(error = %e, "approval store error; denying");
        e.into()
    }

    fn spawn_async_poller(&self, client: usize, record: ApprovalRecord, slot: Slot) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let client = self.clients[client].clone();
        let metrics = self.metrics.clone();
        let gauge = metrics.pending_guard();
        tokio::spawn(async move {
            let _slot = slot;
            let _gauge = gauge;
            let left = record.expires_at.saturating_sub(now());
            let deadline = Instant::now() + Duration::from_secs(left);
            let (id, s) = (record.id.clone(), store.clone());
            let on_slow_down = move |interval| {
                let (s, id) = (s.clone(), id.clone());
                tokio::spawn(async move { s.set_interval(&id, interval).await });
            };
            let (id, s) = (record.id.clone(), store.clone());
            let keep = move |interval| {
                let (s, id) = (s.clone(), id.clone());
                async move { matches!(s.lease(&id, lease_ttl(interval)).await, Ok(true)) }
            };
            let outcome = poll_until(
                &client,
                &record.auth_req_id,
                record.interval_secs,
                deadline,
                on_slow_down,
                keep,
            )
            .await;
            let Some(outcome) = outcome else {
                tracing::info!(approval = %record.id, "approval polled by another replica now; stopping");
                return;
            };
            metrics.finished("async", outcome.label());
            if matches!(outcome, Outcome::Approved | Outcome::Denied) {
                let asked = record.created_at;
                metrics.decided_after(now().saturating_sub(asked) as f64);
            }
            let result = store.finish(&record, outcome.status(), now()).await;
            if !matches!(result, Ok(true)) {
                tracing::error!(approval = %record.id, "could not record the approval outcome");
            }
        });
    }

    /// After a restart: poll again for every approval still pending in the store.
    pub async fn resume(&self, client_of_route: impl Fn(&str) -> Option<usize>) -> usize {
        let Some(store) = self.store.clone().filter(|s| !s.shared()) else {
            return 0;
        };
        let pending = match store.pending().await {
            Ok(p) => p,
            _ => {
                tracing::error!("cannot read pending approvals to resume them");
                return 0;
            }
        };
        let mut resumed = 0;
        for record in pending {
            let Some(client) = client_of_route(&record.route) else {
                continue;
            };
            let slot = Reservation {
                owner: self.counts.clone(),
                sub: record.binding.sub.clone(),
            };
            self.counts.total.fetch_add(1, Ordering::SeqCst);
            *self
                .counts
                .per_user
                .entry(record.binding.sub.clone())
                .or_insert(0) += 1;
            self.spawn_async_poller(client, record, Slot::Local { _held: slot });
            resumed += 1;
        }
        resumed
    }

    /// With a shared backend: poll the pending approvals whose poller died (its lease ran
    /// out). Called about once a second by every replica; each orphan goes to one of them.
    pub async fn adopt_orphans(&self, client_of_route: impl Fn(&str) -> Option<usize>) -> usize {
        let Some(store) = self.store.clone().filter(|s| s.shared()) else {
            return 0;
        };
        let orphans = match store.adopt(ADOPT_LEASE, 100).await {
            Ok(o) => o,
            Err(_) => return 0, // logged and counted by the backend
        };
        let mut adopted = 0;
        for record in orphans {
            let Some(client) = client_of_route(&record.route) else {
                continue;
            };
            tracing::info!(approval = %record.id, "taking over polling of an approval");
            let slot = Slot::Shared {
                _held: SharedSlot {
                    store: store.clone(),
                    member: record.id.clone(),
                    sub: record.binding.sub.clone(),
                    armed: false,
                },
            };
            self.spawn_async_poller(client, record, slot);
            adopted += 1;
        }
        adopted
    }

    /// Redeem an async approval for the request described by `binding`.
    pub async fn redeem(&self, id: &str, binding: Binding) -> Result<Redeemed, Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalInvalid)?;
        let consumed = store
            .consume(id, &binding, now())
            .await
            .map_err(|e| self.store_error(e))?;
        match consumed {
            Consume::Consumed => Ok(Redeemed::Forward),
            Consume::Pending => match store.get(id).await.map_err(|e| self.store_error(e))? {
                Some(r) => Ok(Redeemed::StillPending(Accepted {
                    expires_in: r.expires_at.saturating_sub(now()),
                    retry_after: r.interval_secs,
                    id: r.id,
                })),
                None => Err(Refusal::ApprovalInvalid),
            },
            Consume::Denied => Err(Refusal::ApprovalDenied),
            Consume::Expired => Err(Refusal::ApprovalExpired),
            Consume::Failed => Err(Refusal::ApprovalFailed),
            _ => Err(Refusal::ApprovalInvalid),
        }
    }

    /// An async approval's record (for its status endpoint; the caller checks the owner).
    /// `Ok(None)`: unknown; `Err`: the store failed (fail closed).
    pub async fn record(&self, id: &str) -> Result<Option<ApprovalRecord>, Refusal> {
        let Some(store) = self.store.clone() else {
            return Ok(None);
        };
        store.get(id).await.map_err(|e| self.store_error(e))
    }
}

/// What a retried request with an approval id may do.
#[derive(Debug)]
pub enum Redeemed {
    Forward,
    StillPending(Accepted),
}
