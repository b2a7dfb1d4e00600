//! Shared set-up of the decision-core benches: throw-away signing keys, tokens, and a gateway
//! loaded from a temporary config (issuer with a JWKS file, the example policies).

#![allow(dead_code)] // shared by two bench binaries, each using a part

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use portcullis::gateway::Gateway;
use portcullis::policy::input::RequestInfo;

pub const ISSUER: &str = "https://idp.bench.test";
pub const AUDIENCE: &str = "https://api.bench.test";

pub struct Signer {
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: &'static str,
}

pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

pub fn signers() -> Vec<Signer> {
    let read = |name: &str| std::fs::read(keys_dir().join(name)).expect("bench key");
    vec![
        Signer {
            key: EncodingKey::from_rsa_pem(&read("rs256.pem")).expect("RSA key"),
            alg: Algorithm::RS256,
            kid: "bench-rs256",
        },
        Signer {
            key: EncodingKey::from_ec_pem(&read("es256.pem")).expect("EC key"),
            alg: Algorithm::ES256,
            kid: "bench-es256",
        },
    ]
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn token(s: &Signer, sub: &str) -> String {
    let mut header = Header::new(s.alg);
    header.kid = Some(s.kid.to_string());
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "azp": "agent-1",
        "iat": now(), "exp": now() + 3600,
        "scope": "invoices:read invoices:pay", "roles": ["finance"], "dept": "finance",
    });
    jsonwebtoken::encode(&header, &claims, &s.key).expect("sign")
}

/// A gateway loaded from a temporary config: issuer with a JWKS file, the example policy.
pub fn gateway(dir: &Path, signers: &[Signer]) -> Gateway {
    gateway_on(dir, signers, "interpreter")
}

/// The same, with `policies.engine` set to `engine` (`interpreter`, `auto` or `vm`).
pub fn gateway_on(dir: &Path, signers: &[Signer], engine: &str) -> Gateway {
    let keys: Vec<Jwk> = signers
        .iter()
        .map(|s| {
            let mut jwk = Jwk::from_encoding_key(&s.key, s.alg).expect("jwk");
            jwk.common.key_id = Some(s.kid.to_string());
            jwk
        })
        .collect();
    let jwks = serde_json::to_string(&JwkSet { keys }).expect("jwks");
    std::fs::write(dir.join("jwks.json"), jwks).expect("write jwks");
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let yaml = format!(
        r#"version: 1
listen: "127.0.0.1:18080"
policies: {{ dir: "{}", engine: {engine}, timeout_ms: 10000 }}
issuers:
  - name: corp
    issuer: "{ISSUER}"
    jwks_file: jwks.json
    audiences: ["{AUDIENCE}"]
    algorithms: [RS256, ES256]
    roles: {{ claim: roles, grants: {{ finance: ["invoices:read", "invoices:pay"], viewer: ["invoices:read"] }} }}
clients:
  - {{ name: gw, token_endpoint: "http://127.0.0.1:9/token", client_id: portcullis, client_secret_file: secret.txt }}
routes:
  - name: invoices
    match: {{ path_prefix: /invoices }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"], agents: ["agent-1"] }}
    policy: invoices
  - name: billing
    match: {{ path_prefix: /billing }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    credentials:
      token_exchange: {{ client: gw, resource: ["https://billing.test"] }}
"#,
        policies.display()
    );
    std::fs::write(dir.join("secret.txt"), "bench-secret").expect("write secret");
    let path = dir.join("bench.yaml");
    std::fs::write(&path, yaml).expect("write config");
    Gateway::load(&path).expect("bench config loads")
}

pub fn request() -> RequestInfo<'static> {
    RequestInfo {
        method: "GET",
        path: "/invoices/finance/INV-42",
        query: None,
        host: "api.bench.test",
        headers: vec![("accept", "application/json")],
        body: None,
        mcp: None,
    }
}
