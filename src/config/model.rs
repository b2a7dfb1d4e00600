//! The validated, internal model of a configuration. Nothing here is a public format: the
//! file format lives in `file.rs`; this is what the gateway runs on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};

use crate::roles::RoleMap;
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub source: PathBuf,
    pub listen: ListenSpec,
    pub admin_listen: Option<SocketAddr>,
    pub server: ServerSpec,
    pub policy_dir: PathBuf,
    pub policy_timeout: Duration,
    pub policy_engine: PolicyEngine,
    pub token_cache_entries: usize,
    pub jwks_max_bytes: usize,
    /// Largest request head (request line + headers) in bytes; over it → 431.
    pub max_header_bytes: usize,
    /// `listen.merge_slashes`: merge empty path segments instead of refusing them.
    pub merge_slashes: bool,
    pub issuers: Vec<Arc<IssuerSpec>>,
    pub clients: Vec<Arc<ClientSpec>>,
    pub vault: Option<VaultSpec>,
    pub approvals: ApprovalLimits,
    /// Where replica-shared state lives.
    pub state: StateSpec,
    /// Where traces go (`telemetry.otlp`); restart to change.
    pub otlp: Option<super::telemetry::OtlpSpec>,
    /// Envoy's ext_authz listener; restart to change.
    pub ext_authz: Option<super::ext_authz::ExtAuthzSpec>,
    /// Bearer secret of the admin API's `/vault` endpoints (absent: those endpoints are off).
    pub admin_token: Option<Secret>,
    pub routes: Vec<Arc<RouteSpec>>,
}

/// How Rego decisions are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyEngine {
    /// The Rego VM for every package it answers exactly as the interpreter would (no
    /// arithmetic, boolean operators or possibly conflicting rules), else the interpreter.
    #[default]
    Auto,
    /// regorus's interpreter, strict builtin errors: any evaluation error denies.
    Interpreter,
    /// The Rego VM for every package it compiles (docs/policies.md: where it differs).
    Vm,
}

/// An OAuth client of the gateway (token exchange, refresh).
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub name: Arc<str>,
    pub token_endpoint: String,
    pub client_id: String,
    pub auth: ClientAuth,
    /// Signing key for `private_key_jwt` and actor tokens.
    pub signing_key: Option<SigningKey>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum ClientAuth {
    SecretBasic(Secret),
    SecretPost(Secret),
    PrivateKeyJwt,
}

/// A private key the gateway signs assertions with.
#[derive(Clone)]
pub struct SigningKey {
    pub key: EncodingKey,
    pub alg: Algorithm,
    pub kid: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, kid {:?})", self.alg, self.kid)
    }
}

/// Where the vault's encryption keys come from (never the config file).
#[derive(Debug, Clone)]
pub enum VaultKeySource {
    Env(String),
    File(PathBuf),
}

/// Where the vault's rows live.
#[derive(Debug, Clone)]
pub enum VaultBackendSpec {
    /// A SQLite file (one gateway).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas.
    Postgres(crate::vault::PgOptions),
}

#[derive(Debug, Clone)]
pub struct VaultSpec {
    pub backend: VaultBackendSpec,
    pub keys: VaultKeySource,
    pub connections: Vec<ConnectionSpec>,
}

#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    pub name: Arc<str>,
    /// Index into `Config::clients`.
    pub client: usize,
}

#[derive(Debug, Clone)]
pub struct ApprovalLimits {
    pub store: Option<PathBuf>,
    pub max_pending: usize,
    pub max_pending_per_user: usize,
    /// Keys sealing MCP `requestState` (`id:base64,...`); `None`: random per process.
    pub state_key: Option<Secret>,
}

/// Where approvals, rate-limit buckets and the upstream-token cache live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateSpec {
    /// In this process (and `approvals.store` SQLite): today's single-replica behaviour.
    #[default]
    Embedded,
    Redis(RedisSpec),
}

/// A Redis server shared by the replicas. `Debug` hides the URL (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub url: Secret,
    pub key_prefix: String,
    pub timeout: Duration,
    /// Text of the upstream-token cache key(s) (`id:base64`), when configured.
    pub cache_key: Option<Secret>,
    /// PEM CA file for `rediss://`.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSpec")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("tls", &self.url.expose().starts_with("rediss://"))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalMode {
    Sync,
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginHint {
    /// The token's `sub` as is.
    Sub,
    /// `{"format":"iss_sub","iss":...,"sub":...}` (Auth0).
    IssSub,
}

/// What an MCP client sees while the user decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpApprovalMode {
    /// The call waits (sync hold) or gets 202 (async), as `mode` says.
    Hold,
    /// Answered within `round` by a tool error asking the agent to call again with the same
    /// arguments; an identical re-call joins the pending approval and, once approved, is
    /// forwarded exactly once.
    RetryHint,
    /// 2026-07-28 multi round-trip: `input_required` with an elicitation (when the client
    /// declared it) and a sealed `requestState`, each round held up to `round`.
    InputRequired,
    /// 2025 revisions, calls with a `progressToken`: answered as SSE at once, with
    /// `notifications/progress` until the user decides, then the server's answer.
    Progress,
    /// `InputRequired` for 2026-07-28 calls, `Progress` for calls with a progress token,
    /// else `RetryHint`.
    Auto,
}

impl McpApprovalMode {
    pub fn label(self) -> &'static str {
        match self {
            McpApprovalMode::Hold => "hold",
            McpApprovalMode::RetryHint => "retry_hint",
            McpApprovalMode::InputRequired => "input_required",
            McpApprovalMode::Progress => "progress",
            McpApprovalMode::Auto => "auto",
        }
    }
}

/// A route's CIBA approval settings.
#[derive(Debug, Clone)]
pub struct ApprovalSpec {
    /// Index into `Config::clients`.
    pub client: usize,
    pub backchannel_endpoint: String,
    pub mode: ApprovalMode,
    pub login_hint: LoginHint,
    /// Space-separated, always containing `openid`.
    pub scope: String,
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    /// On MCP routes: what the client sees while the user decides.
    pub mcp: McpApprovalMode,
    /// Whether `mcp` was set in the file (else `Auto` with a store, `Hold` without).
    pub mcp_explicit: bool,
    /// Longest one MCP call is held before it is answered (`RetryHint`).
    pub round: Duration,
    /// Refuse an answer without `authorization_details` when some were asked for.
    pub require_details: bool,
    /// Approvals survive a reload that changes the route's revision.
    pub keep_on_policy_change: bool,
    /// After expiry, identical calls still get the approval's outcome for this long.
    pub replay: Duration,
}

/// How a route gets the token it sends upstream.
#[derive(Debug, Clone)]
pub struct CredentialSpec {
    pub mode: CredentialMode,
    /// Lower-case header name.
    pub header: String,
    /// Value prefix (`Bearer`), if any.
    pub scheme: Option<String>,
    pub expiry_margin: Duration,
}

#[derive(Debug, Clone)]
pub enum CredentialMode {
    /// RFC 8693 token exchange; `client` indexes `Config::clients`.
    TokenExchange {
        client: usize,
        audience: Vec<String>,
        resource: Vec<String>,
        scope: Option<String>,
        requested_token_type: Option<String>,
        actor_token: bool,
    },
    /// Auth0 Token Vault federated-connection access token exchange.
    TokenVault {
        client: usize,
        connection: String,
        scope: Option<String>,
        login_hint: bool,
    },
    /// The built-in vault; `connection` indexes `VaultSpec::connections`.
    Vault { connection: usize },
}

impl CredentialMode {
    /// `input.credentials.mode` and metric label.
    pub fn name(&self) -> &'static str {
        match self {
            CredentialMode::TokenExchange { .. } => "token_exchange",
            CredentialMode::TokenVault { .. } => "token_vault",
            CredentialMode::Vault { .. } => "vault",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub h2c: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    Uri(String),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct JwksTiming {
    pub default_refresh: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub unknown_kid_cooldown: Duration,
    pub fetch_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IssuerSpec {
    pub name: Arc<str>,
    pub issuer: String,
    pub keys: KeySource,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway_seconds: u64,
    pub roles: Option<RoleMap>,
    pub jwks: JwksTiming,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub upstream: Upstream,
    pub auth: Option<AuthSpec>,
    /// Rego package evaluated for this route (`data.<package>.decision`).
    pub policy: Option<String>,
    pub policy_body: bool,
    pub max_body_bytes: usize,
    /// Lower-case header names given to the policy; `None` = all but credentials.
    pub policy_headers: Option<Vec<String>>,
    pub forward_token: bool,
    pub preserve_host: bool,
    /// Lower-case names of re-routing client headers this route forwards anyway.
    pub pass_headers: Vec<String>,
    /// Send `X-Portcullis-Sub` and `X-Portcullis-Agent` upstream.
    pub identity_headers: bool,
    pub timeouts: UpstreamTimeouts,
    pub credentials: Option<CredentialSpec>,
    pub approval: Option<ApprovalSpec>,
    /// Set on `kind: mcp` routes.
    pub mcp: Option<McpSpec>,
    /// Per agent on this route.
    pub agent_rate: Option<crate::ratelimit::Rate>,
    /// Per agent and tool (`tools/call` on MCP routes).
    pub tool_rate: Option<crate::ratelimit::Rate>,
}

impl RouteSpec {
    /// Whether the route forwards the client's value of re-routing header `name`.
    pub fn passes(&self, name: &str) -> bool {
        self.pass_headers.iter().any(|p| p == name)
    }
}

/// An MCP route: its RFC 9728 protected-resource metadata.
#[derive(Debug, Clone)]
pub struct McpSpec {
    pub resource: String,
    /// Path of the resource URL (`/mcp`), for `/.well-known/oauth-protected-resource/mcp`.
    pub resource_path: String,
    /// Origin of the resource URL, for the absolute metadata URL in challenges.
    pub origin: String,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
}

impl McpSpec {
    /// Absolute URL of this route's RFC 9728 document.
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource{}",
            self.origin, self.resource_path
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Lower-case host without port; a leading `*.` matches any subdomain.
    pub host: Option<String>,
    /// Segment-aware prefix: `/a` matches `/a` and `/a/b`, not `/ab`.
    pub path_prefix: Option<String>,
    /// Methods as listed (standard ones upper-cased); `None` = `canon::DEFAULT_METHODS`.
    pub methods: Option<Vec<String>>,
    /// Match the prefix with ASCII case (default: ignore case).
    pub case_sensitive: bool,
    /// Accept `;` path parameters (matching ignores them).
    pub allow_path_params: bool,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Resolved once at load time.
    pub addr: SocketAddr,
    /// `host[:port]` as sent in the Host header.
    pub authority: String,
}

#[derive(Debug, Clone)]
pub struct AuthSpec {
    /// Index into `Config::issuers`.
    pub issuer: usize,
    pub require_scopes: Vec<String>,
    pub agents: Option<Vec<String>>,
    pub subjects: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct UpstreamTimeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

/// The outcome of matching a request against the routes.
#[derive(Debug)]
pub enum RouteLookup<'a> {
    Found(&'a Arc<RouteSpec>),
    /// The first route matching host and path does not allow the method (nor does any later
    /// route with the very same host and prefix): 405 with these methods in `Allow`.
    MethodNotAllowed(String),
    NotFound,
}

impl RouteMatch {
    fn host_matches(&self, host: &str) -> bool {
        let Some(want) = &self.host else { return true };
        let host = strip_port(host);
        match want.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => host.eq_ignore_ascii_case(want),
        }
    }

    /// Segment-aware prefix match on a canonical path; ASCII case is ignored unless
    /// `case_sensitive`.
    fn path_matches(&self, path: &str) -> bool {
        let Some(prefix) = &self.path_prefix else {
            return true;
        };
        let (p, q) = (prefix.as_bytes(), path.as_bytes());
        if q.len() < p.len() {
            return false;
        }
        let head = &q[..p.len()];
        let same = if self.case_sensitive {
            head == p
        } else {
            head.eq_ignore_ascii_case(p)
        };
        same && (prefix.ends_with('/') || q.len() == p.len() || q[p.len()] == b'/')
    }

    fn method_matches(&self, method: &str) -> bool {
        match &self.methods {
            Some(m) => m.iter().any(|x| x == method),
            None => crate::canon::DEFAULT_METHODS.contains(&method),
        }
    }

    fn allowed(&self) -> Vec<&str> {
        match &self.methods {
            Some(m) => m.iter().map(String::as_str).collect(),
            None => crate::canon::DEFAULT_METHODS.to_vec(),
        }
    }

    /// Whether two routes match exactly the same requests apart from the method.
    fn same_target(&self, other: &RouteMatch) -> bool {
        self.host == other.host
            && self.path_prefix == other.path_prefix
            && self.case_sensitive == other.case_sensitive
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

impl Config {
    /// The first route, in file order, whose host and path match decides. If its methods do
    /// not include `method`, only later routes with the very same host and prefix may take
    /// the request (a method split); otherwise it is a 405, never a fall-through to a
    /// broader route. `path` is the canonical match path (`canon::Target::match_path`).
    pub fn find_route(&self, host: &str, path: &str, method: &str) -> RouteLookup<'_> {
        let mut first: Option<&RouteMatch> = None;
        let mut allow: Vec<&str> = Vec::new();
        for route in &self.routes {
            let m = &route.matcher;
            let candidate = match first {
                Some(f) => m.same_target(f),
                None => m.host_matches(host) && m.path_matches(path),
            };
            if !candidate {
                continue;
            }
            if m.method_matches(method) {
                return RouteLookup::Found(route);
            }
            first.get_or_insert(m);
            for a in m.allowed() {
                if !allow.contains(&a) {
                    allow.push(a);
                }
            }
        }
        match first {
            Some(_) => RouteLookup::MethodNotAllowed(allow.join(", ")),
            None => RouteLookup::NotFound,
        }
    }

    pub fn issuer(&self, index: usize) -> &Arc<IssuerSpec> {
        &self.issuers[index]
    }
}

#[cfg(test)]
mod tests {
    use super::RouteMatch;

    fn m(host: Option<&str>, prefix: Option<&str>, methods: Option<&[&str]>) -> RouteMatch {
        RouteMatch {
            host: host.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
            methods: methods.map(|v| v.iter().map(|s| s.to_string()).collect()),
            case_sensitive: false,
            allow_path_params: false,
        }
    }

    #[test]
    fn path_prefix_is_segment_aware() {
        let r = m(None, Some("/invoices"), None);
        assert!(r.path_matches("/invoices"));
        assert!(r.path_matches("/invoices/42"));
        assert!(!r.path_matches("/invoicesX"));
        assert!(!r.path_matches("/other"));
        let slash = m(None, Some("/api/"), None);
        assert!(slash.path_matches("/api/x"));
        assert!(!slash.path_matches("/api"));
    }

    #[test]
    fn path_prefix_ignores_ascii_case_unless_case_sensitive() {
        let r = m(None, Some("/api/admin"), None);
        assert!(r.path_matches("/api/ADMIN/x"));
        assert!(r.path_matches("/Api/Admin"));
        assert!(!r.path_matches("/api/adminx"));
        let strict = RouteMatch {
            case_sensitive: true,
            ..r
        };
        assert!(!strict.path_matches("/api/ADMIN/x"));
        assert!(strict.path_matches("/api/admin/x"));
    }

    #[test]
    fn host_matching_ignores_port_and_case() {
        let r = m(Some("api.example.com"), None, None);
        assert!(r.host_matches("API.example.com:8080"));
        assert!(!r.host_matches("evil.com"));
        let wild = m(Some("*.example.com"), None, None);
        assert!(wild.host_matches("a.example.com"));
        assert!(!wild.host_matches("example.com"));
        assert!(!wild.host_matches("aexample.com"));
        let v6 = m(Some("::1"), None, None);
        assert!(v6.host_matches("[::1]:8080"));
    }

    #[test]
    fn methods_filter() {
        let r = m(None, None, Some(&["GET", "POST"]));
        assert!(r.method_matches("GET"));
        assert!(!r.method_matches("DELETE"));
        assert!(!r.method_matches("get"));
        let any = m(None, None, None);
        assert!(any.method_matches("DELETE"));
        for refused in ["get", "TRACE", "CONNECT", "PROPFIND"] {
            assert!(!any.method_matches(refused), "{refused}");
        }
        let dav = m(None, None, Some(&["PROPFIND"]));
        assert!(dav.method_matches("PROPFIND"));
    }
}
