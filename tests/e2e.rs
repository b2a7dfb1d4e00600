//! End-to-end tests: the built gateway against real peers (oidc-provider, HTTP upstreams).

#[path = "e2e/support.rs"]
mod support;
#[path = "../src/vault/testdb.rs"]
mod testdb;
#[path = "e2e/upstreams.rs"]
mod upstreams;

#[path = "e2e/approval.rs"]
mod approval;
#[path = "e2e/attacks.rs"]
mod attacks;
#[path = "e2e/audit.rs"]
mod audit;
#[path = "e2e/auth.rs"]
mod auth;
#[path = "e2e/bypass.rs"]
mod bypass;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/credentials.rs"]
mod credentials;
#[path = "e2e/explain.rs"]
mod explain;
#[path = "e2e/ext_authz.rs"]
mod ext_authz;
#[path = "e2e/fakes.rs"]
mod fakes;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/jwks.rs"]
mod jwks;
#[path = "e2e/leakage.rs"]
mod leakage;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/mcp.rs"]
mod mcp;
#[path = "e2e/mcp_approvals.rs"]
mod mcp_approvals;
#[path = "e2e/mcp_peer.rs"]
mod mcp_peer;
#[path = "e2e/mcp_rounds.rs"]
mod mcp_rounds;
#[path = "e2e/policy.rs"]
mod policy;
#[path = "e2e/proxy.rs"]
mod proxy;
#[path = "e2e/redis_peer.rs"]
mod redis_peer;
#[path = "e2e/redis_tls.rs"]
mod redis_tls;
#[path = "e2e/reload.rs"]
mod reload;
#[path = "e2e/replicas.rs"]
mod replicas;
#[path = "e2e/traces.rs"]
mod traces;
#[path = "e2e/vault.rs"]
mod vault;
#[path = "e2e/vault_pg.rs"]
mod vault_pg;
