//! The YAML file format, as serde sees it. Field names here are the stable public format;
//! `model.rs` is what the rest of the gateway uses. Every struct denies unknown fields so a
//! typo is an error, not a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub version: u32,
    pub listen: Listen,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub policies: Policies,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    /// OAuth clients the gateway authenticates as (token exchange, vault refresh).
    #[serde(default)]
    pub clients: Vec<Client>,
    pub vault: Option<Vault>,
    #[serde(default)]
    pub approvals: Approvals,
    /// Where state shared by replicas lives (approvals, rate limits, upstream-token cache).
    pub state: Option<State>,
    /// Traces (opt-in).
    pub telemetry: Option<Telemetry>,
    /// Envoy's external authorization (gRPC `envoy.service.auth.v3.Authorization`), opt-in.
    pub ext_authz: Option<ExtAuthz>,
    pub routes: Vec<Route>,
}

/// `ext_authz: { listen, max_hold_seconds }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthz {
    pub listen: String,
    /// Longest sync approval hold a Check may wait (Envoy's ext_authz `timeout` must be
    /// longer). Default 10.
    pub max_hold_seconds: Option<u64>,
}

/// `telemetry: { otlp: { endpoint, protocol, sample_ratio, service_name, timeout_ms } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub otlp: Option<Otlp>,
}

/// An OTLP trace exporter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    /// `http://collector:4318` (then `/v1/traces` is added) or the full traces URL.
    pub endpoint: String,
    /// `http` (OTLP/HTTP protobuf, the default).
    pub protocol: Option<String>,
    /// Share of traces started here that are recorded, 0.0 to 1.0 (default 1.0); a caller's
    /// `traceparent` decides for its trace.
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// `state: { backend: embedded }` (default) or `state: { backend: redis, redis: {...} }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `embedded` (in-process + SQLite, the default) or `redis`.
    pub backend: String,
    pub redis: Option<Redis>,
}

/// The Redis server the replicas share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://[user:password@]host:port/db` or `rediss://` (TLS). Or `url_env`.
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// Prefix of every key (default `portcullis:`).
    pub key_prefix: Option<String>,
    /// Limit of one Redis operation (default 500 ms); over it the decision fails closed.
    pub timeout_ms: Option<u64>,
    /// Key of the shared upstream-token cache (`id:base64`, like vault keys) when there is no
    /// vault; environment variable or file.
    pub cache_key_env: Option<String>,
    pub cache_key_file: Option<String>,
    pub tls: Option<RedisTls>,
}

/// TLS settings of a `rediss://` URL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM file of the CA(s) that signed the server's certificate (default: system roots).
    pub ca_file: Option<String>,
}

/// Limits and persistence of approval holds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// SQLite file for asynchronous approvals (needed when a route uses `mode: async`).
    pub store: Option<String>,
    /// Pending approvals at once, in total (default 10000) and per user (default 10).
    pub max_pending: Option<usize>,
    pub max_pending_per_user: Option<usize>,
    /// Keys sealing MCP `requestState` (`id:base64[,id2:base64]`, first seals): environment
    /// variable or file. Without them a random key per process (one replica only).
    pub state_key_env: Option<String>,
    pub state_key_file: Option<String>,
}

/// Holding a risky call until the user approves it through OpenID CIBA (poll mode).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Client (in `clients:`) that sends the backchannel request and polls its token endpoint.
    pub client: String,
    pub backchannel_endpoint: String,
    /// `sync` (default: the connection waits) or `async` (202 + `Portcullis-Approval` retry).
    pub mode: Option<String>,
    /// `sub` (default: the token's sub) or `iss_sub` (Auth0's JSON login_hint).
    pub login_hint: Option<String>,
    /// Scope of the backchannel request; `openid` is always included.
    pub scope: Option<String>,
    /// Longest wait for the user (sync hold time-out; async approval lifetime). Default 120.
    pub max_wait_seconds: Option<u64>,
    /// Largest body held while waiting (≤ 65536, the default); over it → 413.
    pub max_body_bytes: Option<usize>,
    /// On MCP routes, what the client sees while the user decides: `auto` (default with an
    /// approval store), `input_required`, `retry_hint` or `hold` (default without a store).
    pub mcp: Option<String>,
    /// Longest one MCP call is held before it is answered (`retry_hint`). Default 50.
    pub round_seconds: Option<u64>,
    /// Refuse an approval whose token names no `authorization_details` when some were asked
    /// for (default true).
    pub require_approved_details: Option<bool>,
    /// Keep pending and approved approvals when a reload changes the route's policies or
    /// configuration (default false: they are refused, `approval_invalid`).
    pub keep_on_policy_change: Option<bool>,
    /// How long after an approval expires an identical call still gets its outcome (denied,
    /// used, expired) instead of asking the user again. Default 60, at most 86400.
    pub replay_seconds: Option<u64>,
}

/// `listen: "127.0.0.1:8080"` or the long form with TLS.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    Address(String),
    Full(ListenFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFull {
    pub address: String,
    pub tls: Option<Tls>,
    /// Accept HTTP/2 with prior knowledge on plaintext (h2c). Default true.
    pub h2c: Option<bool>,
    /// Merge empty path segments (`//`) before matching and forwarding. Default false: a path
    /// with empty segments is refused with 400.
    pub merge_slashes: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: String,
    /// Environment variable / file holding the bearer secret of the admin API (`/vault/...`).
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

/// An OAuth client of the gateway at some authorization server's token endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub name: String,
    pub token_endpoint: String,
    pub client_id: String,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    pub auth: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    /// PEM private key (RSA or EC P-256) for `private_key_jwt` and actor tokens.
    pub private_key_file: Option<String>,
    /// `kid` put in the assertion header.
    pub key_id: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// The built-in credential vault.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vault {
    /// SQLite file, relative to the config file (one gateway). Exactly one of `path` and
    /// `postgres`.
    pub path: Option<String>,
    /// A PostgreSQL database shared by every replica.
    pub postgres: Option<PostgresVault>,
    /// Keys come from the environment or a file, never from this file.
    pub key_env: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// The vault's PostgreSQL database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresVault {
    /// Environment variable / file holding the connection string (it holds the password, so
    /// it never goes in this file).
    pub url_env: Option<String>,
    pub url_file: Option<String>,
    /// Most connections open at once. Default 8.
    pub pool_size: Option<usize>,
    /// Bound of connecting and of every database call. Default 5000.
    pub timeout_ms: Option<u64>,
}

/// A third-party provider whose per-user credentials the vault holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub name: String,
    /// Client (in `clients:`) used for the refresh_token grant.
    pub client: String,
}

/// How a route obtains the upstream's token. Exactly one mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub token_exchange: Option<TokenExchange>,
    pub token_vault: Option<TokenVault>,
    pub vault: Option<VaultRef>,
    /// Header the upstream token goes in. Default `authorization`.
    pub header: Option<String>,
    /// Prefix of the header value. Default `Bearer` for `authorization`, none otherwise.
    pub scheme: Option<String>,
    /// Renew this long before the upstream token expires. Default 30.
    pub expiry_margin_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    pub client: String,
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default)]
    pub resource: Vec<String>,
    pub scope: Option<String>,
    pub requested_token_type: Option<String>,
    /// Send the gateway's own client assertion as `actor_token` (needs `private_key_file`).
    #[serde(default)]
    pub actor_token: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenVault {
    pub client: String,
    pub connection: String,
    pub scope: Option<String>,
    /// Send the user's `sub` as `login_hint`.
    #[serde(default)]
    pub login_hint: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRef {
    pub connection: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub threads: Option<usize>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Open downstream connections at most; over it a new one gets 503 and is closed.
    /// Default 10000.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Directory of `*.rego` files, relative to the config file. Default `policies`
    /// next to the config file, else `./policies`.
    pub dir: Option<String>,
    /// Wall-clock limit of one evaluation. Default 50 ms.
    pub timeout_ms: Option<u64>,
    /// `interpreter` (default) or `vm`.
    pub engine: Option<crate::config::model::PolicyEngine>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Verified-token cache size. Default 100000.
    pub token_cache_entries: Option<usize>,
    /// Largest JWKS document accepted. Default 1 MiB.
    pub jwks_max_bytes: Option<usize>,
    /// Largest request head (request line + headers) accepted; over it → 431. Default 64 KiB,
    /// at most 1 MiB (pingora's own parser refuses larger heads with 400).
    pub max_header_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub name: String,
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Option<Vec<String>>,
    pub leeway_seconds: Option<u64>,
    pub roles: Option<Roles>,
    #[serde(default)]
    pub jwks: JwksOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksOptions {
    /// Refresh period when the IdP sends no Cache-Control max-age. Default 300 s.
    pub refresh_seconds: Option<u64>,
    /// Bounds applied to the IdP's max-age. Defaults 60 s and 86400 s.
    pub min_refresh_seconds: Option<u64>,
    pub max_refresh_seconds: Option<u64>,
    /// An unknown `kid` triggers at most one refetch per this many seconds. Default 30.
    pub unknown_kid_cooldown_seconds: Option<u64>,
    /// Time limit of one JWKS fetch. Default 5000 ms.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub claim: String,
    pub grants: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub upstream: String,
    pub auth: Option<Auth>,
    /// Explicitly serve this route without authentication.
    #[serde(default)]
    pub public: bool,
    pub policy: Option<String>,
    #[serde(default)]
    pub policy_body: bool,
    /// Largest body read for `policy_body`. Default 65536 (also the maximum).
    pub max_body_bytes: Option<usize>,
    /// Headers given to the policy; default: all but credentials (authorization, cookie, ...).
    pub policy_headers: Option<Vec<String>>,
    #[serde(default)]
    pub forward_token: bool,
    /// Keep the client's Host header instead of the upstream's authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// Client headers forwarded although they can re-route or re-method a request
    /// (`x-forwarded-prefix`, `x-http-method-override`, …: see `canon::REROUTING_HEADERS`).
    #[serde(default)]
    pub pass_headers: Vec<String>,
    /// Tell the upstream who is calling: `X-Portcullis-Sub` and `X-Portcullis-Agent` (a
    /// client's own values of these headers are always removed).
    #[serde(default)]
    pub identity_headers: bool,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Swap the user's token for an upstream token before forwarding.
    pub credentials: Option<Credentials>,
    /// How a `require_approval` decision of the policy is carried out.
    pub approval: Option<Approval>,
    /// `http` (default) or `mcp`: JSON-RPC aware, per-tool policy.
    pub kind: Option<String>,
    pub mcp: Option<Mcp>,
    /// Token buckets: per agent on this route, and per agent and MCP tool.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub agent: Option<Bucket>,
    pub tool: Option<Bucket>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: Option<f64>,
}

/// An MCP route as an OAuth protected resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mcp {
    /// The MCP server's URL as clients use it (through the gateway); tokens must name it in
    /// `aud` (RFC 8707) and it is the RFC 9728 `resource`.
    pub resource: String,
    /// `scopes_supported` of the metadata document (default: the route's required scopes).
    pub scopes_supported: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Match `path_prefix` with ASCII case (default: case is ignored, so a stricter route
    /// also catches `/API/ADMIN`).
    #[serde(default)]
    pub case_sensitive: bool,
    /// Accept `;` path parameters (`/a;jsessionid=1/b`); matching ignores them. Default false:
    /// a path with `;` is refused with 400.
    #[serde(default)]
    pub allow_path_params: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub issuer: String,
    #[serde(default)]
    pub require_scopes: Vec<String>,
    pub agents: Option<Vec<String>>,
    pub subjects: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect_ms: Option<u64>,
    pub read_ms: Option<u64>,
    pub write_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}
