//! Admin API of the built-in vault (admin listener, `Authorization: Bearer <admin secret>`):
//!
//! - `GET    /vault/credentials[?sub=..&connection=..]` metadata only, never a token
//! - `PUT    /vault/credentials/<connection>/<sub>` store `{access_token, refresh_token?,
//!   expires_in? | expires_at?, scope?}`
//! - `DELETE /vault/credentials/<connection>/<sub>` revoke (and forget cached tokens)

use http::Response;
use pingora::protocols::http::ServerSession;

use super::{authorized, error, reply, ApiError};
use crate::gateway::Gateway;
use crate::vault::input::{meta_json, CredentialInput};
use crate::vault::{Vault, VaultError};

/// Largest PUT body.
const MAX_BODY: usize = 64 * 1024;

fn decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("x={segment}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(413, "request_too_large", "the body exceeds 64 KiB"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(error(400, "invalid_request", "the body could not be read")),
        }
    }
}

/// The API error for a failed vault call (logged and counted; no token in either).
fn failed(g: &Gateway, vault: &Vault, e: &VaultError) -> ApiError {
    tracing::error!(backend = vault.kind(), error = %e, "vault admin operation failed");
    match e {
        VaultError::InvalidArgument(m) => error(400, "invalid_request", m),
        _ if e.is_backend() => {
            g.metrics
                .credentials
                .vault_backend_error(vault.kind(), "admin");
            error(
                503,
                "temporarily_unavailable",
                "the vault storage is unavailable; retry later",
            )
        }
        _ => error(503, "temporarily_unavailable", "the vault failed"),
    }
}

/// Serve a `/vault/...` request.
pub async fn serve(g: &Gateway, session: &mut ServerSession) -> Response<Vec<u8>> {
    match handle(g, session).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(g: &Gateway, session: &mut ServerSession) -> Result<Response<Vec<u8>>, ApiError> {
    authorized(g, session)?;
    let Some(store) = g.credentials.vault() else {
        return Err(error(404, "not_found", "no vault is configured"));
    };
    let method = session.req_header().method.clone();
    let uri = session.req_header().uri.clone();
    let rest = uri.path().strip_prefix("/vault/credentials").unwrap_or("");
    let parts: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", []) => {
            let mut sub = None;
            let mut connection = None;
            for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
                match k.as_ref() {
                    "sub" => sub = Some(v.into_owned()),
                    "connection" => connection = Some(v.into_owned()),
                    _ => {}
                }
            }
            let list = store
                .list(sub.as_deref(), connection.as_deref())
                .await
                .map_err(|e| failed(g, store, &e))?;
            let items: Vec<serde_json::Value> = list.iter().map(meta_json).collect();
            let body = serde_json::json!({ "credentials": items }).to_string();
            Ok(reply(200, "application/json", body))
        }
        ("PUT", [connection, sub]) => {
            if !g.credentials.has_connection(connection) {
                return Err(error(404, "not_found", "unknown vault connection"));
            }
            let body = read_body(session).await?;
            let input: CredentialInput = serde_json::from_slice(&body).map_err(|e| {
                error(
                    400,
                    "invalid_request",
                    &format!("bad credential document: {e}"),
                )
            })?;
            let cred = input
                .into_credential(crate::auth::now())
                .map_err(|e| error(400, "invalid_request", e))?;
            store
                .put(sub, connection, &cred)
                .await
                .map_err(|e| failed(g, store, &e))?;
            g.credentials.cache.forget_user(sub);
            tracing::info!(connection = %connection, sub = %sub, "vault credential stored");
            let body = serde_json::json!({"stored": true, "sub": sub, "connection": connection});
            Ok(reply(200, "application/json", body.to_string()))
        }
        ("DELETE", [connection, sub]) => {
            let revoked = store
                .revoke(sub, connection)
                .await
                .map_err(|e| failed(g, store, &e))?;
            g.credentials.cache.forget_user(sub);
            tracing::info!(connection = %connection, sub = %sub, revoked, "vault credential revoked");
            if !revoked {
                return Err(error(404, "not_found", "no such credential"));
            }
            let body = serde_json::json!({"revoked": true, "sub": sub, "connection": connection});
            Ok(reply(200, "application/json", body.to_string()))
        }
        _ => Err(error(
            405,
            "method_not_allowed",
            "use GET /vault/credentials, PUT or DELETE /vault/credentials/<connection>/<sub>",
        )),
    }
}
