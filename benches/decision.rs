//! Benchmarks of the decision core (no network, no pingora): verified-token cache hit, JWT
//! verification on a cache miss (RS256, ES256), role → scope mapping, the example Rego policy,
//! and the whole authorization path (cache hit + identity checks + Rego).
//!
//! Run: `cargo bench --bench decision` (numbers in README, "Benchmarks").

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use portcullis::credentials::cache::{self, UpstreamToken};
use portcullis::policy::Decision;
use portcullis::roles::RoleMap;
use portcullis::secret::Secret;

#[path = "support.rs"]
mod support;
use support::{gateway, gateway_on, now, request, signers, token};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let signers = signers();
    let g = gateway(dir.path(), &signers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let route = g.config.routes[0].clone();
    let rs = token(&signers[0], "alice");
    let es = token(&signers[1], "alice");

    // Warm the cache with the RS256 token.
    let (verified, _) = rt.block_on(g.authenticate(&route, &rs)).expect("verifies");
    assert_eq!(g.decide(0, &verified, request()), Ok(Decision::Allow));
    assert!(rt.block_on(g.authenticate(&route, &es)).is_ok());

    c.bench_function("token_cache_hit", |b| {
        b.iter(|| rt.block_on(g.verifier.verify(0, black_box(&rs))).is_ok())
    });
    for (name, tok) in [
        ("jwt_verify_miss_rs256", &rs),
        ("jwt_verify_miss_es256", &es),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(g.verifier.verify_uncached(0, black_box(tok), now()))
                    .is_ok()
            })
        });
    }

    let mut grants = BTreeMap::new();
    grants.insert(
        "finance".to_string(),
        vec!["invoices:read".to_string(), "invoices:pay".to_string()],
    );
    grants.insert("viewer".to_string(), vec!["invoices:read".to_string()]);
    let map = RoleMap::new("roles".into(), grants);
    let token_scopes: Vec<String> = ["invoices:read", "invoices:pay", "admin:delete_all"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let roles = vec!["viewer".to_string()];
    c.bench_function("role_scope_mapping", |b| {
        b.iter(|| map.effective_scopes(black_box(&token_scopes), black_box(&roles)))
    });

    c.bench_function("rego_decision_invoices", |b| {
        b.iter(|| g.decide(0, &verified, black_box(request())).is_ok())
    });
    let vm_dir = tempfile::tempdir().expect("tempdir");
    let g_vm = gateway_on(vm_dir.path(), &signers, "auto");
    assert_eq!(g_vm.decide(0, &verified, request()), Ok(Decision::Allow));
    c.bench_function("rego_decision_invoices_vm", |b| {
        b.iter(|| g_vm.decide(0, &verified, black_box(request())).is_ok())
    });

    // Exchanged-token cache hit: fill the slot once (the token endpoint is never called).
    let billing = g.config.routes[1].clone();
    let spec = billing.credentials.clone().expect("credentials");
    let id = &verified.identity;
    let slot = cache::key(&billing.name, &id.issuer, &id.sub, id.agent.as_deref());
    rt.block_on(
        g.credentials
            .cache
            .get_or_fetch(slot, &id.sub, now(), u64::MAX, || async {
                Ok(UpstreamToken {
                    value: Secret::new("upstream-token".into()),
                    valid_until: now() + 3600,
                })
            }),
    )
    .expect("cache filled");
    c.bench_function("exchanged_token_cache_hit", |b| {
        b.iter(|| {
            rt.block_on(
                g.credentials
                    .upstream_token(&billing, &spec, &verified, black_box(&rs)),
            )
            .is_ok()
        })
    });
    c.bench_function("authz_path_cached_token_exchange", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (v, _) = g
                    .authenticate(&billing, black_box(&rs))
                    .await
                    .expect("verifies");
                g.credentials
                    .upstream_token(&billing, &spec, &v, &rs)
                    .await
                    .is_ok()
            })
        })
    });

    // MCP: parse a tools/call, and parse + filter a 100-tool tools/list response.
    let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"pay_invoice","arguments":{"invoice_id":"INV-42","amount":5000}}}"#;
    c.bench_function("mcp_parse_tools_call", |b| {
        b.iter(|| portcullis::mcp::parse(black_box(call)).is_ok())
    });
    let tools: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"name": format!("tool_{i}"), "description": "does a thing", "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}}}))
        .collect();
    let list = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string();
    c.bench_function("mcp_tools_list_filter_100", |b| {
        b.iter(|| portcullis::mcp::filter_tools_json(black_box(&list), |t| !t.ends_with('7')))
    });

    // The default evaluator (`auto`: the Rego VM for this policy).
    let route_vm = g_vm.config.routes[0].clone();
    c.bench_function("authz_path_cached_token_scopes_rego", |b| {
        b.iter(|| {
            let (v, _) = rt
                .block_on(g_vm.authenticate(&route_vm, black_box(&rs)))
                .expect("verifies");
            g_vm.decide(0, &v, request()).is_ok()
        })
    });
}

criterion_group!(decision, benches);
criterion_main!(decision);
