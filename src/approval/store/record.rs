//! An approval as stored: its life cycle, what it is bound to and the record itself.

use aws_lc_rs::digest;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;

use crate::secret::Secret;

/// The life cycle of an approval: `Pending` until the user answers (or the request expires or
/// polling fails), then `Approved` until the agent's retry consumes it (`Used`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalStatus {
    /// Waiting for the user's decision (the gateway polls the CIBA token endpoint).
    Pending,
    /// The user approved; the bound request may be sent once.
    Approved,
    /// The user refused.
    Denied,
    /// No decision (or no use) before `expires_at`.
    Expired,
    /// Polling failed for good (an error from the authorization server).
    Failed,
    /// The user's answer did not cover what was asked: the token the authorization server
    /// returned names other `authorization_details`, scopes or user than the request.
    Mismatch,
    /// The approval was consumed by the bound request.
    Used,
}

impl ApprovalStatus {
    /// The lowercase name stored in the database: `pending`, `approved`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Failed => "failed",
            ApprovalStatus::Mismatch => "mismatch",
            ApprovalStatus::Used => "used",
        }
    }

    /// The status named by [`ApprovalStatus::as_str`], or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "failed" => Self::Failed,
            "mismatch" => Self::Mismatch,
            "used" => Self::Used,
            _ => return None,
        })
    }

    /// Whether the status can no longer change: all but `Pending` and `Approved`.
    pub fn is_final(self) -> bool {
        !matches!(self, ApprovalStatus::Pending | ApprovalStatus::Approved)
    }
}

impl ToSql for ApprovalStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ApprovalStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        ApprovalStatus::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown approval status '{s}'").into()))
    }
}

/// What the approval is bound to: the request it was asked for. Only an identical request
/// (same user, agent, method, target and body) may consume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The user's subject.
    pub sub: String,
    /// The agent (client) acting for the user, if known.
    pub agent: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The request target, `path?query`.
    pub target: String,
    /// SHA-256 of the request body ([`Binding::body_hash`]).
    pub body_sha256: [u8; 32],
}

impl Binding {
    /// SHA-256 of a request body.
    pub fn body_hash(body: &[u8]) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, body);
        let mut out = [0u8; 32];
        for (o, b) in out.iter_mut().zip(d.as_ref()) {
            *o = *b;
        }
        out
    }
}

/// One approval hold as stored. `Debug` never shows the `auth_req_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    /// The approval id given to the agent ([`new_id`]).
    pub id: String,
    /// The name of the route the request was sent to.
    pub route: String,
    /// The request the approval is for.
    pub binding: Binding,
    /// The CIBA `auth_req_id` (a credential for polling).
    pub auth_req_id: Secret,
    /// The binding message shown to the user on their device.
    pub binding_message: String,
    /// The RAR `authorization_details` sent with the request, as JSON text (stored verbatim).
    pub authorization_details: String,
    /// The scopes asked for, space-separated (checked against the granted ones).
    pub scope: String,
    /// The revision of the route's policies and configuration that asked
    /// ([`crate::gateway::Gateway::revision`]); a different revision refuses the approval.
    pub policy_rev: String,
    /// Where the approval is in its life cycle.
    pub status: ApprovalStatus,
    /// The current CIBA polling interval, seconds.
    pub interval_secs: u64,
    /// When the approval was requested, unix seconds.
    pub created_at: u64,
    /// When it stops being valid (for a decision and for use), unix seconds.
    pub expires_at: u64,
    /// When it was last written, unix seconds.
    pub updated_at: u64,
}
