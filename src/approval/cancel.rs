//! Cancellation of held MCP calls. A held call registers under the caller and its JSON-RPC
//! id; a `notifications/cancelled` from the same caller naming that id wakes it, and the hold
//! ends at once: polling stops, nothing is forwarded, a late approval forwards nothing.
//! Registrations live in this process (a held call's connection is here too) and survive a
//! configuration reload.

use std::sync::Arc;

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::Notify;

/// Held calls that a cancellation can stop, by [`key`].
#[derive(Default, Clone)]
pub struct Cancels {
    held: Arc<DashMap<String, Arc<Notify>>>,
}

/// Who is calling, and in which MCP session: a cancellation must come from the same caller.
pub struct Caller<'a> {
    pub route: &'a str,
    pub iss: &'a str,
    pub sub: &'a str,
    pub agent: Option<&'a str>,
    /// `Mcp-Session-Id` (2025 revisions); `None` on stateless revisions.
    pub session: Option<&'a str>,
}

/// The registry key of request `id` of `caller`. Fields are separated by NUL, which none
/// of them can hold (header values, JSON text and claims are checked or escaped).
pub fn key(caller: &Caller<'_>, id: &Value) -> String {
    format!(
        "{}\0{}\0{}\0{}\0{}\0{id}",
        caller.route,
        caller.iss,
        caller.sub,
        caller.agent.unwrap_or(""),
        caller.session.unwrap_or(""),
    )
}

/// A held call's registration; dropping it unregisters.
pub struct Registration {
    cancels: Cancels,
    key: String,
    notify: Arc<Notify>,
}

impl Registration {
    /// Resolves when the call is cancelled (also when that happened before this is awaited).
    pub async fn cancelled(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels
            .held
            .remove_if(&self.key, |_, n| Arc::ptr_eq(n, &self.notify));
    }
}

impl Cancels {
    pub fn register(&self, key: String) -> Registration {
        let notify = Arc::new(Notify::new());
        self.held.insert(key.clone(), notify.clone());
        Registration {
            cancels: self.clone(),
            key,
            notify,
        }
    }

    /// Cancel the held call under `key`; whether one was held.
    pub fn cancel(&self, key: &str) -> bool {
        match self.held.get(key) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{key, Caller, Cancels};

    fn caller<'a>(sub: &'a str, session: Option<&'a str>) -> Caller<'a> {
        Caller {
            route: "mcp",
            iss: "https://idp",
            sub,
            agent: Some("agent-1"),
            session,
        }
    }

    #[tokio::test]
    async fn a_cancellation_wakes_only_the_named_call_of_the_same_caller() {
        let cancels = Cancels::default();
        let held = cancels.register(key(&caller("alice", Some("s1")), &json!(7)));
        // Another user, another session or another id cancels nothing.
        assert!(!cancels.cancel(&key(&caller("bob", Some("s1")), &json!(7))));
        assert!(!cancels.cancel(&key(&caller("alice", Some("s2")), &json!(7))));
        assert!(!cancels.cancel(&key(&caller("alice", Some("s1")), &json!("7"))));
        assert!(cancels.cancel(&key(&caller("alice", Some("s1")), &json!(7))));
        // Cancelled before anyone waits: the wait still ends at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), held.cancelled())
            .await
            .expect("cancelled");
        drop(held);
        assert_eq!(cancels.held(), 0);
    }
}
