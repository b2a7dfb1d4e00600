//! `file::FileConfig` → `model::Config`: every check that can be made without the network.

mod approval;
mod credentials;
mod jwks;
mod mcp;
mod server;
mod state;
mod target;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::file;
use super::model::{
    AuthSpec, ClientSpec, Config, IssuerSpec, KeySource, ListenSpec, RouteSpec, TlsFiles,
    UpstreamTimeouts, VaultSpec,
};
use super::{ConfigError, Source};
use crate::ratelimit::Rate;
use crate::roles::RoleMap;

/// Largest body a route may read for its policy; pingora's retry buffer holds this much.
pub const MAX_POLICY_BODY: usize = 64 * 1024;
const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub fn validate(src: &Source, raw: file::FileConfig) -> Result<Config, ConfigError> {
    if raw.version != 1 {
        return Err(src.error(
            "version",
            format!(
                "unsupported version {} (this build reads version 1)",
                raw.version
            ),
        ));
    }
    let base = src.base_dir();
    let merge_slashes = matches!(
        &raw.listen,
        file::Listen::Full(file::ListenFull {
            merge_slashes: Some(true),
            ..
        })
    );
    let listen = listen(src, &base, raw.listen)?;
    let (admin_listen, admin_token) = match &raw.admin {
        Some(a) => (
            Some(socket_addr(src, "admin.listen", &a.listen)?),
            credentials::secret(
                src,
                &base,
                "admin.token_env",
                a.token_env.as_deref(),
                a.token_file.as_deref(),
            )?,
        ),
        None => (None, None),
    };
    if admin_listen == Some(listen.addr) {
        return Err(src.error("admin.listen", "must differ from `listen`"));
    }
    let server = server::server(src, &raw.server)?;
    let policy_dir = match &raw.policies.dir {
        Some(d) => base.join(d),
        None => default_policy_dir(&base),
    };
    let policy_timeout = Duration::from_millis(positive(
        src,
        "policies.timeout_ms",
        raw.policies.timeout_ms,
        50,
    )?);

    let mut issuers = Vec::with_capacity(raw.issuers.len());
    let mut names = HashSet::new();
    for (i, iss) in raw.issuers.into_iter().enumerate() {
        let at = format!("issuers[{i}]");
        if !names.insert(iss.name.clone()) {
            return Err(src.error(
                &format!("{at}.name"),
                format!("duplicate issuer name '{}'", iss.name),
            ));
        }
        issuers.push(Arc::new(issuer(src, &base, &at, iss)?));
    }

    let clients = credentials::clients(src, &base, raw.clients)?;
    let vault = credentials::vault(src, &base, raw.vault, &clients)?;
    let approvals = approval::limits(src, &base, raw.approvals)?;
    let state = state::state(src, &base, raw.state)?;
    let otlp = super::telemetry::otlp(src, raw.telemetry)?;

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut route_names = HashSet::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if !route_names.insert(r.name.clone()) {
            return Err(src.error(
                &format!("{at}.name"),
                format!("duplicate route name '{}'", r.name),
            ));
        }
        routes.push(Arc::new(route(
            src,
            &at,
            r,
            &issuers,
            &clients,
            vault.as_ref(),
        )?));
    }
    if routes.is_empty() {
        return Err(src.error("routes", "at least one route is required"));
    }
    let shared = !matches!(state, super::model::StateSpec::Embedded);
    approval::check_routes(src, &mut routes, &approvals, shared)?;
    state::check(src, &state, &approvals, vault.is_some(), &routes)?;
    let ext_authz = super::ext_authz::ext_authz(src, raw.ext_authz, &routes)?;

    Ok(Config {
        source: src.file.clone(),
        listen,
        admin_listen,
        server,
        policy_dir,
        policy_timeout,
        policy_engine: raw.policies.engine.unwrap_or_default(),
        token_cache_entries: positive(
            src,
            "limits.token_cache_entries",
            raw.limits.token_cache_entries,
            100_000,
        )?,
        jwks_max_bytes: positive(
            src,
            "limits.jwks_max_bytes",
            raw.limits.jwks_max_bytes,
            1 << 20,
        )?,
        max_header_bytes: match positive(src, HEAD, raw.limits.max_header_bytes, 64 << 10)? {
            n if n > MAX_HEAD => Err(src.error(HEAD, format!("must be at most {MAX_HEAD}")))?,
            n => n,
        },
        merge_slashes,
        issuers,
        clients,
        vault,
        approvals,
        state,
        otlp,
        ext_authz,
        admin_token,
        routes,
    })
}

const HEAD: &str = "limits.max_header_bytes";
/// pingora's HTTP/1 parser refuses request heads over this with a bare 400.
const MAX_HEAD: usize = 1_048_575;

fn default_policy_dir(base: &Path) -> PathBuf {
    let beside = base.join("policies");
    if beside.is_dir() {
        return beside;
    }
    // `config/x.yaml` next to a top-level `policies/`
    match base.parent() {
        Some(parent) if parent.join("policies").is_dir() => parent.join("policies"),
        _ => beside,
    }
}

fn positive<T: Default + PartialEq + Copy>(
    src: &Source,
    field: &str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        Some(v) if v == T::default() => Err(src.error(field, "must be greater than 0")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

fn socket_addr(src: &Source, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let addr = SocketAddr::from_str(value).map_err(|_| {
        src.error(
            field,
            format!("'{value}' is not an IP:port address (e.g. 127.0.0.1:8080)"),
        )
    })?;
    if addr.port() == 0 {
        return Err(src.error(field, "port 0 is not allowed"));
    }
    Ok(addr)
}

fn listen(src: &Source, base: &Path, l: file::Listen) -> Result<ListenSpec, ConfigError> {
    match l {
        file::Listen::Address(a) => Ok(ListenSpec {
            addr: socket_addr(src, "listen", &a)?,
            tls: None,
            h2c: true,
        }),
        file::Listen::Full(f) => {
            let tls = match f.tls {
                Some(t) => {
                    let files = TlsFiles {
                        cert_file: base.join(t.cert_file),
                        key_file: base.join(t.key_file),
                    };
                    for (name, p) in [
                        ("cert_file", &files.cert_file),
                        ("key_file", &files.key_file),
                    ] {
                        if !p.is_file() {
                            return Err(src.error(
                                &format!("listen.tls.{name}"),
                                format!("file not found: {}", p.display()),
                            ));
                        }
                    }
                    Some(files)
                }
                None => None,
            };
            Ok(ListenSpec {
                addr: socket_addr(src, "listen.address", &f.address)?,
                tls,
                h2c: f.h2c.unwrap_or(true),
            })
        }
    }
}

fn issuer(
    src: &Source,
    base: &Path,
    at: &str,
    iss: file::Issuer,
) -> Result<IssuerSpec, ConfigError> {
    if iss.name.is_empty() {
        return Err(src.error(&format!("{at}.name"), "must not be empty"));
    }
    if iss.issuer.is_empty() {
        return Err(src.error(&format!("{at}.issuer"), "must not be empty"));
    }
    let keys = match (iss.jwks_uri, iss.jwks_file) {
        (Some(uri), None) => {
            let url = url::Url::parse(&uri).map_err(|e| {
                src.error(
                    &format!("{at}.jwks_uri"),
                    format!("invalid URL '{uri}': {e}"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(src.error(&format!("{at}.jwks_uri"), "must be an http or https URL"));
            }
            KeySource::Uri(uri)
        }
        (None, Some(path)) => KeySource::File(base.join(path)),
        _ => {
            return Err(src.error(at, "set exactly one of `jwks_uri` and `jwks_file`"));
        }
    };
    if iss.audiences.is_empty() || iss.audiences.iter().any(String::is_empty) {
        return Err(src.error(
            &format!("{at}.audiences"),
            "list at least one non-empty audience",
        ));
    }
    let names = iss
        .algorithms
        .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
    if names.is_empty() {
        return Err(src.error(&format!("{at}.algorithms"), "list at least one algorithm"));
    }
    let mut algorithms = Vec::new();
    for n in &names {
        if !ALLOWED_ALGS.contains(&n.as_str()) {
            return Err(src.error(
                &format!("{at}.algorithms"),
                format!(
                    "algorithm '{n}' is not allowed (use one of {})",
                    ALLOWED_ALGS.join(", ")
                ),
            ));
        }
        algorithms.push(Algorithm::from_str(n).map_err(|_| {
            src.error(
                &format!("{at}.algorithms"),
                format!("unknown algorithm '{n}'"),
            )
        })?);
    }
    let leeway_seconds = iss.leeway_seconds.unwrap_or(30);
    if leeway_seconds > 300 {
        return Err(src.error(&format!("{at}.leeway_seconds"), "at most 300 seconds"));
    }
    let roles = match iss.roles {
        Some(r) => {
            if r.claim.is_empty() {
                return Err(src.error(&format!("{at}.roles.claim"), "must not be empty"));
            }
            if let Some((role, _)) = r
                .grants
                .iter()
                .find(|(_, s)| s.iter().any(String::is_empty))
            {
                return Err(src.error(
                    &format!("{at}.roles.grants.{role}"),
                    "scope names must not be empty",
                ));
            }
            Some(RoleMap::new(r.claim, r.grants))
        }
        None => None,
    };
    let jwks = jwks::timing(src, at, iss.jwks)?;
    Ok(IssuerSpec {
        name: Arc::from(iss.name.as_str()),
        issuer: iss.issuer,
        keys,
        audiences: iss.audiences,
        algorithms,
        leeway_seconds,
        roles,
        jwks,
    })
}

fn route(
    src: &Source,
    at: &str,
    r: file::Route,
    issuers: &[Arc<IssuerSpec>],
    clients: &[Arc<ClientSpec>],
    vault: Option<&VaultSpec>,
) -> Result<RouteSpec, ConfigError> {
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(src.error(&format!("{at}.name"), "use 1+ characters of [A-Za-z0-9-_.]"));
    }
    let matcher = target::route_match(src, at, r.matcher)?;
    let upstream = target::upstream(src, &format!("{at}.upstream"), &r.upstream)?;
    if r.identity_headers && r.public {
        return Err(src.error(
            &format!("{at}.identity_headers"),
            "a public route has no caller to name",
        ));
    }
    let identity_headers = r.identity_headers;
    let auth = match (r.auth, r.public) {
        (Some(_), true) => {
            return Err(src.error(
                &format!("{at}.public"),
                "a route is either `public: true` or has `auth`",
            ))
        }
        (None, false) => {
            return Err(src.error(
                at,
                "every route needs `auth:` (or an explicit `public: true`); routes fail closed",
            ))
        }
        (None, true) => None,
        (Some(a), false) => Some(auth(src, &format!("{at}.auth"), a, issuers)?),
    };
    if r.policy.is_some() && auth.is_none() {
        return Err(src.error(
            &format!("{at}.policy"),
            "a policy needs an authenticated route (`auth:`)",
        ));
    }
    if let Some(p) = &r.policy {
        let ok = !p.is_empty()
            && p.split('.').all(|s| {
                s.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !ok {
            return Err(src.error(
                &format!("{at}.policy"),
                format!("'{p}' is not a Rego package name"),
            ));
        }
    }
    if r.policy_body && r.policy.is_none() {
        return Err(src.error(&format!("{at}.policy_body"), "needs `policy:`"));
    }
    let max_body_bytes = r.max_body_bytes.unwrap_or(MAX_POLICY_BODY);
    if max_body_bytes == 0 || max_body_bytes > MAX_POLICY_BODY {
        return Err(src.error(
            &format!("{at}.max_body_bytes"),
            format!("must be between 1 and {MAX_POLICY_BODY}"),
        ));
    }
    let credentials = match r.credentials {
        Some(_) if auth.is_none() => {
            return Err(src.error(
                &format!("{at}.credentials"),
                "credentials are obtained for a user: the route needs `auth:`",
            ))
        }
        Some(_) if r.forward_token => {
            return Err(src.error(
                &format!("{at}.forward_token"),
                "a route with `credentials:` never forwards the user's token",
            ))
        }
        Some(c) => Some(credentials::credentials(
            src,
            &format!("{at}.credentials"),
            c,
            clients,
            vault,
        )?),
        None => None,
    };
    let approval = match r.approval {
        Some(_) if r.policy.is_none() => {
            return Err(src.error(
                &format!("{at}.approval"),
                "approvals are asked for by the policy (`require_approval`): set `policy:`",
            ))
        }
        Some(a) => Some(approval::approval(
            src,
            &format!("{at}.approval"),
            a,
            clients,
        )?),
        None => None,
    };
    let mcp = match (r.kind.as_deref(), r.mcp) {
        (None | Some("http"), None) => None,
        (Some("mcp"), Some(m)) => {
            let Some(a) = &auth else {
                return Err(src.error(
                    &format!("{at}.kind"),
                    "an MCP route is an OAuth protected resource: it needs `auth:`",
                ));
            };
            Some(mcp::spec(
                src,
                at,
                m,
                &issuers[a.issuer],
                &a.require_scopes,
            )?)
        }
        (Some("mcp"), None) => {
            return Err(src.error(
                &format!("{at}.mcp"),
                "a `kind: mcp` route needs `mcp: { resource: <URL clients use> }`",
            ))
        }
        (None | Some("http"), Some(_)) => {
            return Err(src.error(&format!("{at}.mcp"), "only for `kind: mcp` routes"))
        }
        (Some(other), _) => {
            return Err(src.error(
                &format!("{at}.kind"),
                format!("'{other}' is not a route kind (http or mcp)"),
            ))
        }
    };
    let rate = |name: &str, b: Option<file::Bucket>| -> Result<Option<Rate>, ConfigError> {
        let Some(b) = b else { return Ok(None) };
        let burst = b.burst.unwrap_or(b.per_second.max(1.0));
        if !(b.per_second > 0.0 && b.per_second.is_finite() && burst >= 1.0 && burst.is_finite()) {
            return Err(src.error(
                &format!("{at}.rate_limit.{name}"),
                "need per_second > 0 and burst >= 1",
            ));
        }
        Ok(Some(Rate {
            per_second: b.per_second,
            burst,
        }))
    };
    let (agent_rate, tool_rate) = match r.rate_limit {
        Some(_) if auth.is_none() => {
            return Err(src.error(
                &format!("{at}.rate_limit"),
                "rate limits are per agent: the route needs `auth:`",
            ))
        }
        Some(l) => {
            if l.tool.is_some() && mcp.is_none() {
                return Err(src.error(
                    &format!("{at}.rate_limit.tool"),
                    "per-tool limits need a `kind: mcp` route",
                ));
            }
            (rate("agent", l.agent)?, rate("tool", l.tool)?)
        }
        None => (None, None),
    };
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    Ok(RouteSpec {
        name: Arc::from(r.name.as_str()),
        matcher,
        upstream,
        auth,
        policy: r.policy,
        policy_body: r.policy_body,
        max_body_bytes,
        policy_headers: r
            .policy_headers
            .map(|h| h.into_iter().map(|s| s.to_ascii_lowercase()).collect()),
        forward_token: r.forward_token,
        preserve_host: r.preserve_host,
        pass_headers: target::pass_headers(src, at, r.pass_headers)?,
        identity_headers,
        timeouts: UpstreamTimeouts {
            connect: ms(r.timeouts.connect_ms),
            read: ms(r.timeouts.read_ms),
            write: ms(r.timeouts.write_ms),
            idle: ms(r.timeouts.idle_ms),
        },
        credentials,
        approval,
        mcp,
        agent_rate,
        tool_rate,
    })
}

fn auth(
    src: &Source,
    at: &str,
    a: file::Auth,
    issuers: &[Arc<IssuerSpec>],
) -> Result<AuthSpec, ConfigError> {
    let index = issuers
        .iter()
        .position(|i| *i.name == *a.issuer)
        .ok_or_else(|| {
            let known: Vec<&str> = issuers.iter().map(|i| &*i.name).collect();
            src.error(
                &format!("{at}.issuer"),
                format!(
                    "unknown issuer '{}' (known: {})",
                    a.issuer,
                    known.join(", ")
                ),
            )
        })?;
    if let Some(roles) = &issuers[index].roles {
        let grantable = roles.grantable();
        if let Some(s) = a
            .require_scopes
            .iter()
            .find(|s| !grantable.contains(s.as_str()))
        {
            return Err(src.error(
                &format!("{at}.require_scopes"),
                format!(
                    "scope '{s}' is granted by no role of issuer '{}', so this route could never be used",
                    a.issuer
                ),
            ));
        }
    }
    for (name, list) in [("agents", &a.agents), ("subjects", &a.subjects)] {
        if list.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(src.error(
                &format!("{at}.{name}"),
                "an empty list would deny everyone; remove it or list ids",
            ));
        }
    }
    Ok(AuthSpec {
        issuer: index,
        require_scopes: a.require_scopes,
        agents: a.agents,
        subjects: a.subjects,
    })
}
