//! One contract suite for every [`ApprovalBackend`], run against the embedded SQLite store and
//! against a real `redis-server` (started here on a free loopback port, no persistence): the
//! record round trip, compare-and-swap outcomes, the polling interval, single use, binding
//! mismatches, expiry and concurrent redemption must behave the same on both.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::backend::{ApprovalBackend, Sqlite};
use super::store::{new_id, ApprovalRecord, ApprovalStatus, ApprovalStore, Binding, Consume};
use crate::config::model::RedisSpec;
use crate::secret::Secret;
use crate::state::metrics::StateMetrics;
use crate::state::redis::approvals::RedisApprovals;
use crate::state::redis::Redis;

const LEASE: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn binding() -> Binding {
    Binding {
        sub: "alice".to_string(),
        agent: Some("agent-1".to_string()),
        method: "POST".to_string(),
        target: "/invoices/finance/INV-1/pay?x=1".to_string(),
        body_sha256: Binding::body_hash(br#"{"amount":5000}"#),
    }
}

fn record(status: ApprovalStatus, now: u64) -> ApprovalRecord {
    ApprovalRecord {
        id: new_id().unwrap(),
        route: "invoices".to_string(),
        binding: binding(),
        auth_req_id: Secret::new("auth-req-id-suite".to_string()),
        binding_message: "Pay INV-1 5000 EUR".to_string(),
        authorization_details: r#"[{"type":"payment_initiation","amount":5000}]"#.to_string(),
        scope: "openid invoices:pay".to_string(),
        policy_rev: "rev-1".to_string(),
        status,
        interval_secs: 5,
        created_at: now,
        expires_at: now + 300,
        updated_at: now,
    }
}

/// A record approved by the user (inserted pending, then finished as the poller would).
async fn approved(b: &dyn ApprovalBackend, now: u64) -> ApprovalRecord {
    let r = record(ApprovalStatus::Pending, now);
    b.insert(&r, LEASE).await.unwrap();
    assert!(b.finish(&r, ApprovalStatus::Approved, now).await.unwrap());
    r
}

async fn status(b: &dyn ApprovalBackend, id: &str) -> ApprovalStatus {
    b.get(id).await.unwrap().unwrap().status
}

/// The contract. `b` must be empty of the ids it creates (they are random); `other` is a
/// second handle on the same store (another replica, another open of the file).
async fn contract(shared: Arc<dyn ApprovalBackend>, other: Arc<dyn ApprovalBackend>) {
    let b = &*shared;
    let t = now();

    // Round trip of every field.
    let r = record(ApprovalStatus::Pending, t);
    b.insert(&r, LEASE).await.unwrap();
    let got = b.get(&r.id).await.unwrap().unwrap();
    assert_eq!(
        (
            &got.route,
            &got.binding,
            got.auth_req_id.expose(),
            &got.binding_message,
            &got.authorization_details,
            got.status,
            got.interval_secs,
            got.expires_at
        ),
        (
            &r.route,
            &r.binding,
            r.auth_req_id.expose(),
            &r.binding_message,
            &r.authorization_details,
            ApprovalStatus::Pending,
            5,
            r.expires_at
        )
    );
    assert!(b.get(&new_id().unwrap()).await.unwrap().is_none());

    // The polling interval changes while pending.
    b.set_interval(&r.id, 10).await.unwrap();
    assert_eq!(b.get(&r.id).await.unwrap().unwrap().interval_secs, 10);

    // Pending → one outcome, once (compare-and-swap).
    assert_eq!(
        b.consume(&r.id, &binding(), t).await.unwrap(),
        Consume::Pending
    );
    assert!(b.finish(&r, ApprovalStatus::Denied, t).await.unwrap());
    assert!(!b.finish(&r, ApprovalStatus::Approved, t).await.unwrap());
    assert_eq!(status(b, &r.id).await, ApprovalStatus::Denied);
    assert_eq!(
        b.consume(&r.id, &binding(), t).await.unwrap(),
        Consume::Denied
    );

    // Single use, bound to the request.
    let a = approved(b, t).await;
    let with = |change: fn(&mut Binding)| {
        let mut other = binding();
        change(&mut other);
        other
    };
    for other in [
        with(|o| o.method = "PUT".to_string()),
        with(|o| o.target = "/invoices/finance/INV-2/pay?x=1".to_string()),
        with(|o| o.body_sha256 = Binding::body_hash(b"{}")),
        with(|o| o.sub = "mallory".to_string()),
        with(|o| o.agent = None),
    ] {
        assert_eq!(
            b.consume(&a.id, &other, t).await.unwrap(),
            Consume::Mismatch
        );
        assert_eq!(
            status(b, &a.id).await,
            ApprovalStatus::Approved,
            "unchanged"
        );
    }
    assert_eq!(
        b.consume(&a.id, &binding(), t + 1).await.unwrap(),
        Consume::Consumed
    );
    assert_eq!(status(b, &a.id).await, ApprovalStatus::Used);
    assert_eq!(
        b.consume(&a.id, &binding(), t + 2).await.unwrap(),
        Consume::AlreadyUsed
    );
    assert_eq!(
        b.consume(&new_id().unwrap(), &binding(), t).await.unwrap(),
        Consume::NotFound
    );

    // Expired: not usable at or after `expires_at`, usable a second before.
    let late = approved(b, t).await;
    assert_eq!(
        b.consume(&late.id, &binding(), late.expires_at)
            .await
            .unwrap(),
        Consume::Expired
    );
    let in_time = approved(b, t).await;
    assert_eq!(
        b.consume(&in_time.id, &binding(), in_time.expires_at - 1)
            .await
            .unwrap(),
        Consume::Consumed
    );

    // Concurrent redemptions: exactly one wins.
    for _ in 0..3 {
        let race = approved(b, t).await;
        let outcomes = redeem_at_once(&shared, &race.id, 8, t + 1).await;
        let wins = outcomes.iter().filter(|o| **o == Consume::Consumed).count();
        let used = outcomes
            .iter()
            .filter(|o| **o == Consume::AlreadyUsed)
            .count();
        assert_eq!((wins, used), (1, 7), "{outcomes:?}");
    }

    joins(b, t).await;
    receipts_chain(shared.clone(), other).await;
}

/// Concurrent appends from two handles make one chain, no fork; a user's receipts list.
async fn receipts_chain(a: Arc<dyn ApprovalBackend>, b: Arc<dyn ApprovalBackend>) {
    use super::receipts::{verify, Draft};
    let r = record(ApprovalStatus::Pending, now());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut draft = Draft::of("asked", &r, now(), "");
        if i % 4 == 0 {
            draft.sub = "bob".into();
        }
        tasks.push(tokio::spawn(async move {
            store.append_receipt(draft).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = a.receipts(0, 1000, None).await.unwrap();
    let chain: Vec<_> = rows.into_iter().map(|(_, r)| r.unwrap()).collect();
    assert_eq!(chain.len(), 40);
    assert_eq!(verify(&chain), Ok(40));
    assert!(!serde_json::to_string(&chain)
        .unwrap()
        .contains("auth-req-id-suite"));
    let bobs = b.receipts(0, 1000, Some("bob")).await.unwrap();
    assert_eq!(bobs.len(), 10);
    let page = a.receipts(5, 3, None).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|(p, _)| *p).collect();
    assert_eq!(seqs, vec![6, 7, 8]);
}

/// Identical calls join the newest unexpired approval of the same route and binding that
/// did not fail.
async fn joins(b: &dyn ApprovalBackend, t: u64) {
    let mut jb = binding();
    jb.target = format!("/join/{}", new_id().unwrap());
    let found = |route: &'static str, bind: Binding, at: u64| async move {
        b.find_latest(route, &bind, at).await.unwrap().map(|r| r.id)
    };
    assert_eq!(found("invoices", jb.clone(), t).await, None);
    let mut j = record(ApprovalStatus::Pending, t);
    j.binding = jb.clone();
    b.insert(&j, LEASE).await.unwrap();
    assert_eq!(found("invoices", jb.clone(), t).await, Some(j.id.clone()));
    assert_eq!(found("other-route", jb.clone(), t).await, None);
    let mut other_args = jb.clone();
    other_args.body_sha256 = Binding::body_hash(b"other arguments");
    assert_eq!(found("invoices", other_args, t).await, None);
    let mut other_user = jb.clone();
    other_user.sub = "mallory".to_string();
    assert_eq!(found("invoices", other_user, t).await, None);
    assert_eq!(found("invoices", jb.clone(), j.expires_at).await, None);
    assert!(b.finish(&j, ApprovalStatus::Approved, t).await.unwrap());
    assert_eq!(found("invoices", jb.clone(), t).await, Some(j.id.clone()));
    assert_eq!(b.consume(&j.id, &jb, t).await.unwrap(), Consume::Consumed);
    // Used (or denied) until it expires: a re-call gets the same answer, nobody is asked.
    assert_eq!(found("invoices", jb.clone(), t).await, Some(j.id.clone()));
    assert_eq!(found("invoices", jb.clone(), j.expires_at).await, None);
    // A failed one is not joined: the next call asks again.
    let mut f = record(ApprovalStatus::Pending, t + 1);
    f.binding = jb.clone();
    b.insert(&f, LEASE).await.unwrap();
    assert_eq!(
        found("invoices", jb.clone(), t + 1).await,
        Some(f.id.clone())
    );
    assert!(b.finish(&f, ApprovalStatus::Failed, t + 1).await.unwrap());
    assert_ne!(
        found("invoices", jb.clone(), t + 1).await,
        Some(f.id.clone())
    );
}

/// `n` redemptions of `id` at once, from tasks on several threads.
async fn redeem_at_once(
    b: &Arc<dyn ApprovalBackend>,
    id: &str,
    n: usize,
    now: u64,
) -> Vec<Consume> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (b, barrier, id) = (b.clone(), barrier.clone(), id.to_string());
            tokio::spawn(async move {
                barrier.wait().await;
                b.consume(&id, &binding(), now).await.unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_sqlite_backend_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvals.db");
    let store = ApprovalStore::open(&path).unwrap();
    let backend: Arc<dyn ApprovalBackend> = Arc::new(Sqlite(Arc::new(store)));
    let other = ApprovalStore::open(&path).unwrap();
    let other: Arc<dyn ApprovalBackend> = Arc::new(Sqlite(Arc::new(other)));
    runtime().block_on(contract(backend, other));
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisProcess(Child, u16);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<RedisProcess> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--port")
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        crate::vault::testdb::skip("approval backend suite on Redis: redis-server not found");
        return None;
    };
    let server = RedisProcess(child, port);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server did not listen on {port}");
}

#[test]
fn the_redis_backend_meets_the_contract() {
    let Some(server) = redis_server() else {
        return;
    };
    let spec = RedisSpec {
        url: Secret::new(format!("redis://127.0.0.1:{}/0", server.1)),
        key_prefix: "suite:".to_string(),
        timeout: Duration::from_secs(2),
        cache_key: None,
        ca_file: None,
    };
    let metrics = StateMetrics::register(&prometheus::Registry::new());
    let redis = Redis::open(&spec, metrics.clone()).unwrap();
    let backend: Arc<dyn ApprovalBackend> = Arc::new(RedisApprovals::new(redis));
    let replica = Redis::open(&spec, metrics).unwrap();
    let other: Arc<dyn ApprovalBackend> = Arc::new(RedisApprovals::new(replica));
    runtime().block_on(contract(backend, other));
}
