//! `telemetry:`: where traces go (OTLP), validated.

use std::time::Duration;

use super::file;
use super::{ConfigError, Source};

/// An OTLP/HTTP trace exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSpec {
    /// The full traces URL (`.../v1/traces`).
    pub endpoint: String,
    pub sample_ratio: f64,
    pub service_name: String,
    pub timeout: Duration,
}

pub fn otlp(src: &Source, t: Option<file::Telemetry>) -> Result<Option<OtlpSpec>, ConfigError> {
    let Some(o) = t.and_then(|t| t.otlp) else {
        return Ok(None);
    };
    match o.protocol.as_deref() {
        None | Some("http") | Some("http/protobuf") => {}
        Some("grpc") => {
            return Err(src.error(
                "telemetry.otlp.protocol",
                "grpc is not built in: use `http` (OTLP/HTTP protobuf, usually port 4318); \
                 every OpenTelemetry Collector accepts both",
            ))
        }
        Some(other) => {
            return Err(src.error(
                "telemetry.otlp.protocol",
                format!("'{other}' is not an OTLP protocol (http)"),
            ))
        }
    }
    let url = url::Url::parse(&o.endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| src.error("telemetry.otlp.endpoint", "must be an http(s) URL"))?;
    let endpoint = match url.path() {
        "" | "/" => format!("{}/v1/traces", o.endpoint.trim_end_matches('/')),
        _ => o.endpoint.clone(),
    };
    let sample_ratio = o.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(src.error("telemetry.otlp.sample_ratio", "must be between 0.0 and 1.0"));
    }
    let timeout_ms = o.timeout_ms.unwrap_or(10_000);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(src.error("telemetry.otlp.timeout_ms", "must be within 1..60000"));
    }
    Ok(Some(OtlpSpec {
        endpoint,
        sample_ratio,
        service_name: o.service_name.unwrap_or_else(|| "portcullis".into()),
        timeout: Duration::from_millis(timeout_ms),
    }))
}
