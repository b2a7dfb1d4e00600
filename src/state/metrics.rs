//! Metrics of the state backend: up, operations and errors by kind, operation latency, and
//! operations per request.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Operation kinds (the `op` label).
pub const OPS: &[&str] = &[
    "ping",
    "rate_limit",
    "token_get",
    "token_put",
    "approval_reserve",
    "approval_release",
    "approval_insert",
    "approval_get",
    "approval_join",
    "approval_finish",
    "approval_interval",
    "approval_consume",
    "approval_lease",
    "approval_adopt",
];

#[derive(Clone)]
pub struct StateMetrics {
    pub up: IntGauge,
    operations: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    pub per_request: Histogram,
}

impl StateMetrics {
    pub fn register(registry: &Registry) -> StateMetrics {
        let up = IntGauge::new(
            "portcullis_state_backend_up",
            "1 when the state backend (embedded, or Redis) answers, else 0",
        )
        .expect("metric");
        let operations = IntCounterVec::new(
            Opts::new(
                "portcullis_state_operations_total",
                "State-backend (Redis) operations by kind",
            ),
            &["op"],
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "portcullis_state_errors_total",
                "State-backend (Redis) operations that failed or timed out, by kind",
            ),
            &["op"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_state_operation_duration_seconds",
                "Latency of state-backend (Redis) operations",
            )
            .buckets(vec![
                5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0,
            ]),
            &["op"],
        )
        .expect("metric");
        let per_request = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_state_operations_per_request",
                "State-backend (Redis) operations made while deciding one request",
            )
            .buckets(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0]),
        )
        .expect("metric");
        for c in [&operations, &errors] {
            for op in OPS {
                c.with_label_values(&[op]);
            }
        }
        // Names are fixed and distinct, so registration cannot collide.
        let _ = registry.register(Box::new(up.clone()));
        let _ = registry.register(Box::new(operations.clone()));
        let _ = registry.register(Box::new(errors.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        let _ = registry.register(Box::new(per_request.clone()));
        StateMetrics {
            up,
            operations,
            errors,
            duration,
            per_request,
        }
    }

    /// One finished operation of kind `op`.
    pub fn observe(&self, op: &str, seconds: f64, ok: bool) {
        self.operations.with_label_values(&[op]).inc();
        self.duration.with_label_values(&[op]).observe(seconds);
        if !ok {
            self.errors.with_label_values(&[op]).inc();
        }
    }
}
