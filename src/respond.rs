//! The one place where refusals and errors become HTTP responses: status, headers
//! (RFC 6750 `WWW-Authenticate` challenges) and a JSON body `{"error", "error_description"}`
//! that never contains a token.

use bytes::Bytes;

use crate::policy::Refusal;

/// A response to write, independent of the HTTP library.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

pub const REALM: &str = "portcullis";

fn json_body(error: &str, description: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": error, "error_description": description }).to_string())
}

fn quoted(s: &str) -> String {
    s.replace(['"', '\\'], "'")
}

impl Reply {
    fn json(status: u16, body: Bytes) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
        }
    }

    /// The response for a refusal.
    pub fn refusal(r: &Refusal) -> Reply {
        let description = r.to_string();
        let body = match r {
            Refusal::ConsentRequired { connection } => Bytes::from(
                serde_json::json!({
                    "error": r.code(), "error_description": description, "connection": connection,
                })
                .to_string(),
            ),
            Refusal::ApprovalPending { id, expires_in, .. } => Bytes::from(
                serde_json::json!({
                    "error": r.code(), "error_description": description,
                    "approval_id": id, "status": "pending", "expires_in": expires_in,
                })
                .to_string(),
            ),
            Refusal::JsonRpc { body, .. } => Bytes::from(body.to_string()),
            _ => json_body(r.code(), &description),
        };
        let mut reply = Reply::json(r.status(), body);
        let challenge = match r {
            Refusal::MissingToken => Some(format!("Bearer realm=\"{REALM}\"")),
            Refusal::ExchangeRejected => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(&description)
            )),
            Refusal::InvalidToken(_) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(&description)
            )),
            Refusal::InsufficientScope { needed } => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted(&needed.join(" "))
            )),
            _ => None,
        };
        if let Some(c) = challenge {
            reply.headers.push(("www-authenticate", c));
        }
        match r {
            Refusal::KeysUnavailable
            | Refusal::CredentialsUnavailable
            | Refusal::VaultUnavailable
            | Refusal::ApprovalFailed
            | Refusal::StateUnavailable
            | Refusal::TooManyApprovals { .. } => {
                reply.headers.push(("retry-after", "5".to_string()));
            }
            Refusal::RateLimited { retry_after, .. } => {
                reply.headers.push(("retry-after", retry_after.to_string()));
            }
            Refusal::MethodNotAllowed { allow } => {
                reply.headers.push(("allow", allow.clone()));
            }
            Refusal::ApprovalPending {
                id, retry_after, ..
            } => {
                reply.headers.push(("retry-after", retry_after.to_string()));
                reply.headers.push((
                    "location",
                    format!("{}{id}", crate::approval::STATUS_PREFIX),
                ));
            }
            _ => {}
        }
        reply
    }

    /// A refusal on an MCP route, as a JSON-RPC error for request `id` (HTTP 200).
    pub fn jsonrpc_refusal(r: &Refusal, id: Option<&serde_json::Value>) -> Reply {
        let reason = r.to_string();
        let mut data = serde_json::json!({"error": r.code(), "reason": reason});
        if let Refusal::ApprovalPending {
            id: approval,
            retry_after,
            ..
        } = r
        {
            data["approval_id"] = serde_json::json!(approval);
            data["retry_after"] = serde_json::json!(retry_after);
        }
        if let Refusal::RateLimited { retry_after, .. } = r {
            data["retry_after"] = serde_json::json!(retry_after);
        }
        let body = crate::mcp::error(id, crate::mcp::REFUSED, &reason, Some(data));
        Reply::json(200, Bytes::from(body.to_string()))
    }

    /// Add `resource_metadata` (RFC 9728) to a Bearer challenge.
    pub fn with_resource_metadata(mut self, url: &str) -> Reply {
        for (k, v) in self.headers.iter_mut() {
            if *k == "www-authenticate" {
                v.push_str(&format!(", resource_metadata=\"{url}\""));
            }
        }
        self
    }

    /// The RFC 9728 protected-resource metadata of an MCP route.
    pub fn resource_metadata(m: &crate::config::model::McpSpec) -> Reply {
        let body = serde_json::json!({
            "resource": m.resource,
            "authorization_servers": m.authorization_servers,
            "scopes_supported": m.scopes_supported,
            "bearer_methods_supported": ["header"],
        });
        let mut r = Reply::json(200, Bytes::from(body.to_string()));
        r.headers.retain(|(k, _)| *k != "cache-control");
        r.headers.push(("cache-control", "max-age=300".to_string()));
        r
    }

    /// `GET /.portcullis/approvals/<id>`: an async approval's status, for its owner.
    pub fn approval_status(record: &crate::approval::store::ApprovalRecord) -> Reply {
        let body = serde_json::json!({
            "approval_id": record.id,
            "status": record.status.as_str(),
            "route": record.route,
            "binding_message": record.binding_message,
            "expires_at": record.expires_at,
        });
        Reply::json(200, Bytes::from(body.to_string()))
    }

    /// An approval's status as a page for a person (URL-mode elicitation): no script, no
    /// framing, no referrer; it refreshes itself while pending.
    pub fn approval_page(record: &crate::approval::store::ApprovalRecord) -> Reply {
        use crate::approval::store::ApprovalStatus;
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let (status, next) = match record.status {
            ApprovalStatus::Pending => (
                "waiting for your approval",
                "Approve or deny it in the notification from your identity provider on your                  own device. This page does not approve anything; it updates by itself.",
            ),
            ApprovalStatus::Approved => ("approved", "The call runs when your agent sends it."),
            ApprovalStatus::Used => ("approved and done", "The call ran once."),
            ApprovalStatus::Denied => ("denied", "Nothing runs."),
            ApprovalStatus::Expired => ("expired", "Nothing runs."),
            ApprovalStatus::Failed => ("failed", "Nothing runs."),
            ApprovalStatus::Mismatch => (
                "refused",
                "The answer from your identity provider did not match what was asked. Nothing runs.",
            ),
        };
        let refresh = if record.status == ApprovalStatus::Pending {
            r#"<meta http-equiv="refresh" content="5">"#
        } else {
            ""
        };
        let html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}\
             <title>Approval: {status}</title></head><body><h1>{}</h1>\
             <p>Status: <strong>{status}</strong>.</p><p>{next}</p></body></html>",
            escape(&record.binding_message)
        );
        Reply {
            status: 200,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".to_string()),
                ("cache-control", "no-store".to_string()),
                (
                    "content-security-policy",
                    "default-src 'none'; frame-ancestors 'none'".to_string(),
                ),
                ("referrer-policy", "no-referrer".to_string()),
                ("x-frame-options", "DENY".to_string()),
            ],
            body: Bytes::from(html),
        }
    }

    /// The response when proxying failed after the request was allowed.
    pub fn upstream_failure(status: u16) -> Reply {
        let (code, description) = match status {
            504 => ("upstream_timeout", "the upstream did not answer in time"),
            502 => (
                "bad_gateway",
                "the upstream could not be reached or answered badly",
            ),
            400 => ("invalid_request", "the request could not be read"),
            _ => ("internal_error", "the gateway failed to handle the request"),
        };
        Reply::json(status, json_body(code, description))
    }
}

#[cfg(test)]
mod tests {
    use super::Reply;
    use crate::claims::TokenError;
    use crate::policy::Refusal;

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn missing_token_challenge_has_no_error() {
        let r = Reply::refusal(&Refusal::MissingToken);
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"portcullis\"")
        );
    }

    #[test]
    fn invalid_token_and_scope_challenges() {
        let r = Reply::refusal(&Refusal::InvalidToken(TokenError::Expired));
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "the token has expired");

        let r = Reply::refusal(&Refusal::InsufficientScope {
            needed: vec!["a".into(), "b".into()],
        });
        assert_eq!(r.status, 403);
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\", scope=\"a b\""));
    }

    #[test]
    fn state_unavailable_is_a_503_with_retry_after() {
        let r = Reply::refusal(&Refusal::StateUnavailable);
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("5"));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "state_unavailable");
    }

    #[test]
    fn policy_denial_body_carries_reason() {
        let r = Reply::refusal(&Refusal::PolicyDenied {
            reason: "amount over limit".into(),
        });
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "access_denied");
        assert_eq!(body["error_description"], "amount over limit");
        assert!(header(&r, "www-authenticate").is_none());
    }
}
