//! A router's Prometheus metrics (README § Operations): its RPCs (the tower layer of
//! `wallet-ops`), and the audits it ran by result. The audit counter is process-wide (one router
//! per process, or per embedding client).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use wallet_proto::reason::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditLabel {
    /// `balanced`, `mismatched` (AUDIT_MISMATCH: conservation broken) or `failed` (it could not
    /// finish, e.g. a shard unavailable).
    result: &'static str,
}

static AUDITS: LazyLock<Family<AuditLabel, Counter>> = LazyLock::new(Family::default);

/// Counts an audit's result.
pub fn count_audit(result: Result<(), &tonic::Status>) {
    let result = match result {
        Ok(()) => "balanced",
        Err(status) if wallet_proto::reason::of_status(status) == Reason::AuditMismatch => {
            "mismatched"
        }
        Err(_) => "failed",
    };
    AUDITS.get_or_create(&AuditLabel { result }).inc();
}

/// The router's registry (metric names prefixed `wallet_router_`) and the layer that measures
/// its RPCs.
pub fn registry() -> (Registry, wallet_ops::rpc_metrics::RpcMetrics) {
    let mut registry = Registry::with_prefix("wallet_router");
    let rpc = wallet_ops::rpc_metrics::RpcMetrics::new(&mut registry);
    registry.register(
        "audits",
        "Audits this router ran, by result",
        AUDITS.clone(),
    );
    (registry, rpc)
}
