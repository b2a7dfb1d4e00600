//! Validation of an MCP route's protected-resource settings (RFC 9728, RFC 8707).

use super::super::file;
use super::super::model::{IssuerSpec, McpSpec};
use super::super::{ConfigError, Source};

pub fn spec(
    src: &Source,
    at: &str,
    m: file::Mcp,
    issuer: &IssuerSpec,
    required: &[String],
) -> Result<McpSpec, ConfigError> {
    // RFC 8707: the gateway accepts only tokens whose `aud` names this resource, and the
    // issuer's `audiences` must accept it too, or every token would be refused (401).
    if !issuer.audiences.contains(&m.resource) {
        return Err(src.error(
            &format!("{at}.mcp.resource"),
            format!(
                "'{}' is not among issuer '{}' audiences ({}): every token would be refused",
                m.resource,
                issuer.name,
                issuer.audiences.join(", ")
            ),
        ));
    }
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
        authorization_servers: vec![issuer.issuer.clone()],
        scopes_supported: m.scopes_supported.unwrap_or_else(|| required.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::Source;

    #[test]
    fn the_resource_must_be_an_audience_of_the_issuer() {
        let text = |resource: &str| {
            format!(
                "version: 1\nlisten: \"127.0.0.1:8080\"\npolicies: {{ dir: \"{}\" }}\n\
                 issuers:\n  - {{ name: corp, issuer: \"https://idp.example.com/\", \
                 jwks_uri: \"http://127.0.0.1:1/jwks\", audiences: [\"https://gw/mcp\"] }}\n\
                 routes:\n  - {{ name: m, kind: mcp, match: {{ path_prefix: /mcp }}, \
                 upstream: \"http://127.0.0.1:9000\", auth: {{ issuer: corp }}, \
                 mcp: {{ resource: \"{resource}\" }} }}\n",
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("policies")
                    .display()
            )
        };
        let load = |resource: &str| {
            Source {
                file: PathBuf::from("/t/p.yaml"),
                text: text(resource),
            }
            .parse()
        };
        assert!(load("https://gw/mcp").is_ok());
        let e = load("https://other/mcp").unwrap_err().to_string();
        assert!(
            e.contains("routes[0].mcp.resource") && e.contains("not among issuer 'corp' audiences"),
            "{e}"
        );
    }
}
