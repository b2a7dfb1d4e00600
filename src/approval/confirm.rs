//! What did the user approve? The CIBA token response is the user's answer: before an
//! approval counts, its access token is verified (when it is a JWT of a configured issuer:
//! signature with that issuer's JWKS, `iss`, `exp`) and what it grants is compared with what
//! the gateway asked for: the same user, the same RFC 9396 `authorization_details` (exactly,
//! as JSON values) and every non-OpenID scope asked for. Any difference refuses the approval.

use std::sync::Arc;

use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use crate::auth::jwks::{IssuerKeys, Lookup};

/// Scopes about the user's identity: granted through the ID token, not listed in `scope`.
const OPENID_SCOPES: [&str; 6] = [
    "openid",
    "profile",
    "email",
    "address",
    "phone",
    "offline_access",
];

/// What the gateway asked the user to approve, and how strictly to compare.
#[derive(Clone)]
pub struct Asked {
    pub sub: String,
    /// The `authorization_details` sent (JSON text; empty or `null` when none).
    pub details: String,
    /// The scopes sent, space-separated.
    pub scope: String,
    /// Refuse when details were asked for but the answer names none.
    pub require_details: bool,
    /// The configured issuers: an access token from one of them is verified.
    pub issuers: Arc<[Arc<IssuerKeys>]>,
}

/// Why an answer does not count: a code (for receipts and metrics) and words (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub code: &'static str,
    pub why: String,
}

fn mismatch(code: &'static str, why: impl Into<String>) -> Mismatch {
    Mismatch {
        code,
        why: why.into(),
    }
}

impl Asked {
    /// Check a successful CIBA token response (`body`) against what was asked.
    pub async fn check(&self, body: &[u8]) -> Result<(), Mismatch> {
        let answer: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|_| mismatch("unreadable", "the token response is not a JSON object"))?;
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .unwrap_or("");
        let claims = self.verified_claims(token).await?;
        if let Some(claims) = &claims {
            let sub = claims.get("sub").and_then(Value::as_str);
            if sub != Some(self.sub.as_str()) {
                return Err(mismatch(
                    "user",
                    "the approval token was issued for another user",
                ));
            }
        }
        let from_token = |k: &str| claims.as_ref().and_then(|c| c.get(k).cloned());
        let details = answer
            .get("authorization_details")
            .cloned()
            .or_else(|| from_token("authorization_details"));
        self.check_details(details)?;
        let scope = answer.get("scope").cloned().or_else(|| from_token("scope"));
        self.check_scope(scope)
    }

    fn check_details(&self, got: Option<Value>) -> Result<(), Mismatch> {
        let asked: Value = match self.details.trim() {
            "" => Value::Null,
            text => serde_json::from_str(text).unwrap_or(Value::Null),
        };
        let asked_any = asked.as_array().is_some_and(|a| !a.is_empty());
        match got {
            None | Some(Value::Null) if asked_any && self.require_details => Err(mismatch(
                "details_missing",
                "the authorization server returned no authorization_details \
                 (route sets require_approved_details)",
            )),
            None | Some(Value::Null) => Ok(()),
            Some(got) if asked_any && got != asked => Err(mismatch(
                "details",
                "the approved authorization_details differ from the ones asked for",
            )),
            Some(got) if !asked_any && got.as_array().is_some_and(|a| !a.is_empty()) => {
                Err(mismatch(
                    "details",
                    "authorization_details were approved that were not asked for",
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// RFC 6749 §5.1: an absent `scope` means the scope asked for.
    fn check_scope(&self, got: Option<Value>) -> Result<(), Mismatch> {
        let Some(got) = got else { return Ok(()) };
        let got = got
            .as_str()
            .ok_or_else(|| mismatch("scope", "scope is not a string"))?;
        let granted: Vec<&str> = got.split_whitespace().collect();
        let missing: Vec<&str> = self
            .scope
            .split_whitespace()
            .filter(|s| !OPENID_SCOPES.contains(s) && !granted.contains(s))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(mismatch(
                "scope",
                format!("scope not granted: {}", missing.join(" ")),
            ))
        }
    }

    /// The access token's claims, verified, when it is a JWT of a configured issuer; `None`
    /// for an opaque token or another issuer's (the token response itself is then the answer).
    async fn verified_claims(&self, token: &str) -> Result<Option<Map<String, Value>>, Mismatch> {
        if token.split('.').count() != 3 {
            return Ok(None);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(None);
        };
        let Some(iss) = unverified_iss(token) else {
            return Ok(None);
        };
        let Some(keys) = self.issuers.iter().find(|k| k.spec.issuer == iss) else {
            return Ok(None);
        };
        let bad = |why: &str| mismatch("token", format!("the approval token {why}"));
        if !keys.spec.algorithms.contains(&header.alg) {
            return Err(bad("uses an algorithm its issuer is not allowed"));
        }
        let kid = header.kid.as_deref();
        let key = match keys.lookup(kid) {
            Lookup::Found(k) => k,
            _ => match keys.refetch_for(kid).await {
                Lookup::Found(k) => k,
                _ => return Err(bad("is signed with a key its issuer does not publish")),
            },
        };
        if !key.accepts(header.alg) {
            return Err(bad("does not match its key's algorithm"));
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&keys.spec.issuer]);
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.leeway = keys.spec.leeway_seconds;
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map(|d| Some(d.claims))
            .map_err(|e| bad(&format!("does not verify ({e})")))
    }
}

/// The `iss` of a JWT, read without verifying (only to pick the issuer's keys).
fn unverified_iss(token: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::Asked;

    fn asked(details: &str, require: bool) -> Asked {
        Asked {
            sub: "alice".into(),
            details: details.into(),
            scope: "openid invoices:pay".into(),
            require_details: require,
            issuers: Arc::from(Vec::new()),
        }
    }

    async fn check(a: &Asked, body: serde_json::Value) -> Result<(), &'static str> {
        a.check(body.to_string().as_bytes())
            .await
            .map_err(|m| m.code)
    }

    #[tokio::test]
    async fn details_and_scope_must_be_what_was_asked() {
        let d = r#"[{"type":"payment_initiation","amount":5000}]"#;
        let a = asked(d, true);
        let same = json!({"access_token": "opaque", "scope": "invoices:pay",
            "authorization_details": [{"amount": 5000, "type": "payment_initiation"}]});
        assert_eq!(check(&a, same).await, Ok(()));
        let altered = json!({"access_token": "opaque",
            "authorization_details": [{"type": "payment_initiation", "amount": 50000}]});
        assert_eq!(check(&a, altered).await, Err("details"));
        let narrower = json!({"access_token": "opaque", "scope": "openid",
            "authorization_details": [{"type": "payment_initiation", "amount": 5000}]});
        assert_eq!(check(&a, narrower).await, Err("scope"));
        let none = json!({"access_token": "opaque"});
        assert_eq!(check(&a, none.clone()).await, Err("details_missing"));
        assert_eq!(check(&asked(d, false), none).await, Ok(()));
        let extra = json!({"access_token": "opaque", "authorization_details": [{"type": "x"}]});
        assert_eq!(check(&asked("", true), extra).await, Err("details"));
        assert_eq!(check(&a, json!("no")).await, Err("unreadable"));
    }
}
