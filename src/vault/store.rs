//! The SQLite-backed store: one row per (sub, connection), the tokens sealed with AES-256-GCM.
//!
//! Tables: `credentials`; `vault_keys` (per key id ever used as primary, that key's sealing of
//! a fixed check string, so a wrong key is caught at open); `revoked` (the last version of each
//! revoked pair, so versions never repeat and a stale [`VaultStore::replace_if`] cannot
//! overwrite a credential stored again after a revocation).

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::keys::OpenFailure;
use super::{Secret, VaultError, VaultKeys};

/// Written to `PRAGMA user_version`; a file with a higher version is refused.
const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for another connection holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        create_or_check(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            let msg = format!("cannot enable WAL journal mode (got '{mode}')");
            return Err(VaultError::Sqlite(msg));
        }
        // FULL: a lost write could be a rotated refresh token. secure_delete: no stale pages.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(VaultError::UnsupportedSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
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

/// Creates the file with mode 0600 if it is missing; refuses a file (or WAL/SHM companion)
/// that group or others may access.
fn create_or_check(path: &Path) -> Result<(), VaultError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        VaultError::Io(format!("cannot {what} {}: {e}", p.display()))
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create", path, e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let meta = match fs::metadata(&file) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound && !suffix.is_empty() => continue,
            Err(e) => return Err(io("inspect", &file, e)),
        };
        if !meta.is_file() {
            return Err(VaultError::Io(format!(
                "{} is not a regular file",
                file.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(VaultError::InsecurePermissions { path: file, mode });
        }
    }
    Ok(())
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
mod tests {
    use std::fs;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use rusqlite::Connection;
    use tempfile::TempDir;

    use super::{Credential, VaultStore};
    use crate::vault::{Secret, VaultError, VaultKeys};

    const ACCESS: &str = "ya29.PLAINTEXT-ACCESS-TOKEN-0123456789";
    const REFRESH: &str = "1//PLAINTEXT-REFRESH-TOKEN-9876543210";

    fn key(id: &str, byte: u8) -> String {
        format!("{id}:{}", STANDARD.encode([byte; 32]))
    }

    fn open(path: &Path, text: &str) -> Result<VaultStore, VaultError> {
        VaultStore::open(path, VaultKeys::parse(text).unwrap())
    }

    fn cred(access: &str, refresh: Option<&str>) -> Credential {
        Credential {
            access_token: Secret::new(access.to_string()),
            refresh_token: refresh.map(|r| Secret::new(r.to_string())),
            expires_at: Some(1_900_000_000),
            scopes: vec!["read".to_string(), "repo:write".to_string()],
        }
    }

    fn setup() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        (dir, path)
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<VaultStore>();
    }

    #[test]
    fn put_get_round_trip_and_versions() {
        let (_dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        assert!(store.get("alice", "github").unwrap().is_none());
        let first = cred(ACCESS, Some(REFRESH));
        store.put("alice", "github", &first).unwrap();
        assert_eq!(store.get("alice", "github").unwrap(), Some((first, 1)));
        let second = Credential {
            expires_at: None,
            scopes: Vec::new(),
            ..cred("second", None)
        };
        store.put("alice", "github", &second).unwrap();
        assert_eq!(
            store.get("alice", "github").unwrap(),
            Some((second.clone(), 2))
        );
        assert!(store.get("alice", "gitlab").unwrap().is_none());
        drop(store);
        let store = open(&path, &key("k1", 1)).unwrap();
        assert_eq!(store.get("alice", "github").unwrap(), Some((second, 2)));
    }

    #[test]
    fn rejects_invalid_arguments() {
        let (_dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        let c = cred(ACCESS, None);
        for (sub, conn) in [("", "github"), ("alice", "git\0hub")] {
            let e = store.put(sub, conn, &c).unwrap_err();
            assert!(matches!(e, VaultError::InvalidArgument(_)), "{e}");
        }
        let spaced = Credential {
            scopes: vec!["read write".to_string()],
            ..c.clone()
        };
        let e = store.put("alice", "github", &spaced).unwrap_err();
        assert!(matches!(e, VaultError::InvalidArgument(_)), "{e}");
        assert!(store.list(None, None).unwrap().is_empty());
    }

    #[test]
    fn files_never_contain_plaintext_tokens() {
        let (dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        store
            .put("alice", "github", &cred(ACCESS, Some(REFRESH)))
            .unwrap();
        store
            .put("bob", "github", &cred(ACCESS, Some(REFRESH)))
            .unwrap();
        let scan = |dir: &Path| {
            let mut all = Vec::new();
            for entry in fs::read_dir(dir).unwrap() {
                all.extend(fs::read(entry.unwrap().path()).unwrap());
            }
            let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(has("alice"), "the scan sees plaintext metadata");
            for secret in [ACCESS, REFRESH, "PLAINTEXT"] {
                assert!(!has(secret), "found {secret} in the vault files");
            }
        };
        scan(dir.path());
        drop(store); // checkpoints the WAL into the main file
        scan(dir.path());
    }

    #[test]
    fn wrong_or_missing_key_is_refused() {
        let (_dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        store.put("alice", "github", &cred(ACCESS, None)).unwrap();
        drop(store);
        let e = open(&path, &key("k1", 2)).unwrap_err();
        assert!(
            matches!(&e, VaultError::WrongKey { key_id } if key_id == "k1"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "the vault key 'k1' does not match the key that encrypted this vault"
        );
        let e = open(&path, &format!("{},{}", key("k2", 3), key("k1", 2))).unwrap_err();
        assert!(
            matches!(&e, VaultError::WrongKey { key_id } if key_id == "k1"),
            "{e}"
        );
        let e = open(&path, &key("k2", 3)).unwrap_err();
        assert!(
            matches!(&e, VaultError::UnknownKeyId { key_id } if key_id == "k1"),
            "{e}"
        );
        assert!(open(&path, &key("k1", 1)).is_ok());
    }

    #[test]
    fn rotation_moves_rows_to_the_new_primary() {
        let (_dir, path) = setup();
        let c = cred(ACCESS, Some(REFRESH));
        let store = open(&path, &key("k1", 1)).unwrap();
        store.put("alice", "github", &c).unwrap();
        store.put("bob", "gitlab", &c).unwrap();
        store.put("bob", "gitlab", &c).unwrap();
        drop(store);
        let both = format!("{}\n{}", key("k2", 2), key("k1", 1));
        let store = open(&path, &both).unwrap();
        assert_eq!(store.get("alice", "github").unwrap(), Some((c.clone(), 1)));
        store.put("carol", "github", &c).unwrap();
        let ids = |s: &VaultStore| -> Vec<String> {
            s.list(None, None)
                .unwrap()
                .into_iter()
                .map(|m| m.key_id)
                .collect()
        };
        assert_eq!(ids(&store), ["k1", "k1", "k2"]);
        assert_eq!(store.rotate().unwrap(), 2);
        assert_eq!(ids(&store), ["k2", "k2", "k2"]);
        assert_eq!(store.rotate().unwrap(), 0);
        drop(store);
        let store = open(&path, &key("k2", 2)).unwrap();
        assert_eq!(store.get("alice", "github").unwrap(), Some((c.clone(), 1)));
        assert_eq!(store.get("bob", "gitlab").unwrap(), Some((c, 2)));
        drop(store);
        let e = open(&path, &key("k1", 1)).unwrap_err();
        assert!(
            matches!(&e, VaultError::UnknownKeyId { key_id } if key_id == "k2"),
            "{e}"
        );
    }

    #[test]
    fn replace_if_is_compare_and_swap() {
        let (_dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        assert!(!store
            .replace_if("alice", "github", 1, &cred("x", None))
            .unwrap());
        store
            .put("alice", "github", &cred(ACCESS, Some(REFRESH)))
            .unwrap();
        let (_, v) = store.get("alice", "github").unwrap().unwrap();
        let refreshed = cred("new-access", Some("rotated-refresh"));
        assert!(store.replace_if("alice", "github", v, &refreshed).unwrap());
        assert!(!store
            .replace_if("alice", "github", v, &cred("stale", None))
            .unwrap());
        assert!(!store
            .replace_if("alice", "github", u64::MAX, &cred("x", None))
            .unwrap());
        assert_eq!(
            store.get("alice", "github").unwrap(),
            Some((refreshed, v + 1))
        );
        // Revoked and stored again: the versions continue, so a stale swap still fails.
        assert!(store.revoke("alice", "github").unwrap());
        store
            .put("alice", "github", &cred("reconnected", None))
            .unwrap();
        assert!(!store
            .replace_if("alice", "github", v + 1, &cred("stale", None))
            .unwrap());
        let (got, v3) = store.get("alice", "github").unwrap().unwrap();
        assert_eq!((got.access_token.expose(), v3), ("reconnected", v + 2));
        // Two racing refreshers: exactly one wins.
        let wins = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|i| {
                    let store = &store;
                    s.spawn(move || {
                        let c = cred(&format!("racer-{i}"), None);
                        store.replace_if("alice", "github", v3, &c).unwrap()
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().unwrap())
                .filter(|won| *won)
                .count()
        });
        assert_eq!(wins, 1);
        // Two stores on one file (as two processes would be) see each other's swaps.
        let other = open(&path, &key("k1", 1)).unwrap();
        let (_, v4) = other.get("alice", "github").unwrap().unwrap();
        assert!(other
            .replace_if("alice", "github", v4, &cred("other", None))
            .unwrap());
        assert!(!store
            .replace_if("alice", "github", v4, &cred("stale", None))
            .unwrap());
    }

    #[test]
    fn revoke_and_list_metadata() {
        let (_dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        store.put("bob", "github", &cred(ACCESS, None)).unwrap();
        store
            .put("alice", "jira", &cred(ACCESS, Some(REFRESH)))
            .unwrap();
        store
            .put("alice", "github", &cred(ACCESS, Some(REFRESH)))
            .unwrap();
        let all = store.list(None, None).unwrap();
        let names: Vec<_> = all
            .iter()
            .map(|m| (m.sub.as_str(), m.connection.as_str()))
            .collect();
        assert_eq!(
            names,
            [("alice", "github"), ("alice", "jira"), ("bob", "github")]
        );
        let m = &all[2];
        assert_eq!(
            (m.expires_at, m.has_refresh_token, m.version),
            (Some(1_900_000_000), false, 1)
        );
        assert_eq!(m.scopes, ["read", "repo:write"]);
        assert!(all[0].has_refresh_token && all[0].key_id == "k1" && all[0].updated_at > 0);
        let shown = format!("{all:?}{}", serde_json::to_string(&all).unwrap());
        assert!(!shown.contains(ACCESS) && !shown.contains(REFRESH));
        assert_eq!(store.list(Some("alice"), None).unwrap().len(), 2);
        assert_eq!(store.list(None, Some("github")).unwrap().len(), 2);
        assert_eq!(store.list(Some("bob"), Some("jira")).unwrap().len(), 0);
        assert!(store.revoke("alice", "jira").unwrap());
        assert!(!store.revoke("alice", "jira").unwrap());
        assert!(store.get("alice", "jira").unwrap().is_none());
        assert_eq!(store.list(Some("alice"), None).unwrap().len(), 1);
    }

    #[test]
    fn file_mode_is_private() {
        let (dir, path) = setup();
        drop(open(&path, &key("k1", 1)).unwrap());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(open(&path, &key("k1", 1)).is_ok());
        let loose = dir.path().join("loose.db");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&loose)
            .unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
        let e = open(&loose, &key("k1", 1)).unwrap_err();
        assert!(
            matches!(e, VaultError::InsecurePermissions { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn tampered_rows_fail_to_decrypt() {
        let (_dir, path) = setup();
        let store = open(&path, &key("k1", 1)).unwrap();
        store
            .put("alice", "github", &cred(ACCESS, Some(REFRESH)))
            .unwrap();
        store
            .put("bob", "github", &cred("bob-token", None))
            .unwrap();
        store
            .put("carol", "github", &cred("carol-token", None))
            .unwrap();
        let raw = Connection::open(&path).unwrap();
        let sql = |q: &str| assert_eq!(raw.execute(q, []).unwrap(), 1);
        sql("UPDATE credentials SET \
             nonce = (SELECT nonce FROM credentials WHERE sub = 'alice'), \
             ciphertext = (SELECT ciphertext FROM credentials WHERE sub = 'alice') \
             WHERE sub = 'bob'");
        let e = store.get("bob", "github").unwrap_err();
        assert!(
            matches!(&e, VaultError::Corrupt { sub, connection } if sub == "bob" && connection == "github"),
            "{e}"
        );
        sql("UPDATE credentials SET ciphertext = CAST(ciphertext || x'00' AS BLOB) WHERE sub = 'alice'");
        assert!(matches!(
            store.get("alice", "github"),
            Err(VaultError::Corrupt { .. })
        ));
        // A row under a key id nobody configured: refused on read and at open.
        sql("UPDATE credentials SET key_id = 'k0' WHERE sub = 'carol'");
        let e = store.get("carol", "github").unwrap_err();
        assert!(
            matches!(&e, VaultError::UnknownKeyId { key_id } if key_id == "k0"),
            "{e}"
        );
        drop(store);
        assert!(matches!(
            open(&path, &key("k1", 1)),
            Err(VaultError::UnknownKeyId { .. })
        ));
        sql("UPDATE credentials SET key_id = 'k1' WHERE sub = 'carol'");
        // rotate refuses to re-encrypt corrupt rows, and rolls back entirely.
        let store = open(&path, &format!("{},{}", key("k2", 2), key("k1", 1))).unwrap();
        assert!(matches!(store.rotate(), Err(VaultError::Corrupt { .. })));
        let ids: Vec<_> = store
            .list(None, None)
            .unwrap()
            .into_iter()
            .map(|m| m.key_id)
            .collect();
        assert_eq!(ids, ["k1", "k1", "k1"]);
        raw.pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        let e = open(&path, &key("k1", 1)).unwrap_err();
        assert!(
            matches!(e, VaultError::UnsupportedSchema { found: 99, .. }),
            "{e}"
        );
    }
}
