//! The metrics a node's write path, snapshots and recovery update (README § Operations):
//! process-wide ([`NODE`]: one node per process), below every module that counts something.
//! `exporter.rs` registers them, with the per-shard gauges it reads at each scrape.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabel {
    /// `built` (a leader wrote a snapshot file) or `received` (a follower took one in).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// `abort_debit` (a primary decided a prepared transfer its router left), `commit_credit` /
    /// `abort_credit` (a credit shard applied its primary's decision), `commit_chain_item` /
    /// `abort_chain_item` (a linked chain's item settled by its anchor's decision), `expire_holds`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UndecidedLabel {
    pub shard: u64,
    /// `prepared` (primary side) or `pending` (credit side).
    pub side: &'static str,
}

/// The metrics code on the write path updates.
pub struct NodeMetrics {
    pub fsync_seconds: Histogram,
    pub entry_commands: Histogram,
    pub snapshot_bytes: Family<SnapshotLabel, Counter>,
    pub recovery_decisions: Family<DecisionLabel, Counter>,
    pub leader_changes: Family<ShardLabel, Counter>,
}

/// This process's node metrics.
pub static NODE: LazyLock<NodeMetrics> = LazyLock::new(|| NodeMetrics {
    // 50 µs .. ~52 s.
    fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 21)),
    // 1 .. 8 192 commands.
    entry_commands: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
    snapshot_bytes: Family::default(),
    recovery_decisions: Family::default(),
    leader_changes: Family::default(),
});
