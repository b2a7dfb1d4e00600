//! Load-independent cost of the decision core: runs one path a given number of times inside
//! `measured`, to be counted by `valgrind --tool=callgrind --toggle-collect='*measured*'`
//! (instructions, repeatable on a busy machine). `scripts/bench instructions` prints the
//! count per iteration of each path. Run alone: `instructions <path> <iterations>`.

use std::hint::black_box;

use portcullis::policy::Decision;

#[path = "support.rs"]
mod support;
use support::{gateway_on, request, signers, token};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const PATHS: &[&str] = &[
    "token_cache_hit",
    "rego_decision_invoices",
    "rego_decision_invoices_vm",
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
    // `rego_decision_invoices` measures the interpreter; every other path the default.
    let engine = if args[1] == "rego_decision_invoices" {
        "interpreter"
    } else {
        "auto"
    };
    let g = gateway_on(dir.path(), &signers, engine);
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
    let ok = measured(&args[1], iterations, &|path| match path {
        "token_cache_hit" => rt.block_on(g.verifier.verify(0, black_box(&rs))).is_ok(),
        "rego_decision_invoices" | "rego_decision_invoices_vm" => {
            g.decide(0, &verified, black_box(request())).is_ok()
        }
        "authz_path_cached_token_scopes_rego" => {
            let (v, _) = rt
                .block_on(g.authenticate(&route, black_box(&rs)))
                .expect("verifies");
            g.decide(0, &v, request()).is_ok()
        }
        "mcp_parse_tools_call" => portcullis::mcp::parse(black_box(call)).is_ok(),
        _ => portcullis::mcp::filter_tools_json(black_box(&list), |t| !t.ends_with('7')).is_some(),
    });
    assert_eq!(ok, iterations, "every iteration succeeds");
}

/// The counted part: `iterations` runs of `path`; returns how many succeeded.
#[inline(never)]
fn measured(path: &str, iterations: u64, run: &dyn Fn(&str) -> bool) -> u64 {
    let mut ok = 0u64;
    for _ in 0..iterations {
        ok += u64::from(run(black_box(path)));
    }
    ok
}
