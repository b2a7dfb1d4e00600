//! The store suite against the SQLite vault, plus what only a file has (its mode).
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;
use tempfile::TempDir;

use super::VaultStore;
use crate::vault::suite::{self, key, Harness, Tamper};
use crate::vault::{SqliteVault, Vault, VaultError, VaultKeys};

struct Sqlite {
    dir: TempDir,
    path: PathBuf,
}

impl Sqlite {
    fn new() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        Sqlite { dir, path }
    }

    fn sql(&self, q: &str) {
        let raw = Connection::open(&self.path).unwrap();
        assert_eq!(raw.execute(q, []).unwrap(), 1, "{q}");
    }
}

impl Harness for Sqlite {
    fn open(&self, keys: &str) -> Result<Vault, VaultError> {
        Ok(Arc::new(SqliteVault::open(
            &self.path,
            VaultKeys::parse(keys).unwrap(),
        )?))
    }

    fn tamper(&self, t: Tamper<'_>) {
        match t {
            Tamper::CopyCiphertext { from, to } => self.sql(&format!(
                "UPDATE credentials SET \
                 nonce = (SELECT nonce FROM credentials WHERE sub = '{from}'), \
                 ciphertext = (SELECT ciphertext FROM credentials WHERE sub = '{from}') \
                 WHERE sub = '{to}'"
            )),
            Tamper::AppendByte(sub) => self.sql(&format!(
                "UPDATE credentials SET ciphertext = CAST(ciphertext || x'00' AS BLOB) \
                 WHERE sub = '{sub}'"
            )),
            Tamper::SetKeyId(sub, id) => self.sql(&format!(
                "UPDATE credentials SET key_id = '{id}' WHERE sub = '{sub}'"
            )),
            Tamper::SchemaVersion(v) => Connection::open(&self.path)
                .unwrap()
                .pragma_update(None, "user_version", v)
                .unwrap(),
        }
    }

    fn stored(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in fs::read_dir(self.dir.path()).unwrap() {
            all.extend(fs::read(entry.unwrap().path()).unwrap());
        }
        all
    }

    fn locks_across_stores(&self) -> bool {
        false
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            suite::$case(&Sqlite::new()).await;
        }
    )*};
}

suite!(
    put_get_round_trip_and_versions,
    rejects_invalid_arguments,
    never_stores_plaintext_tokens,
    wrong_or_missing_key_is_refused,
    rotation_moves_rows_to_the_new_primary,
    replace_if_is_compare_and_swap,
    revoke_and_list_metadata,
    tampered_rows_fail_to_decrypt,
    update_locked_serialises_refreshers,
);

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<VaultStore>();
    check::<SqliteVault>();
}

fn open(path: &Path, text: &str) -> Result<VaultStore, VaultError> {
    VaultStore::open(path, VaultKeys::parse(text).unwrap())
}

#[test]
fn file_mode_is_private() {
    let h = Sqlite::new();
    let (dir, path) = (h.dir.path(), &h.path);
    drop(open(path, &key("k1", 1)).unwrap());
    assert_eq!(
        fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(open(path, &key("k1", 1)).is_ok());
    let loose = dir.join("loose.db");
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
