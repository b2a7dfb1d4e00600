//! Who is calling: JWT verification, agent and scope checks, role → scope mapping.

use serde_json::json;

use crate::support::{parts, standard};

#[test]
fn allowed_request_reaches_upstream_without_the_users_token() {
    let (op, up, gw) = standard();
    let token = op.alice();
    let r = gw.get("/invoices/finance/INV-1", Some(&token));
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        r.headers().get("x-upstream-hop").is_none(),
        "hop-by-hop header leaked downstream"
    );
    let seen = up.last();
    assert_eq!(seen.path, "/invoices/finance/INV-1");
    assert_eq!(
        seen.header("authorization"),
        None,
        "the user's token reached the upstream"
    );
    assert_eq!(seen.header("x-request-id"), Some(request_id.as_str()));
    assert_eq!(
        seen.header("host"),
        Some(format!("127.0.0.1:{}", up.port).as_str())
    );
}

#[test]
fn request_id_is_propagated_and_token_forwarded_only_when_opted_in() {
    let (op, up, gw) = standard();
    let token = op.alice();
    let r = crate::support::client()
        .get(gw.url("/echo-token/x"))
        .bearer_auth(&token)
        .header("x-request-id", "abc-123")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let seen = up.last();
    assert_eq!(seen.header("x-request-id"), Some("abc-123"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[test]
fn missing_and_invalid_tokens_get_401_with_a_bearer_challenge() {
    let (op, up, gw) = standard();
    let (status, challenge, body) = parts(gw.get("/invoices/finance/INV-1", None));
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"portcullis\""));
    assert_eq!(body["error"], "invalid_token");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cases = [
        ("garbage", "not-a-jwt".to_string(), "not a well-formed"),
        (
            "expired",
            op.mint(json!({"sub": "alice", "scope": "invoices:read", "set": {"exp": now - 600, "dept": "finance"}})),
            "expired",
        ),
        (
            "wrong audience",
            op.mint(json!({"sub": "alice", "scope": "invoices:read", "resource": "https://other.test"})),
            "audience",
        ),
        (
            "wrong issuer",
            op.mint(json!({"sub": "alice", "scope": "invoices:read", "set": {"iss": "https://evil.test"}})),
            "issuer",
        ),
        (
            "no sub",
            op.mint(json!({"sub": "alice", "scope": "invoices:read", "unset": ["sub"]})),
            "sub",
        ),
        (
            "not yet valid",
            op.mint(json!({"sub": "alice", "scope": "invoices:read", "set": {"nbf": now + 3600}})),
            "not valid yet",
        ),
    ];
    for (name, token, needle) in cases {
        let (status, challenge, body) = parts(gw.get("/invoices/finance/INV-1", Some(&token)));
        assert_eq!(status, 401, "{name}: {body}");
        let challenge = challenge.unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(needle), "{name}: {description}");
        assert!(
            !body.to_string().contains(&token),
            "{name}: the body echoes the token"
        );
    }
    assert!(
        up.requests().is_empty(),
        "a refused request reached the upstream"
    );
}

#[test]
fn missing_scope_is_403_insufficient_scope() {
    let (op, up, gw) = standard();
    let token =
        op.mint(json!({"sub": "alice", "scope": "invoices:read", "set": {"dept": "finance"}}));
    let (status, challenge, body) = parts(gw.get("/payments/1", Some(&token)));
    assert_eq!(status, 403);
    let challenge = challenge.unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"invoices:pay\""), "{challenge}");
    assert_eq!(body["error"], "insufficient_scope");
    assert!(up.requests().is_empty());
}

#[test]
fn agent_allow_list_uses_azp_then_client_id() {
    let (op, up, gw) = standard();
    let other = op.mint(json!({"sub": "alice", "client_id": "agent-2", "scope": "invoices:read", "set": {"dept": "finance"}}));
    let (status, _, body) = parts(gw.get("/invoices/finance/INV-1", Some(&other)));
    assert_eq!(status, 403);
    assert_eq!(body["error"], "access_denied");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("agent"));
    // no azp: client_id names the agent
    let no_azp = op.mint(
        json!({"sub": "alice", "client_id": "agent-1", "scope": "invoices:read",
                                "set": {"dept": "finance"}, "unset": ["azp"]}),
    );
    assert_eq!(
        gw.get("/invoices/finance/INV-1", Some(&no_azp)).status(),
        200
    );
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn scopes_from_scp_array() {
    let (op, _up, gw) = standard();
    let token = op.mint(
        json!({"sub": "alice", "set": {"scp": ["invoices:read", "invoices:pay"], "dept": "finance"},
                               "unset": ["scope"]}),
    );
    assert_eq!(gw.get("/payments/1", Some(&token)).status(), 200);
    assert_eq!(
        gw.get("/invoices/finance/INV-1", Some(&token)).status(),
        200
    );
}

#[test]
fn roles_cap_the_agents_scopes() {
    let (op, up, gw) = standard();
    // bob is a viewer: his token says invoices:pay, his role does not grant it.
    let bob = op.mint(
        json!({"sub": "bob", "scope": "invoices:read invoices:pay", "set": {"dept": "finance"}}),
    );
    let (status, _, body) = parts(gw.get("/payments/1", Some(&bob)));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(gw.get("/invoices/finance/INV-1", Some(&bob)).status(), 200);
    // alice (finance) may pay
    assert_eq!(gw.get("/payments/1", Some(&op.alice())).status(), 200);
    // a user without any mapped role gets nothing
    let nobody = op.mint(json!({"sub": "carol", "scope": "invoices:read", "set": {"roles": ["intern"], "dept": "finance"}}));
    assert_eq!(
        gw.get("/invoices/finance/INV-1", Some(&nobody)).status(),
        403
    );
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn es256_tokens_verify() {
    let (op, _up, gw) = standard();
    let token = op.mint(json!({"sub": "alice", "scope": "invoices:read", "resource": "https://es256.api.portcullis.test",
                               "set": {"dept": "finance"}}));
    let header = token.split('.').next().unwrap();
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    assert!(String::from_utf8(header).unwrap().contains("ES256"));
    assert_eq!(
        gw.get("/invoices/finance/INV-1", Some(&token)).status(),
        200
    );
}
