//! Signing keys of one issuer: fetched from its JWKS at start, refreshed in the background
//! (Cache-Control max-age, bounded), refetched on an unknown `kid` at most once per cooldown.
//! The last good key set keeps serving while the IdP is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::config::model::{IssuerSpec, KeySource};
use crate::metrics::JwksMetrics;

/// One verification key.
pub struct Key {
    pub key: DecodingKey,
    pub family: AlgorithmFamily,
    /// `alg` the JWK is restricted to, if it says.
    pub alg: Option<Algorithm>,
    /// Curve of an EC key.
    pub curve: Option<EllipticCurve>,
}

impl Key {
    /// Whether a token signed with `alg` may be verified with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if alg.family() != self.family || self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.curve, alg) {
            (Some(EllipticCurve::P256), Algorithm::ES256)
            | (Some(EllipticCurve::P384), Algorithm::ES384) => true,
            (Some(_), _) => false,
            (None, _) => true,
        }
    }
}

#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid` (only usable when the set has exactly one key).
    anonymous: Vec<Arc<Key>>,
}

impl KeySet {
    pub fn get(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(k) => self.by_kid.get(k),
            None if self.by_kid.len() + self.anonymous.len() == 1 => self
                .anonymous
                .first()
                .or_else(|| self.by_kid.values().next()),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let name = format!("{:?}", jwk.common.key_algorithm?);
    name.parse().ok()
}

/// Parse a JWKS document. Symmetric keys, encryption keys and keys this build cannot use
/// are skipped; a document with no usable key is an error.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    for raw in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (family, curve) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
            AlgorithmParameters::EllipticCurve(p) => (AlgorithmFamily::Ec, Some(p.curve.clone())),
            AlgorithmParameters::OctetKeyPair(_) => (AlgorithmFamily::Ed, None),
            // never accept shared secrets or unknown key types from a JWKS
            _ => continue,
        };
        let alg = algorithm_of(&jwk);
        if jwk.common.key_algorithm.is_some() && alg.is_none() {
            continue; // an `alg` we do not verify with (e.g. RSA-OAEP)
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let key = Arc::new(Key {
            key,
            family,
            alg,
            curve,
        });
        match jwk.common.key_id {
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
            None => set.anonymous.push(key),
        }
    }
    if set.is_empty() {
        return Err("the JWKS has no usable signing key".into());
    }
    Ok(set)
}

/// `max-age` of a Cache-Control header value.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
}

fn read_file(path: &std::path::Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_jwks(&bytes)
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub loaded: bool,
    pub keys: usize,
    pub last_error: Option<String>,
}

/// The keys of one issuer and how to get them again.
pub struct IssuerKeys {
    pub spec: Arc<IssuerSpec>,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Last on-demand (unknown kid) refetch attempt; the async mutex makes concurrent
    /// requests with the same unknown kid wait for one fetch.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    status: Mutex<Status>,
    /// When the background refresh is due next (set by the refresher; carried over a reload).
    next_due: Mutex<Option<Instant>>,
    client: reqwest::Client,
    max_bytes: usize,
    metrics: JwksMetrics,
}

/// A failed fetch: metric kind and message.
type FetchError = (&'static str, String);

pub enum Lookup {
    Found(Arc<Key>),
    Unknown,
    /// No key set was ever loaded.
    Unavailable,
}

impl IssuerKeys {
    pub fn new(
        spec: Arc<IssuerSpec>,
        client: reqwest::Client,
        max_bytes: usize,
        metrics: JwksMetrics,
    ) -> IssuerKeys {
        IssuerKeys {
            spec,
            keys: RwLock::new(None),
            refetch: tokio::sync::Mutex::new(None),
            status: Mutex::new(Status::default()),
            next_due: Mutex::new(None),
            client,
            max_bytes,
            metrics,
        }
    }

    /// After a reload: take over `old`'s keys, status, refresh schedule and unknown-kid
    /// cooldown when both fetch the same JWKS URI for the same `iss` (no refetch storm).
    /// Returns whether it did; `jwks_file` issuers re-read their file instead.
    pub fn adopt(&self, old: &IssuerKeys) -> bool {
        let same = matches!(self.spec.keys, KeySource::Uri(_))
            && self.spec.keys == old.spec.keys
            && self.spec.issuer == old.spec.issuer;
        let Some(keys) = old.current().filter(|_| same) else {
            return false;
        };
        if let Ok(mut k) = self.keys.write() {
            *k = Some(keys);
        }
        if let Ok(mut s) = self.status.lock() {
            *s = old.status();
        }
        self.set_next_due(old.next_due());
        if let (Ok(mut mine), Ok(theirs)) = (self.refetch.try_lock(), old.refetch.try_lock()) {
            *mine = *theirs;
        }
        true
    }

    /// When the background refresh is due next (`None`: now).
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due.lock().ok().and_then(|d| *d)
    }

    pub fn set_next_due(&self, due: Option<Instant>) {
        if let Ok(mut d) = self.next_due.lock() {
            *d = due;
        }
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    fn install(&self, set: KeySet) {
        let n = set.len();
        if let Ok(mut k) = self.keys.write() {
            *k = Some(Arc::new(set));
        }
        if let Ok(mut s) = self.status.lock() {
            *s = Status {
                loaded: true,
                keys: n,
                last_error: None,
            };
        }
    }

    fn record_error(&self, e: &str) {
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(e.to_string());
        }
    }

    pub fn lookup(&self, kid: Option<&str>) -> Lookup {
        match self.current() {
            None => Lookup::Unavailable,
            Some(set) => set.get(kid).cloned().map_or(Lookup::Unknown, Lookup::Found),
        }
    }

    /// Fetch (or read) the key set and install it. Returns the max-age the IdP asked for.
    pub async fn refresh(&self) -> Result<Option<Duration>, String> {
        let result = match &self.spec.keys {
            KeySource::File(path) => read_file(path)
                .map(|s| (s, None))
                .map_err(|e| ("invalid", e)),
            KeySource::Uri(uri) => {
                let span = crate::telemetry::span("jwks fetch");
                tracing::Instrument::instrument(self.fetch(uri), span).await
            }
        };
        match result {
            Ok((set, age)) => {
                self.metrics.fetched(set.len());
                self.install(set);
                Ok(age)
            }
            Err((kind, e)) => {
                self.metrics.failed(kind);
                self.record_error(&e);
                Err(e)
            }
        }
    }

    /// Load a `jwks_file` issuer's keys (no I/O for `jwks_uri` issuers).
    pub fn load_file(&self) -> Result<(), String> {
        if let KeySource::File(path) = &self.spec.keys {
            let set = read_file(path)?;
            self.metrics.fetched(set.len());
            self.install(set);
        }
        Ok(())
    }

    /// GET the JWKS: the whole exchange (connect, headers, body) within the fetch time-out,
    /// the body within `max_bytes`. Errors carry their metric kind (`JWKS_ERROR_KINDS`).
    async fn fetch(&self, uri: &str) -> Result<(KeySet, Option<Duration>), FetchError> {
        let failed = |what: &str, e: reqwest::Error| {
            let kind = if e.is_timeout() {
                "timeout"
            } else {
                "unreachable"
            };
            (kind, format!("JWKS {what} failed: {}", e.without_url()))
        };
        let mut resp = self
            .client
            .get(uri)
            .timeout(self.spec.jwks.fetch_timeout)
            .send()
            .await
            .map_err(|e| failed("fetch", e))?;
        if !resp.status().is_success() {
            return Err((
                "status",
                format!("JWKS fetch answered HTTP {}", resp.status().as_u16()),
            ));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(self.too_large());
        }
        let age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| failed("read", e))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(self.too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let set = parse_jwks(&body).map_err(|e| ("invalid", e))?;
        Ok((set, age))
    }

    fn too_large(&self) -> FetchError {
        (
            "too_large",
            format!("JWKS document larger than {} bytes", self.max_bytes),
        )
    }

    /// An unknown kid: refetch unless one was attempted within the cooldown, then look again.
    pub async fn refetch_for(&self, kid: Option<&str>) -> Lookup {
        let mut last = self.refetch.lock().await;
        // Another request may have refreshed while this one waited.
        if let Lookup::Found(k) = self.lookup(kid) {
            return Lookup::Found(k);
        }
        if last.is_some_and(|t| t.elapsed() < self.spec.jwks.unknown_kid_cooldown) {
            return self.lookup(kid);
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh().await {
            tracing::warn!(issuer = %self.spec.name, error = %e, "JWKS refetch for unknown kid failed");
        }
        self.lookup(kid)
    }

    /// When to refresh next, after a success with `age` or after a failure.
    pub fn next_refresh(
        &self,
        outcome: &Result<Option<Duration>, String>,
        failures: u32,
    ) -> Duration {
        let t = &self.spec.jwks;
        match outcome {
            Ok(age) => age
                .unwrap_or(t.default_refresh)
                .clamp(t.min_refresh, t.max_refresh),
            Err(_) => Duration::from_secs(1u64 << failures.min(5)).min(t.default_refresh),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{max_age, parse_jwks};
    use jsonwebtoken::Algorithm;
    use std::time::Duration;

    const RSA: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","e":"AQAB",
        "n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"}"#;

    #[test]
    fn parses_rsa_and_skips_symmetric_keys() {
        let doc = format!(r#"{{"keys":[{RSA},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}}]}}"#);
        let set = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        let key = set.get(Some("r1")).unwrap();
        assert!(key.accepts(Algorithm::RS256));
        assert!(!key.accepts(Algorithm::RS512)); // the JWK says RS256
        assert!(!key.accepts(Algorithm::HS256));
        assert!(!key.accepts(Algorithm::ES256));
        assert!(set.get(Some("h")).is_none());
    }

    #[test]
    fn rejects_empty_or_garbage() {
        assert!(parse_jwks(b"{\"keys\":[]}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), None);
    }
}
