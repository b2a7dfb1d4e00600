//! Hostile tokens and header variants: every one is refused with the right status (a Bearer
//! challenge on 401) and the upstream is never reached.

use std::io::{Read, Write};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::fakes::{self, Answer, Fake};
use crate::support::{client, repo, standard};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn part(token: &str, i: usize) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// A token with `header` and `payload` and `sig` as its signature.
fn forge(header: &Value, payload: &Value, sig: &str) -> String {
    format!("{}.{}.{sig}", b64(header), b64(payload))
}

fn signed_by_test_key(header: Value, payload: &Value) -> String {
    let pem = std::fs::read(repo().join("tests/keys/rs256.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = header["kid"].as_str().map(str::to_string);
    h.jku = header["jku"].as_str().map(str::to_string);
    h.x5u = header["x5u"].as_str().map(str::to_string);
    if header.get("jwk").is_some() {
        h.jwk = Some(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
                .unwrap(),
        );
    }
    jsonwebtoken::encode(&h, payload, &key).unwrap()
}

fn hs256(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Raw request (status line, headers) — for header shapes HTTP clients will not send.
fn raw(port: u16, head: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = s.write_all(head.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_tokens_are_refused_and_never_reach_the_upstream() {
    let (op, up, gw) = standard();
    let good = op.alice();
    let header = part(&good, 0);
    let payload = part(&good, 1);
    let sig = good.rsplit('.').next().unwrap().to_string();
    let kid = header["kid"].as_str().unwrap().to_string();
    let jwks: Value = client()
        .get(format!("{}/jwks", op.url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ec_kid = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "EC")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let rsa_n = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()["n"]
        .to_string();
    let with = |k: &str, v: Value| {
        let mut p = payload.clone();
        p[k] = v;
        p
    };
    let hdr = |extra: Value| {
        let mut h = header.clone();
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |body: Value| op.mint(body);
    // A real server with the attacker's key: `jku`/`x5u` point here, and it must never be asked.
    let attacker = Fake::start(Answer::json(&fakes::jwks(&["attacker"])));
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            forge(&hdr(json!({"alg": "none"})), &payload, ""),
        ),
        (
            "alg NONE",
            forge(&hdr(json!({"alg": "NONE"})), &payload, ""),
        ),
        (
            "alg none, no signature segment",
            format!("{}.{}", b64(&hdr(json!({"alg": "none"}))), b64(&payload)),
        ),
        (
            "HS256 signed with the RSA public key",
            hs256(&hdr(json!({"alg": "HS256"})), &payload, rsa_n.as_bytes()),
        ),
        (
            "HS512",
            forge(&hdr(json!({"alg": "HS512"})), &payload, &sig),
        ),
        (
            "RS256 header, EC key id",
            forge(&hdr(json!({"kid": ec_kid})), &payload, &sig),
        ),
        (
            "ES256 header, RSA key id",
            forge(&hdr(json!({"alg": "ES256"})), &payload, &sig),
        ),
        (
            "PS256 not allowed",
            forge(&hdr(json!({"alg": "PS256"})), &payload, &sig),
        ),
        (
            "unknown kid",
            forge(&hdr(json!({"kid": "nope-123"})), &payload, &sig),
        ),
        (
            "path-like kid",
            forge(&hdr(json!({"kid": "../../etc/passwd"})), &payload, &sig),
        ),
        (
            "no kid",
            forge(&json!({"alg": "RS256", "typ": "at+jwt"}), &payload, &sig),
        ),
        (
            "another key, same kid",
            signed_by_test_key(json!({"kid": kid}), &payload),
        ),
        (
            "tampered payload",
            forge(&header, &with("sub", json!("mallory")), &sig),
        ),
        (
            "tampered scope",
            forge(
                &header,
                &with(
                    "scope",
                    json!("invoices:read invoices:pay admin:delete_all"),
                ),
                &sig,
            ),
        ),
        (
            "tampered header",
            forge(&hdr(json!({"typ": "JWT"})), &payload, &sig),
        ),
        ("two segments", good.rsplit_once('.').unwrap().0.to_string()),
        ("JWE-shaped, five segments", format!("{good}.a.b")),
        ("four segments", format!("{good}.x")),
        ("non-base64url characters", good.replacen('.', ".*", 1)),
        ("padded segments", good.replace('.', "==.")),
        ("whitespace inside", good.replacen('.', ". ", 1)),
        (
            "jku to an attacker key",
            signed_by_test_key(json!({"kid": "attacker", "jku": attacker.url()}), &payload),
        ),
        (
            "x5u to an attacker cert",
            signed_by_test_key(json!({"kid": "attacker", "x5u": attacker.url()}), &payload),
        ),
        (
            "embedded jwk",
            signed_by_test_key(json!({"kid": "attacker", "jwk": true}), &payload),
        ),
        (
            "jwk header with the real kid",
            signed_by_test_key(json!({"kid": kid, "jwk": true}), &payload),
        ),
        (
            "expired",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"exp": now - 600, "dept": "finance"}}),
            ),
        ),
        (
            "nbf in the future",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"nbf": now + 3600, "dept": "finance"}}),
            ),
        ),
        (
            "iat in the future",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"iat": now + 3600, "dept": "finance"}}),
            ),
        ),
        (
            "missing exp",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "unset": ["exp"], "set": {"dept": "finance"}}),
            ),
        ),
        (
            "exp as a string",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"exp": (now + 600).to_string(), "dept": "finance"}}),
            ),
        ),
        (
            "wrong issuer",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"iss": "https://evil.test", "dept": "finance"}}),
            ),
        ),
        (
            "wrong audience",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "resource": "https://other.test", "set": {"dept": "finance"}}),
            ),
        ),
        (
            "audience array without ours",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"aud": ["https://a.test", "https://b.test"], "dept": "finance"}}),
            ),
        ),
        (
            "missing sub",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "unset": ["sub"], "set": {"dept": "finance"}}),
            ),
        ),
        (
            "empty sub",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"sub": "", "dept": "finance"}}),
            ),
        ),
        (
            "numeric sub",
            mint(
                json!({"sub": "alice", "scope": "invoices:read", "set": {"sub": 42, "dept": "finance"}}),
            ),
        ),
        (
            "scope not a string",
            mint(json!({"sub": "alice", "set": {"scope": 7, "dept": "finance"}})),
        ),
    ];
    // Signed by the OP's own key, so only the header can be the reason for refusing them.
    let crit = op.sign(
        json!({"crit": ["x-portcullis-unknown"], "x-portcullis-unknown": 1}),
        &payload,
    );
    let crit_b64 = op.sign(json!({"crit": ["b64"], "b64": false}), &payload);
    let mut cases = cases;
    cases.push(("unknown crit, signed by the issuer's key", crit));
    cases.push(("crit b64=false, signed by the issuer's key", crit_b64));
    assert!(cases.len() >= 35, "{} cases", cases.len());
    for (name, token) in &cases {
        let r = client()
            .get(gw.url("/invoices/finance/INV-1"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.text().unwrap();
        assert_eq!(status, 401, "{name}: {body}");
        let c = challenge.unwrap_or_default();
        assert!(
            c.starts_with("Bearer ") && c.contains("invalid_token"),
            "{name}: {c}"
        );
        assert!(
            !body.contains(token.as_str()) || token.len() < 20,
            "{name}: the body echoes the token"
        );
    }

    // Header variants.
    let get = |auth: Option<&str>| {
        let mut r = client().get(gw.url("/invoices/finance/INV-1"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().unwrap();
        (
            r.status().as_u16(),
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string()),
        )
    };
    for (name, auth) in [
        ("empty bearer", "Bearer "),
        ("scheme only", "Bearer"),
        ("Basic", "Basic YWxpY2U6cHc="),
        ("token without scheme", good.as_str()),
    ] {
        let (status, challenge) = get(Some(auth));
        assert_eq!(status, 401, "{name}");
        assert!(challenge.unwrap().starts_with("Bearer"), "{name}");
    }
    let query = client()
        .get(gw.url(&format!("/invoices/finance/INV-1?access_token={good}")))
        .send()
        .unwrap();
    assert_eq!(
        query.status(),
        401,
        "a token in the query string is not accepted"
    );
    let c = query.headers().get("www-authenticate").unwrap();
    assert!(c.to_str().unwrap().starts_with("Bearer"), "{c:?}");
    let two = raw(gw.port, &format!("GET /invoices/finance/INV-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"));
    assert!(
        two.starts_with("HTTP/1.1 400"),
        "two Authorization headers: {two}"
    );
    let huge = raw(gw.port, &format!("GET /invoices/finance/INV-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", "a".repeat(200_000)));
    // Over the configured head limit (64 KiB by default) → 431, or a 400 from pingora's parser.
    assert!(
        huge.starts_with("HTTP/1.1 431") || huge.starts_with("HTTP/1.1 400"),
        "a huge header: {}",
        &huge[..huge.len().min(60)]
    );
    assert_eq!(attacker.accepted(), 0, "jku/x5u were followed");
    assert!(
        up.requests().is_empty(),
        "a hostile request reached the upstream"
    );
    // The good token still works afterwards, and so does an OP-signed token with a plain
    // header: the refusals above are the headers', not the signing hook's.
    assert_eq!(get(Some(&format!("Bearer {good}"))).0, 200);
    let plain = op.sign(json!({}), &payload);
    assert_eq!(get(Some(&format!("Bearer {plain}"))).0, 200);
}
