//! The policy input document (documented in README, "Policy input"):
//!
//! ```json
//! { "route": "invoices",
//!   "request": { "method": "GET", "path": "/invoices/42", "host": "api.example.com",
//!                "query": "a=1", "query_params": {"a": ["1"]}, "headers": {"x-tenant": "acme"} },
//!   "subject": { "sub": "alice", "agent": "agent-1", "issuer": "corp",
//!                "scopes": [...effective], "token_scopes": [...], "roles": [...], "claims": {...} },
//!   "body": {...},      // only on routes with `policy_body: true`
//!   "credentials": {"mode": "token_exchange", "connection": "..."} }  // routes with `credentials:`
//! ```

use std::collections::BTreeMap;

use regorus::Value;

use crate::claims::Identity;

/// Headers never given to a policy: they carry credentials.
pub const SENSITIVE_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// Whether a policy sees request header `name` (lower-case): the route's `policy_headers`
/// when set, else every header but the credential-bearing ones. One rule for the proxy,
/// ext_authz and `explain`.
pub fn policy_sees(name: &str, allowed: Option<&[String]>) -> bool {
    match allowed {
        Some(list) => list.iter().any(|a| a == name),
        None => !SENSITIVE_HEADERS.contains(&name),
    }
}

/// The request as the policy sees it. Header names are lower-case.
#[derive(Debug, Default)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<serde_json::Value>,
    /// `input.mcp` on MCP routes: method, tool, arguments, uri, prompt.
    pub mcp: Option<serde_json::Value>,
}

fn strings(items: &[String]) -> Value {
    Value::from(
        items
            .iter()
            .map(|s| Value::from(s.as_str()))
            .collect::<Vec<_>>(),
    )
}

fn obj(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::from(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// `input.subject` for a verified identity. Built once per token and cached with it.
pub fn subject_value(id: &Identity) -> Value {
    obj([
        ("sub", Value::from(id.sub.as_str())),
        (
            "agent",
            id.agent.as_deref().map_or(Value::Null, Value::from),
        ),
        ("issuer", Value::from(&*id.issuer)),
        ("scopes", strings(&id.scopes)),
        ("token_scopes", strings(&id.token_scopes)),
        ("roles", strings(&id.roles)),
        (
            "claims",
            Value::from(serde_json::Value::Object(id.claims.clone())),
        ),
    ])
}

fn query_params(query: &str) -> Value {
    let mut map: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        map.entry(Value::from(k.as_ref()))
            .or_default()
            .push(Value::from(v.as_ref()));
    }
    Value::from(
        map.into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// `input.credentials` of a route that swaps tokens: `{"mode": ..., "connection": ...}`.
pub fn credentials_value(mode: &str, connection: Option<&str>) -> Value {
    let mut entries = vec![("mode", Value::from(mode))];
    if let Some(c) = connection {
        entries.push(("connection", Value::from(c)));
    }
    obj(entries)
}

/// The whole input document.
pub fn build(
    route: &str,
    req: RequestInfo<'_>,
    subject: &Value,
    credentials: Option<&Value>,
) -> Value {
    let headers = Value::from(
        req.headers
            .iter()
            .map(|(k, v)| (Value::from(*k), Value::from(*v)))
            .collect::<BTreeMap<_, _>>(),
    );
    let mut request = vec![
        ("method", Value::from(req.method)),
        ("path", Value::from(req.path)),
        ("host", Value::from(req.host)),
        ("headers", headers),
    ];
    if let Some(q) = req.query {
        request.push(("query", Value::from(q)));
        request.push(("query_params", query_params(q)));
    }
    let mut top = vec![
        ("route", Value::from(route)),
        ("request", obj(request)),
        ("subject", subject.clone()),
    ];
    if let Some(body) = req.body {
        top.push(("body", Value::from(body)));
    }
    if let Some(mcp) = req.mcp {
        top.push(("mcp", Value::from(mcp)));
    }
    if let Some(c) = credentials {
        top.push(("credentials", c.clone()));
    }
    obj(top)
}

#[cfg(test)]
mod tests {
    use super::{build, subject_value, RequestInfo};
    use crate::claims::Identity;
    use regorus::Value;

    #[test]
    fn input_shape() {
        let id = Identity {
            issuer: "corp".into(),
            sub: "alice".into(),
            agent: Some("agent-1".into()),
            token_scopes: vec!["a".into()],
            scopes: vec!["a".into()],
            roles: vec!["finance".into()],
            exp: 1,
            claims: serde_json::json!({"sub": "alice", "dept": "finance"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let req = RequestInfo {
            method: "GET",
            path: "/invoices/1",
            query: Some("a=1&a=2&b=x"),
            host: "h",
            headers: vec![("x-tenant", "acme")],
            body: Some(serde_json::json!({"amount": 5})),
            mcp: None,
        };
        let creds = super::credentials_value("vault", Some("github"));
        let v = build("invoices", req, &subject_value(&id), Some(&creds));
        assert_eq!(v["credentials"]["connection"], Value::from("github"));
        assert_eq!(v["route"], Value::from("invoices"));
        assert_eq!(v["request"]["method"], Value::from("GET"));
        assert_eq!(v["request"]["headers"]["x-tenant"], Value::from("acme"));
        assert_eq!(v["request"]["query_params"]["a"][1], Value::from("2"));
        assert_eq!(v["subject"]["agent"], Value::from("agent-1"));
        assert_eq!(v["subject"]["claims"]["dept"], Value::from("finance"));
        assert_eq!(v["body"]["amount"], Value::from(5u64));
    }
}
