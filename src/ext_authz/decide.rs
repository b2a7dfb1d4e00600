//! The decision path of one ext_authz Check, on the attributes of the request Envoy holds.

use std::collections::HashMap;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::CheckRequest;

use crate::approval::join::{Ask, Round};
use crate::approval::store::Binding;
use crate::approval::{Accepted, Redeemed, APPROVAL_HEADER};
use crate::auth::{now, Verified};
use crate::canon;
use crate::config::model::{ApprovalMode, RouteLookup, RouteSpec};
use crate::credentials::header_value;
use crate::gateway::{bearer, Gateway};
use crate::policy::input::{policy_sees, RequestInfo};
use crate::policy::{ApprovalRequest, Decision, Refusal};
use crate::respond::Reply;

/// What Envoy does with the request.
#[derive(Debug)]
pub enum Verdict {
    /// Forward it, setting and removing these upstream request headers.
    Allow {
        set: Vec<(String, String)>,
        remove: Vec<String>,
    },
    /// Answer the client with this response.
    Deny(Reply),
}

/// The request as Envoy describes it.
struct Attrs<'a> {
    method: &'a str,
    host: &'a str,
    /// Path and query, as sent.
    target: &'a str,
    headers: &'a HashMap<String, String>,
    body: Vec<u8>,
}

fn attrs(req: &CheckRequest) -> Option<Attrs<'_>> {
    let http = req.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    let body = if http.raw_body.is_empty() {
        http.body.as_bytes().to_vec()
    } else {
        http.raw_body.clone()
    };
    Some(Attrs {
        method: &http.method,
        host: &http.host,
        target: &http.path,
        headers: &http.headers,
        body,
    })
}

/// Decide; every refusal is rendered as the proxy renders it.
pub async fn check(g: &Gateway, req: &CheckRequest) -> Verdict {
    let started = Instant::now();
    let Some(a) = attrs(req) else {
        return Verdict::Deny(Reply::refusal(&Refusal::BadRequest(
            "the CheckRequest has no HTTP request attributes",
        )));
    };
    let mut route_name = "none".to_string();
    let mut agent = None;
    let result = decide(g, &a, &mut route_name, &mut agent).await;
    let outcome = match &result {
        Ok(_) => "allowed",
        Err(r) => r.label(),
    };
    let metrics = g.metrics.route(&route_name);
    match &result {
        Ok(_) => metrics.allowed.inc(),
        Err(r) => {
            if let Some(c) = metrics.denied(r.label()) {
                c.inc();
            }
        }
    }
    tracing::info!(
        target: "portcullis::access",
        mode = "ext_authz",
        request_id = a.headers.get("x-request-id").map(String::as_str),
        route = %route_name,
        method = a.method,
        agent = agent.as_deref(),
        decision = if outcome == "allowed" { "allow" } else { "deny" },
        outcome,
        reason = result.as_ref().err().map(|r| r.to_string()),
        authz_us = started.elapsed().as_micros() as u64,
        "request"
    );
    match result {
        Ok(verdict) => verdict,
        Err(refusal) => Verdict::Deny(Reply::refusal(&refusal)),
    }
}

async fn decide(
    g: &Gateway,
    a: &Attrs<'_>,
    route_name: &mut String,
    agent: &mut Option<String>,
) -> Result<Verdict, Refusal> {
    let target = canon::canonicalize(a.target.as_bytes(), g.config.merge_slashes)
        .map_err(|e| Refusal::BadRequest(e.message()))?;
    let route = match g.config.find_route(a.host, target.match_path(), a.method) {
        RouteLookup::Found(r) => r.clone(),
        RouteLookup::MethodNotAllowed(allow) => return Err(Refusal::MethodNotAllowed { allow }),
        RouteLookup::NotFound => return Err(Refusal::NoRoute),
    };
    *route_name = route.name.to_string();
    if target.without_params.is_some() && !route.matcher.allow_path_params {
        return Err(Refusal::BadRequest(
            "the request path has ';' parameters, which this route does not allow",
        ));
    }
    if route.auth.is_none() {
        return Ok(allow(&route, None, Vec::new()));
    }
    let token = bearer(
        a.headers
            .get("authorization")
            .map(|v| v.as_bytes())
            .into_iter(),
    )?;
    let (verified, _) = g.authenticate(&route, token).await?;
    agent.clone_from(&verified.identity.agent);
    g.rate_check(&route, verified.identity.agent.as_deref(), None)
        .await?;
    let approval = policy(g, &route, &verified, a, &target)?;
    if let Some(request) = approval {
        approve(g, &route, &verified, &request, a, &target).await?;
    }
    let mut set = Vec::new();
    if let Some(spec) = &route.credentials {
        let t = g
            .credentials
            .upstream_token(&route, spec, &verified, token)
            .await?;
        set.push((spec.header.clone(), header_value(spec, &t.value)));
    }
    Ok(allow(&route, Some(&verified.identity), set))
}

/// Forward: without the user's token (unless `forward_token`), the approval id and any
/// client-sent `X-Portcullis-*`; naming the caller on `identity_headers` routes.
fn allow(
    route: &RouteSpec,
    who: Option<&crate::claims::Identity>,
    mut set: Vec<(String, String)>,
) -> Verdict {
    let mut remove = vec![
        APPROVAL_HEADER.to_string(),
        "x-portcullis-sub".into(),
        "x-portcullis-agent".into(),
    ];
    if route.identity_headers {
        if let Some(who) = who {
            remove.retain(|h| !h.starts_with("x-portcullis-"));
            set.push(("x-portcullis-sub".into(), who.sub.clone()));
            match &who.agent {
                Some(agent) => set.push(("x-portcullis-agent".into(), agent.clone())),
                None => remove.push("x-portcullis-agent".into()),
            }
        }
    }
    if !route.forward_token && !set.iter().any(|(k, _)| k == "authorization") {
        remove.push("authorization".into());
    }
    Verdict::Allow { set, remove }
}

fn policy(
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
    a: &Attrs<'_>,
    target: &canon::Target<'_>,
) -> Result<Option<ApprovalRequest>, Refusal> {
    if route.policy.is_none() {
        return Ok(None);
    }
    let headers: Vec<(&str, &str)> = a
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| !k.starts_with(':'))
        .filter(|(k, _)| policy_sees(k, route.policy_headers.as_deref()))
        .collect();
    let info = |body, mcp| RequestInfo {
        method: a.method,
        path: &target.path,
        query: target.query,
        host: a.host,
        headers: headers.clone(),
        body,
        mcp,
    };
    let requests = match &route.mcp {
        Some(_) => crate::mcp::parse(&a.body)
            .map_err(|_| Refusal::BadRequest("the body is not a JSON-RPC request"))?
            .messages()
            .iter()
            .filter(|m| m.method.is_some())
            .map(|m| info(None, Some(m.policy_input())))
            .collect(),
        None if route.policy_body && !a.body.is_empty() => {
            let body = serde_json::from_slice(&a.body).map_err(|_| Refusal::BodyNotJson)?;
            vec![info(Some(body), None)]
        }
        None => vec![info(None, None)],
    };
    let index = g.route_index(route);
    let mut approval = None;
    for request in requests {
        match g.decide(index, verified, request) {
            Ok(Decision::Allow) => {}
            Ok(Decision::Deny(r)) => return Err(r),
            Ok(Decision::RequireApproval(req)) => approval = Some(req),
            Err(detail) => {
                g.metrics.route(&route.name).policy_errors.inc();
                tracing::warn!(route = %route.name, error = %detail, "policy evaluation failed; denying");
                return Err(Refusal::PolicyError);
            }
        }
    }
    Ok(approval)
}

/// The user's approval: async routes answer 202 (and redeem `Portcullis-Approval`), sync
/// routes hold the Check until the user answers (within `ext_authz.max_hold_seconds`). MCP
/// routes' client-facing modes need the proxy: there the call is held like a sync route.
async fn approve(
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
    request: &ApprovalRequest,
    a: &Attrs<'_>,
    target: &canon::Target<'_>,
) -> Result<(), Refusal> {
    let Some(spec) = &route.approval else {
        return Err(Refusal::ApprovalUnavailable);
    };
    let who = &verified.identity;
    let ask = Ask {
        spec,
        route: &route.name,
        who,
        iss: who.iss(),
        req: request,
        rev: g.revision(route),
    };
    let binding = Binding {
        sub: who.sub.clone(),
        agent: who.agent.clone(),
        method: a.method.to_string(),
        target: match target.query {
            Some(q) => format!("{}?{q}", target.path),
            None => target.path.to_string(),
        },
        body_sha256: Binding::body_hash(&a.body),
    };
    match spec.mode {
        ApprovalMode::Sync => {
            let mut held = g.approvals.start_sync(&ask, &binding).await?;
            if let Some(refusal) = held.wait(spec.max_wait).await.refusal() {
                return Err(refusal);
            }
            g.approvals.sync_forward(&held).await
        }
        ApprovalMode::Async => {
            let accepted = match a.headers.get(APPROVAL_HEADER) {
                Some(id) => match g.approvals.redeem(id, binding).await? {
                    Redeemed::Forward => return Ok(()),
                    Redeemed::StillPending(accepted) => accepted,
                },
                None => match g.approvals.join_or_start(&ask, &binding).await? {
                    (_, Some(asked)) => asked,
                    (id, None) => {
                        let round = g
                            .approvals
                            .wait_round(&id, &binding, Instant::now(), std::future::pending())
                            .await?;
                        match round {
                            Round::Forward => return Ok(()),
                            Round::Pending {
                                retry_after,
                                expires_at,
                            } => Accepted {
                                id,
                                retry_after,
                                expires_in: expires_at.saturating_sub(now()),
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
