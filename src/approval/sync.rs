//! Sync holds: the caller's connection stays open while the user decides. An identical call
//! (same route and binding: user, agent, method, target, body) arriving while a hold is still
//! undecided joins it: the user is asked once, every caller still waiting when they approve
//! is forwarded (once per caller request: see docs/approvals.md), and a denial refuses them
//! all. A caller that goes away stops waiting; the polling stops with the last one.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;
use tracing::Instrument;

use super::join::{join_key, Ask};
use super::poll::{lifetime, poll_until};
use super::receipts::Draft;
use super::store::Binding;
use super::{append_receipt, ciba, Approvals, Outcome};
use crate::auth::now;
use crate::policy::Refusal;

/// One sync hold, shared by the callers waiting on it. The last one gone stops the polling.
pub(super) struct Shared {
    outcome: watch::Receiver<Option<Outcome>>,
    task: tokio::task::AbortHandle,
    key: String,
    syncs: Arc<DashMap<String, Weak<Shared>>>,
    /// The receipt template of the hold.
    draft: Draft,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
        self.syncs
            .remove_if(&self.key, |_, w| w.strong_count() == 0);
    }
}

/// A caller's place in a sync hold. Dropping it (client gone, time-out) leaves the hold.
pub struct Held {
    _shared: Arc<Shared>,
    outcome: watch::Receiver<Option<Outcome>>,
    /// Whether this call joined a hold another identical call started.
    pub joined: bool,
    /// The receipt template of this hold (`sync:<id>`, binding, revision, CIBA request).
    draft: Draft,
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

    /// The revision of the route's policies this hold was asked under.
    pub fn policy_rev(&self) -> &str {
        &self.draft.policy_rev
    }
}

impl Approvals {
    /// Start a sync hold for the call bound by `binding`, or join the undecided one an
    /// identical call started.
    pub async fn start_sync(&self, ask: &Ask<'_>, binding: &Binding) -> Result<Held, Refusal> {
        let key = join_key(ask.route, binding);
        self.one_at_a_time(&key, self.start_or_join(ask, binding, &key))
            .await
    }

    async fn start_or_join(
        &self,
        ask: &Ask<'_>,
        binding: &Binding,
        key: &str,
    ) -> Result<Held, Refusal> {
        let open = self.syncs.get(key).and_then(|w| w.upgrade());
        if let Some(shared) = open.filter(|s| s.outcome.borrow().is_none()) {
            tracing::info!(
                route = ask.route,
                "an identical call joins a sync approval hold"
            );
            self.metrics.joined("sync");
            let outcome = shared.outcome.clone();
            let draft = shared.draft.clone();
            return Ok(Held {
                _shared: shared,
                outcome,
                joined: true,
                draft,
            });
        }
        let Ask {
            spec,
            who,
            iss,
            req,
            ..
        } = *ask;
        let member = format!("sync:{}", uuid::Uuid::new_v4().simple());
        let expires_at = now() + spec.max_wait.as_secs();
        let reservation = self.slot(&member, &who.sub, expires_at).await?;
        let started = self.ask(spec, who, iss, req).await?;
        let draft = Draft::new(
            "",
            &member,
            ask.route,
            binding,
            ask.rev,
            started.auth_req_id.expose(),
            now(),
            "",
        );
        self.receipt(draft.again("asked", "", now())).await?;
        let client = self.clients[spec.client].clone();
        let interval = started.interval.unwrap_or(ciba::DEFAULT_INTERVAL);
        let deadline = Instant::now() + Duration::from_secs(lifetime(spec, &started));
        let asked = self.asked(
            spec,
            &who.sub,
            req.authorization_details.to_string(),
            ciba::scope(spec, req),
        );
        let (tx, rx) = watch::channel(None);
        let metrics = self.metrics.clone();
        let gauge = metrics.pending_guard();
        let (store, template) = (self.store.clone(), draft.clone());
        let since = Instant::now();
        let task = tokio::spawn(
            async move {
                let _slot = reservation;
                let _gauge = gauge;
                let keep = |_| std::future::ready(true);
                let id = &started.auth_req_id;
                let outcome = poll_until(&client, id, &asked, interval, deadline, |_| {}, keep)
                    .await
                    .unwrap_or(Outcome::Failed);
                metrics.finished("sync", outcome.label());
                if matches!(outcome, Outcome::Approved | Outcome::Denied) {
                    metrics.decided_after(since.elapsed().as_secs_f64());
                }
                if let Some(store) = &store {
                    let detail = match outcome {
                        Outcome::Mismatch(code) => code,
                        _ => "",
                    };
                    let r = template.again(outcome.label(), detail, now());
                    // An approval whose receipt cannot be written does not count (fail closed).
                    if append_receipt(store, &metrics, r).await.is_err()
                        && outcome == Outcome::Approved
                    {
                        let _ = tx.send(Some(Outcome::Failed));
                        return;
                    }
                }
                let _ = tx.send(Some(outcome));
            }
            .instrument(tracing::Span::current()),
        );
        let shared = Arc::new(Shared {
            outcome: rx.clone(),
            task: task.abort_handle(),
            key: key.to_string(),
            syncs: self.syncs.clone(),
            draft: draft.clone(),
        });
        self.syncs.insert(key.to_string(), Arc::downgrade(&shared));
        Ok(Held {
            _shared: shared,
            outcome: rx,
            joined: false,
            draft,
        })
    }

    /// An approved sync hold: forward this caller's call if the route's revision still
    /// matches, with its receipt written first (else refuse: fail closed).
    pub async fn sync_forward(&self, held: &Held) -> Result<(), Refusal> {
        if let Err(refusal) = self.check_revision(&held.draft.route, held.policy_rev()) {
            self.receipt(held.draft.again("refused", refusal.label(), now()))
                .await?;
            return Err(refusal);
        }
        self.receipt(held.draft.again("forwarded", "", now())).await
    }
}
