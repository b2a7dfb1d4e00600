//! Bearer token → verified identity: algorithm allow-list per issuer, key from the issuer's
//! JWKS (never from `jku`/`x5u`/`jwk` headers), signature, `iss`, `aud`, `exp`/`nbf`/`iat`
//! with leeway, `sub`; then the role map. Verified tokens are cached until they expire.

pub mod cache;
pub mod jwks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::claims::{Identity, TokenError};
use crate::config::model::IssuerSpec;
use crate::policy::{input, Refusal};
use cache::{TokenCache, TokenHash};
use jwks::{IssuerKeys, Lookup};

/// A verified token, as cached.
pub struct Verified {
    pub identity: Identity,
    /// `input.subject` for policies, built once.
    pub subject: regorus::Value,
    /// Index of the issuer that verified it.
    pub issuer: usize,
    /// `exp` + leeway.
    pub valid_until: u64,
}

/// Whether the answer came from the cache (for metrics).
pub enum Source {
    Cache,
    Verified,
}

pub struct Verifier {
    pub issuers: Vec<Arc<IssuerKeys>>,
    validations: Vec<HashMap<Algorithm, Validation>>,
    pub cache: TokenCache,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn validation(spec: &IssuerSpec, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&spec.issuer]);
    v.set_audience(&spec.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = spec.leeway_seconds;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v
}

fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => TokenError::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            "sub" => "sub",
            _ => "nbf",
        }),
        ErrorKind::InvalidClaimFormat(c) => {
            TokenError::InvalidClaim(if c == "exp" { "exp" } else { "nbf" })
        }
        _ => TokenError::Malformed,
    }
}

impl Verifier {
    pub fn new(issuers: Vec<Arc<IssuerKeys>>, cache_entries: usize) -> Verifier {
        let validations = issuers
            .iter()
            .map(|k| {
                k.spec
                    .algorithms
                    .iter()
                    .map(|a| (*a, validation(&k.spec, *a)))
                    .collect()
            })
            .collect();
        Verifier {
            issuers,
            validations,
            cache: TokenCache::new(cache_entries),
        }
    }

    /// Verify `token` for issuer `issuer` (an index into the config's issuers).
    pub async fn verify(
        &self,
        issuer: usize,
        token: &str,
    ) -> Result<(Arc<Verified>, Source), Refusal> {
        let now = now();
        let key: TokenHash = cache::hash(token);
        if let Some(hit) = self.cache.get(&key, issuer, now) {
            return Ok((hit, Source::Cache));
        }
        let verified = Arc::new(self.verify_uncached(issuer, token, now).await?);
        self.cache.insert(key, verified.clone(), now);
        Ok((verified, Source::Verified))
    }

    /// Verify without consulting or filling the cache (benchmarks measure this path).
    pub async fn verify_uncached(
        &self,
        issuer: usize,
        token: &str,
        now: u64,
    ) -> Result<Verified, Refusal> {
        let keys = &self.issuers[issuer];
        let spec = &keys.spec;
        let invalid = |e: TokenError| Refusal::InvalidToken(e);
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| invalid(TokenError::Malformed))?;
        if header.crit.is_some() {
            return Err(invalid(TokenError::UnsupportedCrit));
        }
        let validation = self.validations[issuer]
            .get(&header.alg)
            .ok_or(invalid(TokenError::AlgorithmNotAllowed))?;
        let kid = header.kid.as_deref();
        let key = match keys.lookup(kid) {
            Lookup::Found(k) => k,
            Lookup::Unavailable => match keys.refetch_for(kid).await {
                Lookup::Found(k) => k,
                Lookup::Unknown => return Err(invalid(TokenError::UnknownKey)),
                Lookup::Unavailable => return Err(Refusal::KeysUnavailable),
            },
            Lookup::Unknown if kid.is_none() => return Err(invalid(TokenError::MissingKid)),
            Lookup::Unknown => match keys.refetch_for(kid).await {
                Lookup::Found(k) => k,
                _ => return Err(invalid(TokenError::UnknownKey)),
            },
        };
        if !key.accepts(header.alg) {
            return Err(invalid(TokenError::KeyAlgorithmMismatch));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| invalid(token_error(e.kind())))?;
        let claims = data.claims;
        // jsonwebtoken also accepts an array `iss` naming the issuer; RFC 7519 says one string.
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(invalid(TokenError::InvalidClaim("iss")));
        }
        if let Some(iat) = claims.get("iat") {
            let iat = iat
                .as_u64()
                .ok_or(invalid(TokenError::InvalidClaim("iat")))?;
            if iat > now + spec.leeway_seconds {
                return Err(invalid(TokenError::IssuedInFuture));
            }
        }
        let identity = Identity::from_claims(spec, claims).map_err(invalid)?;
        let subject = input::subject_value(&identity);
        Ok(Verified {
            valid_until: identity.exp.saturating_add(spec.leeway_seconds),
            identity,
            subject,
            issuer,
        })
    }

    /// True when every issuer has a key set.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|k| k.status().loaded)
    }
}
