//! Prometheus metrics, registered in a registry the admin endpoint serves. Per-route children
//! are resolved once at start so the request path does no label hashing.

mod approvals;

pub use approvals::{ApprovalMetrics, PendingGuard};

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::policy::Refusal;

/// Buckets of the authorization-latency histogram, in seconds (5 µs … 1 s).
const AUTHZ_BUCKETS: &[f64] = &[
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0,
];

pub struct RouteMetrics {
    pub allowed: IntCounter,
    denied: Vec<(&'static str, IntCounter)>,
    pub authz_seconds: Histogram,
    pub policy_errors: IntCounter,
    pub upstream_errors: IntCounter,
    responses: [IntCounter; 5],
}

impl RouteMetrics {
    pub fn denied(&self, label: &str) -> Option<&IntCounter> {
        self.denied
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, c)| c)
    }

    pub fn response(&self, status: u16) {
        if (100..600).contains(&status) {
            self.responses[(status / 100 - 1) as usize].inc();
        }
    }
}

/// Why a JWKS fetch failed (the `kind` label of `portcullis_jwks_fetch_errors_total`).
pub const JWKS_ERROR_KINDS: &[&str] = &["unreachable", "timeout", "status", "too_large", "invalid"];

/// JWKS fetch outcomes and key count of one issuer.
#[derive(Clone)]
pub struct JwksMetrics {
    success: IntCounter,
    failure: IntCounter,
    errors: Vec<(&'static str, IntCounter)>,
    keys: IntGauge,
}

impl JwksMetrics {
    pub fn fetched(&self, keys: usize) {
        self.success.inc();
        self.keys.set(keys as i64);
    }

    /// A failed fetch; `kind` is one of `JWKS_ERROR_KINDS`.
    pub fn failed(&self, kind: &str) {
        self.failure.inc();
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }
}

/// Upstream-credential metrics: exchanges by mode and outcome, their latency, the cache,
/// vault refreshes and errors.
#[derive(Clone)]
pub struct CredentialMetrics {
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    /// Local misses answered by the shared (Redis) cache.
    pub cache_shared_hit: IntCounter,
    exchanges: IntCounterVec,
    duration: HistogramVec,
    vault_refresh: IntCounterVec,
    pub vault_errors: IntCounter,
    vault_backend_errors: IntCounterVec,
    /// Requests sent to the PostgreSQL vault (statements, `BEGIN`, `COMMIT`, prepares).
    pub vault_db_round_trips: IntCounter,
}

impl CredentialMetrics {
    pub fn exchanged(&self, mode: &str, outcome: &str, took: std::time::Duration) {
        self.exchanges.with_label_values(&[mode, outcome]).inc();
        self.duration
            .with_label_values(&[mode])
            .observe(took.as_secs_f64());
    }

    pub fn refreshed(&self, outcome: &str) {
        self.vault_refresh.with_label_values(&[outcome]).inc();
    }

    /// A vault call failed because its storage did (`backend`: sqlite, postgres; `operation`:
    /// get, refresh, admin, ready).
    pub fn vault_backend_error(&self, backend: &str, operation: &str) {
        self.vault_backend_errors
            .with_label_values(&[backend, operation])
            .inc();
    }
}

/// The per-route metric families; a reloaded configuration resolves its routes' children
/// from the same families (and registry), so counters survive a reload.
#[derive(Clone)]
struct RouteFamilies {
    decisions: IntCounterVec,
    responses: IntCounterVec,
    policy_errors: IntCounterVec,
    upstream_errors: IntCounterVec,
    authz: HistogramVec,
}

impl RouteFamilies {
    fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            allowed: self
                .decisions
                .with_label_values(&[name, "allow", "allowed"]),
            denied: Refusal::LABELS
                .iter()
                .map(|l| (*l, self.decisions.with_label_values(&[name, "deny", l])))
                .collect(),
            authz_seconds: self.authz.with_label_values(&[name]),
            policy_errors: self.policy_errors.with_label_values(&[name]),
            upstream_errors: self.upstream_errors.with_label_values(&[name]),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.responses.with_label_values(&[name, c])),
        }
    }
}

/// Downstream connections: open now, and refused at `server.max_connections`.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub open: IntGauge,
    pub refused: IntCounter,
}

/// Configuration reloads: outcomes, the generation serving and when it was loaded.
#[derive(Clone)]
pub struct ReloadMetrics {
    outcomes: IntCounterVec,
    pub generation: IntGauge,
    pub loaded_at: IntGauge,
}

impl ReloadMetrics {
    pub fn outcome(&self, ok: bool) {
        let label = if ok { "ok" } else { "error" };
        self.outcomes.with_label_values(&[label]).inc();
    }

    /// Record that configuration `generation` serves from `unix_seconds` on.
    pub fn serving(&self, generation: u64, unix_seconds: u64) {
        self.generation.set(generation as i64);
        self.loaded_at.set(unix_seconds as i64);
    }
}

pub struct Metrics {
    pub registry: Registry,
    families: RouteFamilies,
    routes: HashMap<String, RouteMetrics>,
    /// Requests that matched no route.
    pub unrouted: RouteMetrics,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub token_cache_entries: IntGauge,
    jwks_refresh: IntCounterVec,
    jwks_errors: IntCounterVec,
    jwks_keys: IntGaugeVec,
    pub credentials: CredentialMetrics,
    pub approvals: ApprovalMetrics,
    mcp_requests: IntCounterVec,
    /// Tool names already used as label values (bounded, against label explosion).
    mcp_tools: Arc<dashmap::DashSet<String>>,
    pub reloads: ReloadMetrics,
    pub state: crate::state::metrics::StateMetrics,
    pub connections: ConnectionMetrics,
}

/// Distinct tool label values kept; further tools are counted as `other`.
const MCP_TOOL_LABELS: usize = 256;

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are fixed and distinct, so registration cannot collide.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric"),
            )
        };
        let decisions = counter_vec(
            "portcullis_decisions_total",
            "Authorization decisions by route, decision and reason",
            &["route", "decision", "reason"],
        );
        let responses = counter_vec(
            "portcullis_responses_total",
            "Responses sent downstream by route and status class",
            &["route", "class"],
        );
        let policy_errors = counter_vec(
            "portcullis_policy_errors_total",
            "Policy evaluations that failed or timed out (each denied)",
            &["route"],
        );
        let upstream_errors = counter_vec(
            "portcullis_upstream_errors_total",
            "Allowed requests whose upstream failed",
            &["route"],
        );
        let authz = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_authz_duration_seconds",
                    "Time spent on the decision path (token, identity checks, policy)",
                )
                .buckets(AUTHZ_BUCKETS.to_vec()),
                &["route"],
            )
            .expect("metric"),
        );
        let families = RouteFamilies {
            decisions,
            responses,
            policy_errors,
            upstream_errors,
            authz,
        };
        let routes = routes
            .into_iter()
            .map(|r| (r.to_string(), families.route(r)))
            .collect();
        let unrouted = families.route("none");
        let reloads = ReloadMetrics {
            outcomes: counter_vec(
                "portcullis_config_reloads_total",
                "Configuration reloads (SIGHUP or POST /admin/reload) by outcome",
                &["outcome"],
            ),
            generation: register(
                &registry,
                IntGauge::new(
                    "portcullis_config_generation",
                    "Configuration generation serving (1 at start, +1 per successful reload)",
                )
                .expect("metric"),
            ),
            loaded_at: register(
                &registry,
                IntGauge::new(
                    "portcullis_config_loaded_timestamp_seconds",
                    "Unix time the serving configuration was loaded",
                )
                .expect("metric"),
            ),
        };
        let connections = ConnectionMetrics {
            open: register(
                &registry,
                IntGauge::new(
                    "portcullis_connections_open",
                    "Downstream connections open now",
                )
                .expect("metric"),
            ),
            refused: register(
                &registry,
                IntCounter::new(
                    "portcullis_connections_refused_total",
                    "Downstream connections refused (503) at server.max_connections",
                )
                .expect("metric"),
            ),
        };
        let cache = counter_vec(
            "portcullis_token_cache_total",
            "Verified-token cache lookups",
            &["result"],
        );
        let upstream_cache = counter_vec(
            "portcullis_upstream_token_cache_total",
            "Upstream-token (exchanged / vault) cache lookups",
            &["result"],
        );
        let credentials = CredentialMetrics {
            cache_hit: upstream_cache.with_label_values(&["hit"]),
            cache_miss: upstream_cache.with_label_values(&["miss"]),
            cache_shared_hit: upstream_cache.with_label_values(&["shared_hit"]),
            exchanges: counter_vec(
                "portcullis_token_exchanges_total",
                "Upstream-token requests by mode (token_exchange, token_vault, vault) and outcome",
                &["mode", "outcome"],
            ),
            duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "portcullis_token_exchange_duration_seconds",
                        "Latency of upstream-token requests to authorization servers",
                    )
                    .buckets(vec![
                        1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                    &["mode"],
                )
                .expect("metric"),
            ),
            vault_refresh: counter_vec(
                "portcullis_vault_refresh_total",
                "Vault access-token refreshes by outcome",
                &["outcome"],
            ),
            vault_errors: register(
                &registry,
                IntCounter::new(
                    "portcullis_vault_errors_total",
                    "Vault storage or decryption errors",
                )
                .expect("metric"),
            ),
            vault_backend_errors: counter_vec(
                "portcullis_vault_backend_errors_total",
                "Vault calls that failed because the storage (SQLite, PostgreSQL) did",
                &["backend", "operation"],
            ),
            vault_db_round_trips: register(
                &registry,
                IntCounter::new(
                    "portcullis_vault_db_round_trips_total",
                    "Requests sent to the PostgreSQL vault database",
                )
                .expect("metric"),
            ),
        };
        let approvals = ApprovalMetrics::register(&registry);
        let mcp_requests = counter_vec(
            "portcullis_mcp_requests_total",
            "MCP JSON-RPC messages by route, method, tool and decision",
            &["route", "method", "tool", "decision"],
        );
        Metrics {
            state: crate::state::metrics::StateMetrics::register(&registry),
            families,
            reloads,
            connections,
            mcp_requests,
            mcp_tools: Arc::new(dashmap::DashSet::new()),
            approvals,
            credentials,
            routes,
            unrouted,
            token_cache_hits: cache.with_label_values(&["hit"]),
            token_cache_misses: cache.with_label_values(&["miss"]),
            token_cache_entries: register(
                &registry,
                IntGauge::new(
                    "portcullis_token_cache_entries",
                    "Entries in the verified-token cache",
                )
                .expect("metric"),
            ),
            jwks_refresh: counter_vec(
                "portcullis_jwks_refresh_total",
                "JWKS fetches by issuer and outcome",
                &["issuer", "outcome"],
            ),
            jwks_errors: counter_vec(
                "portcullis_jwks_fetch_errors_total",
                "Failed JWKS fetches by issuer and kind (unreachable, timeout, status, too_large, invalid)",
                &["issuer", "kind"],
            ),
            jwks_keys: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("portcullis_jwks_keys", "Signing keys loaded per issuer"),
                    &["issuer"],
                )
                .expect("metric"),
            ),
            registry,
        }
    }

    /// The same metrics (registry, families, counters) for a reloaded configuration's routes.
    pub fn for_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) -> Metrics {
        Metrics {
            registry: self.registry.clone(),
            families: self.families.clone(),
            routes: routes
                .into_iter()
                .map(|r| (r.to_string(), self.families.route(r)))
                .collect(),
            unrouted: self.families.route("none"),
            token_cache_hits: self.token_cache_hits.clone(),
            token_cache_misses: self.token_cache_misses.clone(),
            token_cache_entries: self.token_cache_entries.clone(),
            jwks_refresh: self.jwks_refresh.clone(),
            jwks_errors: self.jwks_errors.clone(),
            jwks_keys: self.jwks_keys.clone(),
            credentials: self.credentials.clone(),
            approvals: self.approvals.clone(),
            mcp_requests: self.mcp_requests.clone(),
            mcp_tools: self.mcp_tools.clone(),
            reloads: self.reloads.clone(),
            state: self.state.clone(),
            connections: self.connections.clone(),
        }
    }

    /// Count an MCP message and the policy's answer (allow, deny, approval).
    pub fn mcp(&self, route: &str, m: &crate::mcp::Message, decision: &str) {
        let method = match m.method.as_deref() {
            None => "response",
            Some(
                x @ ("initialize" | "ping" | "tools/list" | "tools/call" | "resources/list"
                | "resources/read" | "prompts/list" | "prompts/get" | "server/discover"),
            ) => x,
            Some(x) if x.starts_with("notifications/") => "notification",
            Some(_) => "other",
        };
        let tool = match m.tool() {
            None => "",
            Some(t)
                if t.len() <= 64
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                    && (self.mcp_tools.contains(t) || self.mcp_tools.len() < MCP_TOOL_LABELS) =>
            {
                self.mcp_tools.insert(t.to_string());
                t
            }
            Some(_) => "other",
        };
        self.mcp_requests
            .with_label_values(&[route, method, tool, decision])
            .inc();
    }

    pub fn route(&self, name: &str) -> &RouteMetrics {
        self.routes.get(name).unwrap_or(&self.unrouted)
    }

    /// The JWKS counters of one issuer, handed to its key store so that every fetch (start,
    /// background refresh, unknown-kid refetch) is counted.
    pub fn jwks(&self, issuer: &str) -> JwksMetrics {
        JwksMetrics {
            success: self.jwks_refresh.with_label_values(&[issuer, "success"]),
            failure: self.jwks_refresh.with_label_values(&[issuer, "failure"]),
            errors: JWKS_ERROR_KINDS
                .iter()
                .map(|k| (*k, self.jwks_errors.with_label_values(&[issuer, k])))
                .collect(),
            keys: self.jwks_keys.with_label_values(&[issuer]),
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn renders_route_and_reason_labels() {
        let m = Metrics::new(["invoices"]);
        m.route("invoices").allowed.inc();
        m.route("invoices").denied("policy_denied").unwrap().inc();
        m.route("invoices").response(403);
        m.jwks("corp").fetched(2);
        let text = m.render();
        assert!(text.contains(
            r#"portcullis_decisions_total{decision="allow",reason="allowed",route="invoices"} 1"#
        ));
        assert!(text.contains(r#"portcullis_decisions_total{decision="deny",reason="policy_denied",route="invoices"} 1"#));
        assert!(text.contains(r#"portcullis_responses_total{class="4xx",route="invoices"} 1"#));
        assert!(text.contains(r#"portcullis_jwks_keys{issuer="corp"} 2"#));
    }

    #[test]
    fn reloaded_routes_share_the_counters() {
        let first = Metrics::new(["invoices", "old"]);
        first.route("invoices").allowed.inc();
        first.route("old").allowed.inc();
        let second = first.for_routes(["invoices", "new"]);
        second.route("invoices").allowed.inc();
        second.route("new").allowed.inc();
        second.reloads.outcome(true);
        let text = first.render();
        assert!(text.contains(
            r#"portcullis_decisions_total{decision="allow",reason="allowed",route="invoices"} 2"#
        ));
        assert!(text.contains(
            r#"portcullis_decisions_total{decision="allow",reason="allowed",route="new"} 1"#
        ));
        assert!(text.contains(r#"portcullis_config_reloads_total{outcome="ok"} 1"#));
    }
}
