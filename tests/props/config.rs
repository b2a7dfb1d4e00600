//! Config parsing: random text and randomly damaged configurations never panic; a failure
//! is an error that names the file.

use std::path::PathBuf;

use portcullis::config::Source;
use proptest::prelude::{prop, prop_assert, prop_oneof, proptest, Just};
use proptest::strategy::Strategy;

use crate::fixture::repo;

fn good() -> String {
    format!(
        r#"version: 1
listen: "127.0.0.1:8080"
admin: {{ listen: "127.0.0.1:9901" }}
policies: {{ dir: "{}", timeout_ms: 50 }}
limits: {{ token_cache_entries: 10, jwks_max_bytes: 4096, max_header_bytes: 8192 }}
issuers:
  - name: corp
    issuer: "https://idp.example.com/"
    jwks_uri: "http://127.0.0.1:1/jwks"
    audiences: ["api"]
    algorithms: [RS256]
    jwks: {{ timeout_ms: 100 }}
approvals: {{ max_pending: 5 }}
routes:
  - name: invoices
    match: {{ path_prefix: /invoices, methods: [GET] }}
    upstream: "http://127.0.0.1:9000"
    auth: {{ issuer: corp, require_scopes: ["invoices:read"] }}
    policy: invoices
    policy_body: true
    max_body_bytes: 1024
    timeouts: {{ connect_ms: 100 }}
    rate_limit: {{ agent: {{ per_second: 1, burst: 2 }} }}
"#,
        repo().join("policies").display()
    )
}

fn parse(text: String) -> Result<(), String> {
    let file = PathBuf::from("/props/portcullis.yaml");
    let source = Source {
        file: file.clone(),
        text,
    };
    match source.parse() {
        Ok(_) => Ok(()),
        Err(e) if e.file == file && e.to_string().starts_with("/props/portcullis.yaml") => Ok(()),
        Err(e) => Err(format!("error without the file: {e}")),
    }
}

/// Values without host names (validation resolves upstream hosts).
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "0",
        "-1",
        "1",
        "65536",
        "99999999999999999999",
        "1e999",
        "true",
        "null",
        "~",
        "[]",
        "{}",
        "\"\"",
        "'",
        "\"",
        "{",
        "[",
        "}",
        "]",
        ":",
        "- ",
        "&a",
        "*a",
        "!!binary",
        "!!str",
        "%",
        "@",
        "`",
        "|",
        ">",
        "#",
        ",",
        "?",
        "\t",
        "  ",
        "http://127.0.0.1:0",
        "ftp://127.0.0.1",
        "corp",
        "/x",
        "[RS256, HS256]",
        "{ a: 1 }",
        "<<: *a",
        "\\u0000",
    ])
}

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value after the first `:` of a line.
    Value(usize, &'static str),
    Delete(usize),
    Duplicate(usize),
    /// Insert a token at a byte offset.
    Insert(usize, &'static str),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..30usize, token()).prop_map(|(l, t)| Edit::Value(l, t)),
        (0..30usize).prop_map(Edit::Delete),
        (0..30usize).prop_map(Edit::Duplicate),
        (0..1200usize, token()).prop_map(|(o, t)| Edit::Insert(o, t)),
        (0..1200usize).prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut tail = None;
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Value(l, t) => {
                let line = &mut lines[l % n];
                if let Some(i) = line.find(':') {
                    line.truncate(i + 1);
                    line.push(' ');
                    line.push_str(t);
                }
            }
            Edit::Delete(l) if !lines.is_empty() => {
                lines.remove(l % n);
            }
            Edit::Duplicate(l) if !lines.is_empty() => {
                let line = lines[l % n].clone();
                lines.insert(l % n, line);
            }
            Edit::Insert(o, t) => tail = Some((*o, *t)),
            Edit::Truncate(o) => tail = Some((*o, "")),
            _ => {}
        }
    }
    let mut out = lines.join("\n");
    if let Some((o, t)) = tail {
        let mut at = o % (out.len() + 1);
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        if t.is_empty() {
            out.truncate(at);
        } else {
            out.insert_str(at, t);
        }
    }
    out
}

proptest! {
    #[test]
    fn random_text_never_panics(text in prop_oneof![
        "\\PC{0,400}",
        prop::collection::vec(prop_oneof![
            token().prop_map(str::to_string),
            Just("\n".to_string()), Just("version: 1\n".to_string()), Just("routes:\n".to_string()),
            Just("  - name: r\n".to_string()), Just("listen: ".to_string()),
            Just("issuers:\n".to_string()), Just("limits: ".to_string()),
        ], 0..40).prop_map(|v| v.concat()),
    ]) {
        let r = parse(text);
        prop_assert!(r.is_ok(), "{:?}", r);
    }

    #[test]
    fn damaged_configs_never_panic_and_errors_name_the_file(
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let r = parse(apply(&good(), &edits));
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

#[test]
fn the_undamaged_config_is_valid() {
    let file = PathBuf::from("/props/portcullis.yaml");
    let r = Source { file, text: good() }.parse();
    assert!(r.is_ok(), "{:?}", r.err());
}
