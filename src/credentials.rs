//! Calling upstreams on the user's behalf: the user's token is swapped for a token issued
//! for the upstream, by RFC 8693 token exchange, by Auth0 Token Vault's federated-connection
//! exchange, or from the built-in vault. Tokens are cached per (route, issuer, sub, agent)
//! with single-flight; every failure refuses the request (fail closed). With a shared state
//! backend, exchanged tokens are also shared (encrypted) by the replicas: a local miss asks
//! the shared cache before the authorization server (single-flight across replicas is
//! best-effort: two replicas missing at once both exchange).

pub mod cache;
pub mod oauth;
pub mod vault;

use std::sync::Arc;
use std::time::Instant;

use crate::auth::{now, Verified};
use crate::config::model::{Config, ConnectionSpec, CredentialMode, CredentialSpec, RouteSpec};
use crate::metrics::CredentialMetrics;
use crate::policy::Refusal;
use crate::secret::Secret;
use crate::state::SharedTokens;
use crate::vault::Vault;
use cache::{Source, TokenCache, UpstreamToken};
use oauth::{OAuthError, TokenClient, TokenResponse};

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_VAULT: &str =
    "urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token";
pub const TOKEN_VAULT_TYPE: &str =
    "http://auth0.com/oauth/token-type/federated-connection-access-token";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Upstream lifetime assumed when a token response has no `expires_in`.
const DEFAULT_LIFETIME: u64 = 300;

pub struct Credentials {
    clients: Vec<TokenClient>,
    pub cache: TokenCache,
    metrics: CredentialMetrics,
    vault: Option<Vault>,
    connections: Vec<ConnectionSpec>,
    shared: Option<Arc<dyn SharedTokens>>,
}

/// `valid_until` for a token that lives `expires_in` seconds from `now`: the configured
/// margin earlier, but never less than half its life.
pub fn valid_until(now: u64, expires_in: Option<u64>, spec: &CredentialSpec) -> u64 {
    let life = expires_in.unwrap_or(DEFAULT_LIFETIME);
    now + life - spec.expiry_margin.as_secs().min(life / 2)
}

impl Credentials {
    pub fn new(
        config: &Config,
        http: reqwest::Client,
        metrics: CredentialMetrics,
        vault: Option<Vault>,
    ) -> Credentials {
        Credentials {
            vault,
            connections: config
                .vault
                .as_ref()
                .map(|v| v.connections.clone())
                .unwrap_or_default(),
            clients: config
                .clients
                .iter()
                .map(|c| TokenClient::new(c.clone(), http.clone()))
                .collect(),
            cache: TokenCache::new(config.token_cache_entries),
            metrics,
            shared: None,
        }
    }

    /// Share exchanged tokens with other replicas through `shared`.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedTokens>>) -> Credentials {
        self.shared = shared;
        self
    }

    /// The shared cache's token for `key`, if any. Its failure is not a refusal: the token
    /// is obtained from the authorization server instead (logged and counted).
    async fn shared_token(
        &self,
        spec: &CredentialSpec,
        key: &cache::SlotKey,
        now: u64,
    ) -> Option<UpstreamToken> {
        let shared = self.shared.as_ref().filter(|_| shareable(spec))?;
        let t = shared.get(key, now).await.ok().flatten()?;
        self.metrics.cache_shared_hit.inc();
        Some(t)
    }

    /// Store `t` in the shared cache, no longer than `limit` (the subject token's expiry).
    async fn share(
        &self,
        spec: &CredentialSpec,
        key: &cache::SlotKey,
        t: &UpstreamToken,
        limit: u64,
    ) {
        if let Some(shared) = self.shared.as_ref().filter(|_| shareable(spec)) {
            let capped = UpstreamToken {
                value: t.value.clone(),
                valid_until: t.valid_until.min(limit),
            };
            let _ = shared.put(key, &capped, now()).await;
        }
    }

    /// The opened vault, if one is configured.
    pub fn vault(&self) -> Option<&Vault> {
        self.vault.as_ref()
    }

    pub fn has_connection(&self, name: &str) -> bool {
        self.connections.iter().any(|c| *c.name == *name)
    }

    /// The token to send to `route`'s upstream for this caller.
    pub async fn upstream_token(
        &self,
        route: &RouteSpec,
        spec: &CredentialSpec,
        verified: &Verified,
        subject_token: &str,
    ) -> Result<Arc<UpstreamToken>, Refusal> {
        let id = &verified.identity;
        let key = cache::key(&route.name, &id.issuer, &id.sub, id.agent.as_deref());
        let now = now();
        let result = self
            .cache
            .get_or_fetch(key, &id.sub, now, verified.valid_until, || async move {
                if let Some(t) = self.shared_token(spec, &key, now).await {
                    return Ok(t);
                }
                let t = self
                    .fetch(route, spec, verified, subject_token, now)
                    .await?;
                self.share(spec, &key, &t, verified.valid_until).await;
                Ok(t)
            })
            .await;
        match &result {
            Ok((_, Source::Cache)) => self.metrics.cache_hit.inc(),
            _ => self.metrics.cache_miss.inc(),
        }
        result.map(|(t, _)| t)
    }

    async fn fetch(
        &self,
        route: &RouteSpec,
        spec: &CredentialSpec,
        verified: &Verified,
        subject_token: &str,
        now: u64,
    ) -> Result<UpstreamToken, Refusal> {
        let mode = spec.mode.name();
        let started = Instant::now();
        let result = match &spec.mode {
            CredentialMode::TokenExchange {
                client,
                audience,
                resource,
                scope,
                requested_token_type,
                actor_token,
            } => {
                let c = &self.clients[*client];
                let mut params = vec![
                    ("grant_type", TOKEN_EXCHANGE.to_string()),
                    ("subject_token", subject_token.to_string()),
                    ("subject_token_type", ACCESS_TOKEN_TYPE.to_string()),
                ];
                params.extend(audience.iter().map(|a| ("audience", a.clone())));
                params.extend(resource.iter().map(|r| ("resource", r.clone())));
                params.extend(scope.iter().map(|s| ("scope", s.clone())));
                params.extend(
                    requested_token_type
                        .iter()
                        .map(|t| ("requested_token_type", t.clone())),
                );
                if *actor_token {
                    match c.assertion() {
                        Ok(a) => {
                            params.push(("actor_token", a));
                            params.push(("actor_token_type", JWT_TOKEN_TYPE.to_string()));
                        }
                        Err(e) => return Err(self.failed(route, mode, started, &e)),
                    }
                }
                c.request(params).await
            }
            CredentialMode::TokenVault {
                client,
                connection,
                scope,
                login_hint,
            } => {
                let mut params = vec![
                    ("grant_type", TOKEN_VAULT.to_string()),
                    ("subject_token", subject_token.to_string()),
                    ("subject_token_type", ACCESS_TOKEN_TYPE.to_string()),
                    ("requested_token_type", TOKEN_VAULT_TYPE.to_string()),
                    ("connection", connection.clone()),
                ];
                params.extend(scope.iter().map(|s| ("scope", s.clone())));
                if *login_hint {
                    params.push(("login_hint", verified.identity.sub.clone()));
                }
                self.clients[*client].request(params).await
            }
            CredentialMode::Vault { connection } => {
                let (Some(store), Some(conn)) = (&self.vault, self.connections.get(*connection))
                else {
                    return Err(Refusal::CredentialsUnavailable);
                };
                let source = vault::VaultSource {
                    vault: store,
                    connection: conn,
                    client: &self.clients[conn.client],
                    metrics: &self.metrics,
                };
                return source.token(&verified.identity.sub, spec, now).await;
            }
        };
        match result {
            Ok(TokenResponse {
                access_token,
                expires_in,
                ..
            }) => {
                self.metrics.exchanged(mode, "success", started.elapsed());
                Ok(UpstreamToken {
                    value: access_token,
                    valid_until: valid_until(now, expires_in, spec),
                })
            }
            Err(e) => Err(self.failed(route, mode, started, &e)),
        }
    }

    /// Log (without tokens) and count a failed exchange; the refusal the client sees.
    fn failed(&self, route: &RouteSpec, mode: &str, started: Instant, e: &OAuthError) -> Refusal {
        let (outcome, refusal) = refusal_for(e);
        self.metrics.exchanged(mode, outcome, started.elapsed());
        tracing::warn!(route = %route.name, mode, error = %e, "obtaining the upstream token failed; denying");
        refusal
    }
}

/// Whether tokens of this mode go to the shared cache: exchanged ones. Vault tokens stay per
/// replica (a revocation through the admin API drops them from that replica's cache only).
fn shareable(spec: &CredentialSpec) -> bool {
    !matches!(spec.mode, CredentialMode::Vault { .. })
}

/// Metric outcome and client-facing refusal of a token-endpoint failure.
pub fn refusal_for(e: &OAuthError) -> (&'static str, Refusal) {
    match e {
        OAuthError::Unreachable(_) => ("unreachable", Refusal::CredentialsUnavailable),
        OAuthError::Rejected { .. } if e.grant_rejected() => {
            ("rejected", Refusal::ExchangeRejected)
        }
        OAuthError::Rejected { .. } => ("error", Refusal::CredentialsFailed),
        OAuthError::BadAnswer(_) => ("error", Refusal::CredentialsFailed),
    }
}

/// The header value sent upstream.
pub fn header_value(spec: &CredentialSpec, token: &Secret) -> String {
    match &spec.scheme {
        Some(scheme) => format!("{scheme} {}", token.expose()),
        None => token.expose().to_string(),
    }
}
