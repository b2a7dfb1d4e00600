//! Validation of an MCP route's protected-resource settings (RFC 9728, RFC 8707).

use super::super::file;
use super::super::model::McpSpec;
use super::super::{ConfigError, Source};

pub fn spec(
    src: &Source,
    at: &str,
    m: file::Mcp,
    issuer: &str,
    required: &[String],
) -> Result<McpSpec, ConfigError> {
    let url = url::Url::parse(&m.resource)
        .map_err(|e| src.error(&format!("{at}.mcp.resource"), format!("invalid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(src.error(
            &format!("{at}.mcp.resource"),
            "must be an http(s) URL without a query",
        ));
    }
    let path = url.path().trim_end_matches('/').to_string();
    Ok(McpSpec {
        origin: url.origin().ascii_serialization(),
        resource_path: path,
        resource: m.resource,
        authorization_servers: vec![issuer.to_string()],
        scopes_supported: m.scopes_supported.unwrap_or_else(|| required.to_vec()),
    })
}
