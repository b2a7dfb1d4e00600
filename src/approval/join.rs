//! One approval for identical calls. An MCP call that needs approval is bound to the caller,
//! the route, the tool and a digest of its arguments; a call with the same binding while that
//! approval lives (until its expiry and `replay_seconds` after; a failed one is not joined)
//! joins it instead of asking the user again. Each call waits at most one round; the call
//! that finds the approval approved consumes it (single use, atomic in the store) and is
//! forwarded, exactly once; later identical calls get `approval_invalid` (used), and after a
//! denial or expiry the same refusal, until `replay_seconds` after the approval expired.
//! HTTP calls (sync holds aside) use the same join.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::backend::OpenOrClaim;
use super::receipts::Draft;
use super::store::{ApprovalStatus, Binding};
use super::Approvals;
use crate::auth::now;
use crate::claims::Identity;
use crate::config::model::ApprovalSpec;
use crate::policy::{ApprovalRequest, Refusal};

/// How often a waiting call looks at the approval's status (any replica may be polling it).
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a replica's claim to ask the user for a binding lasts (the backchannel request's
/// time-out is well within it); identical calls on other replicas wait at most this long.
const CLAIM_TTL: Duration = Duration::from_secs(15);
/// How often a call waiting for another replica's claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// An MCP call as an approval binds it: method (`tools/call`, `prompts/get`,
/// `resources/read`), name (tool, prompt or resource URI) and arguments.
pub fn mcp_binding(who: &Identity, path: &str, method: &str, name: &str, args: &Value) -> Binding {
    // serde_json's maps are ordered by key, so equal arguments give equal text.
    let canonical = json!({ "name": name, "arguments": args }).to_string();
    Binding {
        sub: who.sub.clone(),
        agent: who.agent.clone(),
        method: format!("MCP {method}"),
        target: path.to_string(),
        body_sha256: Binding::body_hash(canonical.as_bytes()),
    }
}

/// Who asks whom for what: the route's approval settings, the route, the caller (and their
/// token's issuer URL) and the policy's request.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub spec: &'a ApprovalSpec,
    pub route: &'a str,
    pub who: &'a Identity,
    pub iss: &'a str,
    pub req: &'a ApprovalRequest,
    /// The revision of the route's policies and configuration that decided.
    pub rev: &'a str,
}

/// How one call that needs approval ended.
#[derive(Debug)]
pub enum Round {
    /// Approved: this call consumed the approval; forward it.
    Forward,
    /// Still pending after the round: the polling interval, and when the approval expires
    /// (unix seconds), as last read from the store.
    Pending { retry_after: u64, expires_at: u64 },
}

impl Approvals {
    /// Wait until `deadline` for approval `id` (bound to `binding`) to settle; approved: this
    /// call consumes it. `cancelled` resolving ends the wait at once.
    pub async fn wait_round(
        &self,
        id: &str,
        binding: &Binding,
        deadline: Instant,
        cancelled: impl Future<Output = ()>,
    ) -> Result<Round, Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalFailed)?;
        tokio::pin!(cancelled);
        loop {
            let record = store
                .get(id)
                .await
                .map_err(|e| self.store_error(e))?
                .filter(|r| r.binding == *binding)
                .ok_or(Refusal::ApprovalInvalid)?;
            let settled = match self.settle(&record).await {
                Ok(true) => Some(Ok(Round::Forward)),
                Ok(false) => None,
                Err(refusal) => Some(Err(refusal)),
            };
            if let Some(outcome) = settled {
                self.settled(id);
                return outcome;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Round::Pending {
                    retry_after: record.interval_secs.max(1),
                    expires_at: record.expires_at,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY.min(left)) => {}
                _ = &mut cancelled => return Err(Refusal::ApprovalCancelled),
            }
        }
    }

    /// Run `f` while no other call with the same join `key` runs its own (in this process).
    pub(super) async fn one_at_a_time<T>(&self, key: &str, f: impl Future<Output = T>) -> T {
        let lock = self
            .joining
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let guard = lock.lock().await;
        let out = f.await;
        drop(guard);
        self.joining.remove_if(key, |_, l| {
            Arc::strong_count(l) <= 2 && Arc::ptr_eq(l, &lock)
        });
        out
    }

    /// The open approval with this binding, or a new one (the user is asked once: identical
    /// calls arriving together in this process wait for the first to ask). An approval asked
    /// for under another revision of the route is not joined: the call asks anew.
    pub async fn join_or_ask(&self, ask: &Ask<'_>, binding: &Binding) -> Result<String, Refusal> {
        self.join_or_start(ask, binding).await.map(|(id, _)| id)
    }

    /// As [`Approvals::join_or_ask`]; `Some(accepted)` when this call asked the user.
    pub async fn join_or_start(
        &self,
        ask: &Ask<'_>,
        binding: &Binding,
    ) -> Result<(String, Option<super::Accepted>), Refusal> {
        let route = ask.route;
        let store = self.store.clone().ok_or(Refusal::ApprovalFailed)?;
        let key = join_key(route, binding);
        self.one_at_a_time(&key, async {
            let since = now().saturating_sub(ask.spec.replay.as_secs());
            let give_up = Instant::now() + CLAIM_TTL;
            loop {
                let found = store
                    .open_or_claim(route, binding, since, CLAIM_TTL)
                    .await
                    .map_err(|e| self.store_error(e))?;
                let claimed = match found {
                    OpenOrClaim::Open(open)
                        if self.check_revision(route, &open.policy_rev).is_ok() =>
                    {
                        tracing::info!(approval = %open.id, route, "an identical call joins an open approval");
                        let mode = if binding.method.starts_with("MCP ") { "mcp" } else { "async" };
                        self.metrics.joined(mode);
                        return Ok((open.id, None));
                    }
                    // Asked under another revision of the route: ask anew.
                    OpenOrClaim::Open(stale) => store
                        .claim_over(route, binding, &stale.id, CLAIM_TTL)
                        .await
                        .map_err(|e| self.store_error(e))?,
                    OpenOrClaim::Claimed => true,
                    OpenOrClaim::Busy => false,
                };
                // Another replica is asking the user for an identical call: wait for its
                // approval (or for its claim to lapse, if it died).
                if !claimed && Instant::now() < give_up {
                    tokio::time::sleep(CLAIM_POLL).await;
                    continue;
                }
                return match self.start_async(ask, binding.clone()).await {
                    Ok(accepted) => Ok((accepted.id.clone(), Some(accepted))),
                    Err(refusal) => {
                        if claimed {
                            let _ = store.unclaim(route, binding).await;
                        }
                        Err(refusal)
                    }
                };
            }
        })
        .await
    }

    /// The caller withdrew (declined in the client): a pending approval `id` is recorded as
    /// denied, so no call bound to it runs.
    pub async fn withdraw(&self, id: &str) -> Result<(), Refusal> {
        let store = self.store.clone().ok_or(Refusal::ApprovalFailed)?;
        if let Some(r) = store.get(id).await.map_err(|e| self.store_error(e))? {
            let at = now();
            let changed = store
                .finish(&r, ApprovalStatus::Denied, at)
                .await
                .map_err(|e| self.store_error(e))?;
            if changed {
                self.receipt(Draft::of("denied", &r, at, "withdrawn"))
                    .await?;
            }
        }
        Ok(())
    }

    /// One more call (or round) for approval `id`.
    pub fn count_round(&self, id: &str) {
        self.rounds.entry(id.to_string()).or_insert((0, now())).0 += 1;
        // Approvals abandoned by their agent are forgotten after an hour. The scan runs when
        // the map reaches a new power of two (amortised O(1) per call, not O(n) per call with
        // thousands pending).
        let len = self.rounds.len();
        if len > 1024 && len.is_power_of_two() {
            let cutoff = now().saturating_sub(3600);
            self.rounds.retain(|_, (_, first)| *first > cutoff);
        }
    }

    fn settled(&self, id: &str) {
        if let Some((_, (rounds, _))) = self.rounds.remove(id) {
            self.metrics.rounds(rounds);
        }
    }
}

pub(super) fn join_key(route: &str, b: &Binding) -> String {
    format!(
        "{route}\0{}\0{}\0{}\0{}\0{}",
        b.sub,
        b.agent.as_deref().unwrap_or(""),
        b.method,
        b.target,
        crate::state::hex(&b.body_sha256)
    )
}

/// The tool result that tells an agent to call again: `isError` (so it does not treat the
/// call as done) in words a model acts on.
pub fn retry_hint(
    id: Option<&Value>,
    tool: &str,
    user: &str,
    binding_message: &str,
    approval: &str,
    retry_after: u64,
) -> Value {
    let text = format!(
        "Waiting for approval: {user} has been asked to approve this call on their own device \
         (\"{binding_message}\"). It has not run yet. Call the tool `{tool}` again with exactly \
         the same arguments in about {retry_after} seconds; it runs once {user} approves, \
         and is refused if they decline. Do not change the arguments: that would ask {user} \
         again."
    );
    json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "result": {
            "content": [{ "type": "text", "text": text }],
            "isError": true,
            "_meta": { "portcullis/approval": {
                "id": approval, "status": "pending", "retry_after": retry_after,
            }},
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{mcp_binding, retry_hint};
    use crate::claims::Identity;

    #[test]
    fn bindings_ignore_argument_order_but_not_values() {
        let who = Identity {
            issuer: "corp".into(),
            sub: "alice".into(),
            agent: Some("agent-1".into()),
            token_scopes: vec![],
            scopes: vec![],
            roles: vec![],
            exp: 0,
            claims: serde_json::Map::new(),
        };
        let a = mcp_binding(&who, "/mcp", "tools/call", "pay", &json!({"a": 1, "b": 2}));
        let b = mcp_binding(&who, "/mcp", "tools/call", "pay", &json!({"b": 2, "a": 1}));
        let c = mcp_binding(&who, "/mcp", "tools/call", "pay", &json!({"a": 1, "b": 3}));
        let d = mcp_binding(
            &who,
            "/mcp",
            "tools/call",
            "refund",
            &json!({"a": 1, "b": 2}),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn the_hint_is_a_tool_error_naming_the_tool() {
        let v = retry_hint(Some(&json!(3)), "pay", "alice", "Pay 5 EUR", "ap1", 5);
        assert_eq!(v["id"], 3);
        assert_eq!(v["result"]["isError"], true);
        let text = v["result"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("`pay` again with exactly the same arguments"),
            "{text}"
        );
        assert_eq!(v["result"]["_meta"]["portcullis/approval"]["id"], "ap1");
    }
}
