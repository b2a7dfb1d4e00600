//! Load-independent cost of the decision core: runs one path a given number of times, to be
//! counted by `valgrind --tool=callgrind` (instructions, repeatable on a busy machine).
//! `scripts/bench instructions` runs each path with 0 and N iterations and prints the
//! difference per iteration. Run alone: `instructions <path> <iterations>`.

use std::hint::black_box;

use portcullis::policy::Decision;

#[path = "support.rs"]
mod support;
use support::{gateway, request, signers, token};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const PATHS: &[&str] = &[
    "token_cache_hit",
    "rego_decision_invoices",
    "authz_path_cached_token_scopes_rego",
    "mcp_parse_tools_call",
    "mcp_tools_list_filter_100",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || !PATHS.contains(&args[1].as_str()) {
        eprintln!("usage: instructions <{}> <iterations>", PATHS.join("|"));
        std::process::exit(2);
    }
    let iterations: u64 = args[2].parse().expect("iterations");
    let dir = tempfile::tempdir().expect("tempdir");
    let signers = signers();
    let g = gateway(dir.path(), &signers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let route = g.config.routes[0].clone();
    let rs = token(&signers[0], "alice");
    let (verified, _) = rt.block_on(g.authenticate(&route, &rs)).expect("verifies");
    assert_eq!(g.decide(0, &verified, request()), Ok(Decision::Allow));
    let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"pay_invoice","arguments":{"invoice_id":"INV-42","amount":5000}}}"#;
    let tools: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"name": format!("tool_{i}"), "description": "does a thing", "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}}}))
        .collect();
    let list =
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string();
    let mut ok = 0u64;
    for _ in 0..iterations {
        let done = match args[1].as_str() {
            "token_cache_hit" => rt.block_on(g.verifier.verify(0, black_box(&rs))).is_ok(),
            "rego_decision_invoices" => g.decide(0, &verified, black_box(request())).is_ok(),
            "authz_path_cached_token_scopes_rego" => {
                let (v, _) = rt
                    .block_on(g.authenticate(&route, black_box(&rs)))
                    .expect("verifies");
                g.decide(0, &v, request()).is_ok()
            }
            "mcp_parse_tools_call" => portcullis::mcp::parse(black_box(call)).is_ok(),
            _ => portcullis::mcp::filter_tools_json(black_box(&list), |t| !t.ends_with('7'))
                .is_some(),
        };
        ok += u64::from(done);
    }
    assert_eq!(ok, iterations, "every iteration succeeds");
}
