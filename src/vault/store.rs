//! The SQLite-backed store: one row per (sub, connection), the tokens sealed with AES-256-GCM.
//!
//! Tables: `credentials`; `vault_keys` (per key id ever used as primary, that key's sealing of
//! a fixed check string, so a wrong key is caught at open); `revoked` (the last version of each
//! revoked pair, so versions never repeat and a stale [`VaultStore::replace_if`] cannot
//! overwrite a credential stored again after a revocation).

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::keys::OpenFailure;
use super::{Secret, VaultError, VaultKeys};
use crate::private_file::{self, PrivateFileError};

/// Written to `PRAGMA user_version`; a file with a higher version is refused.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vault_keys (key_id TEXT PRIMARY KEY NOT NULL, nonce BLOB NOT NULL,
    check_ct BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (sub TEXT NOT NULL, connection TEXT NOT NULL,
    key_id TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, expires_at INTEGER,
    scopes TEXT NOT NULL, has_refresh_token INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY (sub, connection));
CREATE INDEX IF NOT EXISTS credentials_key_id ON credentials (key_id);
CREATE TABLE IF NOT EXISTS revoked (sub TEXT NOT NULL, connection TEXT NOT NULL,
    version INTEGER NOT NULL, PRIMARY KEY (sub, connection));";

const COLUMNS: &str = "sub, connection, key_id, nonce, ciphertext, expires_at, scopes, \
                       has_refresh_token, updated_at, version";
/// Rewrites a row, bumping its version; `?10` NULL = any version, else compare-and-swap.
const UPDATE: &str = "UPDATE credentials SET key_id = ?3, nonce = ?4, ciphertext = ?5, \
    expires_at = ?6, scopes = ?7, has_refresh_token = ?8, updated_at = ?9, \
    version = version + 1 WHERE sub = ?1 AND connection = ?2 AND (?10 IS NULL OR version = ?10)";
/// Inserts a new row; its version continues from a revoked predecessor's, else starts at 1.
const INSERT: &str = "INSERT INTO credentials (sub, connection, key_id, nonce, ciphertext, \
    expires_at, scopes, has_refresh_token, updated_at, version) SELECT ?1, ?2, ?3, ?4, ?5, ?6, \
    ?7, ?8, ?9, 1 + COALESCE(MAX(version), 0) FROM revoked WHERE sub = ?1 AND connection = ?2";

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

/// What [`VaultStore::list`] returns: metadata only, never a token.
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
    /// The row's version, for [`VaultStore::replace_if`].
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

/// A row as read from `credentials`: the metadata plus the sealed part.
struct RawRow {
    meta: CredentialMeta,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl RawRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<RawRow> {
        let scopes: String = r.get(6)?;
        let meta = CredentialMeta {
            sub: r.get(0)?,
            connection: r.get(1)?,
            key_id: r.get(2)?,
            expires_at: r
                .get::<_, Option<i64>>(5)?
                .map(|v| unsigned(5, v))
                .transpose()?,
            scopes: scopes.split_whitespace().map(str::to_string).collect(),
            has_refresh_token: r.get(7)?,
            updated_at: unsigned(8, r.get(8)?)?,
            version: unsigned(9, r.get(9)?)?,
        };
        Ok(RawRow {
            meta,
            nonce: r.get(3)?,
            ciphertext: r.get(4)?,
        })
    }
}

/// A stored integer that must not be negative.
fn unsigned(idx: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// A validated, encrypted row ready to be written.
struct SealedRow<'a> {
    sub: &'a str,
    connection: &'a str,
    key_id: &'a str,
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
    expires_at: Option<i64>,
    scopes: String,
    has_refresh_token: bool,
    updated_at: i64,
}

impl<'a> SealedRow<'a> {
    /// Parameters `?1`..`?10` of [`UPDATE`] (the first nine are those of [`INSERT`]).
    fn params(&'a self, expected: &'a Option<i64>) -> [&'a dyn ToSql; 10] {
        [
            &self.sub,
            &self.connection,
            &self.key_id,
            &self.nonce,
            &self.ciphertext,
            &self.expires_at,
            &self.scopes,
            &self.has_refresh_token,
            &self.updated_at,
            expected,
        ]
    }
}

/// The credential vault: a SQLite file (WAL mode) plus the keys. Synchronous and `Send + Sync`;
/// async callers wrap calls in `spawn_blocking`.
#[derive(Debug)]
pub struct VaultStore {
    conn: Mutex<Connection>,
    keys: VaultKeys,
}

impl VaultStore {
    /// Opens or creates the vault file. A new file is created with mode 0600; an existing file
    /// (or WAL/SHM companion) that group or others may access is refused. Verifies the keys:
    /// every configured key id with a check row must open it ([`VaultError::WrongKey`]), and
    /// every key id used by a credential must be configured ([`VaultError::UnknownKeyId`]).
    /// Registers the primary key's check row if it is new.
    pub fn open(path: &Path, keys: VaultKeys) -> Result<VaultStore, VaultError> {
        let mut conn = open_sqlite(path)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        verify_keys(&tx, &keys)?;
        ensure_check_row(&tx, &keys)?;
        tx.commit()?;
        Ok(VaultStore {
            conn: Mutex::new(conn),
            keys,
        })
    }

    /// Inserts or replaces the credential of (sub, connection), encrypted under the primary
    /// key. The version becomes the old version + 1, or 1 for a new pair (a pair revoked
    /// earlier continues from its last version instead).
    pub fn put(&self, sub: &str, connection: &str, cred: &Credential) -> Result<(), VaultError> {
        let row = self.seal(sub, connection, cred)?;
        let any_version = None;
        let params = row.params(&any_version);
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx.execute(UPDATE, &params[..])? == 0 {
            tx.execute(INSERT, &params[..9])?;
            tx.execute(
                "DELETE FROM revoked WHERE sub = ?1 AND connection = ?2",
                params![sub, connection],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The credential of (sub, connection) and its version, or `None` if there is none.
    /// [`VaultError::Corrupt`] if the row does not decrypt (tampered, moved, or damaged).
    pub fn get(
        &self,
        sub: &str,
        connection: &str,
    ) -> Result<Option<(Credential, u64)>, VaultError> {
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE sub = ?1 AND connection = ?2");
        let raw = self
            .lock()
            .query_row(&sql, params![sub, connection], RawRow::read)
            .optional()?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let plain = self.unseal(&raw)?;
        let secrets: SecretsIn = serde_json::from_slice(&plain).map_err(|_| corrupt(&raw))?;
        let cred = Credential {
            access_token: secrets.access_token,
            refresh_token: secrets.refresh_token,
            expires_at: raw.meta.expires_at,
            scopes: raw.meta.scopes,
        };
        Ok(Some((cred, raw.meta.version)))
    }

    /// Compare-and-swap: replaces the credential only if its stored version is still
    /// `expected`, in one atomic `UPDATE`; `false` if the row was changed or revoked
    /// meanwhile. This is how a refreshed access token and a rotated refresh token are
    /// written back together.
    pub fn replace_if(
        &self,
        sub: &str,
        connection: &str,
        expected: u64,
        cred: &Credential,
    ) -> Result<bool, VaultError> {
        let Ok(expected) = i64::try_from(expected).map(Some) else {
            return Ok(false);
        };
        let row = self.seal(sub, connection, cred)?;
        Ok(self.lock().execute(UPDATE, &row.params(&expected)[..])? == 1)
    }

    /// Metadata of the stored credentials, optionally filtered by sub and/or connection,
    /// ordered by sub then connection. Decrypts nothing and returns no token.
    pub fn list(
        &self,
        sub: Option<&str>,
        connection: Option<&str>,
    ) -> Result<Vec<CredentialMeta>, VaultError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE (?1 IS NULL OR sub = ?1) \
             AND (?2 IS NULL OR connection = ?2) ORDER BY sub, connection"
        ))?;
        let rows = stmt.query_map(params![sub, connection], RawRow::read)?;
        Ok(rows
            .map(|r| r.map(|raw| raw.meta))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes the credential of (sub, connection); `true` if there was one.
    pub fn revoke(&self, sub: &str, connection: &str) -> Result<bool, VaultError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx.execute(
            "INSERT INTO revoked (sub, connection, version) SELECT sub, connection, version \
             FROM credentials WHERE sub = ?1 AND connection = ?2 \
             ON CONFLICT (sub, connection) DO UPDATE SET version = excluded.version",
            params![sub, connection],
        )? == 1;
        tx.execute(
            "DELETE FROM credentials WHERE sub = ?1 AND connection = ?2",
            params![sub, connection],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Re-encrypts under the primary key every row encrypted under another key and ensures
    /// the primary key's check row, in one transaction; returns the number of rows rewritten.
    /// Versions are kept (the credential is unchanged). Afterwards older keys can be dropped.
    pub fn rotate(&self) -> Result<usize, VaultError> {
        let primary = self.keys.primary_id();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        ensure_check_row(&tx, &self.keys)?;
        let sql = format!("SELECT {COLUMNS} FROM credentials WHERE key_id <> ?1");
        let rows = tx
            .prepare(&sql)?
            .query_map([primary], RawRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        for raw in &rows {
            let plain = self.unseal(raw)?;
            let aad = row_aad(&raw.meta.sub, &raw.meta.connection, primary);
            let (nonce, ciphertext) = self.keys.seal(&aad, &plain)?;
            tx.execute(
                "UPDATE credentials SET key_id = ?3, nonce = ?4, ciphertext = ?5 \
                 WHERE sub = ?1 AND connection = ?2",
                params![
                    raw.meta.sub,
                    raw.meta.connection,
                    primary,
                    nonce,
                    ciphertext
                ],
            )?;
        }
        tx.commit()?;
        Ok(rows.len())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-transaction rolled that transaction back on drop: the connection is sound.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates and encrypts a credential for (sub, connection) under the primary key.
    fn seal<'a>(
        &'a self,
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
        let key_id = self.keys.primary_id();
        let secrets = SecretsOut {
            access_token: &cred.access_token,
            refresh_token: cred.refresh_token.as_ref(),
        };
        let plain = serde_json::to_vec(&secrets)
            .map_err(|e| VaultError::Crypto(format!("cannot encode the credential: {e}")))?;
        let (nonce, ciphertext) = self.keys.seal(&row_aad(sub, connection, key_id), &plain)?;
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
    fn unseal(&self, raw: &RawRow) -> Result<Vec<u8>, VaultError> {
        let m = &raw.meta;
        let aad = row_aad(&m.sub, &m.connection, &m.key_id);
        match self.keys.open(&m.key_id, &raw.nonce, &aad, &raw.ciphertext) {
            Ok(plain) => Ok(plain),
            Err(OpenFailure::UnknownKeyId) => Err(VaultError::UnknownKeyId {
                key_id: m.key_id.clone(),
            }),
            Err(OpenFailure::Failed) => Err(corrupt(raw)),
        }
    }
}

fn corrupt(raw: &RawRow) -> VaultError {
    let (sub, connection) = (raw.meta.sub.clone(), raw.meta.connection.clone());
    VaultError::Corrupt { sub, connection }
}

/// AAD binding a ciphertext to its row: `sub \0 connection \0 key_id` (names hold no NUL).
fn row_aad(sub: &str, connection: &str, key_id: &str) -> Vec<u8> {
    [sub, connection, key_id].join("\0").into_bytes()
}

/// Unix seconds, as SQLite stores integers.
fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// `private_file::open_sqlite`, with this store's errors.
fn open_sqlite(path: &Path) -> Result<Connection, VaultError> {
    private_file::open_sqlite(path, SCHEMA, SCHEMA_VERSION).map_err(|e| match e {
        PrivateFileError::Io(m) => VaultError::Io(m),
        PrivateFileError::Insecure { path, mode } => VaultError::InsecurePermissions { path, mode },
        PrivateFileError::Sqlite(m) => VaultError::Sqlite(m),
        PrivateFileError::UnsupportedSchema { found, supported } => {
            VaultError::UnsupportedSchema { found, supported }
        }
    })
}

/// Checks every configured key that has a check row, and that every key id used by a
/// credential is configured.
fn verify_keys(conn: &Connection, keys: &VaultKeys) -> Result<(), VaultError> {
    let mut stmt =
        conn.prepare("SELECT key_id, nonce, check_ct FROM vault_keys ORDER BY key_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))?;
    for row in rows {
        let (key_id, nonce, check): (String, Vec<u8>, Vec<u8>) = row?;
        if keys.contains(&key_id) && !keys.check_matches(&key_id, &nonce, &check) {
            return Err(VaultError::WrongKey { key_id });
        }
    }
    let mut stmt = conn.prepare("SELECT DISTINCT key_id FROM credentials ORDER BY key_id")?;
    for key_id in stmt.query_map([], |r| r.get::<_, String>(0))? {
        let key_id = key_id?;
        if !keys.contains(&key_id) {
            return Err(VaultError::UnknownKeyId { key_id });
        }
    }
    Ok(())
}

/// Registers the primary key's check row if the vault has none for its id.
fn ensure_check_row(conn: &Connection, keys: &VaultKeys) -> Result<(), VaultError> {
    let (nonce, check) = keys.seal_check()?;
    conn.execute(
        "INSERT OR IGNORE INTO vault_keys (key_id, nonce, check_ct, created_at) \
         VALUES (?1, ?2, ?3, ?4)",
        params![keys.primary_id(), nonce, check, now()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
