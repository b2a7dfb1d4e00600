//! pingora glue of traces (`crate::telemetry`): the request span from the caller's
//! `traceparent`, the gateway's `traceparent` on the upstream request, the span's outcome.

use pingora::http::RequestHeader;
use tracing::Span;

use crate::telemetry;

/// The request's span, child of the caller's `traceparent` if any.
pub fn start(req: &RequestHeader, request_id: &str) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    let mut carried = Vec::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
            carried.push((name, v));
        }
    }
    telemetry::request_span(req.method.as_str(), request_id, &carried)
}

/// The upstream call's span under the request's.
pub fn upstream(request: &Span) -> Span {
    telemetry::client_span(request, "upstream")
}

/// Name `span` (the upstream call) as the upstream request's parent, replacing the caller's
/// `traceparent`/`tracestate`. With traces off the caller's headers pass unchanged.
pub fn inject(upstream: &mut RequestHeader, span: &Span) -> pingora::Result<()> {
    let headers = telemetry::traceparent(span);
    if headers.is_empty() {
        return Ok(());
    }
    upstream.remove_header("traceparent");
    upstream.remove_header("tracestate");
    for (name, value) in headers {
        upstream.insert_header(name, value)?;
    }
    Ok(())
}

/// Record how the request ended on its span (nothing identifying the user).
pub fn finish(span: &Span, route: &str, agent: Option<&str>, outcome: &str, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("portcullis.route", route);
    span.record("portcullis.outcome", outcome);
    let decision = if outcome == "allowed" {
        "allow"
    } else {
        "deny"
    };
    span.record("portcullis.decision", decision);
    if let Some(agent) = agent {
        span.record("portcullis.agent", agent);
    }
    span.record("http.response.status_code", i64::from(status));
}
