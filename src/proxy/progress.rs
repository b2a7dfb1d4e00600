//! pingora glue of MCP `progress` approvals (2025 revisions): a call that carries a
//! `progressToken` is answered at once as an SSE stream; a `notifications/progress` every
//! few seconds keeps the client waiting (clients reset their time-out on progress) until the
//! user decides. Approved, the gateway forwards the call itself (the response has started)
//! and relays the MCP server's answer, JSON or SSE, into the same stream; refused, the stream
//! ends with the JSON-RPC error. Nothing is forwarded before the approval.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use serde_json::{json, Value};

use super::headers;
use super::hold::{cancelled, Approved, Call, RpcCall};
use crate::approval::join::{Ask, Round};
use crate::auth::{now, Verified};
use crate::config::model::RouteSpec;
use crate::credentials::header_value;
use crate::gateway::Gateway;
use crate::mcp as rpc;
use crate::policy::Refusal;

/// How often a waiting client hears from the gateway.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

fn event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// Hold `call` on an SSE stream until the user decides; `Approved::Answered` always (the
/// response is written here), `Err` only before the stream started.
pub async fn approve(
    session: &mut Session,
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
    ask: Ask<'_>,
    call: &Call<'_>,
    rpc: &RpcCall,
) -> Result<Approved, Refusal> {
    let token = rpc.progress_token.clone().unwrap_or(Value::Null);
    let binding = crate::approval::join::mcp_binding(
        ask.who,
        call.path,
        &rpc.method,
        &rpc.name,
        &rpc.arguments,
    );
    let id = g.approvals.join_or_ask(&ask, &binding).await?;
    g.approvals.count_round(&id);
    start_stream(session)
        .await
        .map_err(|_| Refusal::ClientClosed)?;
    let metrics = g.approvals.metrics();
    let mut ticks = 0u64;
    let outcome = loop {
        let tick = std::time::Instant::now() + PROGRESS_EVERY;
        let round = g
            .approvals
            .wait_round(&id, &binding, tick, cancelled(call.cancel.as_ref()));
        let r = tokio::select! {
            r = round => r,
            _ = session.read_body_or_idle(true) => Err(Refusal::ClientClosed),
        };
        match r {
            Ok(Round::Forward) => break Ok(()),
            Ok(Round::Pending { expires_at, .. }) if now() > expires_at + 5 => {
                break Err(Refusal::ApprovalExpired)
            }
            Ok(Round::Pending { .. }) => {
                ticks += 1;
                let note = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {
                        "progressToken": token,
                        "progress": ticks,
                        "message": format!(
                            "waiting for {} to approve on their device: {}",
                            ask.who.sub, ask.req.binding_message
                        ),
                    },
                });
                if session
                    .write_response_body(Some(event(&note)), false)
                    .await
                    .is_err()
                {
                    break Err(Refusal::ClientClosed);
                }
            }
            Err(e) => break Err(e),
        }
    };
    let label = match outcome {
        Ok(()) => {
            metrics.mcp("progress", "approved");
            relay(session, g, route, verified, call, rpc).await;
            "allowed"
        }
        Err(refusal) => {
            metrics.mcp("progress", refusal.label());
            if refusal != Refusal::ClientClosed {
                let reason = refusal.to_string();
                let data = json!({"error": refusal.code(), "reason": reason});
                let error = rpc::error(rpc.id.as_ref(), rpc::REFUSED, &reason, Some(data));
                let _ = session
                    .write_response_body(Some(event(&error)), false)
                    .await;
            }
            refusal.label()
        }
    };
    let _ = session.write_response_body(None, true).await;
    Ok(Approved::Answered(label))
}

async fn start_stream(session: &mut Session) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-store")?;
    if session.req_header().version == http::Version::HTTP_11 {
        h.insert_header("transfer-encoding", "chunked")?;
    }
    session.write_response_header(Box::new(h), false).await
}

/// Forward the approved call to the MCP server and relay its answer into the open stream.
async fn relay(
    session: &mut Session,
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
    call: &Call<'_>,
    rpc: &RpcCall,
) {
    let failed = |why: String| {
        let data = json!({"error": "bad_gateway", "reason": why});
        event(&rpc::error(rpc.id.as_ref(), rpc::REFUSED, &why, Some(data)))
    };
    let request = match build(session, g, route, verified, call).await {
        Ok(r) => r,
        Err(refusal) => {
            let _ = session
                .write_response_body(Some(failed(refusal.to_string())), false)
                .await;
            return;
        }
    };
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            g.metrics.route(&route.name).upstream_errors.inc();
            let why = format!("the MCP server could not be reached: {}", e.without_url());
            let _ = session.write_response_body(Some(failed(why)), false).await;
            return;
        }
    };
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !response.status().is_success() {
        g.metrics.route(&route.name).upstream_errors.inc();
        let why = format!(
            "the MCP server answered HTTP {}",
            response.status().as_u16()
        );
        let _ = session.write_response_body(Some(failed(why)), false).await;
    } else if content_type.starts_with("text/event-stream") {
        while let Ok(Some(chunk)) = response.chunk().await {
            if session
                .write_response_body(Some(chunk), false)
                .await
                .is_err()
            {
                return;
            }
        }
    } else {
        match response.bytes().await {
            Ok(body) => {
                let text = String::from_utf8_lossy(&body);
                let out = Bytes::from(format!("event: message\ndata: {}\n\n", text.trim()));
                let _ = session.write_response_body(Some(out), false).await;
            }
            Err(e) => {
                let why = format!("the MCP server's answer broke off: {}", e.without_url());
                let _ = session.write_response_body(Some(failed(why)), false).await;
            }
        }
    }
}

/// The upstream request: the call as received (canonical target, same body), with the
/// headers the proxy would send (credentials instead of the user's token).
async fn build(
    session: &Session,
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
    call: &Call<'_>,
) -> Result<reqwest::RequestBuilder, Refusal> {
    let req = session.req_header();
    let query = req.uri.query().map_or(String::new(), |q| format!("?{q}"));
    let url = format!(
        "{}{}{query}",
        route.upstream.url.trim_end_matches('/'),
        call.path
    );
    let mut out = http::HeaderMap::new();
    let hop = headers::hop_by_hop(&req.headers);
    for (name, value) in &req.headers {
        let n = name.as_str();
        // reqwest sets its own framing, and Host (the upstream's authority) unless the
        // route keeps the client's.
        let dropped = hop.iter().any(|h| h == n)
            || matches!(n, "content-length" | "transfer-encoding")
            || (n == "host" && !route.preserve_host)
            || headers::withheld(route, n);
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    if let (Some(spec), Some(subject)) = (&route.credentials, call.subject_token) {
        let token = g
            .credentials
            .upstream_token(route, spec, verified, subject)
            .await?;
        let value = http::HeaderValue::from_str(&header_value(spec, &token.value))
            .map_err(|_| Refusal::CredentialsFailed)?;
        let name = http::HeaderName::from_bytes(spec.header.as_bytes())
            .map_err(|_| Refusal::CredentialsFailed)?;
        out.insert(name, value);
    }
    if let Ok(v) = http::HeaderValue::from_str(call.request_id) {
        out.insert("x-request-id", v);
    }
    let previous_xff = req
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    for (name, value) in headers::forwarding(route, session, previous_xff) {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            out.insert(name, v);
        }
    }
    let mut builder = g
        .upstream_http
        .post(url)
        .headers(out)
        .body(call.body.to_vec());
    if let Some(t) = route.timeouts.read {
        builder = builder.timeout(t);
    }
    Ok(builder)
}
