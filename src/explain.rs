//! `portcullis explain`: why would the gateway answer this request the way it does? Runs the
//! gateway's own decision path (canonical target, route match, token verification, the
//! route's identity checks and role map, the policy input and decision) on a request given on
//! the command line, and says what would happen next. No network unless asked
//! (`--fetch-jwks`); nothing is forwarded, nobody is asked, no credential is fetched.

use std::fmt::Write;

use serde_json::{Map, Value};

use crate::auth::jwks::Lookup;
use crate::auth::{now, Verified};
use crate::canon;
use crate::claims::Identity;
use crate::config::model::{ApprovalMode, KeySource, RouteLookup, RouteSpec};
use crate::gateway::Gateway;
use crate::policy::input::{self, RequestInfo};
use crate::policy::{check_identity, ApprovalRequest, Decision, Refusal};

/// Who is calling: a token to verify, or claims taken as they are.
pub enum Caller {
    Token(String),
    Claims(Map<String, Value>),
}

/// The request to explain.
pub struct Request {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    pub host: String,
    /// Header names and values (the policy sees them as the gateway would).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub caller: Option<Caller>,
    /// Fetch the issuers' JWKS (network) to verify the token.
    pub fetch_jwks: bool,
    /// Explain for this route (by name) instead of the one that matches.
    pub route: Option<String>,
}

/// The explanation (printable) and whether the request would go upstream.
pub struct Explained {
    pub text: String,
    pub forwarded: bool,
}

struct Out(String);

impl Out {
    fn line(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{label:<12} {value}");
    }

    fn refused(mut self, r: &Refusal) -> Explained {
        self.line(
            "verdict",
            format!("refused: {} {} ({r})", r.status(), r.code()),
        );
        Explained {
            text: self.0,
            forwarded: false,
        }
    }
}

/// Explain `req` against the loaded configuration `g`.
pub async fn explain(g: &Gateway, req: &Request) -> Explained {
    let mut out = Out(String::new());
    out.line(
        "request",
        format!("{} {} (host {})", req.method, req.target, req.host),
    );
    let target = match canon::canonicalize(req.target.as_bytes(), g.config.merge_slashes) {
        Ok(t) => t,
        Err(e) => {
            out.line("target", format!("not canonical: {e}"));
            return out.refused(&Refusal::BadRequest(e.message()));
        }
    };
    if target.path != req.target.split('?').next().unwrap_or("") {
        out.line("target", format!("canonical path {}", target.path));
    }
    let matched = match g
        .config
        .find_route(&req.host, target.match_path(), &req.method)
    {
        RouteLookup::Found(r) => Ok(r.clone()),
        RouteLookup::MethodNotAllowed(allow) => Err(Refusal::MethodNotAllowed { allow }),
        RouteLookup::NotFound => Err(Refusal::NoRoute),
    };
    let route = match (&req.route, matched) {
        (None, Ok(r)) => r,
        (None, Err(refusal)) => {
            out.line("route", "none matches");
            return out.refused(&refusal);
        }
        (Some(name), matched) => {
            let Some(r) = g.config.routes.iter().find(|r| *r.name == **name) else {
                out.line("route", format!("no route is named '{name}'"));
                return out.refused(&Refusal::NoRoute);
            };
            match matched {
                Ok(m) if m.name == r.name => {}
                Ok(m) => out.line(
                    "note",
                    format!(
                        "the gateway would route this request to '{}', not '{name}'",
                        m.name
                    ),
                ),
                Err(refusal) => out.line(
                    "note",
                    format!("the gateway would refuse this request before '{name}': {refusal}"),
                ),
            }
            r.clone()
        }
    };
    out.line(
        "route",
        format!("{} (upstream {})", route.name, route.upstream.url),
    );
    if target.without_params.is_some() && !route.matcher.allow_path_params {
        return out.refused(&Refusal::BadRequest(
            "the request path has ';' parameters, which this route does not allow",
        ));
    }
    let Some(auth) = &route.auth else {
        out.line("identity", "not checked (public route)");
        return next_step(out, g, &route, None, None);
    };
    let issuer = g.config.issuer(auth.issuer);
    let verified = match identify(g, auth.issuer, req, &mut out).await {
        Ok(v) => v,
        Err(r) => return out.refused(&r),
    };
    let id = &verified.identity;
    out.line(
        "identity",
        format!(
            "sub {} · agent {} · issuer {}",
            id.sub,
            id.agent.as_deref().unwrap_or("(none)"),
            issuer.name
        ),
    );
    out.line("roles", list(&id.roles));
    out.line("token scope", list(&id.token_scopes));
    out.line(
        "scopes",
        format!("{} (after the role map)", list(&id.scopes)),
    );
    if let Err(r) = check_identity(auth, id) {
        return out.refused(&r);
    }
    let decision = match decide(g, &route, &verified, req, &target, &mut out) {
        Ok(d) => d,
        Err(r) => return out.refused(&r),
    };
    next_step(out, g, &route, Some(id), decision)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(" ")
    }
}

/// Verify the token (keys from a file, or fetched with `--fetch-jwks`) or take the claims.
async fn identify(
    g: &Gateway,
    issuer: usize,
    req: &Request,
    out: &mut Out,
) -> Result<Verified, Refusal> {
    let spec = g.config.issuer(issuer);
    let identity = match &req.caller {
        None => return Err(Refusal::MissingToken),
        Some(Caller::Claims(claims)) => {
            out.line("token", "none: the claims given are taken as verified");
            Identity::from_claims(spec, claims.clone()).map_err(Refusal::InvalidToken)?
        }
        Some(Caller::Token(token)) => {
            let keys = &g.verifier.issuers[issuer];
            if matches!(keys.lookup(None), Lookup::Unavailable) {
                match (&spec.keys, req.fetch_jwks) {
                    (KeySource::File(_), _) => {}
                    (_, true) => {
                        if let Err(e) = keys.refresh().await {
                            out.line("jwks", format!("cannot fetch the issuer's keys: {e}"));
                            return Err(Refusal::KeysUnavailable);
                        }
                    }
                    (_, false) => {
                        out.line(
                            "jwks",
                            "the issuer's keys come from its jwks_uri: pass --fetch-jwks to \
                             verify the token (no network otherwise)",
                        );
                        return Err(Refusal::KeysUnavailable);
                    }
                }
            }
            let v = g.verifier.verify_uncached(issuer, token, now()).await;
            let v = v.inspect_err(|r| out.line("token", format!("does not verify: {r}")))?;
            out.line("token", "verified (signature, issuer, audience, expiry)");
            return Ok(v);
        }
    };
    Ok(Verified {
        subject: input::subject_value(&identity),
        valid_until: identity.exp.saturating_add(spec.leeway_seconds),
        identity,
        issuer,
    })
}

/// The policy input and decision for the request (each message of an MCP body).
fn decide(
    g: &Gateway,
    route: &RouteSpec,
    verified: &Verified,
    req: &Request,
    target: &canon::Target<'_>,
    out: &mut Out,
) -> Result<Option<ApprovalRequest>, Refusal> {
    if route.policy.is_none() {
        out.line("policy", "none on this route: allowed");
        return Ok(None);
    }
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| input::policy_sees(k, route.policy_headers.as_deref()))
        .collect();
    let info = |body, mcp| RequestInfo {
        method: &req.method,
        path: &target.path,
        query: target.query,
        host: &req.host,
        headers: headers.clone(),
        body,
        mcp,
    };
    let index = g.route_index(route);
    let requests: Vec<RequestInfo<'_>> = match &route.mcp {
        Some(_) => {
            let body = crate::mcp::parse(&req.body)
                .map_err(|_| Refusal::BadRequest("the body is not a JSON-RPC request"))?;
            body.messages()
                .iter()
                .filter(|m| m.method.is_some())
                .map(|m| info(None, Some(m.policy_input())))
                .collect()
        }
        None if route.policy_body && !req.body.is_empty() => {
            let body = serde_json::from_slice(&req.body).map_err(|_| Refusal::BodyNotJson)?;
            vec![info(Some(body), None)]
        }
        None => vec![info(None, None)],
    };
    let mut approval = None;
    for request in requests {
        let doc = g.policy_input(index, verified, request);
        if let Some(doc) = &doc {
            let text = doc
                .to_json_str()
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
                .unwrap_or_default();
            out.line("input", format!("\n{text}"));
        }
        let decision = match doc {
            Some(doc) => g.decide_input(index, doc),
            None => Ok(Decision::Allow),
        };
        match decision {
            Ok(Decision::Allow) => out.line("decision", "allow"),
            Ok(Decision::Deny(r)) => {
                out.line("decision", format!("deny: {r}"));
                return Err(r);
            }
            Ok(Decision::RequireApproval(a)) => {
                out.line(
                    "decision",
                    format!("allow once the user approves: \"{}\"", a.binding_message),
                );
                approval = Some(a);
            }
            Err(detail) => {
                out.line("decision", format!("policy error: {detail}"));
                return Err(Refusal::PolicyError);
            }
        }
    }
    Ok(approval)
}

/// What the gateway would do with an allowed request.
fn next_step(
    mut out: Out,
    g: &Gateway,
    route: &RouteSpec,
    who: Option<&Identity>,
    approval: Option<ApprovalRequest>,
) -> Explained {
    if let Some(a) = approval {
        let Some(spec) = &route.approval else {
            return out.refused(&Refusal::ApprovalUnavailable);
        };
        let client = &g.config.clients[spec.client].name;
        let mode = match spec.mode {
            ApprovalMode::Sync => "sync: the connection waits",
            ApprovalMode::Async => "async: 202 with an approval id",
        };
        out.line(
            "approval",
            format!(
                "ask {} on their device through CIBA ({mode}; client {client}, at most {} s)",
                who.map_or("the user", |w| w.sub.as_str()),
                spec.max_wait.as_secs()
            ),
        );
        out.line("details", a.authorization_details.to_string());
    }
    let credentials = match &route.credentials {
        Some(c) => format!(
            "{} credentials in {} (the user's token is not sent)",
            c.mode.name(),
            c.header
        ),
        None if route.forward_token => "the user's token is forwarded (forward_token)".into(),
        None => "no credentials (the user's token is not sent)".into(),
    };
    out.line(
        "verdict",
        format!(
            "forwarded to {}{} with {credentials}",
            route.upstream.url,
            if route.approval.is_some() && out.0.contains("\napproval ") {
                " once approved"
            } else {
                ""
            }
        ),
    );
    Explained {
        text: out.0,
        forwarded: true,
    }
}
