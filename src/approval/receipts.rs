//! Receipts: a tamper-evident record of every decision a human took part in. Each receipt
//! names the event (asked, approved, denied, expired, timed_out, failed, mismatch, forwarded,
//! refused), when, the route, the user and agent, a digest of what the approval is bound to,
//! the policy revision, a digest of the CIBA `auth_req_id`, and the hash of the receipt before
//! it: one hash chain per store. Editing, removing or reordering any receipt breaks the chain
//! from there on, and [`verify`] names the first receipt that does not hold.

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use super::store::{ApprovalRecord, Binding};
use crate::state::hex;

/// The `prev` of the first receipt.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A receipt before it is chained: what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    /// `asked`, `approved`, `denied`, `expired`, `timed_out`, `failed`, `mismatch`,
    /// `forwarded`, `refused`.
    pub event: String,
    /// Unix seconds.
    pub at: u64,
    /// The approval id (an async approval) or `sync:<id>` (a sync hold).
    pub approval: String,
    pub route: String,
    pub sub: String,
    pub agent: Option<String>,
    /// SHA-256 (hex) of the binding: user, agent, method, target and body digest.
    pub binding: String,
    pub policy_rev: String,
    /// SHA-256 (hex) of the CIBA `auth_req_id` (empty before one exists).
    pub auth_req: String,
    /// Why, for refusals and mismatches (a reason code, never a token).
    pub detail: String,
}

/// A chained receipt as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Position in the chain, from 1.
    pub seq: u64,
    #[serde(flatten)]
    pub draft: Draft,
    /// `hash` of the receipt before ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 (hex) over `seq`, the draft and `prev` ([`Receipt::digest`]).
    pub hash: String,
}

/// A stored receipt: its position and the receipt, or why it cannot be read.
pub type Row = (u64, Result<Receipt, String>);

/// What is hashed: every field but `hash`, in this order, as JSON.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    draft: &'a Draft,
    prev: &'a str,
}

/// Unix seconds as RFC 3339 UTC (`2026-12-07T16:32:56Z`).
pub fn rfc3339(at: u64) -> String {
    i64::try_from(at)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || at.to_string(),
            |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

impl Draft {
    /// A receipt about approval `record`.
    pub fn of(event: &str, record: &ApprovalRecord, at: u64, detail: &str) -> Draft {
        Draft::new(
            event,
            &record.id,
            &record.route,
            &record.binding,
            &record.policy_rev,
            record.auth_req_id.expose(),
            at,
            detail,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        event: &str,
        approval: &str,
        route: &str,
        binding: &Binding,
        policy_rev: &str,
        auth_req_id: &str,
        at: u64,
        detail: &str,
    ) -> Draft {
        Draft {
            event: event.to_string(),
            at,
            approval: approval.to_string(),
            route: route.to_string(),
            sub: binding.sub.clone(),
            agent: binding.agent.clone(),
            binding: binding_digest(binding),
            policy_rev: policy_rev.to_string(),
            auth_req: if auth_req_id.is_empty() {
                String::new()
            } else {
                sha256_hex(auth_req_id.as_bytes())
            },
            detail: detail.to_string(),
        }
    }

    /// The same approval, binding and request, for another `event` at `at`.
    pub fn again(&self, event: &str, detail: &str, at: u64) -> Draft {
        Draft {
            event: event.to_string(),
            at,
            detail: detail.to_string(),
            ..self.clone()
        }
    }

    /// Chain this draft after `prev` (`None`: the first receipt).
    pub fn chain(self, prev: Option<&Receipt>) -> Receipt {
        let (seq, prev) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let hash = Receipt::digest(seq, &self, &prev);
        Receipt {
            seq,
            draft: self,
            prev,
            hash,
        }
    }
}

/// SHA-256 (hex) of a binding, length-prefixed parts.
pub fn binding_digest(b: &Binding) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let agent = b.agent.as_deref().unwrap_or("\0none");
    for part in [
        b.sub.as_bytes(),
        agent.as_bytes(),
        b.method.as_bytes(),
        b.target.as_bytes(),
        &b.body_sha256[..],
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    hex(ctx.finish().as_ref())
}

impl Receipt {
    pub fn digest(seq: u64, draft: &Draft, prev: &str) -> String {
        let text = serde_json::to_string(&Hashed { seq, draft, prev }).unwrap_or_default();
        sha256_hex(text.as_bytes())
    }
}

/// Where a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("receipt {seq}: its content does not match its hash (edited)")]
    Edited { seq: u64 },
    #[error("receipt {seq}: does not follow receipt {before} (removed, inserted or reordered)")]
    Link { seq: u64, before: u64 },
    #[error("receipt at position {position}: unreadable ({why})")]
    Unreadable { position: u64, why: String },
}

/// Checks receipts in order, page by page: `push` each, in chain order.
#[derive(Default)]
pub struct Verifier {
    last: Option<(u64, String)>,
    pub checked: u64,
}

impl Verifier {
    pub fn push(&mut self, r: &Receipt) -> Result<(), Break> {
        let (expect_seq, expect_prev) = match &self.last {
            Some((seq, hash)) => (seq + 1, hash.as_str()),
            None => (1, GENESIS),
        };
        if Receipt::digest(r.seq, &r.draft, &r.prev) != r.hash {
            return Err(Break::Edited { seq: r.seq });
        }
        if r.seq != expect_seq || r.prev != expect_prev {
            return Err(Break::Link {
                seq: r.seq,
                before: expect_seq - 1,
            });
        }
        self.last = Some((r.seq, r.hash.clone()));
        self.checked += 1;
        Ok(())
    }
}

/// Verify a whole chain held in memory.
pub fn verify<'a>(receipts: impl IntoIterator<Item = &'a Receipt>) -> Result<u64, Break> {
    let mut v = Verifier::default();
    for r in receipts {
        v.push(r)?;
    }
    Ok(v.checked)
}

#[cfg(test)]
mod tests {
    use super::{verify, Break, Draft, Receipt};
    use crate::approval::store::Binding;

    fn draft(event: &str, at: u64) -> Draft {
        let b = Binding {
            sub: "alice".into(),
            agent: Some("agent-1".into()),
            method: "POST".into(),
            target: "/pay".into(),
            body_sha256: [7; 32],
        };
        Draft::new(event, "ap1", "pay", &b, "rev1", "auth-req-secret", at, "")
    }

    fn chain(n: u64) -> Vec<Receipt> {
        let mut out: Vec<Receipt> = Vec::new();
        for i in 0..n {
            let r = draft("asked", 100 + i).chain(out.last());
            out.push(r);
        }
        out
    }

    #[test]
    fn a_chain_verifies_and_never_shows_the_auth_req_id() {
        let c = chain(5);
        assert_eq!(verify(&c), Ok(5));
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("auth-req-secret"));
        let back: Vec<Receipt> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn edits_removals_and_reorders_are_named() {
        let mut c = chain(5);
        c[2].draft.event = "approved".into();
        assert_eq!(verify(&c), Err(Break::Edited { seq: 3 }));

        let mut c = chain(5);
        c.remove(2);
        assert_eq!(verify(&c), Err(Break::Link { seq: 4, before: 2 }));

        // Re-hashing an edited receipt does not help: the next one no longer follows it.
        let mut c = chain(5);
        c[1].draft.sub = "mallory".into();
        c[1].hash = Receipt::digest(c[1].seq, &c[1].draft, &c[1].prev);
        assert_eq!(verify(&c), Err(Break::Link { seq: 3, before: 2 }));
    }
}
