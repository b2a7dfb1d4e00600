//! One loaded configuration, ready to serve: validated config, compiled policies, token
//! verifier and metrics. `proxy` holds one of these; nothing here knows pingora.

use std::path::Path;
use std::sync::Arc;

use crate::approval::backend::{ApprovalBackend, Sqlite};
use crate::approval::store::ApprovalStore;
use crate::approval::Approvals;
use crate::auth::jwks::IssuerKeys;
use crate::auth::{Source as TokenSource, Verified, Verifier};
use crate::config::model::{Config, KeySource, RouteSpec};
use crate::config::model::{CredentialMode, VaultBackendSpec, VaultKeySource};
use crate::config::{self, ConfigError, Source};
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::policy::input::{self, RequestInfo};
use crate::policy::rego::{entrypoint, PolicyLoadError, PolicySet};
use crate::policy::{check_identity, Decision, Refusal};
use crate::state::State;
use crate::vault::{PgStore, SqliteVault, Vault, VaultKeys};

pub struct Gateway {
    pub config: Config,
    pub source: Source,
    pub policies: PolicySet,
    /// `data.<package>.decision` per route, in route order.
    entrypoints: Vec<Option<String>>,
    /// `input.credentials` per route, in route order.
    credential_inputs: Vec<Option<regorus::Value>>,
    /// Each route's revision ([`Gateway::revision`]), in route order.
    revisions: Vec<String>,
    pub verifier: Verifier,
    pub credentials: Credentials,
    pub approvals: Approvals,
    /// Rate-limit buckets, shared upstream tokens, the state backend: shared with the
    /// configurations reloaded from this one.
    pub state: Arc<State>,
    pub metrics: Metrics,
    /// For calls the gateway forwards itself (an MCP call approved while its progress stream
    /// is open): no redirects, no proxy from the environment.
    pub upstream_http: reqwest::Client,
}

/// A bearer token from the Authorization header values of a request.
pub fn bearer<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<&'a str, Refusal> {
    let Some(first) = values.next() else {
        return Err(Refusal::MissingToken);
    };
    if values.next().is_some() {
        return Err(Refusal::BadRequest("more than one Authorization header"));
    }
    let value = std::str::from_utf8(first)
        .map_err(|_| Refusal::BadRequest("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::MissingToken);
    }
    let token = token.trim_start_matches(' ');
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    let body = token.trim_end_matches('=');
    if body.is_empty() || !body.bytes().all(b64token) {
        return Err(Refusal::InvalidToken(crate::claims::TokenError::Malformed));
    }
    Ok(token)
}

/// The bearer token of a request's `Authorization` header(s).
pub fn bearer_of(headers: &http::HeaderMap) -> Result<&str, Refusal> {
    bearer(
        headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

impl Gateway {
    /// Load and validate `path`, compile its policies, load file-based keys and open (or
    /// create) the vault. Nothing is fetched from the network.
    pub fn load(path: &Path) -> Result<Gateway, ConfigError> {
        Gateway::load_with(path, true, None)
    }

    /// Load `path` again to replace `old` (a reload): settings that cannot change while
    /// running must be unchanged; metrics, rate-limit buckets, pending-approval counts, the
    /// approval store and the JWKS of unchanged issuers carry over. Caches start empty.
    pub fn reload(path: &Path, old: &Gateway) -> Result<Gateway, ConfigError> {
        Gateway::load_with(path, true, Some(old))
    }

    /// As `load`, for `portcullis check`: an existing vault is opened (so a wrong key is
    /// reported), a missing one is not created.
    pub fn check(path: &Path) -> Result<Gateway, ConfigError> {
        Gateway::load_with(path, false, None)
    }

    fn load_with(
        path: &Path,
        create_vault: bool,
        previous: Option<&Gateway>,
    ) -> Result<Gateway, ConfigError> {
        let (source, config) = config::load(path)?;
        if let Some(old) = previous {
            crate::reload::unchanged_at_runtime(&source, &old.config, &config)?;
        }
        let packages: Vec<&str> = config
            .routes
            .iter()
            .filter_map(|r| r.policy.as_deref())
            .collect();
        let policies = PolicySet::load(
            &config.policy_dir,
            &packages,
            config.policy_timeout,
            config.policy_engine,
        )
        .map_err(|e| policy_error(&source, &config, e))?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| source.error("issuers", format!("cannot build HTTP client: {e}")))?;
        let route_names = config.routes.iter().map(|r| &*r.name);
        let metrics = match previous {
            Some(old) => old.metrics.for_routes(route_names),
            None => Metrics::new(route_names),
        };
        let mut keys = Vec::new();
        for (i, spec) in config.issuers.iter().enumerate() {
            let k = Arc::new(IssuerKeys::new(
                spec.clone(),
                client.clone(),
                config.jwks_max_bytes,
                metrics.jwks(&spec.name),
            ));
            if let KeySource::File(_) = spec.keys {
                k.load_file()
                    .map_err(|e| source.error(&format!("issuers[{i}].jwks_file"), e))?;
            } else if let Some(old) =
                // Same JWKS URI (and `iss`, checked by `adopt`), whatever the issuer's name.
                previous.and_then(|p| {
                    p.verifier.issuers.iter().find(|o| o.spec.keys == spec.keys)
                })
            {
                k.adopt(old);
            }
            keys.push(k);
        }
        let entrypoints = config
            .routes
            .iter()
            .map(|r| r.policy.as_deref().map(entrypoint))
            .collect();
        let revisions: Vec<String> = config
            .routes
            .iter()
            .map(|r| route_revision(policies.digest(), r))
            .collect();
        let verifier = Verifier::new(keys.clone(), config.token_cache_entries);
        let token_http = reqwest::Client::builder()
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| source.error("clients", format!("cannot build HTTP client: {e}")))?;
        let vault = open_vault(
            &source,
            &config,
            create_vault,
            metrics.credentials.vault_db_round_trips.clone(),
        )?;
        let state = match previous {
            // `state:` is unchanged (checked above).
            Some(old) => old.state.clone(),
            None => Arc::new(
                State::open(
                    &config,
                    metrics.state.clone(),
                    vault_key_text(&config).as_deref(),
                )
                .map_err(|e| source.error("state", e))?,
            ),
        };
        let approval_store: Option<Arc<dyn ApprovalBackend>> = match (previous, &state.redis) {
            // Same path (checked above): the store the pending approvals' pollers write to.
            (Some(old), _) => old.approvals.store().cloned(),
            (None, Some(redis)) => Some(Arc::new(
                crate::state::redis::approvals::RedisApprovals::new(redis.clone()),
            )),
            (None, None) => open_approval_store(&source, &config, create_vault)?
                .map(|s| Arc::new(Sqlite(s)) as Arc<dyn ApprovalBackend>),
        };
        let mut approvals = Approvals::new(
            &config,
            token_http.clone(),
            approval_store,
            metrics.approvals.clone(),
            keys.clone(),
        );
        if let Some(old) = previous {
            approvals.carry_pending(&old.approvals);
        }
        let credentials = Credentials::new(&config, token_http, metrics.credentials.clone(), vault)
            .with_shared(state.tokens.clone());
        let credential_inputs = config
            .routes
            .iter()
            .map(|r| {
                r.credentials.as_ref().map(|c| {
                    let connection = match &c.mode {
                        CredentialMode::TokenExchange { .. } => None,
                        CredentialMode::TokenVault { connection, .. } => Some(connection.as_str()),
                        CredentialMode::Vault { connection } => config
                            .vault
                            .as_ref()
                            .map(|v| &*v.connections[*connection].name),
                    };
                    input::credentials_value(c.mode.name(), connection)
                })
            })
            .collect();
        let upstream_http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| source.error("routes", format!("cannot build HTTP client: {e}")))?;
        approvals.publish_revisions(
            config
                .routes
                .iter()
                .zip(&revisions)
                .map(|(r, rev)| {
                    let keep = r.approval.as_ref().is_some_and(|a| a.keep_on_policy_change);
                    let rev = rev.clone();
                    (
                        r.name.to_string(),
                        crate::approval::RouteRevision { rev, keep },
                    )
                })
                .collect(),
        );
        Ok(Gateway {
            revisions,
            upstream_http,
            state,
            approvals,
            credentials,
            credential_inputs,
            config,
            source,
            policies,
            entrypoints,
            verifier,
            metrics,
        })
    }

    /// The route's per-agent limit, then (for an MCP `tool`) its per-agent-and-tool limit.
    /// Fails closed (503 `state_unavailable`) when shared buckets cannot be reached.
    pub async fn rate_check(
        &self,
        route: &RouteSpec,
        agent: Option<&str>,
        tool: Option<&str>,
    ) -> Result<(), Refusal> {
        let agent = agent.unwrap_or("-");
        let (rate, key, is_tool) = match (tool, route.tool_rate, route.agent_rate) {
            (Some(t), Some(rate), _) => (rate, format!("{}\0{agent}\0{t}", route.name), true),
            (None, _, Some(rate)) => (rate, format!("{}\0{agent}", route.name), false),
            _ => return Ok(()),
        };
        match self.state.take(&key, rate).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(retry_after)) => Err(Refusal::RateLimited {
                retry_after,
                tool: is_tool,
            }),
            Err(_) => Err(Refusal::StateUnavailable), // logged and counted by the backend
        }
    }

    /// Verify the bearer token for `route` and apply its identity checks.
    pub async fn authenticate(
        &self,
        route: &RouteSpec,
        token: &str,
    ) -> Result<(Arc<Verified>, TokenSource), Refusal> {
        let Some(auth) = &route.auth else {
            return Err(Refusal::PolicyError);
        };
        let (verified, source) = self.verifier.verify(auth.issuer, token).await?;
        check_identity(auth, &verified.identity)?;
        Ok((verified, source))
    }

    /// Evaluate the route's policy, if it has one. `Err` carries the policy failure detail
    /// (for the log); the caller denies.
    pub fn decide(
        &self,
        route_index: usize,
        verified: &Verified,
        request: RequestInfo<'_>,
    ) -> Result<Decision, String> {
        match self.policy_input(route_index, verified, request) {
            None => Ok(Decision::Allow),
            Some(doc) => {
                let _span = crate::telemetry::span("policy").entered();
                self.decide_input(route_index, doc)
            }
        }
    }

    /// The policy input document for a request on route `route_index`; `None`: the route has
    /// no policy.
    pub fn policy_input(
        &self,
        route_index: usize,
        verified: &Verified,
        request: RequestInfo<'_>,
    ) -> Option<regorus::Value> {
        let route = &self.config.routes[route_index];
        self.entrypoints[route_index].as_ref()?;
        Some(input::build(
            &route.name,
            request,
            &verified.subject,
            self.credential_inputs[route_index].as_ref(),
        ))
    }

    /// Evaluate route `route_index`'s policy on an input document (`Allow` without a policy).
    pub fn decide_input(
        &self,
        route_index: usize,
        doc: regorus::Value,
    ) -> Result<Decision, String> {
        match &self.entrypoints[route_index] {
            None => Ok(Decision::Allow),
            Some(entry) => self.policies.decide(entry, doc),
        }
    }

    /// The client index of the approval settings of route `name`.
    pub fn approval_client(&self, name: &str) -> Option<crate::approval::PollSpec> {
        self.config
            .routes
            .iter()
            .find(|r| &*r.name == name)
            .and_then(|r| r.approval.as_ref())
            .map(|a| crate::approval::PollSpec {
                client: a.client,
                require_details: a.require_details,
            })
    }

    /// The revision of `route`: its policies (the whole policy directory: a package may
    /// import any other) and its configuration. An approval is bound to it.
    pub fn revision(&self, route: &RouteSpec) -> &str {
        &self.revisions[self.route_index(route)]
    }

    /// Position of `route` (one of this configuration's routes) in route order.
    pub fn route_index(&self, route: &RouteSpec) -> usize {
        self.config
            .routes
            .iter()
            .position(|r| std::ptr::eq(&**r, route))
            .unwrap_or(0)
    }
}

/// Open the approval store (async approvals), creating it unless `create` is false.
/// SHA-256 (hex) of the policies' digest and the route's configuration.
fn route_revision(policies: &str, route: &RouteSpec) -> String {
    crate::state::hex(
        aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{policies}\n{route:?}").as_bytes(),
        )
        .as_ref(),
    )
}

fn open_approval_store(
    source: &Source,
    config: &Config,
    create: bool,
) -> Result<Option<Arc<ApprovalStore>>, ConfigError> {
    let Some(path) = &config.approvals.store else {
        return Ok(None);
    };
    if !create && !path.exists() {
        return Ok(None);
    }
    ApprovalStore::open(path)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| source.error("approvals.store", format!("{}: {e}", path.display())))
}

/// The vault's key text (for the shared token cache), if a vault is configured and its keys
/// can be read (`open_vault` reports the errors).
fn vault_key_text(config: &Config) -> Option<String> {
    match &config.vault.as_ref()?.keys {
        VaultKeySource::Env(var) => std::env::var(var).ok(),
        VaultKeySource::File(p) => std::fs::read_to_string(p).ok(),
    }
}

/// Open the configured vault with keys from the environment or the key file.
fn open_vault(
    source: &Source,
    config: &Config,
    create: bool,
    round_trips: prometheus::IntCounter,
) -> Result<Option<Vault>, ConfigError> {
    let Some(spec) = &config.vault else {
        return Ok(None);
    };
    let text = match &spec.keys {
        VaultKeySource::Env(var) => std::env::var(var).map_err(|_| {
            source.error(
                "vault.key_env",
                format!("environment variable '{var}' is not set"),
            )
        })?,
        VaultKeySource::File(p) => std::fs::read_to_string(p).map_err(|e| {
            source.error(
                "vault.key_file",
                format!("cannot read {}: {e}", p.display()),
            )
        })?,
    };
    let keys = VaultKeys::parse(&text).map_err(|e| source.error("vault", e.to_string()))?;
    let vault: Vault = match &spec.backend {
        VaultBackendSpec::Sqlite(path) => {
            if !create && !path.exists() {
                return Ok(None);
            }
            Arc::new(
                SqliteVault::open(path, keys)
                    .map_err(|e| source.error("vault.path", format!("{}: {e}", path.display())))?,
            )
        }
        VaultBackendSpec::Postgres(options) => Arc::new(
            PgStore::open(options, keys, round_trips)
                .map_err(|e| source.error("vault.postgres", e.to_string()))?,
        ),
    };
    Ok(Some(vault))
}

fn policy_error(source: &Source, config: &Config, e: PolicyLoadError) -> ConfigError {
    let route_of = |package: &str| {
        config
            .routes
            .iter()
            .position(|r| r.policy.as_deref() == Some(package))
            .map_or_else(|| "policies".to_string(), |i| format!("routes[{i}].policy"))
    };
    match &e {
        PolicyLoadError::MissingPackage { package, .. } | PolicyLoadError::Rule { package, .. } => {
            source.error(&route_of(package), e.to_string())
        }
        PolicyLoadError::Compile { .. }
        | PolicyLoadError::Read { .. }
        | PolicyLoadError::Dir { .. } => source.error("policies.dir", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;
    use crate::policy::Refusal;

    #[test]
    fn bearer_parsing() {
        let v = |s: &'static str| vec![s.as_bytes()];
        assert_eq!(
            bearer(v("Bearer abc.def-_~+/=").into_iter()),
            Ok("abc.def-_~+/=")
        );
        assert_eq!(bearer(v("bearer abc").into_iter()), Ok("abc"));
        assert_eq!(bearer(std::iter::empty()), Err(Refusal::MissingToken));
        assert_eq!(
            bearer(v("Basic dXNlcjpwYXNz").into_iter()),
            Err(Refusal::MissingToken)
        );
        assert!(matches!(
            bearer(v("Bearer ").into_iter()),
            Err(Refusal::InvalidToken(_))
        ));
        assert!(matches!(
            bearer(v("Bearer a b").into_iter()),
            Err(Refusal::InvalidToken(_))
        ));
        let two = vec!["Bearer a".as_bytes(), "Bearer b".as_bytes()];
        assert!(matches!(
            bearer(two.into_iter()),
            Err(Refusal::BadRequest(_))
        ));
    }
}
