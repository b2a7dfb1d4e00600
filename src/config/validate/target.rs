//! Validation of what a route matches and where it forwards to.

use std::net::ToSocketAddrs;

use super::super::file;
use super::super::model::{RouteMatch, Upstream};
use super::super::{ConfigError, Source};
use crate::canon;

pub fn route_match(src: &Source, at: &str, m: file::Match) -> Result<RouteMatch, ConfigError> {
    if let Some(p) = &m.path_prefix {
        let field = format!("{at}.match.path_prefix");
        if !p.starts_with('/') {
            return Err(src.error(&field, "must start with '/'"));
        }
        // The prefix is compared with canonical request paths, so it must be canonical too.
        match canon::canonicalize(p.as_bytes(), false) {
            Ok(t) if t.query.is_none() && t.without_params.is_none() && t.path == p.as_str() => {}
            Ok(t) if t.query.is_none() && t.without_params.is_none() => {
                return Err(src.error(
                    &field,
                    format!("'{p}' is not in canonical form; write '{}'", t.path),
                ))
            }
            Ok(_) => return Err(src.error(&field, "a prefix holds no '?' or ';'")),
            Err(e) => return Err(src.error(&field, format!("'{p}': {e}"))),
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
                // Standard methods in any spelling mean the upper-case method; an extension
                // method is matched exactly as listed (methods are case-sensitive).
                let upper = method.to_ascii_uppercase();
                let standard = canon::DEFAULT_METHODS.contains(&upper.as_str())
                    || upper == "TRACE"
                    || upper == "CONNECT";
                out.push(if standard { upper } else { method });
            }
            Some(out)
        }
        None => None,
    };
    Ok(RouteMatch {
        host: m.host.map(|h| h.to_ascii_lowercase()),
        path_prefix: m.path_prefix,
        methods,
        case_sensitive: m.case_sensitive,
        allow_path_params: m.allow_path_params,
    })
}

/// `pass_headers`: only headers the gateway would otherwise remove, lower-cased.
pub fn pass_headers(src: &Source, at: &str, list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    list.into_iter()
        .map(|h| {
            let lower = h.to_ascii_lowercase();
            if canon::REROUTING_HEADERS.contains(&lower.as_str()) {
                Ok(lower)
            } else {
                Err(src.error(
                    &format!("{at}.pass_headers"),
                    format!(
                        "'{h}' is not removed by the gateway (pass_headers lists only: {})",
                        canon::REROUTING_HEADERS.join(", ")
                    ),
                ))
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::model::{Config, RouteLookup};
    use crate::config::{ConfigError, Source};

    fn load(routes: &str) -> Result<Config, ConfigError> {
        let policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
        let text = format!(
            "version: 1\nlisten: \"127.0.0.1:8080\"\npolicies: {{ dir: \"{}\" }}\n\
             issuers:\n  - {{ name: corp, issuer: \"https://idp.example.com/\", \
             jwks_uri: \"http://127.0.0.1:1/jwks\", audiences: [api] }}\nroutes:\n{routes}",
            policies.display()
        );
        Source {
            file: PathBuf::from("/t/portcullis.yaml"),
            text,
        }
        .parse()
    }

    fn route(name: &str, matcher: &str) -> String {
        format!(
            "  - {{ name: {name}, match: {matcher}, upstream: \"http://127.0.0.1:9000\", \
             public: true }}\n"
        )
    }

    fn chosen(c: &Config, path: &str, method: &str) -> String {
        match c.find_route("h", path, method) {
            RouteLookup::Found(r) => r.name.to_string(),
            RouteLookup::MethodNotAllowed(allow) => format!("405 {allow}"),
            RouteLookup::NotFound => "404".into(),
        }
    }

    #[test]
    fn a_method_mismatch_never_falls_through_to_a_broader_route() {
        let c = load(&format!(
            "{}{}{}",
            route("admin", "{ path_prefix: /api/admin, methods: [GET, POST] }"),
            route(
                "admin-delete",
                "{ path_prefix: /api/admin, methods: [DELETE] }"
            ),
            route("api", "{ path_prefix: /api }"),
        ))
        .unwrap();
        assert_eq!(chosen(&c, "/api/admin/x", "GET"), "admin");
        // Same host and prefix: a method split, not a fall-through.
        assert_eq!(chosen(&c, "/api/admin/x", "DELETE"), "admin-delete");
        assert_eq!(chosen(&c, "/api/admin/x", "HEAD"), "405 GET, POST, DELETE");
        assert_eq!(chosen(&c, "/api/ADMIN", "PUT"), "405 GET, POST, DELETE");
        assert_eq!(chosen(&c, "/api/x", "PUT"), "api");
        assert_eq!(
            chosen(&c, "/api/x", "TRACE"),
            "405 GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        );
        assert_eq!(chosen(&c, "/other", "GET"), "404");
    }

    #[test]
    fn methods_prefixes_and_pass_headers_are_checked() {
        let ok = load(&route(
            "dav",
            "{ path_prefix: /dav, methods: [get, PROPFIND, Report] }",
        ))
        .unwrap();
        assert_eq!(
            ok.routes[0].matcher.methods.as_deref(),
            Some(["GET".to_string(), "PROPFIND".into(), "Report".into()].as_slice())
        );
        for (matcher, message) in [
            ("{ path_prefix: /a//b }", "empty segments"),
            ("{ path_prefix: /a/../b }", "dot segments"),
            ("{ path_prefix: /%61pi }", "write '/api'"),
            ("{ path_prefix: /a%2fb }", "encodes a separator"),
            ("{ path_prefix: /a;b }", "no '?' or ';'"),
            (
                "{ path_prefix: /a, methods: [\"G T\"] }",
                "not an HTTP method",
            ),
        ] {
            let e = load(&route("r", matcher)).unwrap_err().to_string();
            assert!(
                e.contains("routes[0].match.") && e.contains(message),
                "{matcher}: {e}"
            );
        }
        let passed =
            "  - { name: r, match: { path_prefix: /r }, upstream: \"http://127.0.0.1:9000\", \
                      public: true, pass_headers: [X-Forwarded-Prefix] }\n";
        assert_eq!(
            load(passed).unwrap().routes[0].pass_headers,
            ["x-forwarded-prefix"]
        );
        let e = load(&passed.replace("X-Forwarded-Prefix", "X-Custom"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].pass_headers"), "{e}");
    }

    #[test]
    fn merge_slashes_is_a_listener_setting() {
        let c = load(&route("r", "{ path_prefix: /r }")).unwrap();
        assert!(!c.merge_slashes);
        let text = format!(
            "version: 1\nlisten: {{ address: \"127.0.0.1:8080\", merge_slashes: true }}\n\
             policies: {{ dir: \"{}\" }}\nroutes:\n{}",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("policies")
                .display(),
            route("r", "{ path_prefix: /r }")
        );
        let c = Source {
            file: PathBuf::from("/t/p.yaml"),
            text,
        }
        .parse()
        .unwrap();
        assert!(c.merge_slashes);
    }
}
