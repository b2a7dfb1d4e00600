//! pingora glue of MCP approvals that outlive client time-outs: `retry_hint` rounds (a tool
//! error asking the agent to call again) and 2026-07-28 `input_required` rounds (an
//! elicitation and a sealed `requestState`). Each round waits at most `round_seconds`, below
//! the clients' time-outs; identical calls share one approval (`crate::approval::join`).

use bytes::Bytes;
use pingora::prelude::Session;
use serde_json::{json, Value};

use super::hold::{cancelled, Approved, Call, RpcCall};
use crate::approval::join::{self, Ask, Round};
use crate::approval::request_state::{self, StateClaims};
use crate::approval::STATUS_PREFIX;
use crate::auth::now;
use crate::config::model::{McpApprovalMode, RouteSpec};
use crate::gateway::Gateway;
use crate::mcp as rpc;
use crate::policy::Refusal;

/// Key of the gateway's elicitation in `inputRequests` / `inputResponses`.
const INPUT_KEY: &str = "portcullis_approval";

/// One round of an MCP call that needs approval, in `mode` (`RetryHint` or
/// `InputRequired`). Approved: forwarded, with the body stripped of the gateway's own
/// round-trip fields when the call carried them (`Approved::ForwardBody`).
pub async fn approve(
    session: &mut Session,
    g: &Gateway,
    route: &RouteSpec,
    ask: Ask<'_>,
    call: &Call<'_>,
    rpc: &RpcCall,
    mode: McpApprovalMode,
) -> Result<Approved, Refusal> {
    let who = ask.who;
    let binding = join::mcp_binding(who, call.path, &rpc.method, &rpc.name, &rpc.arguments);
    let label = mode.label();
    let metrics = g.approvals.metrics();
    let deadline = std::time::Instant::now() + ask.spec.round;
    let expected = StateClaims {
        approval: String::new(),
        iss: ask.iss.to_string(),
        sub: who.sub.clone(),
        agent: who.agent.clone(),
        route: route.name.to_string(),
        method: rpc.method.clone(),
        name: rpc.name.clone(),
        args: crate::state::hex(&binding.body_sha256),
        exp: 0,
    };
    let round = async {
        let id = match (mode, &rpc.request_state) {
            (McpApprovalMode::InputRequired, Some(state)) => {
                let keys = g.approvals.state_keys();
                let claims = request_state::open(keys, state, &expected, now())
                    .map_err(|e| invalid_state(rpc, e))?;
                if declined(rpc.input_responses.as_ref()) {
                    g.approvals.withdraw(&claims.approval).await?;
                    return Err(Refusal::ApprovalDenied);
                }
                claims.approval
            }
            _ => g.approvals.join_or_ask(&ask, &binding).await?,
        };
        g.approvals.count_round(&id);
        let outcome = g
            .approvals
            .wait_round(&id, &binding, deadline, cancelled(call.cancel.as_ref()))
            .await?;
        Ok((id, outcome))
    };
    let outcome = tokio::select! {
        o = round => o,
        _ = session.read_body_or_idle(true) => Err(Refusal::ClientClosed),
    };
    match outcome {
        Ok((_, Round::Forward)) => {
            metrics.mcp(label, "approved");
            let rewrite = rpc
                .request_state
                .as_ref()
                .and_then(|_| without_round_trip(call.body));
            Ok(rewrite.map_or(Approved::Forward, Approved::ForwardBody))
        }
        Ok((
            id,
            Round::Pending {
                retry_after,
                expires_at: exp,
            },
        )) => {
            metrics.mcp(label, "pending");
            let body = match mode {
                McpApprovalMode::InputRequired => {
                    let claims = StateClaims {
                        approval: id.clone(),
                        exp,
                        ..expected
                    };
                    let keys = g.approvals.state_keys();
                    let state =
                        request_state::seal(keys, &claims).ok_or(Refusal::ApprovalFailed)?;
                    // URL mode: a link to the approval's status page, for this caller only.
                    let page = match (&route.mcp, rpc.elicitation_url) {
                        (Some(m), true) => request_state::page_token(keys, &id, exp)
                            .map(|k| format!("{}{STATUS_PREFIX}{id}/page?k={k}", m.origin)),
                        _ => None,
                    };
                    let text = Prompt {
                        user: &who.sub,
                        binding_message: &ask.req.binding_message,
                        page: page.as_deref(),
                    };
                    input_required(rpc, &text, &state)
                }
                _ => join::retry_hint(
                    rpc.id.as_ref(),
                    &rpc.name,
                    &who.sub,
                    &ask.req.binding_message,
                    &id,
                    retry_after,
                ),
            };
            Err(Refusal::JsonRpc {
                status: 200,
                label: "approval_pending",
                reason: format!("approval {id} pending ({label})"),
                body,
            })
        }
        Err(refusal) => {
            metrics.mcp(label, refusal.label());
            Err(refusal)
        }
    }
}

fn invalid_state(call: &RpcCall, e: request_state::StateError) -> Refusal {
    Refusal::JsonRpc {
        status: 200,
        label: "approval_invalid",
        reason: e.message().to_string(),
        body: rpc::error(call.id.as_ref(), rpc::INVALID_PARAMS, e.message(), None),
    }
}

/// Whether the person at the client declined or cancelled the gateway's elicitation.
fn declined(responses: Option<&Value>) -> bool {
    responses
        .and_then(|r| r.get(INPUT_KEY))
        .and_then(|r| r.get("action"))
        .and_then(Value::as_str)
        .is_some_and(|a| a == "decline" || a == "cancel")
}

/// What the elicitation says, and the status page it links to (URL mode).
struct Prompt<'a> {
    user: &'a str,
    binding_message: &'a str,
    page: Option<&'a str>,
}

/// A 2026-07-28 `input_required` result: where the client declared elicitation, one telling
/// the person to approve on their own device (URL mode with a link to the approval's status
/// page where declared, form mode otherwise), and the sealed state.
fn input_required(call: &RpcCall, p: &Prompt<'_>, state: &str) -> Value {
    let mut result = json!({ "resultType": "input_required", "requestState": state });
    if call.elicitation {
        let message = format!(
            "{}, approve this call on your own device: \"{}\". It runs once you approve \
             there; accept here to keep waiting, decline to cancel it.",
            p.user, p.binding_message
        );
        let params = match p.page {
            Some(url) => json!({ "mode": "url", "message": message, "url": url }),
            None => json!({
                "mode": "form",
                "message": message,
                "requestedSchema": { "type": "object", "properties": {} },
            }),
        };
        result["inputRequests"] = json!({ INPUT_KEY: {
            "method": "elicitation/create",
            "params": params,
        }});
    }
    json!({ "jsonrpc": "2.0", "id": call.id.clone().unwrap_or(Value::Null), "result": result })
}

/// The call without the gateway's round-trip fields (`requestState`, `inputResponses`): the
/// MCP server receives the call the agent first made.
fn without_round_trip(body: &[u8]) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let params = v.get_mut("params")?.as_object_mut()?;
    params.remove("requestState");
    params.remove("inputResponses");
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{declined, without_round_trip};

    #[test]
    fn round_trip_fields_are_removed_and_declines_read() {
        let body = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"pay","arguments":{"a":1},"requestState":"pc1.x","inputResponses":{"portcullis_approval":{"action":"accept"}}}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&without_round_trip(body).unwrap()).unwrap();
        assert_eq!(out["params"], json!({"name": "pay", "arguments": {"a": 1}}));
        assert!(declined(Some(
            &json!({"portcullis_approval": {"action": "decline"}})
        )));
        assert!(!declined(Some(
            &json!({"portcullis_approval": {"action": "accept"}})
        )));
        assert!(!declined(None));
    }
}
