//! Header helpers for the proxy phases: request ids, hop-by-hop headers, the policy's view of
//! the headers, the canonical request target and `Forwarded`.

use http::HeaderMap;
use pingora::http::RequestHeader;
use pingora::prelude::Session;

use crate::approval::APPROVAL_HEADER;
use crate::canon::{self, CanonError};
use crate::config::model::RouteSpec;

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Hop-by-hop headers present in `headers`, including those the `Connection` header names. A
/// WebSocket-style upgrade keeps `connection: upgrade` and `upgrade` so pingora can proxy it.
pub fn hop_by_hop(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    let connection = headers.get_all(http::header::CONNECTION);
    let mut upgrade = false;
    for value in connection.iter().filter_map(|v| v.to_str().ok()) {
        for name in value.split(',').map(str::trim) {
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            } else if !name.is_empty()
                && !name.eq_ignore_ascii_case("close")
                && !name.eq_ignore_ascii_case("keep-alive")
                && headers.contains_key(name)
            {
                out.push(name.to_ascii_lowercase());
            }
        }
    }
    upgrade &= headers.contains_key(http::header::UPGRADE);
    for name in HOP_BY_HOP {
        let kept = upgrade && (*name == "connection" || *name == "upgrade");
        if !kept && headers.contains_key(*name) && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// The client's `X-Request-Id` if it is sane (≤ 128 visible ASCII characters), else a new one.
pub fn request_id(req: &RequestHeader) -> String {
    match req
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_string()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// Host of the request: `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
pub fn host(req: &RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Size of the request head as sent on HTTP/1.1: request line and `name: value` lines.
pub fn head_size(req: &RequestHeader) -> usize {
    let uri = &req.uri;
    let line = req.method.as_str().len()
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Whether the request may carry a body we have not read.
pub fn has_unread_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Headers given to the policy: the `allowed` list, or all but `sensitive` ones.
pub fn for_policy<'a>(
    req: &'a RequestHeader,
    allowed: Option<&[String]>,
) -> Vec<(&'a str, &'a str)> {
    req.headers
        .iter()
        .filter(|(k, _)| crate::policy::input::policy_sees(k.as_str(), allowed))
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect()
}

/// The request's target in canonical form (see `canon`), owned by the request's context.
#[derive(Debug, Default)]
pub struct CanonicalTarget {
    /// The canonical path: policy input, approval binding, decision log, forwarded.
    pub path: String,
    /// When the path holds `;` parameters: the path routes match, without them.
    pub without_params: Option<String>,
    /// The request target to send upstream when it differs from the one received.
    pub rewrite: Option<String>,
}

impl CanonicalTarget {
    pub fn match_path(&self) -> &str {
        self.without_params.as_deref().unwrap_or(&self.path)
    }

    /// Whether the path holds `;` parameters.
    pub fn has_params(&self) -> bool {
        self.without_params.is_some()
    }
}

/// Canonicalise the request's target and check its Host (400 on any ambiguity).
pub fn canonical_target(
    req: &RequestHeader,
    merge_slashes: bool,
) -> Result<CanonicalTarget, CanonError> {
    let raw = req.raw_path();
    let origin = match raw.first() {
        Some(b'/') => raw,
        // Absolute-form: the path component (the authority is reconciled with Host by
        // pingora). Authority-form (CONNECT) and asterisk-form have no path to authorize.
        _ if raw.windows(3).any(|w| w == b"://") && req.raw_path_is_utf8() => req
            .uri
            .path_and_query()
            .map_or(b"/".as_slice(), |p| p.as_str().as_bytes()),
        _ => return Err(CanonError::NotAPath),
    };
    let t = canon::canonicalize(origin, merge_slashes)?;
    let host = self::host(req);
    canon::check_host((!host.is_empty()).then_some(host))?;
    // The query is kept as sent, so the request line changes only with the path, or when an
    // absolute-form target becomes origin-form.
    let received_path = raw.split(|&b| b == b'?').next().unwrap_or_default();
    let unchanged = origin == raw && t.path.as_bytes() == received_path;
    Ok(CanonicalTarget {
        rewrite: (!unchanged).then(|| t.request_target()),
        without_params: t.without_params,
        path: t.path.into_owned(),
    })
}

/// Whether the client's header `name` is kept from the upstream: re-routing headers the route
/// does not pass on, the approval id (a gateway-only header), proxy credentials, and the
/// user's token unless the route forwards it.
pub fn withheld(route: &RouteSpec, name: &str) -> bool {
    name == "proxy-authorization"
        || name.starts_with(IDENTITY_PREFIX)
        || name == APPROVAL_HEADER
        || (name == "authorization" && (!route.forward_token || route.credentials.is_some()))
        || (canon::REROUTING_HEADERS.contains(&name) && !route.passes(name))
}

/// Headers naming the caller to the upstream (`identity_headers`); a client's are removed.
pub const IDENTITY_PREFIX: &str = "x-portcullis-";

/// `X-Portcullis-Sub` and `X-Portcullis-Agent` for routes with `identity_headers`.
pub fn identity(
    route: &RouteSpec,
    who: Option<&crate::claims::Identity>,
) -> Vec<(&'static str, String)> {
    match who.filter(|_| route.identity_headers) {
        None => Vec::new(),
        Some(who) => {
            let mut out = vec![("x-portcullis-sub", who.sub.clone())];
            if let Some(agent) = &who.agent {
                out.push(("x-portcullis-agent", agent.clone()));
            }
            out
        }
    }
}

/// The forwarding headers the gateway sets from its own view of the request:
/// `X-Forwarded-For` (the client's address appended to `previous_xff`), `X-Forwarded-Proto`,
/// and `X-Forwarded-Host` and `Forwarded` unless the route passes the client's on.
pub fn forwarding(
    route: &RouteSpec,
    session: &Session,
    previous_xff: Option<&str>,
) -> Vec<(&'static str, String)> {
    let host = self::host(session.req_header());
    let ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some();
    let proto = if tls { "https" } else { "http" };
    let mut out = Vec::with_capacity(4);
    if let Some(ip) = ip {
        let xff = match previous_xff {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        out.push(("x-forwarded-for", xff));
    }
    out.push(("x-forwarded-proto", proto.to_string()));
    if !route.passes("x-forwarded-host") {
        out.push(("x-forwarded-host", host.to_string()));
    }
    if !route.passes("forwarded") {
        out.push(("forwarded", forwarded(ip, host, proto)));
    }
    out
}

/// `Forwarded` (RFC 7239) from the gateway's own view of the request.
pub fn forwarded(client: Option<std::net::IpAddr>, host: &str, proto: &str) -> String {
    let quoted_host = host.replace(['"', '\\'], "");
    match client {
        Some(std::net::IpAddr::V6(ip)) => {
            format!("for=\"[{ip}]\";host=\"{quoted_host}\";proto={proto}")
        }
        Some(ip) => format!("for={ip};host=\"{quoted_host}\";proto={proto}"),
        None => format!("host=\"{quoted_host}\";proto={proto}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{forwarded, hop_by_hop};
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn forwarded_header() {
        let v4 = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            forwarded(v4, "api.example.com", "https"),
            "for=10.0.0.1;host=\"api.example.com\";proto=https"
        );
        let v6 = Some("::1".parse().unwrap());
        assert_eq!(
            forwarded(v6, "h", "http"),
            "for=\"[::1]\";host=\"h\";proto=http"
        );
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        for n in hop_by_hop(&h) {
            h.remove(n.as_str());
        }
        assert!(h.get("x-secret").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("x-kept").is_some());
    }
}
