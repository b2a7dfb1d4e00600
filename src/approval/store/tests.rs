//! Tests of the approval store.
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;

use rusqlite::Connection;
use tempfile::TempDir;

use super::{
    new_id, ApprovalRecord, ApprovalStatus, ApprovalStore, ApprovalStoreError, Binding, Consume,
};
use crate::secret::Secret;

const AUTH_REQ_ID: &str = "1c266114-a1be-4252-8ad1-PLAINTEXT-AUTH-REQ-ID";
const NOW: u64 = 1_800_000_000;
const ALL: [ApprovalStatus; 6] = [
    ApprovalStatus::Pending,
    ApprovalStatus::Approved,
    ApprovalStatus::Denied,
    ApprovalStatus::Expired,
    ApprovalStatus::Failed,
    ApprovalStatus::Used,
];

fn setup() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvals.db");
    (dir, path)
}

fn binding() -> Binding {
    Binding {
        sub: "alice".to_string(),
        agent: Some("agent-1".to_string()),
        method: "POST".to_string(),
        target: "/repos/acme/app/issues?draft=1".to_string(),
        body_sha256: Binding::body_hash(br#"{"title":"delete prod"}"#),
    }
}

fn record(id: &str, status: ApprovalStatus) -> ApprovalRecord {
    ApprovalRecord {
        id: id.to_string(),
        route: "github".to_string(),
        binding: binding(),
        auth_req_id: Secret::new(AUTH_REQ_ID.to_string()),
        binding_message: "Approve issue creation? W4SCT".to_string(),
        authorization_details: r#"[{"type":"http_request","method":"POST"}]"#.to_string(),
        scope: "openid".to_string(),
        policy_rev: "rev".to_string(),
        status,
        interval_secs: 5,
        created_at: NOW,
        expires_at: NOW + 300,
        updated_at: NOW,
    }
}

fn status(store: &ApprovalStore, id: &str) -> ApprovalStatus {
    store.get(id).unwrap().unwrap().status
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ApprovalStore>();
}

#[test]
fn status_names_round_trip() {
    for s in ALL {
        assert_eq!(ApprovalStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(ApprovalStatus::parse("Approved"), None);
    assert_eq!(ApprovalStatus::parse(""), None);
    let finals: Vec<_> = ALL.into_iter().filter(|s| s.is_final()).collect();
    let expected = [
        ApprovalStatus::Denied,
        ApprovalStatus::Expired,
        ApprovalStatus::Failed,
        ApprovalStatus::Used,
    ];
    assert_eq!(finals, expected);
}

#[test]
fn body_hash_is_sha256() {
    let empty = Binding::body_hash(b"");
    assert_eq!(&empty[..4], &[0xe3, 0xb0, 0xc4, 0x42]);
    assert_eq!(&empty[28..], &[0x78, 0x52, 0xb8, 0x55]);
    assert_ne!(Binding::body_hash(b"a"), empty);
}

#[test]
fn new_id_is_random_url_safe() {
    let (a, b) = (new_id().unwrap(), new_id().unwrap());
    assert_eq!(a.len(), 22);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    assert_ne!(a, b);
}

#[test]
fn insert_get_round_trip() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    let rec = record("a1", ApprovalStatus::Pending);
    store.insert(&rec).unwrap();
    let got = store.get("a1").unwrap().unwrap();
    assert_eq!(got, rec);
    assert_eq!(got.auth_req_id.expose(), AUTH_REQ_ID);
    let debug = format!("{got:?}");
    assert!(!debug.contains(AUTH_REQ_ID), "{debug}");
    assert!(debug.contains("Secret(***)"), "{debug}");
    assert!(store.get("missing").unwrap().is_none());

    let mut anon = record("a2", ApprovalStatus::Approved);
    anon.binding.agent = None;
    store.insert(&anon).unwrap();
    assert_eq!(store.get("a2").unwrap(), Some(anon));

    let err = store.insert(&rec).unwrap_err();
    assert!(matches!(err, ApprovalStoreError::Duplicate { .. }), "{err}");
    assert!(!err.to_string().contains(AUTH_REQ_ID));
    assert_eq!(store.get("a1").unwrap(), Some(rec));
}

#[test]
fn insert_rejects_invalid_values() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    let mut rec = record("a1", ApprovalStatus::Pending);
    rec.expires_at = u64::MAX;
    let err = store.insert(&rec).unwrap_err();
    assert!(
        matches!(err, ApprovalStoreError::InvalidArgument(_)),
        "{err}"
    );
    let err = store
        .insert(&record("", ApprovalStatus::Pending))
        .unwrap_err();
    assert!(
        matches!(err, ApprovalStoreError::InvalidArgument(_)),
        "{err}"
    );
    assert!(store.get("a1").unwrap().is_none());
}

#[test]
fn transition_is_compare_and_swap() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    store
        .insert(&record("a1", ApprovalStatus::Pending))
        .unwrap();
    let (pending, approved) = (ApprovalStatus::Pending, ApprovalStatus::Approved);
    assert!(store.transition("a1", pending, approved, NOW + 10).unwrap());
    let got = store.get("a1").unwrap().unwrap();
    assert_eq!((got.status, got.updated_at), (approved, NOW + 10));
    // Wrong `from`: nothing changes.
    assert!(!store.transition("a1", pending, approved, NOW + 20).unwrap());
    assert!(!store
        .transition("a1", pending, ApprovalStatus::Denied, NOW + 20)
        .unwrap());
    let got = store.get("a1").unwrap().unwrap();
    assert_eq!((got.status, got.updated_at), (approved, NOW + 10));
    assert!(!store.transition("missing", pending, approved, NOW).unwrap());
    assert!(store
        .transition("a1", approved, ApprovalStatus::Expired, NOW + 30)
        .unwrap());
    assert_eq!(status(&store, "a1"), ApprovalStatus::Expired);
}

#[test]
fn transition_refuses_invalid_moves() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    store.insert(&record("a1", ApprovalStatus::Used)).unwrap();
    use ApprovalStatus::{Approved, Denied, Pending, Used};
    for (from, to) in [
        (Used, Approved),
        (Denied, Pending),
        (Approved, Pending),
        (Pending, Used),
    ] {
        let err = store.transition("a1", from, to, NOW).unwrap_err();
        assert!(
            matches!(err, ApprovalStoreError::InvalidTransition { .. }),
            "{err}"
        );
    }
    assert_eq!(status(&store, "a1"), Used);
}

#[test]
fn set_interval_only_for_pending() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    store.insert(&record("p", ApprovalStatus::Pending)).unwrap();
    store.insert(&record("d", ApprovalStatus::Denied)).unwrap();
    store.set_interval("p", 10).unwrap();
    assert_eq!(store.get("p").unwrap().unwrap().interval_secs, 10);
    store.set_interval("d", 10).unwrap();
    assert_eq!(store.get("d").unwrap().unwrap().interval_secs, 5);
    let err = store.set_interval("missing", 10).unwrap_err();
    assert!(matches!(err, ApprovalStoreError::NotFound), "{err}");
}

#[test]
fn consume_is_single_use() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    store
        .insert(&record("a1", ApprovalStatus::Approved))
        .unwrap();
    assert_eq!(
        store.consume("a1", &binding(), NOW + 1).unwrap(),
        Consume::Consumed
    );
    let got = store.get("a1").unwrap().unwrap();
    assert_eq!(
        (got.status, got.updated_at),
        (ApprovalStatus::Used, NOW + 1)
    );
    let again = store.consume("a1", &binding(), NOW + 2).unwrap();
    assert_eq!(again, Consume::AlreadyUsed);
}

#[test]
fn consume_mismatch_leaves_record_approved() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    let rec = record("a1", ApprovalStatus::Approved);
    store.insert(&rec).unwrap();
    let b = binding();
    let with = |change: fn(&mut Binding)| {
        let mut other = b.clone();
        change(&mut other);
        other
    };
    let others = [
        with(|o| o.method = "PUT".to_string()),
        with(|o| o.target = "/repos/acme/app/issues".to_string()),
        with(|o| o.body_sha256 = Binding::body_hash(b"{}")),
        with(|o| o.sub = "mallory".to_string()),
        with(|o| o.agent = Some("agent-2".to_string())),
        with(|o| o.agent = None),
    ];
    for other in &others {
        assert_eq!(
            store.consume("a1", other, NOW + 1).unwrap(),
            Consume::Mismatch
        );
        assert_eq!(store.get("a1").unwrap().as_ref(), Some(&rec));
    }
    // Even an expired approval is not touched (nor disclosed) by another request.
    assert_eq!(
        store.consume("a1", &others[0], NOW + 999).unwrap(),
        Consume::Mismatch
    );
    assert_eq!(store.get("a1").unwrap().as_ref(), Some(&rec));
    assert_eq!(store.consume("a1", &b, NOW + 1).unwrap(), Consume::Consumed);
}

#[test]
fn consume_classifies_other_statuses() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    let cases = [
        (ApprovalStatus::Pending, Consume::Pending),
        (ApprovalStatus::Denied, Consume::Denied),
        (ApprovalStatus::Expired, Consume::Expired),
        (ApprovalStatus::Failed, Consume::Failed),
        (ApprovalStatus::Used, Consume::AlreadyUsed),
    ];
    for (st, expected) in cases {
        let id = st.as_str();
        store.insert(&record(id, st)).unwrap();
        assert_eq!(store.consume(id, &binding(), NOW + 1).unwrap(), expected);
        assert_eq!(store.get(id).unwrap(), Some(record(id, st)), "unchanged");
    }
    let missing = store.consume("missing", &binding(), NOW).unwrap();
    assert_eq!(missing, Consume::NotFound);
}

#[test]
fn consume_after_expiry_gives_expired() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    for st in [ApprovalStatus::Approved, ApprovalStatus::Pending] {
        let id = st.as_str();
        store.insert(&record(id, st)).unwrap();
        let expires = NOW + 300;
        assert_eq!(
            store.consume(id, &binding(), expires).unwrap(),
            Consume::Expired
        );
        let got = store.get(id).unwrap().unwrap();
        assert_eq!(
            (got.status, got.updated_at),
            (ApprovalStatus::Expired, expires)
        );
    }
    // One second before expiry it is still usable.
    store
        .insert(&record("a2", ApprovalStatus::Approved))
        .unwrap();
    let last = store.consume("a2", &binding(), NOW + 299).unwrap();
    assert_eq!(last, Consume::Consumed);
}

#[test]
fn concurrent_consume_has_one_winner() {
    let (_dir, path) = setup();
    let stores = [
        Arc::new(ApprovalStore::open(&path).unwrap()),
        Arc::new(ApprovalStore::open(&path).unwrap()),
    ];
    for round in 0..5 {
        let id = format!("race-{round}");
        stores[0]
            .insert(&record(&id, ApprovalStatus::Approved))
            .unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (store, barrier, id) =
                    (Arc::clone(&stores[i % 2]), barrier.clone(), id.clone());
                thread::spawn(move || {
                    barrier.wait();
                    store.consume(&id, &binding(), NOW + 1).unwrap()
                })
            })
            .collect();
        let outcomes: Vec<Consume> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = outcomes.iter().filter(|o| **o == Consume::Consumed).count();
        let used = outcomes
            .iter()
            .filter(|o| **o == Consume::AlreadyUsed)
            .count();
        assert_eq!((wins, used), (1, 7), "{outcomes:?}");
        assert_eq!(status(&stores[1], &id), ApprovalStatus::Used);
    }
}

#[test]
fn records_survive_restart() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    let mut late = record("late", ApprovalStatus::Pending);
    late.created_at = NOW + 20;
    let mut early = record("early", ApprovalStatus::Pending);
    early.created_at = NOW - 20;
    let approved = record("ok", ApprovalStatus::Approved);
    for r in [&late, &approved, &early] {
        store.insert(r).unwrap();
    }
    store.set_interval("late", 15).unwrap();
    late.interval_secs = 15;
    drop(store);

    let store = ApprovalStore::open(&path).unwrap();
    assert_eq!(store.pending().unwrap(), vec![early, late]);
    assert_eq!(store.get("ok").unwrap(), Some(approved));
    assert_eq!(
        store.consume("ok", &binding(), NOW + 1).unwrap(),
        Consume::Consumed
    );
    drop(store);
    let store = ApprovalStore::open(&path).unwrap();
    let again = store.consume("ok", &binding(), NOW + 2).unwrap();
    assert_eq!(again, Consume::AlreadyUsed);
}

#[test]
fn count_pending_total_and_per_sub() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    assert_eq!(store.count_pending(None).unwrap(), 0);
    for (id, sub, st) in [
        ("a1", "alice", ApprovalStatus::Pending),
        ("a2", "alice", ApprovalStatus::Pending),
        ("a3", "alice", ApprovalStatus::Approved),
        ("b1", "bob", ApprovalStatus::Pending),
        ("b2", "bob", ApprovalStatus::Denied),
    ] {
        let mut r = record(id, st);
        r.binding.sub = sub.to_string();
        store.insert(&r).unwrap();
    }
    assert_eq!(store.count_pending(None).unwrap(), 3);
    assert_eq!(store.count_pending(Some("alice")).unwrap(), 2);
    assert_eq!(store.count_pending(Some("bob")).unwrap(), 1);
    assert_eq!(store.count_pending(Some("carol")).unwrap(), 0);
    let denied = ApprovalStatus::Denied;
    assert!(store
        .transition("a1", ApprovalStatus::Pending, denied, NOW)
        .unwrap());
    assert_eq!(store.count_pending(Some("alice")).unwrap(), 1);
    assert_eq!(store.count_pending(None).unwrap(), 2);
}

#[test]
fn purge_deletes_old_final_records_only() {
    let (_dir, path) = setup();
    let store = ApprovalStore::open(&path).unwrap();
    let rows = [
        ("used-old", ApprovalStatus::Used, NOW - 100),
        ("denied-old", ApprovalStatus::Denied, NOW - 100),
        ("failed-old", ApprovalStatus::Failed, NOW - 1),
        ("expired-new", ApprovalStatus::Expired, NOW),
        ("pending-old", ApprovalStatus::Pending, NOW - 100),
        ("approved-old", ApprovalStatus::Approved, NOW - 100),
    ];
    for (id, st, updated) in rows {
        let mut r = record(id, st);
        r.updated_at = updated;
        store.insert(&r).unwrap();
    }
    assert_eq!(store.purge(NOW).unwrap(), 3);
    for (id, _, _) in rows {
        let kept = !id.ends_with("-old") || id.starts_with("pending") || id.starts_with("approved");
        assert_eq!(store.get(id).unwrap().is_some(), kept, "{id}");
    }
    assert_eq!(store.purge(NOW).unwrap(), 0);
    assert_eq!(store.purge(u64::MAX).unwrap(), 1);
    assert_eq!(store.count_pending(None).unwrap(), 1);
}

#[test]
fn new_file_is_private_and_open_file_refused() {
    let (dir, path) = setup();
    drop(ApprovalStore::open(&path).unwrap());
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let open_file = dir.path().join("shared.db");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&open_file)
        .unwrap();
    fs::set_permissions(&open_file, fs::Permissions::from_mode(0o644)).unwrap();
    match ApprovalStore::open(&open_file) {
        Err(ApprovalStoreError::InsecurePermissions { mode, .. }) => assert_eq!(mode, 0o644),
        other => panic!("expected InsecurePermissions, got {other:?}"),
    }
}

#[test]
fn newer_schema_refused() {
    let (_dir, path) = setup();
    drop(ApprovalStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 3).unwrap();
    drop(conn);
    match ApprovalStore::open(&path) {
        Err(ApprovalStoreError::UnsupportedSchema {
            found: 3,
            supported: 2,
        }) => {}
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
}

/// A version 1 file (before the policy revision, the asked scope and receipts) is migrated:
/// its rows stay readable, with an empty revision (which no route has: never redeemed).
#[test]
fn a_version_1_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        std::fs::File::create(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE approvals (id TEXT PRIMARY KEY NOT NULL, route TEXT NOT NULL,
                sub TEXT NOT NULL, agent TEXT, method TEXT NOT NULL, target TEXT NOT NULL,
                body_sha256 BLOB NOT NULL CHECK (length(body_sha256) = 32),
                auth_req_id TEXT NOT NULL, binding_message TEXT NOT NULL,
                authorization_details TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN
                ('pending', 'approved', 'denied', 'expired', 'failed', 'used')),
                interval_secs INTEGER NOT NULL, created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
             CREATE INDEX approvals_sub_status ON approvals (sub, status);
             INSERT INTO approvals VALUES ('old', 'github', 'alice', NULL, 'POST', '/x',
                zeroblob(32), 'rid', 'msg', '[]', 'approved', 5, 1, 2, 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = ApprovalStore::open(&path).unwrap();
    let old = store.get("old").unwrap().unwrap();
    assert_eq!(old.status, ApprovalStatus::Approved);
    assert_eq!(old.policy_rev, "");
    let mut r = record("new", ApprovalStatus::Pending);
    r.status = ApprovalStatus::Mismatch;
    store.insert(&r).unwrap();
    assert_eq!(status(&store, "new"), ApprovalStatus::Mismatch);
    drop(store);
    // Opening again is a no-op.
    let store = ApprovalStore::open(&path).unwrap();
    assert_eq!(status(&store, "old"), ApprovalStatus::Approved);
}
