//! Files only this process's user may read: the vault and the approval store. A missing file
//! is created with mode 0600; an existing one (or its SQLite WAL/SHM companion) that group or
//! others may access is refused.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum PrivateFileError {
    Io(String),
    /// `path` has permission bits `mode` that let group or others in.
    Insecure {
        path: PathBuf,
        mode: u32,
    },
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
