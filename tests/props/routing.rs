//! Request-target canonicalisation: it is idempotent, and the route chosen for a request is
//! the route chosen for the path that is forwarded (the upstream acts on what was authorized).

use std::path::PathBuf;

use portcullis::canon::canonicalize;
use portcullis::config::model::{Config, RouteLookup};
use portcullis::config::Source;
use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest};
use proptest::strategy::Strategy;

use crate::fixture::repo;

fn config() -> Config {
    let text = format!(
        r#"version: 1
listen: {{ address: "127.0.0.1:8080", merge_slashes: false }}
policies: {{ dir: "{}" }}
issuers:
  - name: corp
    issuer: "https://idp.example.com/"
    jwks_uri: "http://127.0.0.1:1/jwks"
    audiences: ["api"]
routes:
  - name: admin-api
    match: {{ path_prefix: /api/admin, methods: [GET, POST] }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp, require_scopes: ["admin:all"] }}
  - name: strict
    match: {{ path_prefix: /api/Case, case_sensitive: true }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp }}
  - name: params
    match: {{ path_prefix: /api/p, allow_path_params: true }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp }}
  - name: api
    match: {{ path_prefix: /api }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
  - name: health
    match: {{ path_prefix: /health }}
    upstream: "http://127.0.0.1:9000"
    public: true
"#,
        repo().join("policies").display()
    );
    Source {
        file: PathBuf::from("/props/routing.yaml"),
        text,
    }
    .parse()
    .expect("the routing fixture parses")
}

/// Paths built from the pieces attackers use: segments, escapes (valid, invalid, encoded
/// separators, overlong UTF-8), case changes, dots, `;` and empty segments.
fn path() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        "/", "/", "/", "api", "API", "admin", "Admin", "health", "Case", "case", "p", "x", "%61",
        "%41", "%6E", "%2f", "%2F", "%2e", "%5c", "%00", "%25", "%c0%af", "%c3%a9", "%zz", "%",
        ".", "..", ";", ";x=1", "-", "~", "%7E", "%3b", "é", " ", "\t", "?", "a=b",
    ]);
    prop::collection::vec(piece, 0..10).prop_map(|parts| {
        let mut p = b"/".to_vec();
        for s in parts {
            p.extend_from_slice(s.as_bytes());
        }
        p
    })
}

fn chosen(config: &Config, path: &str, method: &str) -> String {
    match config.find_route("gw.example.com", path, method) {
        RouteLookup::Found(r) => r.name.to_string(),
        RouteLookup::MethodNotAllowed(allow) => format!("405 {allow}"),
        RouteLookup::NotFound => "404".to_string(),
    }
}

proptest! {
    #[test]
    fn canonicalisation_is_idempotent(raw in path(), merge in prop::bool::ANY) {
        if let Ok(t) = canonicalize(&raw, merge) {
            let once = t.request_target();
            let twice = canonicalize(once.as_bytes(), merge).expect("a canonical target is accepted");
            prop_assert_eq!(twice.request_target(), once.clone());
            prop_assert_eq!(twice.match_path(), t.match_path());
        }
    }

    #[test]
    fn the_forwarded_path_routes_where_the_request_did(
        raw in path(),
        merge in prop::bool::ANY,
        method in prop::sample::select(vec!["GET", "HEAD", "POST", "DELETE", "get", "TRACE"]),
    ) {
        let config = config();
        if let Ok(t) = canonicalize(&raw, merge) {
            let first = chosen(&config, t.match_path(), method);
            // What the upstream receives, read again by the gateway: the same route.
            let forwarded = t.request_target();
            let again = canonicalize(forwarded.as_bytes(), merge).unwrap();
            prop_assert_eq!(chosen(&config, again.match_path(), method), first.clone());
            // Nothing under /api/admin (any case, decoded) reaches another route.
            if first != "admin-api" && !first.starts_with("405") && first != "404" {
                prop_assert!(
                    !t.match_path().to_ascii_lowercase().starts_with("/api/admin/")
                        && !t.match_path().eq_ignore_ascii_case("/api/admin"),
                    "{} routed to {}", t.match_path(), first
                );
            }
        }
    }
}
