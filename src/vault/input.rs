//! The credential document accepted by the admin API and `portcullis vault put`, and the
//! metadata shown by list (never a token).

use serde::Deserialize;

use super::{Credential, CredentialMeta, Secret};

/// `{"access_token": "...", "refresh_token": "...", "expires_in": 3600, "scope": "a b"}`
/// (`expires_at`, unix seconds, instead of `expires_in` is accepted too).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<u64>,
    pub expires_at: Option<u64>,
    pub scope: Option<String>,
}

impl CredentialInput {
    pub fn into_credential(self, now: u64) -> Result<Credential, &'static str> {
        if self.access_token.expose().is_empty() {
            return Err("access_token must not be empty");
        }
        let expires_at = match (self.expires_in, self.expires_at) {
            (Some(_), Some(_)) => return Err("give expires_in or expires_at, not both"),
            (Some(i), None) => Some(now + i),
            (None, at) => at,
        };
        Ok(Credential {
            access_token: self.access_token,
            refresh_token: self.refresh_token.filter(|r| !r.expose().is_empty()),
            expires_at,
            scopes: self
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }
}

/// One listed credential, as JSON.
pub fn meta_json(m: &CredentialMeta) -> serde_json::Value {
    serde_json::json!({
        "sub": m.sub,
        "connection": m.connection,
        "expires_at": m.expires_at,
        "scopes": m.scopes,
        "has_refresh_token": m.has_refresh_token,
        "key_id": m.key_id,
        "updated_at": m.updated_at,
        "version": m.version,
    })
}

#[cfg(test)]
mod tests {
    use super::CredentialInput;

    #[test]
    fn expires_in_becomes_expires_at() {
        let i: CredentialInput = serde_json::from_str(
            r#"{"access_token":"a","refresh_token":"r","expires_in":60,"scope":"x y"}"#,
        )
        .unwrap();
        let c = i.into_credential(1000).unwrap();
        assert_eq!(c.expires_at, Some(1060));
        assert_eq!(c.scopes, vec!["x", "y"]);
        assert!(serde_json::from_str::<CredentialInput>(r#"{"access_token":"a","pw":1}"#).is_err());
        let both: CredentialInput =
            serde_json::from_str(r#"{"access_token":"a","expires_in":1,"expires_at":2}"#).unwrap();
        assert!(both.into_credential(0).is_err());
    }
}
