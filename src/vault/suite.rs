//! The store test suite every vault backend must pass (SQLite in `store/tests.rs`, always;
//! PostgreSQL in `postgres/tests.rs`, when installed). A [`Harness`] opens the backend and
//! reaches under it to tamper with rows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{Credential, Secret, Update, Vault, VaultError};

pub const ACCESS: &str = "ya29.PLAINTEXT-ACCESS-TOKEN-0123456789";
pub const REFRESH: &str = "1//PLAINTEXT-REFRESH-TOKEN-9876543210";

/// Changes made behind the vault's back, in the backend's own SQL.
pub enum Tamper<'a> {
    /// Give `to`'s row the nonce and ciphertext of `from`'s.
    CopyCiphertext { from: &'a str, to: &'a str },
    /// Append a byte to the ciphertext of `sub`'s row.
    AppendByte(&'a str),
    /// Relabel the key id of `sub`'s row.
    SetKeyId(&'a str, &'a str),
    /// Mark the storage as written by schema `version`.
    SchemaVersion(i64),
}

pub trait Harness {
    /// Opens (creating if needed) the vault with key text `keys`.
    fn open(&self, keys: &str) -> Result<Vault, VaultError>;
    fn tamper(&self, t: Tamper<'_>);
    /// Every byte the backend has stored.
    fn stored(&self) -> Vec<u8>;
    /// Whether `update_locked` excludes other stores opened on the same storage (other
    /// replicas), not only callers in this store.
    fn locks_across_stores(&self) -> bool;
}

pub fn key(id: &str, byte: u8) -> String {
    format!("{id}:{}", STANDARD.encode([byte; 32]))
}

pub fn cred(access: &str, refresh: Option<&str>) -> Credential {
    Credential {
        access_token: Secret::new(access.to_string()),
        refresh_token: refresh.map(|r| Secret::new(r.to_string())),
        expires_at: Some(1_900_000_000),
        scopes: vec!["read".to_string(), "repo:write".to_string()],
    }
}

async fn key_ids(v: &Vault) -> Vec<String> {
    let list = v.list(None, None).await.unwrap();
    list.into_iter().map(|m| m.key_id).collect()
}

pub async fn put_get_round_trip_and_versions(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    assert!(store.get("alice", "github").await.unwrap().is_none());
    let first = cred(ACCESS, Some(REFRESH));
    store.put("alice", "github", &first).await.unwrap();
    assert_eq!(
        store.get("alice", "github").await.unwrap(),
        Some((first, 1))
    );
    let second = Credential {
        expires_at: None,
        scopes: Vec::new(),
        ..cred("second", None)
    };
    store.put("alice", "github", &second).await.unwrap();
    assert_eq!(
        store.get("alice", "github").await.unwrap(),
        Some((second.clone(), 2))
    );
    assert!(store.get("alice", "gitlab").await.unwrap().is_none());
    drop(store);
    let store = h.open(&key("k1", 1)).unwrap();
    assert_eq!(
        store.get("alice", "github").await.unwrap(),
        Some((second, 2))
    );
}

pub async fn rejects_invalid_arguments(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    let c = cred(ACCESS, None);
    for (sub, conn) in [("", "github"), ("alice", "git\0hub")] {
        let e = store.put(sub, conn, &c).await.unwrap_err();
        assert!(matches!(e, VaultError::InvalidArgument(_)), "{e}");
    }
    let spaced = Credential {
        scopes: vec!["read write".to_string()],
        ..c.clone()
    };
    let e = store.put("alice", "github", &spaced).await.unwrap_err();
    assert!(matches!(e, VaultError::InvalidArgument(_)), "{e}");
    assert!(store.list(None, None).await.unwrap().is_empty());
}

pub async fn never_stores_plaintext_tokens(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    let c = cred(ACCESS, Some(REFRESH));
    store.put("alice", "github", &c).await.unwrap();
    store.put("bob", "github", &c).await.unwrap();
    let scan = |all: Vec<u8>| {
        let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(has("alice"), "the scan sees plaintext metadata");
        for secret in [ACCESS, REFRESH, "PLAINTEXT"] {
            assert!(!has(secret), "found {secret} in the vault storage");
        }
    };
    scan(h.stored());
    drop(store); // SQLite: checkpoints the WAL into the main file
    scan(h.stored());
}

pub async fn wrong_or_missing_key_is_refused(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    store
        .put("alice", "github", &cred(ACCESS, None))
        .await
        .unwrap();
    drop(store);
    let e = h.open(&key("k1", 2)).unwrap_err();
    assert!(
        matches!(&e, VaultError::WrongKey { key_id } if key_id == "k1"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "the vault key 'k1' does not match the key that encrypted this vault"
    );
    let e = h
        .open(&format!("{},{}", key("k2", 3), key("k1", 2)))
        .unwrap_err();
    assert!(
        matches!(&e, VaultError::WrongKey { key_id } if key_id == "k1"),
        "{e}"
    );
    let e = h.open(&key("k2", 3)).unwrap_err();
    assert!(
        matches!(&e, VaultError::UnknownKeyId { key_id } if key_id == "k1"),
        "{e}"
    );
    assert!(h.open(&key("k1", 1)).is_ok());
}

pub async fn rotation_moves_rows_to_the_new_primary(h: &dyn Harness) {
    let c = cred(ACCESS, Some(REFRESH));
    let store = h.open(&key("k1", 1)).unwrap();
    store.put("alice", "github", &c).await.unwrap();
    store.put("bob", "gitlab", &c).await.unwrap();
    store.put("bob", "gitlab", &c).await.unwrap();
    drop(store);
    let both = format!("{}\n{}", key("k2", 2), key("k1", 1));
    let store = h.open(&both).unwrap();
    assert_eq!(
        store.get("alice", "github").await.unwrap(),
        Some((c.clone(), 1))
    );
    store.put("carol", "github", &c).await.unwrap();
    assert_eq!(key_ids(&store).await, ["k1", "k1", "k2"]);
    assert_eq!(store.rotate().await.unwrap(), 2);
    assert_eq!(key_ids(&store).await, ["k2", "k2", "k2"]);
    assert_eq!(store.rotate().await.unwrap(), 0);
    drop(store);
    let store = h.open(&key("k2", 2)).unwrap();
    assert_eq!(
        store.get("alice", "github").await.unwrap(),
        Some((c.clone(), 1))
    );
    assert_eq!(store.get("bob", "gitlab").await.unwrap(), Some((c, 2)));
    drop(store);
    let e = h.open(&key("k1", 1)).unwrap_err();
    assert!(
        matches!(&e, VaultError::UnknownKeyId { key_id } if key_id == "k2"),
        "{e}"
    );
}

pub async fn replace_if_is_compare_and_swap(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    let swap = |v: u64, access: &str| {
        let (store, c) = (store.clone(), cred(access, None));
        async move { store.replace_if("alice", "github", v, &c).await.unwrap() }
    };
    assert!(!swap(1, "x").await);
    store
        .put("alice", "github", &cred(ACCESS, Some(REFRESH)))
        .await
        .unwrap();
    let (_, v) = store.get("alice", "github").await.unwrap().unwrap();
    let refreshed = cred("new-access", Some("rotated-refresh"));
    assert!(store
        .replace_if("alice", "github", v, &refreshed)
        .await
        .unwrap());
    assert!(!swap(v, "stale").await);
    assert!(!swap(u64::MAX, "x").await);
    assert_eq!(
        store.get("alice", "github").await.unwrap(),
        Some((refreshed, v + 1))
    );
    // Revoked and stored again: the versions continue, so a stale swap still fails.
    assert!(store.revoke("alice", "github").await.unwrap());
    store
        .put("alice", "github", &cred("reconnected", None))
        .await
        .unwrap();
    assert!(!swap(v + 1, "stale").await);
    let (got, v3) = store.get("alice", "github").await.unwrap().unwrap();
    assert_eq!((got.access_token.expose(), v3), ("reconnected", v + 2));
    // Two racing refreshers: exactly one wins.
    let (a, b) = tokio::join!(swap(v3, "racer-0"), swap(v3, "racer-1"));
    assert!(a ^ b, "exactly one swap wins ({a}, {b})");
    // Two stores on one storage (as two processes would be) see each other's swaps.
    let other = h.open(&key("k1", 1)).unwrap();
    let (_, v4) = other.get("alice", "github").await.unwrap().unwrap();
    assert!(other
        .replace_if("alice", "github", v4, &cred("other", None))
        .await
        .unwrap());
    assert!(!swap(v4, "stale").await);
}

pub async fn revoke_and_list_metadata(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    let with_refresh = cred(ACCESS, Some(REFRESH));
    store
        .put("bob", "github", &cred(ACCESS, None))
        .await
        .unwrap();
    store.put("alice", "jira", &with_refresh).await.unwrap();
    store.put("alice", "github", &with_refresh).await.unwrap();
    let all = store.list(None, None).await.unwrap();
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
    assert_eq!(store.list(Some("alice"), None).await.unwrap().len(), 2);
    assert_eq!(store.list(None, Some("github")).await.unwrap().len(), 2);
    assert_eq!(
        store.list(Some("bob"), Some("jira")).await.unwrap().len(),
        0
    );
    assert!(store.revoke("alice", "jira").await.unwrap());
    assert!(!store.revoke("alice", "jira").await.unwrap());
    assert!(store.get("alice", "jira").await.unwrap().is_none());
    assert_eq!(store.list(Some("alice"), None).await.unwrap().len(), 1);
    store.ping().await.unwrap();
}

pub async fn tampered_rows_fail_to_decrypt(h: &dyn Harness) {
    let store = h.open(&key("k1", 1)).unwrap();
    let c = cred(ACCESS, Some(REFRESH));
    store.put("alice", "github", &c).await.unwrap();
    let (bob, carol) = (cred("bob-token", None), cred("carol-token", None));
    store.put("bob", "github", &bob).await.unwrap();
    store.put("carol", "github", &carol).await.unwrap();
    h.tamper(Tamper::CopyCiphertext {
        from: "alice",
        to: "bob",
    });
    let e = store.get("bob", "github").await.unwrap_err();
    assert!(
        matches!(&e, VaultError::Corrupt { sub, connection } if sub == "bob" && connection == "github"),
        "{e}"
    );
    h.tamper(Tamper::AppendByte("alice"));
    assert!(matches!(
        store.get("alice", "github").await,
        Err(VaultError::Corrupt { .. })
    ));
    // A row under a key id nobody configured: refused on read and at open.
    h.tamper(Tamper::SetKeyId("carol", "k0"));
    let e = store.get("carol", "github").await.unwrap_err();
    assert!(
        matches!(&e, VaultError::UnknownKeyId { key_id } if key_id == "k0"),
        "{e}"
    );
    drop(store);
    assert!(matches!(
        h.open(&key("k1", 1)),
        Err(VaultError::UnknownKeyId { .. })
    ));
    h.tamper(Tamper::SetKeyId("carol", "k1"));
    // rotate refuses to re-encrypt corrupt rows, and rolls back entirely.
    let store = h
        .open(&format!("{},{}", key("k2", 2), key("k1", 1)))
        .unwrap();
    assert!(matches!(
        store.rotate().await,
        Err(VaultError::Corrupt { .. })
    ));
    assert_eq!(key_ids(&store).await, ["k1", "k1", "k1"]);
    drop(store);
    h.tamper(Tamper::SchemaVersion(99));
    let e = h.open(&key("k1", 1)).unwrap_err();
    assert!(
        matches!(e, VaultError::UnsupportedSchema { found: 99, .. }),
        "{e}"
    );
}

/// Two refreshers of one expired row (two stores = two replicas where the backend supports
/// it): the second waits for the first, sees its write and keeps it; one refresh, no lost
/// update.
pub async fn update_locked_serialises_refreshers(h: &dyn Harness) {
    let a = h.open(&key("k1", 1)).unwrap();
    let b = if h.locks_across_stores() {
        h.open(&key("k1", 1)).unwrap()
    } else {
        a.clone()
    };
    a.put("alice", "github", &cred("old", Some("refresh-0")))
        .await
        .unwrap();
    let refreshes = Arc::new(AtomicUsize::new(0));
    let refresher = |store: Vault, pause: u64| {
        let refreshes = refreshes.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            store
                .update_locked(
                    "alice",
                    "github",
                    Duration::from_secs(30),
                    Box::new(|row| {
                        Box::pin(async move {
                            let (c, _) = row.expect("the row exists");
                            if c.access_token.expose() != "old" {
                                return Update::Keep; // someone refreshed meanwhile
                            }
                            refreshes.fetch_add(1, Ordering::SeqCst);
                            // A slow token endpoint: the other refresher must wait.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            Update::Write(cred("new", Some("refresh-1")))
                        })
                    }),
                )
                .await
                .unwrap()
        }
    };
    let (wa, wb) = tokio::join!(refresher(a.clone(), 0), refresher(b.clone(), 100));
    assert_eq!(refreshes.load(Ordering::SeqCst), 1, "refreshed twice");
    assert_eq!((wa, wb), (true, false));
    let (c, v) = b.get("alice", "github").await.unwrap().unwrap();
    assert_eq!((c.access_token.expose(), v), ("new", 2));
    // A missing row is shown as `None`; writing it creates it.
    let wrote = b
        .update_locked(
            "bob",
            "github",
            Duration::from_secs(5),
            Box::new(|row| {
                assert!(row.is_none());
                Box::pin(async { Update::Write(cred("bob", None)) })
            }),
        )
        .await
        .unwrap();
    assert!(wrote);
    assert_eq!(a.get("bob", "github").await.unwrap().unwrap().1, 1);
}
