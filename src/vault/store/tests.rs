//! Tests of the vault store.
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
    sql(
        "UPDATE credentials SET ciphertext = CAST(ciphertext || x'00' AS BLOB) WHERE sub = 'alice'",
    );
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
