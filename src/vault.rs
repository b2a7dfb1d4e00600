//! The built-in credential vault: an encrypted store of upstream OAuth credentials, one per
//! (user `sub`, upstream connection), kept in a single SQLite file ([`store`], one gateway) or
//! in PostgreSQL ([`postgres`], shared by replicas). Both implement [`VaultBackend`] and seal
//! rows the same way ([`sealed`]).
//!
//! Threat model: someone who obtains the vault file alone (a backup, a copied volume, a leaked
//! disk image) learns no token. The secret part of every credential (access token and refresh
//! token) is sealed with AES-256-GCM under a key that never lives in the file: the keys come from
//! an environment variable or a separate key file (see [`keys`]), never from the config file.
//! Each ciphertext is bound to its row (`sub`, `connection`, key id) so it cannot be moved to
//! another user or connection. Metadata needed for listing and expiry handling is plaintext:
//! `sub`, connection name, expiry, scopes, whether a refresh token exists, key id, update time and
//! version. Anyone who can *write* the file can delete or roll back rows or edit that metadata,
//! but cannot forge or transplant a token. The file is created with mode 0600 and a file readable
//! by group or others is refused. An attacker with the process's memory or its keys is out of
//! scope.
//!
//! Keys rotate: the first configured key encrypts every write, the others only decrypt, and
//! [`VaultStore::rotate`] re-encrypts old rows under the primary key.

pub mod backend;
pub mod cli;
pub mod input;
pub mod keys;
pub mod postgres;
pub(crate) mod sealed;
pub mod sqlite;
pub mod store;
#[cfg(test)]
mod suite;
#[cfg(test)]
pub(crate) mod testdb;

use std::path::PathBuf;

pub use crate::secret::Secret;
pub use backend::{Update, Updater, Vault, VaultBackend};
pub use keys::VaultKeys;
pub use postgres::{PgOptions, PgStore};
pub use sealed::{Credential, CredentialMeta};
pub use sqlite::SqliteVault;
pub use store::VaultStore;

/// Everything that can go wrong in the vault. Messages never contain key material or tokens.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A file-system operation on the vault file failed.
    #[error("vault I/O error: {0}")]
    Io(String),
    /// The vault file (or its WAL/SHM companion) can be read or written by group or others.
    #[error(
        "vault file {} is accessible by group or others (mode {mode:03o}); \
         restrict it with `chmod 600`",
        .path.display()
    )]
    InsecurePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// SQLite reported an error.
    #[error("vault database error: {0}")]
    Sqlite(String),
    /// PostgreSQL reported an error (not a connection problem).
    #[error("vault database error: {0}")]
    Postgres(String),
    /// The vault database cannot be reached, did not answer in time, or a row lock was not
    /// granted in time.
    #[error("the vault database is unavailable: {0}")]
    Unavailable(String),
    /// The key text is malformed (never echoes key material).
    #[error("invalid vault keys: {0}")]
    BadKey(String),
    /// A configured key has an id already used in the vault, but is a different key.
    #[error("the vault key '{key_id}' does not match the key that encrypted this vault")]
    WrongKey {
        /// The key id whose check failed.
        key_id: String,
    },
    /// The vault holds data encrypted under a key id that is not configured.
    #[error(
        "the vault holds credentials encrypted under key '{key_id}', which is not among the \
         configured vault keys (keep it as a secondary key until `rotate` has run)"
    )]
    UnknownKeyId {
        /// The missing key id.
        key_id: String,
    },
    /// A stored credential failed to decrypt or decode: tampered with or corrupt.
    #[error(
        "the stored credential for sub '{sub}', connection '{connection}' is corrupt or was \
         tampered with (it does not decrypt)"
    )]
    Corrupt {
        /// The row's subject.
        sub: String,
        /// The row's connection.
        connection: String,
    },
    /// A caller-supplied value cannot be stored (empty name, NUL byte, scope with spaces, ...).
    #[error("invalid vault argument: {0}")]
    InvalidArgument(String),
    /// The file was written by a newer, incompatible version of the vault.
    #[error("unsupported vault schema version {found} (this build supports {supported})")]
    UnsupportedSchema {
        /// The version found in the file.
        found: i64,
        /// The version this build writes.
        supported: i64,
    },
    /// The random generator or the cipher failed unexpectedly.
    #[error("vault crypto failure: {0}")]
    Crypto(String),
}

impl VaultError {
    /// Whether the storage itself failed (unreachable, I/O, database error), as opposed to
    /// bad data, keys or arguments.
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            VaultError::Io(_)
                | VaultError::Sqlite(_)
                | VaultError::Postgres(_)
                | VaultError::Unavailable(_)
        )
    }
}

impl From<rusqlite::Error> for VaultError {
    fn from(e: rusqlite::Error) -> Self {
        VaultError::Sqlite(e.to_string())
    }
}
