//! The command line: `check` (config errors with file, field and line) and `policy test`.

use std::process::Command;

use crate::support::repo;

fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The secrets the example config names (as scripts/demo sets them).
const DEMO_ENV: &[(&str, &str)] = &[
    ("PORTCULLIS_ADMIN_TOKEN", "demo-admin-token"),
    ("PORTCULLIS_CLIENT_SECRET", "portcullis-secret"),
    ("PORTCULLIS_GITHUB_SECRET", "agent-1-secret"),
    (
        "PORTCULLIS_VAULT_KEY",
        "demo:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ),
];

#[test]
fn every_shipped_config_passes_check() {
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["check", "--config", path.to_str().unwrap()])
                .envs(DEMO_ENV.iter().copied())
                .output()
                .unwrap();
            let (code, out, err) = (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
            if code != 0 || !out.contains("OK") {
                failures.push(format!("{}: {err}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

const GOOD: &str = r#"version: 1
listen: "127.0.0.1:8080"
issuers:
  - name: corp
    issuer: "https://idp.example.com/"
    jwks_uri: "https://idp.example.com/jwks"
    audiences: ["api"]
    roles: { claim: roles, grants: { viewer: ["invoices:read"] } }
routes:
  - name: invoices
    match: { path_prefix: /invoices }
    upstream: "http://127.0.0.1:9000"
    auth:
      issuer: corp
      require_scopes: ["invoices:read"]
    policy: invoices
"#;

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = yaml.replace(
        "version: 1\n",
        &format!(
            "version: 1\npolicies: {{ dir: \"{}\" }}\n",
            repo().join("policies").display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = portcullis(&["check", "--config", path.to_str().unwrap()]);
    (code, err)
}

#[test]
fn config_errors_name_file_field_and_line() {
    assert_eq!(check(GOOD).0, 0, "{}", check(GOOD).1);
    // (mutation, expected fragments of the message); line numbers count the inserted
    // `policies:` line 2.
    let cases: Vec<(String, Vec<&str>)> = vec![
        (GOOD.replace("issuer: corp", "issuer: corpx"), vec!["bad.yaml:15:", "routes[0].auth.issuer", "unknown issuer 'corpx'"]),
        (GOOD.replace("policy: invoices", "policy: missing"), vec!["bad.yaml:17:", "routes[0].policy", "missing"]),
        (GOOD.replace("invoices:read\"]\n    policy", "invoices:write\"]\n    policy"), vec!["bad.yaml:16:", "require_scopes", "granted by no role"]),
        (GOOD.replace("    match: {", "    colour: blue\n    match: {"), vec!["bad.yaml:12:5:", "routes[0]", "unknown field `colour`"]),
        (GOOD.replace("127.0.0.1:8080", "127.0.0.1:99999"), vec!["bad.yaml:3:", "listen", "not an IP:port"]),
        (GOOD.replace("version: 1", "version: 7"), vec!["bad.yaml:1:", "version", "unsupported version 7"]),
        (GOOD.replace("http://127.0.0.1:9000", "ftp://x"), vec!["bad.yaml:13:", "routes[0].upstream", "scheme"]),
        (GOOD.replace("    auth:\n      issuer: corp\n      require_scopes: [\"invoices:read\"]\n    policy: invoices\n", ""), vec!["routes[0]", "needs `auth:`"]),
        (GOOD.replace("audiences: [\"api\"]", "audiences: [\"api\"]\n    algorithms: [HS256]"), vec!["issuers[0].algorithms", "HS256", "not allowed"]),
        (GOOD.replace("8080\"\n", "8080\"\nlimits: { max_header_bytes: 0 }\n"), vec!["bad.yaml:4:", "limits.max_header_bytes", "greater than 0"]),
        (GOOD.replace("8080\"\n", "8080\"\nlimits:\n  max_header_bytes: 2000000\n"), vec!["bad.yaml:5:", "limits.max_header_bytes", "at most 1048575"]),
        (GOOD.replace("8080\"\n", "8080\"\nlimits: { jwks_max_bytes: 0 }\n"), vec!["bad.yaml:4:", "limits.jwks_max_bytes", "greater than 0"]),
        (GOOD.replace("8080\"\n", "8080\"\nlimits: { max_connections: 10 }\n"), vec!["bad.yaml:4:", "unknown field `max_connections`"]),
    ];
    for (yaml, needles) in cases {
        let (code, err) = check(&yaml);
        assert_eq!(code, 1, "accepted:\n{yaml}");
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
    }
}

#[test]
fn policy_test_runs_the_shipped_tests_and_fails_on_a_broken_one() {
    let (code, out, err) =
        portcullis(&["policy", "test", repo().join("policies").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("data.invoices_test.test_read_own_department: PASS"),
        "{out}"
    );
    assert!(out.contains("PASS: "));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), "package p\nx := 1\n").unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package p_test\nimport data.p\ntest_one if p.x == 1\ntest_two if p.x == 2\n",
    )
    .unwrap();
    let (code, out, _) = portcullis(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("data.p_test.test_two: FAIL"), "{out}");
    assert!(out.contains("FAIL: 1/2"), "{out}");
}
