//! Validation of what a route matches and where it forwards to.

use std::net::ToSocketAddrs;

use super::super::file;
use super::super::model::{RouteMatch, Upstream};
use super::super::{ConfigError, Source};

pub fn route_match(src: &Source, at: &str, m: file::Match) -> Result<RouteMatch, ConfigError> {
    if let Some(p) = &m.path_prefix {
        if !p.starts_with('/') {
            return Err(src.error(&format!("{at}.match.path_prefix"), "must start with '/'"));
        }
    }
    let methods = match m.methods {
        Some(list) => {
            if list.is_empty() {
                return Err(src.error(&format!("{at}.match.methods"), "list at least one method"));
            }
            let mut out = Vec::new();
            for method in list {
                if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                    return Err(src.error(
                        &format!("{at}.match.methods"),
                        format!("'{method}' is not an HTTP method"),
                    ));
                }
                out.push(method.to_ascii_uppercase());
            }
            Some(out)
        }
        None => None,
    };
    Ok(RouteMatch {
        host: m.host.map(|h| h.to_ascii_lowercase()),
        path_prefix: m.path_prefix,
        methods,
    })
}

pub fn upstream(src: &Source, field: &str, raw: &str) -> Result<Upstream, ConfigError> {
    let url =
        url::Url::parse(raw).map_err(|e| src.error(field, format!("invalid URL '{raw}': {e}")))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        s => {
            return Err(src.error(
                field,
                format!("scheme '{s}' is not supported (http or https)"),
            ))
        }
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(src.error(
            field,
            "an upstream URL has no path or query: paths are forwarded as received",
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| src.error(field, "the URL has no host"))?
        .to_string();
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (lookup, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| src.error(field, format!("cannot resolve host '{host}'")))?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    Ok(Upstream {
        url: raw.to_string(),
        tls,
        host: lookup.to_string(),
        port,
        addr,
        authority,
    })
}
