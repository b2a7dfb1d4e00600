//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz`
//! (every issuer has signing keys; the shared state backend and the vault storage are
//! reported, as `degraded`, but do not make a replica unready: every replica shares them, so
//! an outage would take all replicas out of the load balancer, routes that do not need them
//! included), and behind the admin bearer secret the vault API under `/vault/` (see
//! `admin/vault.rs`) and `POST /admin/reload` (see `crate::reload`).

mod vault;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gateway::Gateway;
use crate::reload::Reloader;

pub struct Admin {
    pub state: Arc<ArcSwap<Gateway>>,
    /// `POST /admin/reload`; `None`: not offered (404).
    pub reloader: Option<Arc<Reloader>>,
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body.into_bytes())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// A refused admin request.
pub(crate) struct ApiError {
    status: u16,
    code: &'static str,
    description: String,
}

pub(crate) fn error(status: u16, code: &'static str, description: &str) -> ApiError {
    ApiError {
        status,
        code,
        description: description.to_string(),
    }
}

impl ApiError {
    pub(crate) fn into_response(self) -> Response<Vec<u8>> {
        let body = serde_json::json!({"error": self.code, "error_description": self.description});
        let mut r = reply(self.status, "application/json", body.to_string());
        if self.status == 401 {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
        }
        r
    }
}

/// The admin bearer secret (constant-time comparison); the API is off without one.
pub(crate) fn authorized(g: &Gateway, session: &ServerSession) -> Result<(), ApiError> {
    let Some(secret) = &g.config.admin_token else {
        return Err(error(
            404,
            "not_found",
            "the admin API is off (set admin.token_env or admin.token_file)",
        ));
    };
    let presented = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        presented.as_bytes(),
        secret.expose().as_bytes(),
    )
    .is_ok();
    if ok {
        Ok(())
    } else {
        Err(error(
            401,
            "invalid_token",
            "a valid admin bearer secret is required",
        ))
    }
}

/// `POST /admin/reload`: 200 with the new generation, or 422 with the configuration error
/// (the running configuration keeps serving).
async fn reload(
    g: &Gateway,
    reloader: Option<&Reloader>,
    session: &ServerSession,
) -> Result<Response<Vec<u8>>, ApiError> {
    authorized(g, session)?;
    let Some(reloader) = reloader else {
        return Err(error(404, "not_found", "reloading is not available"));
    };
    if session.req_header().method != http::Method::POST {
        return Err(error(405, "method_not_allowed", "use POST /admin/reload"));
    }
    match reloader.reload("admin").await {
        Ok(done) => {
            let body = serde_json::json!({"reloaded": true, "generation": done.generation, "routes": done.routes});
            Ok(reply(200, "application/json", body.to_string()))
        }
        Err(e) => Err(error(422, "invalid_config", &e.to_string())),
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let g = self.state.load_full();
        let path = session.req_header().uri.path().to_string();
        if path.starts_with("/vault/") {
            return vault::serve(&g, session).await;
        }
        if path == "/admin/reload" {
            return reload(&g, self.reloader.as_deref(), session)
                .await
                .unwrap_or_else(ApiError::into_response);
        }
        match path.as_str() {
            "/metrics" => {
                g.metrics
                    .token_cache_entries
                    .set(g.verifier.cache.len() as i64);
                reply(200, "text/plain; version=0.0.4", g.metrics.render())
            }
            "/healthz" => reply(200, "application/json", r#"{"status":"ok"}"#.into()),
            "/readyz" => {
                let issuers: serde_json::Map<String, serde_json::Value> = g
                    .verifier
                    .issuers
                    .iter()
                    .map(|k| {
                        let s = k.status();
                        (
                            k.spec.name.to_string(),
                            serde_json::json!({"loaded": s.loaded, "keys": s.keys, "last_error": s.last_error}),
                        )
                    })
                    .collect();
                let state_up = g.state.up();
                let ready = g.verifier.ready();
                let mut degraded = !state_up;
                let state = serde_json::json!({"backend": g.state.backend(), "up": state_up});
                let mut body =
                    serde_json::json!({"ready": ready, "issuers": issuers, "state": state});
                if let Some(vault) = g.credentials.vault() {
                    let health = vault.ping().await;
                    if let Err(e) = &health {
                        g.metrics
                            .credentials
                            .vault_backend_error(vault.kind(), "ready");
                        tracing::warn!(backend = vault.kind(), error = %e, "vault storage unavailable");
                    }
                    degraded |= health.is_err();
                    body["vault"] = serde_json::json!({
                        "backend": vault.kind(),
                        "available": health.is_ok(),
                    });
                }
                body["degraded"] = degraded.into();
                let body = body.to_string();
                reply(if ready { 200 } else { 503 }, "application/json", body)
            }
            _ => reply(404, "application/json", r#"{"error":"not_found"}"#.into()),
        }
    }
}
