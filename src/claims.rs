//! Token claims as the gateway understands them: who the user is (`sub`), which agent acts
//! for them (`azp`, else `client_id`), and what the agent may do (`scope` or `scp`, capped by
//! the role map). Pure: no I/O.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::model::IssuerSpec;

/// Why a bearer token was not accepted. `Display` is safe to show a client: it never
/// contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    UnsupportedCrit,
    MissingKid,
    UnknownKey,
    KeyAlgorithmMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    MissingClaim(&'static str),
    InvalidClaim(&'static str),
}

impl TokenError {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnsupportedCrit => "unsupported_crit",
            TokenError::MissingKid => "missing_kid",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeyAlgorithmMismatch => "key_algorithm_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed => f.write_str("the token is not a well-formed JWS"),
            TokenError::AlgorithmNotAllowed => f.write_str("the token's algorithm is not allowed"),
            TokenError::UnsupportedCrit => {
                f.write_str("the token has unsupported critical header parameters")
            }
            TokenError::MissingKid => f.write_str("the token header has no key id"),
            TokenError::UnknownKey => f.write_str("the token was signed by an unknown key"),
            TokenError::KeyAlgorithmMismatch => {
                f.write_str("the token's algorithm does not match its key")
            }
            TokenError::BadSignature => f.write_str("the token signature is invalid"),
            TokenError::Expired => f.write_str("the token has expired"),
            TokenError::NotYetValid => f.write_str("the token is not valid yet"),
            TokenError::IssuedInFuture => f.write_str("the token was issued in the future"),
            TokenError::WrongIssuer => f.write_str("the token was issued by an untrusted issuer"),
            TokenError::WrongAudience => f.write_str("the token is not meant for this audience"),
            TokenError::MissingClaim(c) => write!(f, "the token has no '{c}' claim"),
            TokenError::InvalidClaim(c) => write!(f, "the token's '{c}' claim is invalid"),
        }
    }
}

/// A verified caller: the user, the agent acting for them and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Name of the configured issuer that verified the token.
    pub issuer: Arc<str>,
    pub sub: String,
    /// `azp`, else `client_id`.
    pub agent: Option<String>,
    /// Scopes as the token states them.
    pub token_scopes: Vec<String>,
    /// Scopes after the role map (equal to `token_scopes` when the issuer has none).
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// The whole verified payload, for policies.
    pub claims: Map<String, Value>,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

impl Identity {
    /// The token's `iss` (verified equal to the issuer's URL).
    pub fn iss(&self) -> &str {
        self.claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Build from a payload whose signature, issuer, audience and times were verified.
    pub fn from_claims(
        issuer: &IssuerSpec,
        claims: Map<String, Value>,
    ) -> Result<Identity, TokenError> {
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(TokenError::InvalidClaim("sub")),
            None => return Err(TokenError::MissingClaim("sub")),
        };
        let agent = match claims.get("azp").or_else(|| claims.get("client_id")) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return Err(TokenError::InvalidClaim("azp")),
            None => None,
        };
        let token_scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(v), _) => strings(Some(v)).ok_or(TokenError::InvalidClaim("scope"))?,
            (None, Some(v)) => strings(Some(v)).ok_or(TokenError::InvalidClaim("scp"))?,
            (None, None) => Vec::new(),
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::MissingClaim("exp"))?;
        let (roles, scopes) = match &issuer.roles {
            Some(map) => {
                let roles = match claims.get(&map.claim) {
                    None => Vec::new(),
                    v => strings(v).ok_or(TokenError::InvalidClaim("roles"))?,
                };
                let scopes = map.effective_scopes(&token_scopes, &roles);
                (roles, scopes)
            }
            None => (
                strings(claims.get("roles")).unwrap_or_default(),
                token_scopes.clone(),
            ),
        };
        Ok(Identity {
            issuer: issuer.name.clone(),
            sub,
            agent,
            token_scopes,
            scopes,
            roles,
            exp,
            claims,
        })
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::{Identity, TokenError};
    use crate::config::model::{IssuerSpec, JwksTiming, KeySource};
    use crate::roles::RoleMap;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn issuer(roles: Option<RoleMap>) -> IssuerSpec {
        let d = Duration::from_secs(1);
        IssuerSpec {
            name: "corp".into(),
            issuer: "https://idp/".into(),
            keys: KeySource::Uri("https://idp/jwks".into()),
            audiences: vec!["api".into()],
            algorithms: vec![jsonwebtoken::Algorithm::RS256],
            leeway_seconds: 0,
            roles,
            jwks: JwksTiming {
                default_refresh: d,
                min_refresh: d,
                max_refresh: d,
                unknown_kid_cooldown: d,
                fetch_timeout: d,
            },
        }
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scope_string_and_azp() {
        let id = Identity::from_claims(
            &issuer(None),
            claims(json!({"sub":"alice","azp":"agent-1","client_id":"x","scope":"a b","exp":10})),
        )
        .unwrap();
        assert_eq!(id.agent.as_deref(), Some("agent-1"));
        assert_eq!(id.scopes, vec!["a", "b"]);
    }

    #[test]
    fn scp_array_and_client_id_fallback() {
        let id = Identity::from_claims(
            &issuer(None),
            claims(json!({"sub":"alice","client_id":"agent-2","scp":["a","b"],"exp":10})),
        )
        .unwrap();
        assert_eq!(id.agent.as_deref(), Some("agent-2"));
        assert_eq!(id.token_scopes, vec!["a", "b"]);
    }

    #[test]
    fn missing_or_bad_sub_is_an_error() {
        let e = Identity::from_claims(&issuer(None), claims(json!({"exp":10}))).unwrap_err();
        assert_eq!(e, TokenError::MissingClaim("sub"));
        let e =
            Identity::from_claims(&issuer(None), claims(json!({"sub":5,"exp":10}))).unwrap_err();
        assert_eq!(e, TokenError::InvalidClaim("sub"));
        let e = Identity::from_claims(&issuer(None), claims(json!({"sub":"a","scp":[1],"exp":1})))
            .unwrap_err();
        assert_eq!(e, TokenError::InvalidClaim("scp"));
    }

    #[test]
    fn roles_cap_scopes() {
        let mut grants = BTreeMap::new();
        grants.insert("viewer".to_string(), vec!["invoices:read".to_string()]);
        let map = RoleMap::new("https://example.com/roles".into(), grants);
        let id = Identity::from_claims(
            &issuer(Some(map)),
            claims(
                json!({"sub":"bob","scope":"invoices:read invoices:pay","exp":10,
                          "https://example.com/roles":["viewer"]}),
            ),
        )
        .unwrap();
        assert_eq!(id.roles, vec!["viewer"]);
        assert_eq!(id.scopes, vec!["invoices:read"]);
        assert!(!id.has_scope("invoices:pay"));
    }
}
