//! The decision core: who may call a route (identity checks), then what the Rego policy says.
//! Pure: no pingora, no network. Any error on this path ends in a refusal, never an allow.

pub mod input;
pub mod rego;
pub mod testing;

use std::fmt;

use crate::claims::{Identity, TokenError};
use crate::config::model::AuthSpec;

/// The outcome of the decision path for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    Deny(Refusal),
    /// The policy wants the user's confirmation first (CIBA, RFC 9396 details).
    RequireApproval(ApprovalRequest),
}

/// What the policy asks the user to approve.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRequest {
    /// Short text shown on both devices (≤ 64 characters).
    pub binding_message: String,
    /// RFC 9396 `authorization_details`: a JSON array of objects with a `type`.
    pub authorization_details: serde_json::Value,
    pub scope: Option<String>,
    /// Requested expiry of the approval request, seconds.
    pub expiry: Option<u64>,
}

/// Every way the gateway refuses a request. `respond` turns one into a status, headers and a
/// JSON body; `label` is the metric label; `Display` is safe to show the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    MissingToken,
    InvalidToken(TokenError),
    /// The issuer's keys were never loaded (IdP unreachable since start).
    KeysUnavailable,
    AgentNotAllowed,
    SubjectNotAllowed,
    InsufficientScope {
        needed: Vec<String>,
    },
    PolicyDenied {
        reason: String,
    },
    PolicyError,
    /// The policy asked for an approval but this gateway has no approval flow for the route.
    ApprovalUnavailable,
    BodyTooLarge {
        limit: usize,
    },
    BodyNotJson,
    /// The request line and headers exceed `limits.max_header_bytes`.
    HeaderTooLarge {
        limit: usize,
    },
    BadRequest(&'static str),
    NoRoute,
    /// The matched route does not allow the method; `allow` is the `Allow` header.
    MethodNotAllowed {
        allow: String,
    },
    /// The vault holds no credential of this user for the connection.
    ConsentRequired {
        connection: String,
    },
    /// The authorization server refused to exchange the caller's token.
    ExchangeRejected,
    /// The authorization server or vault could not be reached.
    CredentialsUnavailable,
    /// The credential vault's storage cannot be reached or failed.
    VaultUnavailable,
    /// The authorization server answered with an error not caused by the caller.
    CredentialsFailed,
    /// An async approval was started: 202 with its id.
    ApprovalPending {
        id: String,
        retry_after: u64,
        expires_in: u64,
    },
    ApprovalDenied,
    ApprovalExpired,
    /// The route's hold time-out passed before the user answered.
    ApprovalTimeout,
    /// The approval service could not be reached (or its state could not be kept).
    ApprovalFailed,
    /// The approval service refused to ask the user.
    ApprovalRejected,
    /// The approval service does not know the user (CIBA `unknown_user_id`).
    ApprovalUnknownUser,
    /// The `Portcullis-Approval` id is unknown, used, or was granted for another request.
    ApprovalInvalid,
    /// The approval was already used by an identical call, at `at` (unix seconds).
    ApprovalUsed {
        at: u64,
    },
    /// The route's policies or configuration changed since the approval was asked for.
    ApprovalRevised {
        asked: String,
        now: String,
    },
    /// The user's answer does not cover the call (details, scope or user differ); `code` names
    /// what differed.
    ApprovalMismatch {
        code: &'static str,
    },
    TooManyApprovals {
        per_user: bool,
    },
    /// The client went away while its call was held.
    ClientClosed,
    /// The MCP client cancelled the held call (`notifications/cancelled`).
    ApprovalCancelled,
    /// The shared state backend (Redis) a decision needs cannot be reached.
    StateUnavailable,
    /// A rate limit of the route (per agent, or per agent and tool).
    RateLimited {
        retry_after: u64,
        tool: bool,
    },
    /// An MCP request answered in JSON-RPC: `body` is the whole response (object or batch).
    JsonRpc {
        status: u16,
        label: &'static str,
        reason: String,
        body: serde_json::Value,
    },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken(_) => 401,
            Refusal::KeysUnavailable => 503,
            Refusal::AgentNotAllowed
            | Refusal::SubjectNotAllowed
            | Refusal::InsufficientScope { .. }
            | Refusal::PolicyDenied { .. }
            | Refusal::ApprovalUnavailable => 403,
            Refusal::PolicyError => 500,
            Refusal::BodyTooLarge { .. } => 413,
            Refusal::BodyNotJson | Refusal::BadRequest(_) => 400,
            Refusal::HeaderTooLarge { .. } => 431,
            Refusal::NoRoute => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::ConsentRequired { .. } => 403,
            Refusal::ExchangeRejected => 401,
            Refusal::CredentialsUnavailable | Refusal::VaultUnavailable => 503,
            Refusal::CredentialsFailed => 502,
            Refusal::ApprovalPending { .. } => 202,
            Refusal::ApprovalDenied | Refusal::ApprovalExpired | Refusal::ApprovalInvalid => 403,
            Refusal::ApprovalUsed { .. }
            | Refusal::ApprovalRevised { .. }
            | Refusal::ApprovalMismatch { .. } => 403,
            Refusal::ApprovalTimeout => 408,
            Refusal::ApprovalFailed => 503,
            Refusal::ApprovalRejected | Refusal::ApprovalUnknownUser => 502,
            Refusal::TooManyApprovals { .. } => 429,
            Refusal::ClientClosed => 499,
            Refusal::ApprovalCancelled => 409,
            Refusal::RateLimited { .. } => 429,
            Refusal::StateUnavailable => 503,
            Refusal::JsonRpc { status, .. } => *status,
        }
    }

    /// The `error` member of the JSON body (RFC 6750 codes where they apply).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingToken | Refusal::InvalidToken(_) => "invalid_token",
            Refusal::KeysUnavailable => "temporarily_unavailable",
            Refusal::AgentNotAllowed
            | Refusal::SubjectNotAllowed
            | Refusal::PolicyDenied { .. } => "access_denied",
            Refusal::InsufficientScope { .. } => "insufficient_scope",
            Refusal::PolicyError => "policy_error",
            Refusal::ApprovalUnavailable => "approval_required",
            Refusal::BodyTooLarge { .. } => "request_too_large",
            Refusal::BodyNotJson | Refusal::BadRequest(_) => "invalid_request",
            Refusal::HeaderTooLarge { .. } => "request_header_too_large",
            Refusal::NoRoute => "not_found",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::ConsentRequired { .. } => "consent_required",
            Refusal::ExchangeRejected => "invalid_token",
            Refusal::CredentialsUnavailable | Refusal::VaultUnavailable => {
                "temporarily_unavailable"
            }
            Refusal::CredentialsFailed => "bad_gateway",
            Refusal::ApprovalPending { .. } => "approval_pending",
            Refusal::ApprovalDenied => "access_denied",
            Refusal::ApprovalExpired => "approval_expired",
            Refusal::ApprovalTimeout => "approval_timeout",
            Refusal::ApprovalFailed => "temporarily_unavailable",
            Refusal::ApprovalRejected => "bad_gateway",
            Refusal::ApprovalUnknownUser => "unknown_user",
            Refusal::ApprovalInvalid
            | Refusal::ApprovalUsed { .. }
            | Refusal::ApprovalRevised { .. } => "approval_invalid",
            Refusal::ApprovalMismatch { .. } => "approval_mismatch",
            Refusal::TooManyApprovals { .. } => "too_many_approvals",
            Refusal::ClientClosed => "client_closed",
            Refusal::ApprovalCancelled => "approval_cancelled",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::StateUnavailable => "state_unavailable",
            Refusal::JsonRpc { .. } => "jsonrpc_error",
        }
    }

    /// Whether, on an MCP route, this refusal is answered as a JSON-RPC error (HTTP 200) so
    /// the agent can show why; authentication failures stay HTTP errors.
    pub fn jsonrpc_eligible(&self) -> bool {
        matches!(
            self,
            Refusal::PolicyDenied { .. }
                | Refusal::PolicyError
                | Refusal::ApprovalUnavailable
                | Refusal::ApprovalPending { .. }
                | Refusal::ApprovalDenied
                | Refusal::ApprovalExpired
                | Refusal::ApprovalTimeout
                | Refusal::ApprovalFailed
                | Refusal::ApprovalRejected
                | Refusal::ApprovalUnknownUser
                | Refusal::ApprovalInvalid
                | Refusal::ApprovalUsed { .. }
                | Refusal::ApprovalRevised { .. }
                | Refusal::ApprovalMismatch { .. }
                | Refusal::ApprovalCancelled
                | Refusal::TooManyApprovals { .. }
                | Refusal::RateLimited { tool: true, .. }
        )
    }

    /// Stable, low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::AgentNotAllowed => "agent_not_allowed",
            Refusal::SubjectNotAllowed => "subject_not_allowed",
            Refusal::InsufficientScope { .. } => "insufficient_scope",
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::PolicyError => "policy_error",
            Refusal::ApprovalUnavailable => "approval_unavailable",
            Refusal::BodyTooLarge { .. } => "body_too_large",
            Refusal::BodyNotJson => "body_not_json",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::HeaderTooLarge { .. } => "header_too_large",
            Refusal::NoRoute => "no_route",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::ConsentRequired { .. } => "consent_required",
            Refusal::ExchangeRejected => "exchange_rejected",
            Refusal::CredentialsUnavailable => "credentials_unavailable",
            Refusal::VaultUnavailable => "vault_unavailable",
            Refusal::CredentialsFailed => "credentials_failed",
            Refusal::ApprovalPending { .. } => "approval_pending",
            Refusal::ApprovalDenied => "approval_denied",
            Refusal::ApprovalExpired => "approval_expired",
            Refusal::ApprovalTimeout => "approval_timeout",
            Refusal::ApprovalFailed => "approval_failed",
            Refusal::ApprovalRejected => "approval_rejected",
            Refusal::ApprovalUnknownUser => "approval_unknown_user",
            Refusal::ApprovalInvalid => "approval_invalid",
            Refusal::ApprovalUsed { .. } => "approval_used",
            Refusal::ApprovalRevised { .. } => "approval_revised",
            Refusal::ApprovalMismatch { .. } => "approval_mismatch",
            Refusal::TooManyApprovals { .. } => "too_many_approvals",
            Refusal::ClientClosed => "client_closed",
            Refusal::ApprovalCancelled => "approval_cancelled",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::StateUnavailable => "state_unavailable",
            Refusal::JsonRpc { label, .. } => label,
        }
    }

    /// Every label, for pre-registering metrics.
    pub const LABELS: &'static [&'static str] = &[
        "missing_token",
        "invalid_token",
        "keys_unavailable",
        "agent_not_allowed",
        "subject_not_allowed",
        "insufficient_scope",
        "policy_denied",
        "policy_error",
        "approval_unavailable",
        "body_too_large",
        "body_not_json",
        "bad_request",
        "header_too_large",
        "no_route",
        "method_not_allowed",
        "consent_required",
        "exchange_rejected",
        "credentials_unavailable",
        "vault_unavailable",
        "credentials_failed",
        "approval_pending",
        "approval_denied",
        "approval_expired",
        "approval_timeout",
        "approval_failed",
        "approval_rejected",
        "approval_unknown_user",
        "approval_invalid",
        "approval_used",
        "approval_revised",
        "approval_mismatch",
        "too_many_approvals",
        "client_closed",
        "approval_cancelled",
        "rate_limited",
        "state_unavailable",
        "jsonrpc_invalid",
        "mcp_header_mismatch",
        "mcp_denied",
    ];
}

/// The first 12 hex digits of a revision, as shown in messages.
fn short(rev: &str) -> &str {
    rev.get(..12)
        .unwrap_or(if rev.is_empty() { "(none)" } else { rev })
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MissingToken => f.write_str("a bearer token is required"),
            Refusal::InvalidToken(e) => write!(f, "{e}"),
            Refusal::KeysUnavailable => {
                f.write_str("the issuer's signing keys are not available yet")
            }
            Refusal::AgentNotAllowed => f.write_str("this agent may not use this route"),
            Refusal::SubjectNotAllowed => f.write_str("this user may not use this route"),
            Refusal::InsufficientScope { needed } => {
                write!(
                    f,
                    "the token lacks the required scope(s): {}",
                    needed.join(" ")
                )
            }
            Refusal::PolicyDenied { reason } => f.write_str(reason),
            Refusal::PolicyError => {
                f.write_str("the policy could not be evaluated; the request is denied")
            }
            Refusal::ApprovalUnavailable => f.write_str(
                "this call needs the user's approval, which is not available on this route",
            ),
            Refusal::BodyTooLarge { limit } => write!(f, "the request body exceeds {limit} bytes"),
            Refusal::BodyNotJson => f.write_str("the request body must be JSON on this route"),
            Refusal::BadRequest(why) => f.write_str(why),
            Refusal::HeaderTooLarge { limit } => {
                write!(f, "the request line and headers exceed {limit} bytes")
            }
            Refusal::NoRoute => f.write_str("no route matches this request"),
            Refusal::MethodNotAllowed { .. } => f.write_str("the method is not allowed on this route"),
            Refusal::ConsentRequired { connection } => write!(
                f,
                "the user has not connected '{connection}' (consent required)"
            ),
            Refusal::ExchangeRejected => {
                f.write_str("the token could not be exchanged for this upstream")
            }
            Refusal::CredentialsUnavailable => {
                f.write_str("the upstream credentials cannot be obtained right now")
            }
            Refusal::VaultUnavailable => {
                f.write_str("the credential vault is unavailable right now; retry later")
            }
            Refusal::CredentialsFailed => {
                f.write_str("the gateway could not obtain credentials for the upstream")
            }
            Refusal::ApprovalPending { id, .. } => write!(
                f,
                "waiting for the user's approval; re-send this request with Portcullis-Approval: {id}"
            ),
            Refusal::ApprovalDenied => f.write_str("the user denied this request"),
            Refusal::ApprovalExpired => {
                f.write_str("the approval request expired before the user answered")
            }
            Refusal::ApprovalTimeout => {
                f.write_str("the user did not answer the approval request in time")
            }
            Refusal::ApprovalFailed => {
                f.write_str("the user's approval cannot be obtained right now")
            }
            Refusal::ApprovalRejected => {
                f.write_str("the authorization server refused to ask the user for approval")
            }
            Refusal::ApprovalUnknownUser => f.write_str(
                "the authorization server does not know this user (unknown_user_id), so it \
                 cannot ask them to approve",
            ),
            Refusal::ApprovalInvalid => f.write_str(
                "the approval id is unknown, already used, or was granted for another request",
            ),
            Refusal::ApprovalUsed { at } => write!(
                f,
                "this approval was already used by an identical call at {} (unix {at}); \
                 an approval runs its call once",
                crate::approval::receipts::rfc3339(*at)
            ),
            Refusal::ApprovalRevised { asked, now } => write!(
                f,
                "the route's policy changed since this call was approved (revision {} is now \
                 {}); the approval no longer counts: send the call again to ask anew",
                short(asked),
                short(now)
            ),
            Refusal::ApprovalMismatch { code } => write!(
                f,
                "the user's answer does not cover this call ({code} differ from what was \
                 asked); nothing was forwarded"
            ),
            Refusal::TooManyApprovals { per_user: true } => {
                f.write_str("too many approvals are pending for this user")
            }
            Refusal::TooManyApprovals { per_user: false } => {
                f.write_str("too many approvals are pending")
            }
            Refusal::ClientClosed => f.write_str("the client closed the connection"),
            Refusal::ApprovalCancelled => f.write_str(
                "the client cancelled this call while it waited for the user's approval; \
                 nothing was run",
            ),
            Refusal::StateUnavailable => f.write_str(
                "the gateway's shared state cannot be reached; the request is refused",
            ),
            Refusal::RateLimited { retry_after, tool } => write!(
                f,
                "rate limit of this {} exceeded; retry in {retry_after} s",
                if *tool { "agent and tool" } else { "agent" }
            ),
            Refusal::JsonRpc { reason, .. } => f.write_str(reason),
        }
    }
}

/// The route's identity requirements: agent, subject, then scopes.
pub fn check_identity(auth: &AuthSpec, id: &Identity) -> Result<(), Refusal> {
    if let Some(agents) = &auth.agents {
        if !id.agent.as_ref().is_some_and(|a| agents.contains(a)) {
            return Err(Refusal::AgentNotAllowed);
        }
    }
    if let Some(subjects) = &auth.subjects {
        if !subjects.contains(&id.sub) {
            return Err(Refusal::SubjectNotAllowed);
        }
    }
    if auth.require_scopes.iter().any(|s| !id.has_scope(s)) {
        return Err(Refusal::InsufficientScope {
            needed: auth.require_scopes.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_identity, Refusal};
    use crate::claims::Identity;
    use crate::config::model::AuthSpec;

    fn id(agent: &str, scopes: &[&str]) -> Identity {
        Identity {
            issuer: "corp".into(),
            sub: "alice".into(),
            agent: Some(agent.into()),
            token_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            roles: vec![],
            exp: 0,
            claims: Default::default(),
        }
    }

    fn auth(scopes: &[&str], agents: Option<&[&str]>) -> AuthSpec {
        AuthSpec {
            issuer: 0,
            require_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            agents: agents.map(|a| a.iter().map(|s| s.to_string()).collect()),
            subjects: None,
        }
    }

    #[test]
    fn agent_allow_list() {
        let a = auth(&[], Some(&["agent-1"]));
        assert_eq!(check_identity(&a, &id("agent-1", &[])), Ok(()));
        assert_eq!(
            check_identity(&a, &id("agent-2", &[])),
            Err(Refusal::AgentNotAllowed)
        );
    }

    #[test]
    fn scopes_required() {
        let a = auth(&["invoices:read"], None);
        assert_eq!(check_identity(&a, &id("x", &["invoices:read"])), Ok(()));
        assert_eq!(
            check_identity(&a, &id("x", &["other"])),
            Err(Refusal::InsufficientScope {
                needed: vec!["invoices:read".into()]
            })
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(Refusal::MissingToken.status(), 401);
        assert_eq!(Refusal::PolicyDenied { reason: "x".into() }.status(), 403);
        assert_eq!(Refusal::PolicyError.status(), 500);
        assert_eq!(Refusal::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(Refusal::HeaderTooLarge { limit: 1 }.status(), 431);
        for r in [
            Refusal::MissingToken,
            Refusal::NoRoute,
            Refusal::PolicyError,
            Refusal::HeaderTooLarge { limit: 1 },
        ] {
            assert!(Refusal::LABELS.contains(&r.label()));
        }
    }
}
