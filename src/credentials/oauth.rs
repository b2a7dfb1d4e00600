//! One OAuth client of the gateway talking to a token endpoint: client authentication
//! (`client_secret_basic`, `client_secret_post`, `private_key_jwt`), a form POST, and a
//! token response or a classified error. The authorization server's error text is kept for
//! the log only; callers show clients a fixed message.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::model::{ClientAuth, ClientSpec, SigningKey};
use crate::secret::Secret;

pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A successful token response.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: Secret,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<Secret>,
    pub scope: Option<String>,
    pub issued_token_type: Option<String>,
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum OAuthError {
    /// Connection refused, DNS, TLS, time-out: the server did not answer.
    Unreachable(String),
    /// 5xx or an unreadable answer.
    BadAnswer(String),
    /// A 4xx OAuth error (`invalid_grant`, `invalid_client`, ...).
    Rejected {
        status: u16,
        error: String,
        description: Option<String>,
    },
}

impl OAuthError {
    /// Whether the authorization server rejected the grant itself (the subject or refresh
    /// token), as opposed to the gateway's own client or the request shape.
    pub fn grant_rejected(&self) -> bool {
        matches!(self, OAuthError::Rejected { error, .. } if error == "invalid_grant")
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OAuthError::Unreachable(e) => write!(f, "token endpoint unreachable: {e}"),
            OAuthError::BadAnswer(e) => write!(f, "token endpoint answered badly: {e}"),
            OAuthError::Rejected {
                status,
                error,
                description,
            } => write!(
                f,
                "token endpoint refused ({status} {error}): {}",
                description.as_deref().unwrap_or("")
            ),
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
}

pub struct TokenClient {
    pub spec: Arc<ClientSpec>,
    http: reqwest::Client,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A short-lived JWT signed by the gateway: `iss` = `sub` = client id, `aud` = token endpoint.
pub fn assertion(key: &SigningKey, client_id: &str, audience: &str) -> Result<String, String> {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.kid = key.kid.clone();
    let iat = now();
    let claims = serde_json::json!({
        "iss": client_id, "sub": client_id, "aud": audience,
        "iat": iat, "exp": iat + 60, "jti": uuid::Uuid::new_v4().to_string(),
    });
    jsonwebtoken::encode(&header, &claims, &key.key).map_err(|e| format!("cannot sign: {e}"))
}

impl TokenClient {
    pub fn new(spec: Arc<ClientSpec>, http: reqwest::Client) -> TokenClient {
        TokenClient { spec, http }
    }

    /// The gateway's own signed assertion (for `private_key_jwt` and `actor_token`).
    pub fn assertion(&self) -> Result<String, OAuthError> {
        let key = self
            .spec
            .signing_key
            .as_ref()
            .ok_or_else(|| OAuthError::BadAnswer("the client has no signing key".into()))?;
        assertion(key, &self.spec.client_id, &self.spec.token_endpoint)
            .map_err(OAuthError::BadAnswer)
    }

    /// POST `params` (plus client authentication) to the token endpoint.
    pub async fn request(
        &self,
        params: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, OAuthError> {
        let body = self.call(&self.spec.token_endpoint, params).await?;
        serde_json::from_slice::<TokenResponse>(&body)
            .map_err(|_| OAuthError::BadAnswer("not a token response".into()))
    }

    /// POST `params` (plus client authentication) to `url`: the body of a 2xx answer, or
    /// the classified error.
    pub async fn call(
        &self,
        url: &str,
        mut params: Vec<(&'static str, String)>,
    ) -> Result<bytes::Bytes, OAuthError> {
        let spec = &self.spec;
        let mut req = self
            .http
            .post(url)
            .timeout(spec.timeout)
            .header("accept", "application/json");
        match &spec.auth {
            ClientAuth::SecretBasic(secret) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&spec.client_id), Some(enc(secret.expose())));
            }
            ClientAuth::SecretPost(secret) => {
                params.push(("client_id", spec.client_id.clone()));
                params.push(("client_secret", secret.expose().to_string()));
            }
            ClientAuth::PrivateKeyJwt => {
                params.push(("client_id", spec.client_id.clone()));
                params.push(("client_assertion_type", JWT_BEARER_ASSERTION.into()));
                params.push(("client_assertion", self.assertion()?));
            }
        }
        let resp = req
            .form(&params)
            .send()
            .await
            .map_err(|e| OAuthError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| OAuthError::Unreachable(e.without_url().to_string()))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if (400..500).contains(&status) {
            if let Ok(e) = serde_json::from_slice::<ErrorBody>(&body) {
                return Err(OAuthError::Rejected {
                    status,
                    error: e.error,
                    description: e.error_description,
                });
            }
        }
        Err(OAuthError::BadAnswer(format!("HTTP {status}")))
    }
}
