//! Files only this process's user may read: the vault and the approval store. A missing file
//! is created with mode 0600; an existing one (or its SQLite WAL/SHM companion) that group or
//! others may access is refused. `open_sqlite` opens such a file as a durable SQLite database.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

#[derive(Debug)]
pub enum PrivateFileError {
    Io(String),
    /// `path` has permission bits `mode` that let group or others in.
    Insecure {
        path: PathBuf,
        mode: u32,
    },
    Sqlite(String),
    /// The file was written by a newer schema.
    UnsupportedSchema {
        found: i64,
        supported: i64,
    },
}

impl From<rusqlite::Error> for PrivateFileError {
    fn from(e: rusqlite::Error) -> Self {
        PrivateFileError::Sqlite(e.to_string())
    }
}

/// Open (or create) a private SQLite file: WAL, 5 s busy time-out, `synchronous=FULL` (a
/// lost write could be a rotated refresh token or a used approval), `secure_delete`, and
/// `schema` applied at `version` (a newer file is refused).
pub fn open_sqlite(
    path: &Path,
    schema: &str,
    version: i64,
    migrations: &[&str],
) -> Result<Connection, PrivateFileError> {
    create_or_check(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(PrivateFileError::Sqlite(format!(
            "cannot enable WAL journal mode (got '{mode}')"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > version {
        return Err(PrivateFileError::UnsupportedSchema {
            found,
            supported: version,
        });
    }
    // `migrations[i]` upgrades a file of version i + 1; a new file (0) gets `schema` alone.
    if found > 0 {
        for step in migrations
            .iter()
            .skip(usize::try_from(found - 1).unwrap_or(usize::MAX))
        {
            tx.execute_batch(step)?;
        }
    }
    tx.execute_batch(schema)?;
    tx.pragma_update(None, "user_version", version)?;
    tx.commit()?;
    Ok(conn)
}

/// Create `path` 0600 if missing; check it and its `-wal`/`-shm` companions.
pub fn create_or_check(path: &Path) -> Result<(), PrivateFileError> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        PrivateFileError::Io(format!("cannot {what} {}: {e}", p.display()))
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
            return Err(PrivateFileError::Io(format!(
                "{} is not a regular file",
                file.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::Insecure { path: file, mode });
        }
    }
    Ok(())
}
