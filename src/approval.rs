//! Approval holds: when the policy answers `require_approval`, the gateway asks the user on
//! their own device through OpenID CIBA (poll mode) and forwards the call only once approved.
//! Sync holds keep the client's connection open; async holds answer 202 and are redeemed by
//! re-sending the same request with `Portcullis-Approval: <id>` (persisted, single-use, bound
//! to the request). One lightweight task polls per pending approval; limits cap them in total
//! and per user.

pub mod ciba;
pub mod store;

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
use crate::secret::Secret;
use ciba::Poll;
use store::{ApprovalRecord, ApprovalStatus, ApprovalStore, Binding, Consume};

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

/// A slot in the pending limits, released on drop.
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
    store: Option<Arc<ApprovalStore>>,
    counts: Arc<Counts>,
    limits: ApprovalLimits,
    metrics: ApprovalMetrics,
}

/// How long to wait for the user: the route's limit, but a second less than the authorization
/// server keeps the request, so the outcome of a late answer is always our time-out (408),
/// never a race with the server's `expired_token`.
fn lifetime(spec: &ApprovalSpec, started: &ciba::Started) -> u64 {
    spec.max_wait
        .as_secs()
        .min(started.expires_in.saturating_sub(1))
        .max(1)
}

/// Poll until the user answers, the request expires or `deadline` passes.
async fn poll_until(
    client: &TokenClient,
    auth_req_id: &Secret,
    mut interval: u64,
    deadline: Instant,
    on_slow_down: impl Fn(u64),
) -> Outcome {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::TimedOut;
        }
        tokio::time::sleep(Duration::from_secs(interval).min(left)).await;
        if Instant::now() >= deadline {
            return Outcome::TimedOut;
        }
        match ciba::poll(client, auth_req_id).await {
            Poll::Pending => {}
            Poll::SlowDown => {
                interval += ciba::SLOW_DOWN_STEP;
                on_slow_down(interval);
            }
            Poll::Approved => return Outcome::Approved,
            Poll::Denied => return Outcome::Denied,
            Poll::Expired => return Outcome::Expired,
            // A network blip is retried until the deadline; an error answer is final.
            Poll::Failed(OAuthError::Unreachable(e)) => {
                tracing::warn!(error = %e, "CIBA poll failed; retrying");
            }
            Poll::Failed(e) => {
                tracing::warn!(error = %e, "CIBA poll refused; giving up");
                return Outcome::Failed;
            }
        }
    }
}

impl Approvals {
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        store: Option<Arc<ApprovalStore>>,
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
        }
    }

    /// After a reload: count against the limits the approvals `old` still holds (their
    /// pollers keep running; they release their slots in the shared counts).
    pub fn carry_pending(&mut self, old: &Approvals) {
        self.counts = old.counts.clone();
    }

    /// The async-approval store, if configured.
    pub fn store(&self) -> Option<&Arc<ApprovalStore>> {
        self.store.as_ref()
    }

    /// Pending approvals held by this process.
    pub fn pending(&self) -> usize {
        self.counts.total.load(Ordering::SeqCst)
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
                tracing::warn!(error = %e, "CIBA backchannel request failed; denying");
                match e {
                    OAuthError::Unreachable(_) => Refusal::ApprovalFailed,
                    _ => Refusal::ApprovalRejected,
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
        let reservation = self.reserve(&who.sub)?;
        let started = self.ask(spec, who, iss, req).await?;
        let client = self.clients[spec.client].clone();
        let interval = started.interval.unwrap_or(ciba::DEFAULT_INTERVAL);
        let deadline = Instant::now() + Duration::from_secs(lifetime(spec, &started));
        let (tx, rx) = watch::channel(None);
        let metrics = self.metrics.clone();
        let gauge = metrics.pending_guard();
        let task = tokio::spawn(async move {
            let _slot = reservation;
            let _gauge = gauge;
            let outcome =
                poll_until(&client, &started.auth_req_id, interval, deadline, |_| {}).await;
            metrics.finished("sync", outcome.label());
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
        let reservation = self.reserve(&who.sub)?;
        let started = self.ask(spec, who, iss, req).await?;
        let now = now();
        let lifetime = lifetime(spec, &started);
        let interval = started.interval.unwrap_or(ciba::DEFAULT_INTERVAL);
        let record = ApprovalRecord {
            id: store::new_id().map_err(|e| self.store_error(&e))?,
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
        let s = store.clone();
        let r = record.clone();
        tokio::task::spawn_blocking(move || s.insert(&r))
            .await
            .map_err(|e| self.store_error(&e))?
            .map_err(|e| self.store_error(&e))?;
        self.spawn_async_poller(spec.client, record.clone(), reservation);
        Ok(Accepted {
            id: record.id,
            retry_after: interval,
            expires_in: lifetime,
        })
    }

    fn store_error(&self, e: &dyn std::fmt::Display) -> Refusal {
        tracing::error!(error = %e, "approval store error; denying");
        Refusal::ApprovalFailed
    }

    fn spawn_async_poller(&self, client: usize, record: ApprovalRecord, slot: Reservation) {
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
            let outcome = poll_until(
                &client,
                &record.auth_req_id,
                record.interval_secs,
                deadline,
                move |interval| {
                    let _ = s.set_interval(&id, interval);
                },
            )
            .await;
            metrics.finished("async", outcome.label());
            let id = record.id.clone();
            let result = tokio::task::spawn_blocking(move || {
                store.transition(&id, ApprovalStatus::Pending, outcome.status(), now())
            })
            .await;
            if !matches!(result, Ok(Ok(true))) {
                tracing::error!(approval = %record.id, "could not record the approval outcome");
            }
        });
    }

    /// After a restart: poll again for every approval still pending in the store.
    pub async fn resume(&self, client_of_route: impl Fn(&str) -> Option<usize>) -> usize {
        let Some(store) = self.store.clone() else {
            return 0;
        };
        let pending = match tokio::task::spawn_blocking(move || store.pending()).await {
            Ok(Ok(p)) => p,
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
            self.spawn_async_poller(client, record, slot);
            resumed += 1;
        }
        resumed
    }

    /// Redeem an async approval for the request described by `binding`.
    pub async fn redeem(&self, id: &str, binding: Binding) -> Result<Redeemed, Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalInvalid)?;
        let id = id.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let consumed = store.consume(&id, &binding, now())?;
            let record = store.get(&id)?;
            Ok::<_, store::ApprovalStoreError>((consumed, record))
        })
        .await
        .map_err(|e| self.store_error(&e))?
        .map_err(|e| self.store_error(&e))?;
        match result {
            (Consume::Consumed, _) => Ok(Redeemed::Forward),
            (Consume::Pending, Some(r)) => Ok(Redeemed::StillPending(Accepted {
                expires_in: r.expires_at.saturating_sub(now()),
                retry_after: r.interval_secs,
                id: r.id,
            })),
            (Consume::Denied, _) => Err(Refusal::ApprovalDenied),
            (Consume::Expired, _) => Err(Refusal::ApprovalExpired),
            (Consume::Failed, _) => Err(Refusal::ApprovalFailed),
            _ => Err(Refusal::ApprovalInvalid),
        }
    }

    /// An async approval's record (for its status endpoint; the caller checks the owner).
    pub async fn record(&self, id: &str) -> Option<ApprovalRecord> {
        let store = self.store.clone()?;
        let id = id.to_string();
        tokio::task::spawn_blocking(move || store.get(&id))
            .await
            .ok()?
            .ok()?
    }
}

/// What a retried request with an approval id may do.
#[derive(Debug)]
pub enum Redeemed {
    Forward,
    StillPending(Accepted),
}
