//! pingora glue: `impl ProxyHttp`. Each phase does one thing; all decisions come from
//! `Gateway` (pure core) and all refusals are rendered by `respond::Reply`.

pub mod background;
mod body;
mod headers;
mod hold;
mod mcp;
mod mcp_hold;
mod progress;
mod trace;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error, ErrorSource, ErrorType, Result};
use tracing::Instrument;

use crate::approval::{cancel, STATUS_PREFIX};
use crate::auth::{Source as TokenSource, Verified};
use crate::claims::TokenError;
use crate::config::model::{RouteLookup, RouteSpec};
use crate::credentials::cache::UpstreamToken;
use crate::credentials::header_value;
use crate::gateway::{bearer_of, Gateway};
use crate::policy::input::RequestInfo;
use crate::policy::{ApprovalRequest, Decision, Refusal};
use crate::respond::Reply;

pub struct Proxy {
    pub state: Arc<ArcSwap<Gateway>>,
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    gateway: Option<Arc<Gateway>>,
    request_id: String,
    /// The canonical request target: matched, given to the policy and forwarded.
    target: headers::CanonicalTarget,
    route: Option<Arc<RouteSpec>>,
    verified: Option<Arc<Verified>>,
    /// The request body, when the gateway had to read it (policy input, approval binding).
    body: Option<bytes::Bytes>,
    /// On MCP routes: the id of the single JSON-RPC request (refusals answer it in JSON-RPC).
    rpc_id: Option<Option<serde_json::Value>>,
    /// A body to forward instead of the one received (an MCP retry without the gateway's
    /// round-trip fields); taken by `request_body_filter`.
    body_rewrite: Option<bytes::Bytes>,
    /// The gateway wrote the whole response itself (an MCP progress stream): the outcome.
    answered: Option<&'static str>,
    /// On MCP routes: the single call (tool, prompt, resource) a policy may hold.
    rpc_call: Option<hold::RpcCall>,
    /// On MCP routes: the tools/list rewrite.
    tools: mcp::ToolFilter,
    /// Token for the upstream, on routes with `credentials:`.
    upstream_token: Option<Arc<UpstreamToken>>,
    /// Metric label of the decision: "allowed" or a refusal label.
    outcome: &'static str,
    /// Refusal or policy-failure detail for the decision log.
    reason: Option<String>,
    authz_micros: u64,
    /// State-backend (Redis) operations made for this request.
    state_ops: u32,
    /// Trace spans of the request and of its upstream call (none with traces off).
    span: tracing::Span,
    upstream_span: tracing::Span,
}

fn route_name(ctx: &Ctx) -> &str {
    ctx.route.as_ref().map_or("none", |r| &r.name)
}

/// Whether the token's `aud` (string or array) names `resource`.
fn audience_names(claims: &serde_json::Map<String, serde_json::Value>, resource: &str) -> bool {
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == resource,
        Some(serde_json::Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(resource)),
        _ => false,
    }
}

/// RFC 9728: `/.well-known/oauth-protected-resource[/<path>]` of an MCP route.
fn protected_resource_metadata(g: &Gateway, path: &str) -> Option<Reply> {
    const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
    let rest = path.strip_prefix(WELL_KNOWN)?;
    let mut mcp_routes = g.config.routes.iter().filter_map(|r| r.mcp.as_ref());
    let found = match rest {
        "" | "/" => mcp_routes.next(),
        suffix => mcp_routes.find(|m| m.resource_path == suffix.trim_end_matches('/')),
    };
    found.map(Reply::resource_metadata)
}

impl Proxy {
    pub fn new(gateway: Gateway) -> Proxy {
        Proxy {
            state: Arc::new(ArcSwap::from_pointee(gateway)),
        }
    }

    async fn write_reply(&self, session: &mut Session, ctx: &Ctx, reply: &Reply) -> Result<()> {
        let mut h = ResponseHeader::build(reply.status, Some(reply.headers.len() + 3))?;
        for (k, v) in &reply.headers {
            h.insert_header(*k, v.as_str())?;
        }
        h.insert_header("content-length", reply.body.len().to_string())?;
        h.insert_header("x-request-id", ctx.request_id.as_str())?;
        if headers::has_unread_body(session.req_header()) && !session.is_body_done() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
        Ok(())
    }

    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, refusal: Refusal) -> Result<bool> {
        ctx.outcome = refusal.label();
        if ctx.reason.is_none() {
            ctx.reason = Some(refusal.to_string());
        }
        if let Some(g) = &ctx.gateway {
            if let Some(c) = g.metrics.route(route_name(ctx)).denied(refusal.label()) {
                c.inc();
            }
        }
        let mut reply = match &ctx.rpc_id {
            Some(id) if refusal.jsonrpc_eligible() => Reply::jsonrpc_refusal(&refusal, id.as_ref()),
            _ => Reply::refusal(&refusal),
        };
        if let Some(m) = ctx.route.as_ref().and_then(|r| r.mcp.as_ref()) {
            reply = reply.with_resource_metadata(&m.metadata_url());
        }
        self.write_reply(session, ctx, &reply).await?;
        Ok(true)
    }

    /// The decision path. `Ok(())` = forward; `Err` = refuse.
    async fn authorize(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        g: &Gateway,
    ) -> Result<(), Refusal> {
        let req = session.req_header();
        let host = headers::host(req);
        let path = ctx.target.match_path();
        let route = match g.config.find_route(host, path, req.method.as_str()) {
            RouteLookup::Found(r) => r.clone(),
            RouteLookup::MethodNotAllowed(allow) => {
                return Err(Refusal::MethodNotAllowed { allow })
            }
            RouteLookup::NotFound => return Err(Refusal::NoRoute),
        };
        ctx.route = Some(route.clone());
        if ctx.target.has_params() && !route.matcher.allow_path_params {
            return Err(Refusal::BadRequest(
                "the request path has ';' parameters, which this route does not allow",
            ));
        }
        if route.auth.is_none() {
            return Ok(()); // `public: true`
        }
        let token = bearer_of(&req.headers)?;
        let (verified, source) = g.authenticate(&route, token).await.inspect_err(|_| {
            g.metrics.token_cache_misses.inc();
        })?;
        match source {
            TokenSource::Cache => g.metrics.token_cache_hits.inc(),
            TokenSource::Verified => g.metrics.token_cache_misses.inc(),
        }
        ctx.verified = Some(verified.clone());
        g.rate_check(&route, verified.identity.agent.as_deref(), None)
            .await?;
        let subject_token = route.credentials.as_ref().map(|_| token.to_string());
        let approval = match &route.mcp {
            Some(m) => {
                // RFC 8707: the token must have been issued for this MCP server.
                if !audience_names(&verified.identity.claims, &m.resource) {
                    return Err(Refusal::InvalidToken(TokenError::WrongAudience));
                }
                if session.req_header().method == http::Method::POST {
                    mcp::authorize(session, ctx, g, &route, &verified).await?
                } else {
                    None // GET (SSE stream) and DELETE (end of session): authenticated only
                }
            }
            None => {
                self.evaluate_policy(session, ctx, g, &route, &verified)
                    .await?
            }
        };
        if let Some(request) = approval {
            let Some(spec) = &route.approval else {
                ctx.reason = Some(format!("approval required: {}", request.binding_message));
                return Err(Refusal::ApprovalUnavailable);
            };
            let body = match ctx.body.clone() {
                // Read earlier for the policy, under the route's (possibly larger) bound.
                Some(b) if b.len() > spec.max_body_bytes => {
                    return Err(Refusal::BodyTooLarge {
                        limit: spec.max_body_bytes,
                    })
                }
                Some(b) => b,
                None => body::read(session, spec.max_body_bytes).await?,
            };
            let cancel = match (&route.mcp, &ctx.rpc_id) {
                (Some(_), Some(Some(id))) => {
                    let caller = mcp::caller(session.req_header(), &route, &verified);
                    Some(g.approvals.cancels.register(cancel::key(&caller, id)))
                }
                _ => None,
            };
            let call = hold::Call {
                path: &ctx.target.path,
                body: &body,
                request_id: &ctx.request_id,
                subject_token: subject_token.as_deref(),
                cancel,
                rpc: ctx.rpc_call.take(),
            };
            match hold::approve(session, g, &route, spec, &verified, &request, call).await? {
                hold::Approved::Forward => {}
                hold::Approved::ForwardBody(b) => ctx.body_rewrite = Some(b),
                hold::Approved::Answered(outcome) => {
                    ctx.answered = Some(outcome);
                    return Ok(());
                }
            }
        }
        if let (Some(spec), Some(subject)) = (&route.credentials, subject_token) {
            let t = g
                .credentials
                .upstream_token(&route, spec, &verified, &subject)
                .instrument(crate::telemetry::span("credentials"))
                .await?;
            ctx.upstream_token = Some(t);
        }
        Ok(())
    }

    /// The route's Rego policy, if any. `Ok(Some(..))`: allowed once the user approves.
    async fn evaluate_policy(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        g: &Gateway,
        route: &Arc<RouteSpec>,
        verified: &Verified,
    ) -> Result<Option<ApprovalRequest>, Refusal> {
        if route.policy.is_none() {
            return Ok(None);
        }
        let body = if route.policy_body {
            let raw = body::read(session, route.max_body_bytes).await?;
            let json = body::json(&raw)?;
            ctx.body = Some(raw);
            json
        } else {
            None
        };
        let req = session.req_header();
        let info = RequestInfo {
            method: req.method.as_str(),
            path: &ctx.target.path,
            query: req.uri.query(),
            host: headers::host(req),
            headers: headers::for_policy(req, route.policy_headers.as_deref()),
            body,
            mcp: None,
        };
        let index = g.route_index(route);
        match g.decide(index, verified, info) {
            Ok(Decision::Allow) => Ok(None),
            Ok(Decision::Deny(r)) => Err(r),
            Ok(Decision::RequireApproval(a)) => Ok(Some(a)),
            Err(detail) => {
                g.metrics.route(&route.name).policy_errors.inc();
                tracing::warn!(route = %route.name, request_id = %ctx.request_id, error = %detail, "policy evaluation failed; denying");
                ctx.reason = Some(format!("policy error: {detail}"));
                Err(Refusal::PolicyError)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            gateway: None,
            request_id: String::new(),
            target: headers::CanonicalTarget::default(),
            route: None,
            verified: None,
            upstream_token: None,
            rpc_id: None,
            rpc_call: None,
            body_rewrite: None,
            answered: None,
            tools: mcp::ToolFilter::default(),
            body: None,
            outcome: "none",
            reason: None,
            authz_micros: 0,
            state_ops: 0,
            span: tracing::Span::none(),
            upstream_span: tracing::Span::none(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let g = self.state.load_full();
        ctx.gateway = Some(g.clone());
        ctx.request_id = headers::request_id(session.req_header());
        ctx.span = trace::start(session.req_header(), &ctx.request_id);
        let limit = g.config.max_header_bytes;
        if headers::head_size(session.req_header()) > limit {
            return self
                .refuse(session, ctx, Refusal::HeaderTooLarge { limit })
                .await;
        }
        match headers::canonical_target(session.req_header(), g.config.merge_slashes) {
            Ok(t) => ctx.target = t,
            Err(e) => {
                ctx.reason = Some(e.to_string());
                return self
                    .refuse(session, ctx, Refusal::BadRequest(e.message()))
                    .await;
            }
        }
        if let Some(reply) = protected_resource_metadata(&g, &ctx.target.path) {
            ctx.outcome = "resource_metadata";
            self.write_reply(session, ctx, &reply).await?;
            return Ok(true);
        }
        if ctx.target.path.starts_with(STATUS_PREFIX) {
            let status = hold::status(session, &g, &ctx.target.path);
            let (status, ops) = crate::state::counting(status).await;
            ctx.state_ops = ops;
            g.metrics.state.per_request.observe(f64::from(ops));
            return match status {
                Ok(reply) => {
                    ctx.outcome = "approval_status";
                    self.write_reply(session, ctx, &reply).await?;
                    Ok(true)
                }
                Err(refusal) => self.refuse(session, ctx, refusal).await,
            };
        }
        let start = Instant::now();
        let span = ctx.span.clone();
        let authorized = self.authorize(session, ctx, &g).instrument(span);
        let (result, ops) = crate::state::counting(authorized).await;
        ctx.authz_micros = start.elapsed().as_micros() as u64;
        ctx.state_ops = ops;
        g.metrics.state.per_request.observe(f64::from(ops));
        let metrics = g.metrics.route(route_name(ctx));
        metrics.authz_seconds.observe(start.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                // The gateway may have answered itself (an MCP progress stream).
                ctx.outcome = ctx.answered.unwrap_or("allowed");
                if ctx.outcome == "allowed" {
                    metrics.allowed.inc();
                }
                Ok(ctx.answered.is_some())
            }
            Err(refusal) => self.refuse(session, ctx, refusal).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.route else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let u = &route.upstream;
        let mut peer = HttpPeer::new(u.addr, u.tls, u.host.clone());
        let t = &route.timeouts;
        peer.options.connection_timeout = t.connect;
        peer.options.read_timeout = t.read;
        peer.options.write_timeout = t.write;
        peer.options.idle_timeout = t.idle;
        ctx.upstream_span = trace::upstream(&ctx.span);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let withheld: Vec<String> = upstream
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|n| headers::withheld(route, n))
            .map(str::to_string)
            .chain(headers::hop_by_hop(&upstream.headers))
            .collect();
        for name in withheld {
            upstream.remove_header(&name);
        }
        if let Some(body) = &ctx.body_rewrite {
            upstream.remove_header("transfer-encoding");
            upstream.insert_header("content-length", body.len().to_string())?;
        }
        if let Some(target) = &ctx.target.rewrite {
            upstream.set_raw_path(target.as_bytes())?;
        }
        trace::inject(upstream, &ctx.upstream_span)?;
        if let (Some(spec), Some(token)) = (&route.credentials, &ctx.upstream_token) {
            upstream.insert_header(spec.header.clone(), header_value(spec, &token.value))?;
        }
        if !route.preserve_host {
            upstream.insert_header("host", route.upstream.authority.as_str())?;
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        let who = ctx.verified.as_ref().map(|v| &v.identity);
        for (name, value) in headers::identity(route, who) {
            upstream.insert_header(name, value)?;
        }
        let previous_xff = upstream
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        for (name, value) in headers::forwarding(route, session, previous_xff.as_deref()) {
            upstream.insert_header(name, value)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The whole body was read before forwarding (it is replayed from pingora's retry
        // buffer in one piece): send the rewritten one instead, once.
        if ctx.body_rewrite.is_some() && body.as_ref().is_some_and(|b| !b.is_empty()) {
            *body = ctx.body_rewrite.take();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for name in headers::hop_by_hop(&resp.headers) {
            resp.remove_header(&name);
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if ctx.tools.wanted && resp.status.is_success() {
            let ct = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ctx.tools.mode = if ct.starts_with("application/json") {
                Some(mcp::ListMode::Json)
            } else if ct.starts_with("text/event-stream") {
                Some(mcp::ListMode::Sse)
            } else {
                None
            };
            if ctx.tools.mode.is_some() {
                // The body changes length: stream it chunked.
                resp.remove_header("content-length");
                resp.remove_header("transfer-encoding");
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.tools.mode.is_some() {
            mcp::filter_body(session, ctx, body, end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let status = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                match e.esource() {
                    ErrorSource::Upstream => 504,
                    _ => 0,
                }
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if let (Some(g), ErrorSource::Upstream) = (&ctx.gateway, e.esource()) {
            g.metrics.route(route_name(ctx)).upstream_errors.inc();
        }
        if status > 0 && session.response_written().is_none() {
            let reply = Reply::upstream_failure(status);
            if let Err(err) = self.write_reply(session, ctx, &reply).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(g) = &ctx.gateway {
            g.metrics.route(route_name(ctx)).response(status);
        }
        let identity = ctx.verified.as_ref().map(|v| &v.identity);
        let agent = identity.and_then(|i| i.agent.as_deref());
        trace::finish(&ctx.span, route_name(ctx), agent, ctx.outcome, status);
        tracing::info!(
            target: "portcullis::access",
            request_id = %ctx.request_id,
            route = route_name(ctx),
            method = %session.req_header().method,
            path = if ctx.target.path.is_empty() {
                session.req_header().uri.path()
            } else {
                ctx.target.path.as_str()
            },
            sub = identity.map(|i| i.sub.as_str()),
            agent = identity.and_then(|i| i.agent.as_deref()),
            decision = if ctx.outcome == "allowed" { "allow" } else { "deny" },
            outcome = ctx.outcome,
            reason = ctx.reason.as_deref(),
            status,
            authz_us = ctx.authz_micros,
            state_ops = ctx.state_ops,
            duration_us = ctx.started.elapsed().as_micros() as u64,
            error = e.map(|e| e.etype().as_str()),
            "request"
        );
    }
}
