//! Async approvals, kept in the store: asked for once (identical calls join), polled by one
//! replica at a time, redeemed once by the call they are bound to, and replayed as the same
//! refusal to identical calls until they expire.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::join::Ask;
use super::limits::{Reservation, SharedSlot, Slot};
use super::poll::{lease_ttl, lifetime, poll_until, ADOPT_LEASE};
use super::receipts::Draft;
use super::store::{self, ApprovalRecord, ApprovalStatus, Binding, Consume};
use super::{append_receipt, ciba, confirm, Accepted, Approvals, Outcome};
use crate::auth::now;
use crate::policy::Refusal;
use crate::state::StateError;

/// What a retried request with an approval id may do.
#[derive(Debug)]
pub enum Redeemed {
    Forward,
    StillPending(Accepted),
}

/// How to poll a route's approvals: its CIBA client and `require_approved_details`.
#[derive(Debug, Clone, Copy)]
pub struct PollSpec {
    pub client: usize,
    pub require_details: bool,
}

impl Approvals {
    /// Start an async approval bound to `binding` (the user is asked); answered with 202.
    pub async fn start_async(&self, ask: &Ask<'_>, binding: Binding) -> Result<Accepted, Refusal> {
        let Ask {
            spec,
            route,
            who,
            iss,
            req,
            rev,
        } = *ask;
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
            scope: ciba::scope(spec, req),
            policy_rev: rev.to_string(),
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
        let poll = PollSpec {
            client: spec.client,
            require_details: spec.require_details,
        };
        self.spawn_async_poller(poll, record.clone(), reservation);
        // Stored and polled: without its receipt the call is refused (503), and an identical
        // retry joins this approval.
        self.receipt(Draft::of("asked", &record, now, "")).await?;
        Ok(Accepted {
            id: record.id,
            retry_after: interval,
            expires_in: lifetime,
        })
    }

    fn spawn_async_poller(&self, poll: PollSpec, record: ApprovalRecord, slot: Slot) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let client = self.clients[poll.client].clone();
        let asked = confirm::Asked {
            sub: record.binding.sub.clone(),
            details: record.authorization_details.clone(),
            scope: record.scope.clone(),
            require_details: poll.require_details,
            issuers: self.issuers.clone(),
        };
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
                &asked,
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
            let at = now();
            let result = store.finish(&record, outcome.status(), at).await;
            if !matches!(result, Ok(true)) {
                tracing::error!(approval = %record.id, "could not record the approval outcome");
                return;
            }
            let detail = match outcome {
                Outcome::Mismatch(code) => code,
                _ => "",
            };
            let receipt = Draft::of(outcome.label(), &record, at, detail);
            // Logged and counted on failure; the call itself needs its `forwarded` receipt.
            let _ = append_receipt(&store, &metrics, receipt).await;
        }
        .instrument(tracing::Span::current()));
    }

    /// After a restart: poll again for every approval still pending in the store.
    pub async fn resume(&self, poll_of_route: impl Fn(&str) -> Option<PollSpec>) -> usize {
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
            let Some(poll) = poll_of_route(&record.route) else {
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
            self.spawn_async_poller(poll, record, Slot::Local { _held: slot });
            resumed += 1;
        }
        resumed
    }

    /// With a shared backend: poll the pending approvals whose poller died (its lease ran
    /// out). Called about once a second by every replica; each orphan goes to one of them.
    pub async fn adopt_orphans(&self, poll_of_route: impl Fn(&str) -> Option<PollSpec>) -> usize {
        let Some(store) = self.store.clone().filter(|s| s.shared()) else {
            return 0;
        };
        let orphans = match store.adopt(ADOPT_LEASE, 100).await {
            Ok(o) => o,
            Err(_) => return 0, // logged and counted by the backend
        };
        let mut adopted = 0;
        for record in orphans {
            let Some(poll) = poll_of_route(&record.route) else {
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
            self.spawn_async_poller(poll, record, slot);
            adopted += 1;
        }
        adopted
    }

    /// Redeem an async approval for the request described by `binding`.
    pub async fn redeem(&self, id: &str, binding: Binding) -> Result<Redeemed, Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalInvalid)?;
        let record = store
            .get(id)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or(Refusal::ApprovalInvalid)?;
        if record.binding != binding {
            return Err(Refusal::ApprovalInvalid);
        }
        match self.settle(&record).await? {
            true => Ok(Redeemed::Forward),
            false => Ok(Redeemed::StillPending(Accepted {
                expires_in: record.expires_at.saturating_sub(now()),
                retry_after: record.interval_secs,
                id: record.id,
            })),
        }
    }

    /// What a call bound to `record` (the caller checked the binding) may do now: `true`
    /// forward (this call consumed the approval; its receipt is written), `false` still
    /// pending, or the refusal the approval's outcome gives (replayed until it expires).
    pub(super) async fn settle(&self, record: &ApprovalRecord) -> Result<bool, Refusal> {
        let refused = match record.status {
            ApprovalStatus::Pending if now() < record.expires_at => return Ok(false),
            ApprovalStatus::Approved => {
                match self.check_revision(&record.route, &record.policy_rev) {
                    Err(r) => r,
                    Ok(()) => match self.consume(record).await? {
                        None => return Ok(true),
                        Some(r) => r,
                    },
                }
            }
            ApprovalStatus::Pending | ApprovalStatus::Expired => Refusal::ApprovalExpired,
            ApprovalStatus::Denied => Refusal::ApprovalDenied,
            ApprovalStatus::Failed => Refusal::ApprovalFailed,
            ApprovalStatus::Mismatch => Refusal::ApprovalMismatch { code: "recorded" },
            ApprovalStatus::Used => Refusal::ApprovalUsed {
                at: record.updated_at,
            },
        };
        self.receipt(Draft::of("refused", record, now(), refused.label()))
            .await?;
        Err(refused)
    }

    /// Consume `record` (approved): `None` when this call took it and its `forwarded` receipt
    /// is written, else the refusal.
    async fn consume(&self, record: &ApprovalRecord) -> Result<Option<Refusal>, Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalInvalid)?;
        let at = now();
        let consumed = store
            .consume(&record.id, &record.binding, at)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(Some(match consumed {
            Consume::Consumed => {
                self.receipt(Draft::of("forwarded", record, at, "")).await?;
                return Ok(None);
            }
            Consume::AlreadyUsed => {
                let used = store.get(&record.id).await.ok().flatten();
                Refusal::ApprovalUsed {
                    at: used.map_or(at, |r| r.updated_at),
                }
            }
            Consume::Expired | Consume::Pending => Refusal::ApprovalExpired,
            Consume::Denied => Refusal::ApprovalDenied,
            Consume::Failed => Refusal::ApprovalFailed,
            Consume::DetailsMismatch => Refusal::ApprovalMismatch { code: "recorded" },
            Consume::NotFound | Consume::Mismatch => Refusal::ApprovalInvalid,
        }))
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
