//! The SQLite-backed store: one row per (sub, connection), the tokens sealed with AES-256-GCM.
//!
//! Tables: `credentials`; `vault_keys` (per key id ever used as primary, that key's sealing of
//! a fixed check string, so a wrong key is caught at open); `revoked` (the last version of each
//! revoked pair, so versions never repeat and a stale [`VaultStore::replace_if`] cannot
//! overwrite a credential stored again after a revocation).

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::sealed::{self, now, RawRow, SealedRow};
use super::{Credential, CredentialMeta, VaultError, VaultKeys};
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

/// Reads a row of `credentials` (columns [`COLUMNS`]).
fn read_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    let scopes: String = r.get(6)?;
    let meta = CredentialMeta {
        sub: r.get(0)?,
        connection: r.get(1)?,
        key_id: r.get(2)?,
        expires_at: r
            .get::<_, Option<i64>>(5)?
            .map(|v| unsigned(5, v))
            .transpose()?,
        scopes: sealed::scopes(&scopes),
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

/// A stored integer that must not be negative.
fn unsigned(idx: usize, value: i64) -> rusqlite::Result<u64> {
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Parameters `?1`..`?10` of [`UPDATE`] (the first nine are those of [`INSERT`]).
fn row_params<'a>(row: &'a SealedRow<'a>, expected: &'a Option<i64>) -> [&'a dyn ToSql; 10] {
    [
        &row.sub,
        &row.connection,
        &row.key_id,
        &row.nonce,
        &row.ciphertext,
        &row.expires_at,
        &row.scopes,
        &row.has_refresh_token,
        &row.updated_at,
        expected,
    ]
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
        let params = row_params(&row, &any_version);
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
            .query_row(&sql, params![sub, connection], read_row)
            .optional()?;
        raw.map(|raw| sealed::unseal(&self.keys, raw)).transpose()
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
        Ok(self
            .lock()
            .execute(UPDATE, &row_params(&row, &expected)[..])?
            == 1)
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
        let rows = stmt.query_map(params![sub, connection], read_row)?;
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
            .query_map([primary], read_row)?
            .collect::<Result<Vec<_>, _>>()?;
        for raw in &rows {
            let (nonce, ciphertext) = sealed::reseal(&self.keys, raw)?;
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

    fn seal<'a>(
        &'a self,
        sub: &'a str,
        connection: &'a str,
        cred: &Credential,
    ) -> Result<SealedRow<'a>, VaultError> {
        sealed::seal(&self.keys, sub, connection, cred)
    }
}

/// `private_file::open_sqlite`, with this store's errors.
fn open_sqlite(path: &Path) -> Result<Connection, VaultError> {
    private_file::open_sqlite(path, SCHEMA, SCHEMA_VERSION, &[]).map_err(|e| match e {
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
    let checks = conn
        .prepare("SELECT key_id, nonce, check_ct FROM vault_keys ORDER BY key_id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let used = conn
        .prepare("SELECT DISTINCT key_id FROM credentials ORDER BY key_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    sealed::verify_keys(keys, checks, used)
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
