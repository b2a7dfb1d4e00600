//! Traces, opt-in (`telemetry.otlp`): one span per request (route, decision, outcome, status,
//! agent, request id; never a token or the user), with child spans for what the decision
//! waited on (policy evaluation, JWKS fetch, token exchange, CIBA start and polls, the
//! upstream call). A caller's W3C `traceparent` is the request span's parent, and the
//! upstream receives the gateway's own `traceparent`. Spans go through `tracing` and
//! `tracing-opentelemetry` to an OTLP/HTTP exporter that runs on its own thread (batched).
//! With tracing off, no span is created: each span site pays one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, Filtered};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::telemetry::OtlpSpec;

static ON: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether traces are recorded (`telemetry.otlp` is set).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The tracing layer exporting spans (not log events) to `spec`'s collector.
pub fn layer<S>(spec: &OtlpSpec) -> Result<impl Layer<S>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(spec.endpoint.clone())
        .with_timeout(spec.timeout)
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            spec.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(spec.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("portcullis");
    let _ = PROVIDER.set(provider);
    ON.store(true, Ordering::Relaxed);
    let layer: Filtered<_, _, S> = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_filter(filter_fn(|m| m.is_span()));
    Ok(layer)
}

/// Send what is buffered (at exit).
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

struct Carrier<'a>(&'a [(&'a str, &'a str)]);

impl opentelemetry::propagation::Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The span of one request, child of the caller's `traceparent` (`headers`: `traceparent`
/// and `tracestate` as received, if any). `Span::none()` with tracing off.
pub fn request_span(method: &str, request_id: &str, headers: &[(&str, &str)]) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "portcullis::trace",
        "request",
        otel.name = "portcullis request",
        otel.kind = "server",
        http.request.method = method,
        portcullis.request_id = request_id,
        portcullis.route = Empty,
        portcullis.agent = Empty,
        portcullis.decision = Empty,
        portcullis.outcome = Empty,
        http.response.status_code = Empty,
    );
    if !headers.is_empty() {
        let parent = TraceContextPropagator::new().extract(&Carrier(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// A child of the current span (`Span::none()` with tracing off).
pub fn span(name: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: "portcullis::trace", "op", otel.name = name)
}

/// A client span (the upstream call) under `parent`.
pub fn client_span(parent: &Span, name: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(target: "portcullis::trace", parent: parent, "op", otel.name = name, otel.kind = "client")
}

/// `traceparent` (and `tracestate`) naming `span` as the parent, for an upstream request.
pub fn traceparent(span: &Span) -> Vec<(String, String)> {
    if !enabled() || span.is_none() {
        return Vec::new();
    }
    let mut out: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    out.into_iter().collect()
}
