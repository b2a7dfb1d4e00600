//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz`
//! (every issuer has signing keys) and the vault API under `/vault/` (see `admin/vault.rs`).

mod vault;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gateway::Gateway;

pub struct Admin {
    pub state: Arc<ArcSwap<Gateway>>,
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

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let g = self.state.load_full();
        let path = session.req_header().uri.path().to_string();
        if path.starts_with("/vault/") {
            return vault::serve(&g, session).await;
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
                let ready = g.verifier.ready();
                let body = serde_json::json!({"ready": ready, "issuers": issuers}).to_string();
                reply(if ready { 200 } else { 503 }, "application/json", body)
            }
            _ => reply(404, "application/json", r#"{"error":"not_found"}"#.into()),
        }
    }
}
