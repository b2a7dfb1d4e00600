//! The pending limits: a slot per pending approval or sync hold, counted in this process
//! (embedded) or in the shared backend (every replica's), released when the hold ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::backend::ApprovalBackend;
use super::Approvals;
use crate::policy::Refusal;

/// A slot in the pending limits: counted in this process (embedded) or in the shared
/// backend; released on drop.
pub(super) enum Slot {
    Local { _held: Reservation },
    Shared { _held: SharedSlot },
}

pub(super) struct SharedSlot {
    pub(super) store: Arc<dyn ApprovalBackend>,
    pub(super) member: String,
    pub(super) sub: String,
    /// Release on drop: sync holds, and async approvals not stored yet. A stored async
    /// approval's slot is released by `finish` (or expires with it), never by a poller that
    /// stops because another replica took over.
    pub(super) armed: bool,
}

impl Slot {
    /// The approval is stored: its shared slot now goes with the record.
    pub(super) fn stored(&mut self) {
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
pub(super) struct Reservation {
    pub(super) owner: Arc<Counts>,
    pub(super) sub: String,
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) total: AtomicUsize,
    pub(super) per_user: DashMap<String, usize>,
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

impl Approvals {
    /// A slot in the pending limits for `member` (an approval id or a sync hold's id).
    pub(super) async fn slot(
        &self,
        member: &str,
        sub: &str,
        expires_at: u64,
    ) -> Result<Slot, Refusal> {
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
}
