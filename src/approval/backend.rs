//! Where async approvals are kept, behind one trait so the backends are swappable: the SQLite
//! [`ApprovalStore`] (embedded: one process, survives restarts) or Redis
//! (`crate::state::redis::approvals`: shared by replicas, which lease the polling of each
//! approval and take over the ones whose poller died).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::receipts::{Draft, Receipt, Row};
use super::store::{ApprovalRecord, ApprovalStatus, ApprovalStore, Binding, Consume};
use crate::config::model::ApprovalLimits;
use crate::policy::Refusal;
use crate::state::StateError;

#[async_trait]
pub trait ApprovalBackend: Send + Sync {
    /// Whether other replicas share this store: then the pending limits, the polling leases
    /// and the adoption of orphaned approvals are kept here.
    fn shared(&self) -> bool;

    /// Count `member` (an approval id, or a sync hold's id) against the pending limits of
    /// `sub` until `expires_at` (unix seconds) or [`ApprovalBackend::release`].
    /// `Ok(Err(refusal))`: a limit is reached.
    async fn reserve(
        &self,
        member: &str,
        sub: &str,
        expires_at: u64,
        limits: &ApprovalLimits,
    ) -> Result<Result<(), Refusal>, StateError>;

    async fn release(&self, member: &str, sub: &str) -> Result<(), StateError>;

    /// Store a new pending record; this process holds its polling lease for `lease`.
    async fn insert(&self, r: &ApprovalRecord, lease: Duration) -> Result<(), StateError>;

    async fn get(&self, id: &str) -> Result<Option<ApprovalRecord>, StateError>;

    /// The newest unexpired approval of `route` bound to `b` that did not fail: identical
    /// calls join it (see [`ApprovalStore::find_latest`]).
    async fn find_latest(
        &self,
        route: &str,
        b: &Binding,
        now: u64,
    ) -> Result<Option<ApprovalRecord>, StateError>;

    /// The approval identical calls join ([`ApprovalBackend::find_latest`]), else the right
    /// to ask the user for them, held for `ttl` or until the new approval is stored: other
    /// replicas' identical calls see [`OpenOrClaim::Busy`] and wait for it. Embedded: no
    /// other process asks, so no claim is kept.
    async fn open_or_claim(
        &self,
        route: &str,
        b: &Binding,
        now: u64,
        ttl: Duration,
    ) -> Result<OpenOrClaim, StateError> {
        let _ = ttl;
        Ok(match self.find_latest(route, b, now).await? {
            Some(r) => OpenOrClaim::Open(Box::new(r)),
            None => OpenOrClaim::Claimed,
        })
    }

    /// Claim over approval `id`, found open but not to be joined (asked under another policy
    /// revision): false when the join key changed meanwhile (look again).
    async fn claim_over(
        &self,
        route: &str,
        b: &Binding,
        id: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let _ = (route, b, id, ttl);
        Ok(true)
    }

    /// Give a claim up (asking the user failed).
    async fn unclaim(&self, route: &str, b: &Binding) -> Result<(), StateError> {
        let _ = (route, b);
        Ok(())
    }

    /// `Pending` → `to` (compare-and-swap); releases the record's slot and lease.
    async fn finish(
        &self,
        r: &ApprovalRecord,
        to: ApprovalStatus,
        now: u64,
    ) -> Result<bool, StateError>;

    async fn set_interval(&self, id: &str, interval_secs: u64) -> Result<(), StateError>;

    /// Single use, atomically: see [`ApprovalStore::consume`].
    async fn consume(&self, id: &str, b: &Binding, now: u64) -> Result<Consume, StateError>;

    /// Pending records to poll again after a restart (embedded only; shared backends adopt).
    async fn pending(&self) -> Result<Vec<ApprovalRecord>, StateError>;

    /// Take or renew the right to poll `id` for `ttl`; false if another replica holds it or
    /// the approval is no longer pending.
    async fn lease(&self, id: &str, ttl: Duration) -> Result<bool, StateError>;

    /// Pending approvals whose poller's lease ran out (it died): leased to this process now.
    async fn adopt(&self, ttl: Duration, limit: usize) -> Result<Vec<ApprovalRecord>, StateError>;

    /// Append a receipt to the store's one chain (appends are serialised: no fork).
    async fn append_receipt(&self, draft: Draft) -> Result<Receipt, StateError>;

    /// Up to `limit` receipts after position `after`, in chain order (optionally one user's).
    async fn receipts(
        &self,
        after: u64,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<Row>, StateError>;
}

/// What [`ApprovalBackend::open_or_claim`] found.
#[derive(Debug)]
pub enum OpenOrClaim {
    /// An approval identical calls join.
    Open(Box<ApprovalRecord>),
    /// This call asks the user.
    Claimed,
    /// Another replica is asking the user right now.
    Busy,
}

/// The embedded backend: the SQLite store (one process; limits are counted in memory).
pub struct Sqlite(pub Arc<ApprovalStore>);

async fn blocking<T: Send + 'static>(
    store: &Arc<ApprovalStore>,
    f: impl FnOnce(&ApprovalStore) -> Result<T, super::store::ApprovalStoreError> + Send + 'static,
) -> Result<T, StateError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| StateError::Store(e.to_string()))?
        .map_err(|e| StateError::Store(e.to_string()))
}

#[async_trait]
impl ApprovalBackend for Sqlite {
    fn shared(&self) -> bool {
        false
    }

    async fn reserve(
        &self,
        _: &str,
        _: &str,
        _: u64,
        _: &ApprovalLimits,
    ) -> Result<Result<(), Refusal>, StateError> {
        Ok(Ok(()))
    }

    async fn release(&self, _: &str, _: &str) -> Result<(), StateError> {
        Ok(())
    }

    async fn insert(&self, r: &ApprovalRecord, _: Duration) -> Result<(), StateError> {
        let r = r.clone();
        blocking(&self.0, move |s| s.insert(&r)).await
    }

    async fn get(&self, id: &str) -> Result<Option<ApprovalRecord>, StateError> {
        let id = id.to_string();
        blocking(&self.0, move |s| s.get(&id)).await
    }

    async fn find_latest(
        &self,
        route: &str,
        b: &Binding,
        now: u64,
    ) -> Result<Option<ApprovalRecord>, StateError> {
        let (route, b) = (route.to_string(), b.clone());
        blocking(&self.0, move |s| s.find_latest(&route, &b, now)).await
    }

    async fn finish(
        &self,
        r: &ApprovalRecord,
        to: ApprovalStatus,
        now: u64,
    ) -> Result<bool, StateError> {
        let id = r.id.clone();
        blocking(&self.0, move |s| {
            s.transition(&id, ApprovalStatus::Pending, to, now)
        })
        .await
    }

    async fn set_interval(&self, id: &str, interval_secs: u64) -> Result<(), StateError> {
        let id = id.to_string();
        blocking(&self.0, move |s| s.set_interval(&id, interval_secs)).await
    }

    async fn consume(&self, id: &str, b: &Binding, now: u64) -> Result<Consume, StateError> {
        let (id, b) = (id.to_string(), b.clone());
        blocking(&self.0, move |s| s.consume(&id, &b, now)).await
    }

    async fn pending(&self) -> Result<Vec<ApprovalRecord>, StateError> {
        blocking(&self.0, |s| s.pending()).await
    }

    async fn lease(&self, _: &str, _: Duration) -> Result<bool, StateError> {
        Ok(true)
    }

    async fn adopt(&self, _: Duration, _: usize) -> Result<Vec<ApprovalRecord>, StateError> {
        Ok(Vec::new())
    }

    async fn append_receipt(&self, draft: Draft) -> Result<Receipt, StateError> {
        blocking(&self.0, move |s| s.append_receipt(draft)).await
    }

    async fn receipts(
        &self,
        after: u64,
        limit: usize,
        sub: Option<&str>,
    ) -> Result<Vec<Row>, StateError> {
        let sub = sub.map(str::to_string);
        blocking(&self.0, move |s| s.receipts(after, limit, sub.as_deref())).await
    }
}
