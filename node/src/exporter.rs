//! A node's Prometheus registry (README § Operations): the RPC metrics, the counters of
//! [`crate::metrics::NODE`], and per-shard gauges read from the replicas' published statuses when
//! a scrape comes, so nothing on the hot path keeps them current.

use std::sync::Arc;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wallet_ops::metrics_http::Refresh;

use crate::metrics::{ShardLabel, UndecidedLabel, NODE};
use crate::service::NodeService;

/// Per-shard gauges, set from the replicas' statuses at each scrape.
#[derive(Default, Clone)]
struct ShardGauges {
    term: Family<ShardLabel, Gauge>,
    commit_index: Family<ShardLabel, Gauge>,
    applied_index: Family<ShardLabel, Gauge>,
    leader: Family<ShardLabel, Gauge>,
    is_leader: Family<ShardLabel, Gauge>,
    serving: Family<ShardLabel, Gauge>,
    accounts: Family<ShardLabel, Gauge>,
    requests: Family<ShardLabel, Gauge>,
    undecided: Family<UndecidedLabel, Gauge>,
}

/// Gauges hold i64; indexes and ids beyond it (never in practice) show as i64::MAX.
fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The node's registry (metric names prefixed `wallet_node_`), with the refresh that sets the
/// per-shard gauges from `service`'s replicas.
pub fn registry(service: NodeService) -> (Registry, wallet_ops::rpc_metrics::RpcMetrics, Refresh) {
    let mut registry = Registry::with_prefix("wallet_node");
    let rpc = wallet_ops::rpc_metrics::RpcMetrics::new(&mut registry);
    let node = &*NODE;
    registry.register(
        "fsync_seconds",
        "Time of one group-commit flush (fsync) of the node's database",
        node.fsync_seconds.clone(),
    );
    registry.register(
        "entry_commands",
        "Commands carried by each Raft entry a leader proposed",
        node.entry_commands.clone(),
    );
    registry.register(
        "snapshot_bytes",
        "Bytes of snapshot files built (leader) and received (follower)",
        node.snapshot_bytes.clone(),
    );
    registry.register(
        "recovery_decisions",
        "Cross-shard transfers decided or settled by recovery, without their router",
        node.recovery_decisions.clone(),
    );
    registry.register(
        "leader_changes",
        "Times a replica of this node learnt of a new leader of its shard",
        node.leader_changes.clone(),
    );
    let gauges = ShardGauges::default();
    for (name, help, family) in [
        (
            "raft_term",
            "Raft term of this node's replica",
            &gauges.term,
        ),
        (
            "raft_commit_index",
            "Raft commit index of this node's replica",
            &gauges.commit_index,
        ),
        (
            "raft_applied_index",
            "Index this node's replica applied",
            &gauges.applied_index,
        ),
        (
            "raft_leader",
            "Node id of the leader this replica knows (0: none)",
            &gauges.leader,
        ),
        (
            "raft_is_leader",
            "1 while this node's replica leads its shard",
            &gauges.is_leader,
        ),
        (
            "replica_serving",
            "1 while the replica takes part in Raft normally (not probing or recovering)",
            &gauges.serving,
        ),
        (
            "accounts",
            "Accounts on the shard, as this replica applied",
            &gauges.accounts,
        ),
        (
            "request_records",
            "Request records the replica remembers (retention)",
            &gauges.requests,
        ),
    ] {
        registry.register(name, help, family.clone());
    }
    registry.register(
        "undecided_transfers",
        "Cross-shard transfers not yet decided (prepared, primary side) or not yet settled \
         (pending intents, credit side) on this replica",
        gauges.undecided.clone(),
    );
    let refresh: Refresh = Arc::new(move || {
        for status in service.statuses() {
            let shard = ShardLabel {
                shard: status.shard_id,
            };
            let set = |family: &Family<ShardLabel, Gauge>, value: u64| {
                family.get_or_create(&shard).set(as_gauge(value));
            };
            set(&gauges.term, status.term);
            set(&gauges.commit_index, status.commit_index);
            set(&gauges.applied_index, status.applied_index);
            set(&gauges.leader, status.leader_id);
            set(&gauges.is_leader, u64::from(status.is_leader));
            set(
                &gauges.serving,
                u64::from(status.phase == wallet_proto::v1::ReplicaPhase::Serving as i32),
            );
            set(&gauges.accounts, status.accounts);
            set(&gauges.requests, status.requests);
            for (side, count) in [("prepared", status.prepared), ("pending", status.pending)] {
                gauges
                    .undecided
                    .get_or_create(&UndecidedLabel {
                        shard: status.shard_id,
                        side,
                    })
                    .set(as_gauge(count));
            }
        }
    });
    (registry, rpc, refresh)
}
