//! Approval metrics: holds pending and how they ended, and for MCP calls the mode that
//! carried them, rounds per approval, time to the user's decision and cancellations.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::register;

/// Buckets of the time to a user's decision, in seconds.
const DECISION_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Buckets of calls per MCP approval (the first call and its re-calls or rounds).
const ROUND_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0];

/// Approval holds: pending now, and how they ended.
#[derive(Clone)]
pub struct ApprovalMetrics {
    pending: IntGauge,
    finished: IntCounterVec,
    mcp: IntCounterVec,
    rounds: Histogram,
    decision: Histogram,
    cancelled: IntCounter,
    joined: IntCounterVec,
    receipts_failed: IntCounter,
}

/// Counts one pending approval while alive.
pub struct PendingGuard(IntGauge);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ApprovalMetrics {
    pub fn register(registry: &Registry) -> ApprovalMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("metric"),
            )
        };
        ApprovalMetrics {
            pending: register(
                registry,
                IntGauge::new(
                    "portcullis_approvals_pending",
                    "Approval holds waiting for the user",
                )
                .expect("metric"),
            ),
            finished: vec(
                "portcullis_approvals_total",
                "Approval holds by mode (sync, async, start) and outcome",
                &["mode", "outcome"],
            ),
            mcp: vec(
                "portcullis_mcp_approvals_total",
                "Answers to MCP calls that need approval, by MCP mode (hold, retry_hint, \
                 progress, input_required) and outcome",
                &["mode", "outcome"],
            ),
            rounds: histogram(
                "portcullis_mcp_approval_rounds",
                "Calls (first call, re-calls, rounds) per settled MCP approval",
                ROUND_BUCKETS,
            ),
            decision: histogram(
                "portcullis_approval_decision_seconds",
                "Time from asking the user to their decision",
                DECISION_BUCKETS,
            ),
            cancelled: register(
                registry,
                IntCounter::new(
                    "portcullis_mcp_cancellations_total",
                    "Held MCP calls stopped by the client's notifications/cancelled",
                )
                .expect("metric"),
            ),
            joined: vec(
                "portcullis_approvals_joined_total",
                "Calls that joined an open approval of an identical call instead of asking \
                 the user again, by mode (sync, async, mcp)",
                &["mode"],
            ),
            receipts_failed: register(
                registry,
                IntCounter::new(
                    "portcullis_approval_receipts_failed_total",
                    "Approval receipts that could not be appended (the call was refused)",
                )
                .expect("metric"),
            ),
        }
    }

    /// A call joined an open approval (`sync`, `async`, `mcp`).
    pub fn joined(&self, mode: &str) {
        self.joined.with_label_values(&[mode]).inc();
    }

    pub fn receipt_failed(&self) {
        self.receipts_failed.inc();
    }

    pub fn pending_guard(&self) -> PendingGuard {
        self.pending.inc();
        PendingGuard(self.pending.clone())
    }

    pub fn finished(&self, mode: &str, outcome: &str) {
        self.finished.with_label_values(&[mode, outcome]).inc();
    }

    /// One answer to an MCP call that needed approval.
    pub fn mcp(&self, mode: &str, outcome: &str) {
        self.mcp.with_label_values(&[mode, outcome]).inc();
    }

    /// An MCP approval settled after `rounds` calls.
    pub fn rounds(&self, rounds: u32) {
        self.rounds.observe(f64::from(rounds));
    }

    /// The user decided `seconds` after being asked.
    pub fn decided_after(&self, seconds: f64) {
        self.decision.observe(seconds);
    }

    pub fn cancelled(&self) {
        self.cancelled.inc();
    }
}
