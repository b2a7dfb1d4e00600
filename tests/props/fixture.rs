//! One gateway loaded in-process (no listener): issuer `corp` with the throw-away test keys
//! of `tests/keys/` as its `jwks_file`, and the `invoices` route and policy.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis::auth::Verified;
use portcullis::gateway::Gateway;
use portcullis::policy::Refusal;
use serde_json::{json, Value};

pub const ISS: &str = "https://props.idp.test/";
pub const AUD: &str = "https://api.portcullis.test";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub gateway: Gateway,
    runtime: tokio::runtime::Runtime,
}

fn rsa_key() -> jsonwebtoken::EncodingKey {
    let pem = std::fs::read(repo().join("tests/keys/rs256.pem")).unwrap();
    jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()
}

fn ec_key() -> jsonwebtoken::EncodingKey {
    let pem = std::fs::read(repo().join("tests/keys/es256.pem")).unwrap();
    jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap()
}

fn jwk(key: &jsonwebtoken::EncodingKey, alg: jsonwebtoken::Algorithm, kid: &str) -> Value {
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap()
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = json!({"keys": [
            jwk(&rsa_key(), jsonwebtoken::Algorithm::RS256, "k1"),
            jwk(&ec_key(), jsonwebtoken::Algorithm::ES256, "e1"),
        ]});
        std::fs::write(dir.path().join("jwks.json"), keys.to_string()).unwrap();
        let yaml = format!(
            r#"version: 1
listen: "127.0.0.1:8080"
policies: {{ dir: "{policies}" }}
issuers:
  - name: corp
    issuer: "{ISS}"
    jwks_file: "{jwks}"
    audiences: ["{AUD}"]
    algorithms: [RS256, ES256]
routes:
  - name: invoices
    match: {{ path_prefix: /invoices }}
    upstream: "http://127.0.0.1:9"
    auth: {{ issuer: corp }}
    policy: invoices
    policy_body: true
"#,
            policies = repo().join("policies").display(),
            jwks = dir.path().join("jwks.json").display(),
        );
        let path = dir.path().join("props.yaml");
        std::fs::write(&path, yaml).unwrap();
        let gateway = Gateway::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            _dir: dir,
            gateway,
            runtime,
        }
    })
}

impl Fixture {
    /// Verify `token` for issuer `corp` as a request would (cache included).
    pub fn verify(&self, token: &str) -> Result<std::sync::Arc<Verified>, Refusal> {
        self.runtime
            .block_on(self.gateway.verifier.verify(0, token))
            .map(|(v, _)| v)
    }
}

/// Sign `claims` with the test RSA key (kid `k1`) or EC key (kid `e1`).
pub fn sign(claims: &Value, ec: bool) -> String {
    let (alg, key, kid) = if ec {
        (jsonwebtoken::Algorithm::ES256, ec_key(), "e1")
    } else {
        (jsonwebtoken::Algorithm::RS256, rsa_key(), "k1")
    };
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

/// Claims that pass every check, for `sub`.
pub fn good_claims(sub: &str) -> Value {
    let now = now();
    json!({"iss": ISS, "aud": AUD, "sub": sub, "azp": "agent-1", "iat": now - 5,
           "exp": now + 300, "scope": "invoices:read invoices:pay", "dept": "finance"})
}
