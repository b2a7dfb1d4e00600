//! What both vault backends share: the credential types, sealing a credential into a row
//! (AES-256-GCM, AAD bound to sub, connection and key id) and opening it again, and the key
//! checks done at open. The backends only move rows.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::keys::OpenFailure;
use super::{Secret, VaultError, VaultKeys};

/// An upstream OAuth credential as stored for one (sub, connection). The tokens are encrypted;
/// `expires_at` and `scopes` are plaintext metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The upstream access token.
    pub access_token: Secret,
    /// The upstream refresh token, if any.
    pub refresh_token: Option<Secret>,
    /// Expiry of the access token, unix seconds; `None` = unknown or no expiry.
    pub expires_at: Option<u64>,
    /// Granted scopes (OAuth scope tokens: non-empty, no whitespace).
    pub scopes: Vec<String>,
}

/// What `list` returns: metadata only, never a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CredentialMeta {
    /// The user's subject.
    pub sub: String,
    /// The upstream connection name.
    pub connection: String,
    /// Expiry of the access token, unix seconds.
    pub expires_at: Option<u64>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// The id of the key the row is encrypted under.
    pub key_id: String,
    /// When the row was last written, unix seconds.
    pub updated_at: u64,
    /// The row's version, for `replace_if`.
    pub version: u64,
}

/// The encrypted part of a row, as JSON (written borrowed, read owned).
#[derive(Serialize)]
struct SecretsOut<'a> {
    access_token: &'a Secret,
    refresh_token: Option<&'a Secret>,
}

#[derive(Deserialize)]
struct SecretsIn {
    access_token: Secret,
    refresh_token: Option<Secret>,
}

/// A row as read from a backend: the metadata plus the sealed part.
pub(crate) struct RawRow {
    pub meta: CredentialMeta,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A validated, encrypted row ready to be written.
pub(crate) struct SealedRow<'a> {
    pub sub: &'a str,
    pub connection: &'a str,
    pub key_id: &'a str,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
    pub expires_at: Option<i64>,
    pub scopes: String,
    pub has_refresh_token: bool,
    pub updated_at: i64,
}

/// Validates and encrypts a credential for (sub, connection) under the primary key.
pub(crate) fn seal<'a>(
    keys: &'a VaultKeys,
    sub: &'a str,
    connection: &'a str,
    cred: &Credential,
) -> Result<SealedRow<'a>, VaultError> {
    let invalid = |msg: &str| VaultError::InvalidArgument(msg.to_string());
    if [sub, connection]
        .iter()
        .any(|n| n.is_empty() || n.contains('\0'))
    {
        return Err(invalid(
            "sub and connection must be non-empty, without NUL bytes",
        ));
    }
    if cred
        .scopes
        .iter()
        .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err(invalid(
            "scopes must be non-empty and contain no whitespace",
        ));
    }
    let expires_at = cred.expires_at.map(i64::try_from).transpose();
    let expires_at = expires_at.map_err(|_| invalid("expires_at is out of range"))?;
    let key_id = keys.primary_id();
    let secrets = SecretsOut {
        access_token: &cred.access_token,
        refresh_token: cred.refresh_token.as_ref(),
    };
    let plain = serde_json::to_vec(&secrets)
        .map_err(|e| VaultError::Crypto(format!("cannot encode the credential: {e}")))?;
    let (nonce, ciphertext) = keys.seal(&row_aad(sub, connection, key_id), &plain)?;
    Ok(SealedRow {
        sub,
        connection,
        key_id,
        nonce,
        ciphertext,
        expires_at,
        scopes: cred.scopes.join(" "),
        has_refresh_token: cred.refresh_token.is_some(),
        updated_at: now(),
    })
}

/// Decrypts a row's sealed JSON.
fn unseal_plain(keys: &VaultKeys, raw: &RawRow) -> Result<Vec<u8>, VaultError> {
    let m = &raw.meta;
    let aad = row_aad(&m.sub, &m.connection, &m.key_id);
    match keys.open(&m.key_id, &raw.nonce, &aad, &raw.ciphertext) {
        Ok(plain) => Ok(plain),
        Err(OpenFailure::UnknownKeyId) => Err(VaultError::UnknownKeyId {
            key_id: m.key_id.clone(),
        }),
        Err(OpenFailure::Failed) => Err(corrupt(raw)),
    }
}

/// Decrypts a row into its credential and version. [`VaultError::Corrupt`] if it does not
/// decrypt (tampered, moved, or damaged).
pub(crate) fn unseal(keys: &VaultKeys, raw: RawRow) -> Result<(Credential, u64), VaultError> {
    let plain = unseal_plain(keys, &raw)?;
    let secrets: SecretsIn = serde_json::from_slice(&plain).map_err(|_| corrupt(&raw))?;
    let cred = Credential {
        access_token: secrets.access_token,
        refresh_token: secrets.refresh_token,
        expires_at: raw.meta.expires_at,
        scopes: raw.meta.scopes,
    };
    Ok((cred, raw.meta.version))
}

/// Re-encrypts a row under the primary key (for rotation): `(nonce, ciphertext)`.
pub(crate) fn reseal(keys: &VaultKeys, raw: &RawRow) -> Result<([u8; 12], Vec<u8>), VaultError> {
    let plain = unseal_plain(keys, raw)?;
    let aad = row_aad(&raw.meta.sub, &raw.meta.connection, keys.primary_id());
    keys.seal(&aad, &plain)
}

/// The key checks done at open: every configured key with a check row (`checks`: key id,
/// nonce, sealed check) must open it, and every key id used by a credential (`used`) must be
/// configured.
pub(crate) fn verify_keys(
    keys: &VaultKeys,
    checks: Vec<(String, Vec<u8>, Vec<u8>)>,
    used: Vec<String>,
) -> Result<(), VaultError> {
    for (key_id, nonce, check) in checks {
        if keys.contains(&key_id) && !keys.check_matches(&key_id, &nonce, &check) {
            return Err(VaultError::WrongKey { key_id });
        }
    }
    match used.into_iter().find(|id| !keys.contains(id)) {
        Some(key_id) => Err(VaultError::UnknownKeyId { key_id }),
        None => Ok(()),
    }
}

/// The scopes column back into scope tokens.
pub(crate) fn scopes(column: &str) -> Vec<String> {
    column.split_whitespace().map(str::to_string).collect()
}

fn corrupt(raw: &RawRow) -> VaultError {
    let (sub, connection) = (raw.meta.sub.clone(), raw.meta.connection.clone());
    VaultError::Corrupt { sub, connection }
}

/// AAD binding a ciphertext to its row: `sub \0 connection \0 key_id` (names hold no NUL).
fn row_aad(sub: &str, connection: &str, key_id: &str) -> Vec<u8> {
    [sub, connection, key_id].join("\0").into_bytes()
}

/// Unix seconds, as the databases store integers.
pub(crate) fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}
