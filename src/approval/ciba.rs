//! OpenID CIBA, poll mode, as a client: the backchannel authentication request (what the
//! user's device will show: `binding_message`, RFC 9396 `authorization_details`) and one poll
//! of the token endpoint, classified.

use serde::Deserialize;
use tracing::Instrument;

use crate::config::model::{ApprovalSpec, LoginHint};
use crate::credentials::oauth::{OAuthError, TokenClient};
use crate::policy::ApprovalRequest;
use crate::secret::Secret;

pub const CIBA_GRANT: &str = "urn:openid:params:grant-type:ciba";
/// Polling interval when the authorization server names none (CIBA Core §7.3).
pub const DEFAULT_INTERVAL: u64 = 5;
/// Added to the interval on `slow_down` (CIBA Core §11).
pub const SLOW_DOWN_STEP: u64 = 5;

/// A started backchannel authentication.
#[derive(Debug, Deserialize)]
pub struct Started {
    pub auth_req_id: Secret,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

/// One poll's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    Pending,
    SlowDown,
    /// The token response (the user's answer, checked by `confirm`).
    Approved(bytes::Bytes),
    Denied,
    Expired,
    Failed(OAuthError),
}

/// The `login_hint` for `sub` of a token issued by `iss`.
pub fn login_hint(kind: LoginHint, iss: &str, sub: &str) -> String {
    match kind {
        LoginHint::Sub => sub.to_string(),
        LoginHint::IssSub => {
            serde_json::json!({"format": "iss_sub", "iss": iss, "sub": sub}).to_string()
        }
    }
}

/// The scopes asked for: the route's, then the policy's.
pub fn scope(spec: &ApprovalSpec, req: &ApprovalRequest) -> String {
    let mut scope: Vec<&str> = spec.scope.split_whitespace().collect();
    for s in req.scope.as_deref().unwrap_or("").split_whitespace() {
        if !scope.contains(&s) {
            scope.push(s);
        }
    }
    scope.join(" ")
}

/// Form parameters of the backchannel request.
pub fn params(
    spec: &ApprovalSpec,
    req: &ApprovalRequest,
    hint: String,
) -> Vec<(&'static str, String)> {
    // One second more than the hold: the server's request outlives our wait, so a sync hold
    // lasts its full `max_wait_seconds` (see `poll::lifetime`).
    let expiry = req
        .expiry
        .unwrap_or(spec.max_wait.as_secs())
        .min(spec.max_wait.as_secs())
        + 1;
    let mut p = vec![
        ("scope", scope(spec, req)),
        ("login_hint", hint),
        ("binding_message", req.binding_message.clone()),
        ("requested_expiry", expiry.to_string()),
    ];
    let details = &req.authorization_details;
    if details.as_array().is_some_and(|a| !a.is_empty()) {
        p.push(("authorization_details", details.to_string()));
    }
    p
}

/// Send the backchannel authentication request.
pub async fn start(
    client: &TokenClient,
    endpoint: &str,
    params: Vec<(&'static str, String)>,
) -> Result<Started, OAuthError> {
    let body = client.call(endpoint, params).await?;
    serde_json::from_slice(&body)
        .map_err(|_| OAuthError::BadAnswer("not a backchannel authentication response".into()))
}

/// Poll the token endpoint once.
pub async fn poll(client: &TokenClient, auth_req_id: &Secret) -> Poll {
    let span = crate::telemetry::span("ciba poll");
    let answer = client
        .call(
            &client.spec.token_endpoint,
            vec![
                ("grant_type", CIBA_GRANT.to_string()),
                ("auth_req_id", auth_req_id.expose().to_string()),
            ],
        )
        .instrument(span)
        .await;
    match answer {
        Ok(body) => Poll::Approved(body),
        Err(OAuthError::Rejected { error, .. }) if error == "authorization_pending" => {
            Poll::Pending
        }
        Err(OAuthError::Rejected { error, .. }) if error == "slow_down" => Poll::SlowDown,
        Err(OAuthError::Rejected { error, .. }) if error == "access_denied" => Poll::Denied,
        // `invalid_grant`: the request is gone (expired past the server's tolerance).
        Err(OAuthError::Rejected { error, .. })
            if error == "expired_token" || error == "invalid_grant" =>
        {
            Poll::Expired
        }
        Err(e) => Poll::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{login_hint, params};
    use crate::config::model::{ApprovalMode, ApprovalSpec, LoginHint};
    use crate::policy::ApprovalRequest;

    #[test]
    fn login_hint_formats() {
        assert_eq!(login_hint(LoginHint::Sub, "https://i/", "alice"), "alice");
        let v: serde_json::Value =
            serde_json::from_str(&login_hint(LoginHint::IssSub, "https://i/", "auth0|1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"format": "iss_sub", "iss": "https://i/", "sub": "auth0|1"})
        );
    }

    #[test]
    fn backchannel_params_merge_scope_and_cap_expiry() {
        let spec = ApprovalSpec {
            client: 0,
            backchannel_endpoint: "http://x/bc".into(),
            mode: ApprovalMode::Sync,
            login_hint: LoginHint::Sub,
            scope: "openid invoices:pay".into(),
            max_wait: Duration::from_secs(60),
            max_body_bytes: 10,
            mcp: crate::config::model::McpApprovalMode::Hold,
            mcp_explicit: false,
            round: Duration::from_secs(50),
            require_details: true,
            keep_on_policy_change: false,
            replay: Duration::from_secs(60),
        };
        let req = ApprovalRequest {
            binding_message: "Pay INV-1 5000 EUR".into(),
            authorization_details: serde_json::json!([{"type": "payment_initiation", "amount": 5000}]),
            scope: Some("invoices:pay extra".into()),
            expiry: Some(600),
        };
        let p = params(&spec, &req, "alice".into());
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("scope"), Some("openid invoices:pay extra"));
        assert_eq!(get("requested_expiry"), Some("61"));
        assert_eq!(get("binding_message"), Some("Pay INV-1 5000 EUR"));
        assert!(get("authorization_details")
            .unwrap()
            .contains("payment_initiation"));
    }
}
