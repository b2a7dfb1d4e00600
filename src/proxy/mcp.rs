//! pingora glue of MCP routes: read and parse the JSON-RPC body, check the 2026-07-28 headers,
//! ask the policy per message, answer refusals in JSON-RPC, and filter `tools/list` results
//! (JSON or SSE, still streaming) to the tools the same policy would let the caller call.

use std::collections::HashMap;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::Session;
use serde_json::{json, Value};

use super::{body, headers, hold, Ctx};
use crate::approval::cancel;
use crate::auth::Verified;
use crate::config::model::RouteSpec;
use crate::gateway::Gateway;
use crate::mcp::{self as rpc, Body, Message, RpcError};
use crate::policy::input::RequestInfo;
use crate::policy::{ApprovalRequest, Decision, Refusal};

/// How a tools/list response is being rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMode {
    Json,
    Sse,
}

/// Per-request state of a tools/list rewrite.
#[derive(Default)]
pub struct ToolFilter {
    pub wanted: bool,
    pub mode: Option<ListMode>,
    buf: Vec<u8>,
    decided: HashMap<String, bool>,
}

fn rpc_refusal(status: u16, label: &'static str, e: RpcError) -> Refusal {
    Refusal::JsonRpc {
        status,
        label,
        reason: e.message.clone(),
        body: rpc::error(e.id.as_ref(), e.code, &e.message, None),
    }
}

fn info<'a>(
    req: &'a RequestHeader,
    path: &'a str,
    route: &RouteSpec,
    mcp: Value,
) -> RequestInfo<'a> {
    RequestInfo {
        method: req.method.as_str(),
        path,
        query: req.uri.query(),
        host: headers::host(req),
        headers: headers::for_policy(req, route.policy_headers.as_deref()),
        body: None,
        mcp: Some(mcp),
    }
}

/// The policy's answer for one message (`Err`: the refusal to report for it).
async fn decide(
    g: &Gateway,
    index: usize,
    req: &RequestHeader,
    path: &str,
    route: &RouteSpec,
    verified: &Verified,
    m: &Message,
) -> Result<Option<ApprovalRequest>, Refusal> {
    if m.method.is_none() {
        return Ok(None); // a response to a server request
    }
    let outcome = match route.policy {
        None => None,
        Some(_) => match g.decide(index, verified, info(req, path, route, m.policy_input())) {
            Ok(Decision::Allow) => None,
            Ok(Decision::Deny(r)) => return Err(r),
            Ok(Decision::RequireApproval(a)) => Some(a),
            Err(detail) => {
                g.metrics.route(&route.name).policy_errors.inc();
                tracing::warn!(route = %route.name, error = %detail, "policy evaluation failed; denying");
                return Err(Refusal::PolicyError);
            }
        },
    };
    if let Some(t) = m.tool() {
        g.rate_check(route, verified.identity.agent.as_deref(), Some(t))
            .await?;
    }
    Ok(outcome)
}

/// Authorize a POSTed JSON-RPC body. `Ok(Some(..))`: a single call the user must approve.
pub async fn authorize(
    session: &mut Session,
    ctx: &mut Ctx,
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
) -> Result<Option<ApprovalRequest>, Refusal> {
    let raw = body::read(session, route.max_body_bytes)
        .await
        .map_err(|r| match r {
            Refusal::BodyTooLarge { limit } => rpc_refusal(
                413,
                "body_too_large",
                RpcError {
                    code: rpc::INVALID_REQUEST,
                    message: format!("the request body exceeds {limit} bytes"),
                    id: None,
                },
            ),
            other => other,
        })?;
    let parsed = rpc::parse(&raw).map_err(|e| rpc_refusal(400, "jsonrpc_invalid", e))?;
    ctx.body = Some(raw);
    let req = session.req_header();
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    rpc::check_headers(&parsed, header("mcp-method"), header("mcp-name"))
        .map_err(|e| rpc_refusal(400, "mcp_header_mismatch", e))?;
    // Cancellation is final, whatever the policy says about the notification itself.
    for m in parsed.messages() {
        if let Some(id) = &m.cancels {
            let key = cancel::key(&caller(req, route, verified), id);
            if g.approvals.cancels.cancel(&key) {
                g.approvals.metrics().cancelled();
                tracing::info!(route = %route.name, request_id = %ctx.request_id, "a held MCP call was cancelled by the client");
            }
        }
    }
    let index = g.route_index(route);
    let path = ctx.target.path.clone();
    let path = path.as_str();
    match &parsed {
        Body::Single(m) => {
            ctx.rpc_id = Some(m.id.clone());
            ctx.rpc_call = rpc_call(m, req);
            let outcome = decide(g, index, req, path, route, verified, m).await;
            g.metrics.mcp(&route.name, m, outcome_label(&outcome));
            let approval = outcome?;
            ctx.tools.wanted = m.method.as_deref() == Some("tools/list") && route.policy.is_some();
            Ok(approval)
        }
        Body::Batch(items) => {
            // All or nothing: one refused element refuses the whole batch, nothing is forwarded.
            let mut outcomes = Vec::with_capacity(items.len());
            for m in items {
                outcomes.push(decide(g, index, req, path, route, verified, m).await);
            }
            for (m, o) in items.iter().zip(&outcomes) {
                g.metrics.mcp(&route.name, m, outcome_label(o));
            }
            let Some(first) = outcomes.iter().position(|o| !matches!(o, Ok(None))) else {
                return Ok(None);
            };
            let responses: Vec<Value> = items
                .iter()
                .zip(&outcomes)
                .filter(|(m, _)| m.id.is_some() && m.method.is_some())
                .map(|(m, o)| {
                    let reason = match o {
                        Err(r) => r.to_string(),
                        Ok(Some(_)) => "this call needs the user's approval: send it alone".into(),
                        Ok(None) => format!("not run: batch element {first} was refused"),
                    };
                    rpc::error(
                        m.id.as_ref(),
                        rpc::REFUSED,
                        &reason,
                        Some(json!({"reason": reason})),
                    )
                })
                .collect();
            Err(Refusal::JsonRpc {
                status: 200,
                label: "mcp_denied",
                reason: format!("batch element {first} was refused"),
                body: Value::Array(responses),
            })
        }
    }
}

/// Who is calling on an MCP route, and in which session: cancellations must match it.
pub fn caller<'a>(
    req: &'a RequestHeader,
    route: &'a RouteSpec,
    verified: &'a Verified,
) -> cancel::Caller<'a> {
    let who = &verified.identity;
    cancel::Caller {
        route: &route.name,
        iss: who.iss(),
        sub: &who.sub,
        agent: who.agent.as_deref(),
        session: req
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
    }
}

/// The call an approval would hold: a tool, prompt or resource request.
fn rpc_call(m: &Message, req: &RequestHeader) -> Option<hold::RpcCall> {
    let method = m.method.as_deref()?;
    let name = match method {
        "tools/call" | "prompts/get" => m.name.clone()?,
        "resources/read" => m.uri.clone()?,
        _ => return None,
    };
    Some(hold::RpcCall {
        id: m.id.clone(),
        method: method.to_string(),
        name,
        arguments: m.arguments.clone().unwrap_or_else(|| json!({})),
        revision_mrtr: m.request_state.is_some()
            || req
                .headers
                .get("mcp-protocol-version")
                .is_some_and(|v| v.as_bytes() == rpc::REVISION_MRTR.as_bytes()),
        elicitation: m.elicitation,
        elicitation_url: m.elicitation_url,
        request_state: m.request_state.clone(),
        input_responses: m.input_responses.clone(),
        progress_token: m.progress_token.clone(),
    })
}

fn outcome_label(o: &Result<Option<ApprovalRequest>, Refusal>) -> &'static str {
    match o {
        Ok(None) => "allow",
        Ok(Some(_)) => "approval",
        Err(_) => "deny",
    }
}

/// Whether the caller may call `tool` (the same policy, as a `tools/call` without arguments).
fn may_call(
    filter: &mut ToolFilter,
    g: &Gateway,
    req: &RequestHeader,
    path: &str,
    route: &RouteSpec,
    verified: &Verified,
    tool: &str,
) -> bool {
    if let Some(d) = filter.decided.get(tool) {
        return *d;
    }
    let m = Message {
        id: None,
        method: Some("tools/call".into()),
        name: Some(tool.to_string()),
        uri: None,
        arguments: None,
        cancels: None,
        progress_token: None,
        request_state: None,
        input_responses: None,
        elicitation: false,
        elicitation_url: false,
    };
    let mut input = m.policy_input();
    input["listing"] = json!(true);
    let index = g.route_index(route);
    let ok = matches!(
        g.decide(index, verified, info(req, path, route, input)),
        Ok(Decision::Allow | Decision::RequireApproval(_))
    );
    filter.decided.insert(tool.to_string(), ok);
    ok
}

/// Rewrite a tools/list response body chunk (see `ToolFilter`).
pub fn filter_body(session: &Session, ctx: &mut Ctx, body: &mut Option<Bytes>, end: bool) {
    let (Some(g), Some(route), Some(verified)) =
        (ctx.gateway.clone(), ctx.route.clone(), ctx.verified.clone())
    else {
        return;
    };
    let Some(mode) = ctx.tools.mode else { return };
    let req = session.req_header();
    if let Some(b) = body.take() {
        ctx.tools.buf.extend_from_slice(&b);
    }
    let path = ctx.target.path.as_str();
    let filter = &mut ctx.tools;
    let mut out = Vec::new();
    match mode {
        ListMode::Json => {
            if !end {
                return;
            }
            let raw = std::mem::take(&mut filter.buf);
            let text = String::from_utf8_lossy(&raw).into_owned();
            let allowed = |t: &str| may_call(filter, &g, req, path, &route, &verified, t);
            out = match rpc::filter_tools_json(&text, allowed) {
                Some((new, _)) => new.into_bytes(),
                None => raw,
            };
        }
        ListMode::Sse => {
            // Complete events are rewritten and passed on at once; the rest waits for more.
            while let Some(at) = find_event_end(&filter.buf) {
                let (event_len, sep_len) = at;
                let event: Vec<u8> = filter.buf.drain(..event_len + sep_len).collect();
                let text = String::from_utf8_lossy(&event[..event_len]).into_owned();
                let mut allowed = |t: &str| may_call(filter, &g, req, path, &route, &verified, t);
                match rpc::filter_sse_event(&text, &mut allowed) {
                    Some(new) => {
                        out.extend_from_slice(new.as_bytes());
                        out.extend_from_slice(b"\n\n");
                    }
                    None => out.extend_from_slice(&event),
                }
            }
            if end {
                out.append(&mut filter.buf);
            }
        }
    }
    if !out.is_empty() {
        *body = Some(Bytes::from(out));
    }
}

/// End of the first complete SSE event in `buf`: (event length, separator length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}
