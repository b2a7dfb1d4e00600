//! pingora glue of approval holds: bind the request, then wait for the user (sync: the
//! connection stays open, a client disconnect stops the polling) or answer 202 / redeem an
//! approval id (async). Decisions live in `crate::approval`.

use bytes::Bytes;
use pingora::prelude::Session;
use serde_json::Value;

use super::{mcp_hold, progress};
use crate::approval::cancel::Registration;
use crate::approval::join::{Ask, Round};
use crate::approval::store::Binding;
use crate::approval::{Redeemed, APPROVAL_HEADER, STATUS_PREFIX};
use crate::auth::Verified;
use crate::config::model::{ApprovalMode, ApprovalSpec, McpApprovalMode, RouteSpec};
use crate::gateway::{bearer_of, Gateway};
use crate::policy::{ApprovalRequest, Refusal};
use crate::respond::Reply;

/// `GET /.portcullis/approvals/<id>`: the status of an async approval, shown only to a
/// caller whose token the approval's route accepts and whose `sub` owns it.
pub async fn status(session: &Session, g: &Gateway, path: &str) -> Result<Reply, Refusal> {
    let req = session.req_header();
    let id = path.strip_prefix(STATUS_PREFIX).unwrap_or("");
    if let Some(id) = id.strip_suffix("/page") {
        return page(session, g, id).await;
    }
    let token = bearer_of(&req.headers)?;
    let record = g.approvals.record(id).await?.ok_or(Refusal::NoRoute)?;
    let route = g
        .config
        .routes
        .iter()
        .find(|r| *r.name == *record.route)
        .ok_or(Refusal::NoRoute)?;
    let (verified, _) = g.authenticate(route, token).await?;
    if verified.identity.sub != record.binding.sub {
        return Err(Refusal::NoRoute);
    }
    Ok(Reply::approval_status(&record))
}

/// `GET /.portcullis/approvals/<id>/page?k=<link key>`: the approval's status as a small page,
/// for the person an MCP client showed the link to (URL-mode elicitation). The key is sealed
/// for this approval and expires with it; anything else is 404. The page approves nothing.
async fn page(session: &Session, g: &Gateway, id: &str) -> Result<Reply, Refusal> {
    let key = session
        .req_header()
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("k=")))
        .unwrap_or("");
    let keys = g.approvals.state_keys();
    if !crate::approval::request_state::page_allows(keys, key, id, crate::auth::now()) {
        return Err(Refusal::NoRoute);
    }
    let record = g.approvals.record(id).await?.ok_or(Refusal::NoRoute)?;
    Ok(Reply::approval_page(&record))
}

/// Method, path and query, body hash, user and agent: what an approval is for.
/// `path` is the canonical path (`canon`), the one that is forwarded.
pub fn binding(session: &Session, path: &str, verified: &Verified, body: &[u8]) -> Binding {
    let req = session.req_header();
    let target = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Binding {
        sub: verified.identity.sub.clone(),
        agent: verified.identity.agent.clone(),
        method: req.method.as_str().to_string(),
        target,
        body_sha256: Binding::body_hash(body),
    }
}

/// What the held call is: its canonical path and its body, and on MCP routes its
/// cancellation registration (a `notifications/cancelled` naming it ends the hold).
pub struct Call<'a> {
    pub path: &'a str,
    pub body: &'a [u8],
    pub request_id: &'a str,
    /// The caller's token, on routes with `credentials:` (for a call the gateway forwards).
    pub subject_token: Option<&'a str>,
    pub cancel: Option<Registration>,
    /// On MCP routes: the single JSON-RPC call held (a tool, prompt or resource).
    pub rpc: Option<RpcCall>,
}

/// A JSON-RPC call that needs approval: id, method, name (tool, prompt, resource URI) and
/// arguments.
pub struct RpcCall {
    pub id: Option<Value>,
    pub method: String,
    pub name: String,
    pub arguments: Value,
    /// Sent with the 2026-07-28 revision (multi round-trip requests).
    pub revision_mrtr: bool,
    /// The client declared the elicitation capability (2026-07-28), and its URL mode.
    pub elicitation: bool,
    pub elicitation_url: bool,
    /// A retry's `requestState` and `inputResponses`.
    pub request_state: Option<String>,
    pub input_responses: Option<Value>,
    /// `params._meta.progressToken`: the client takes `notifications/progress`.
    pub progress_token: Option<Value>,
}

/// How an approved call goes on.
pub enum Approved {
    /// Forwarded as received.
    Forward,
    /// Forwarded with this body (the gateway's round-trip fields removed).
    ForwardBody(Bytes),
    /// The gateway answered (and forwarded it itself if approved); the outcome label.
    Answered(&'static str),
}

/// Resolves when the call is cancelled; never without a registration.
pub async fn cancelled(cancel: Option<&Registration>) {
    match cancel {
        Some(r) => r.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Carry out a `require_approval` decision. `Ok` = forward (`Some`: with this body instead).
pub async fn approve(
    session: &mut Session,
    g: &Gateway,
    route: &RouteSpec,
    spec: &ApprovalSpec,
    verified: &Verified,
    request: &ApprovalRequest,
    call: Call<'_>,
) -> Result<Approved, Refusal> {
    let who = &verified.identity;
    let iss = who.iss();
    let ask = Ask {
        spec,
        route: &route.name,
        who,
        iss,
        req: request,
        rev: g.revision(route),
    };
    if let Some(rpc) = &call.rpc {
        let progress = rpc.progress_token.is_some();
        let mode = match spec.mcp {
            McpApprovalMode::Auto if rpc.revision_mrtr => McpApprovalMode::InputRequired,
            McpApprovalMode::Auto | McpApprovalMode::Progress if progress => {
                McpApprovalMode::Progress
            }
            // `progress` for a call without a token: tell the agent to call again.
            McpApprovalMode::Auto | McpApprovalMode::Progress => McpApprovalMode::RetryHint,
            m => m,
        };
        match mode {
            McpApprovalMode::Hold => {}
            McpApprovalMode::Progress => {
                return progress::approve(session, g, route, verified, ask, &call, rpc).await
            }
            mode => return mcp_hold::approve(session, g, route, ask, &call, rpc, mode).await,
        }
    }
    let binding = binding(session, call.path, verified, call.body);
    match spec.mode {
        ApprovalMode::Sync => {
            let mut held = g.approvals.start_sync(&ask, &binding).await?;
            let outcome = tokio::select! {
                o = held.wait(spec.max_wait) => o,
                _ = session.read_body_or_idle(true) => {
                    tracing::info!(route = %route.name, "client closed the connection during an approval hold; polling stopped");
                    return Err(Refusal::ClientClosed);
                }
                _ = cancelled(call.cancel.as_ref()) => {
                    tracing::info!(route = %route.name, "the client cancelled the held call; polling stopped, nothing forwarded");
                    g.approvals.metrics().mcp("hold", "cancelled");
                    return Err(Refusal::ApprovalCancelled);
                }
            };
            if let Some(refusal) = outcome.refusal() {
                return Err(refusal);
            }
            g.approvals.sync_forward(&held).await?;
            Ok(Approved::Forward)
        }
        ApprovalMode::Async => {
            let presented = session
                .req_header()
                .headers
                .get(APPROVAL_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let accepted = match presented {
                Some(id) => match g.approvals.redeem(&id, binding).await? {
                    Redeemed::Forward => return Ok(Approved::Forward),
                    Redeemed::StillPending(a) => a,
                },
                // An identical call without the id joins the open approval (same id), is
                // forwarded once it is approved, or gets its refusal replayed.
                None => match g.approvals.join_or_start(&ask, &binding).await? {
                    (_, Some(asked)) => asked,
                    (id, None) => {
                        let at_once = std::time::Instant::now();
                        match g
                            .approvals
                            .wait_round(&id, &binding, at_once, std::future::pending())
                            .await?
                        {
                            Round::Forward => return Ok(Approved::Forward),
                            Round::Pending {
                                retry_after,
                                expires_at,
                            } => crate::approval::Accepted {
                                id,
                                retry_after,
                                expires_in: expires_at.saturating_sub(crate::auth::now()),
                            },
                        }
                    }
                },
            };
            Err(Refusal::ApprovalPending {
                id: accepted.id,
                retry_after: accepted.retry_after,
                expires_in: accepted.expires_in,
            })
        }
    }
}
