//! wallet-cluster: run the wallet store on one machine.
//!
//! - [`playground`]: starts, kills, restarts and wipes node and router processes on 127.0.0.1 with a
//!   data directory each, and waits until every shard has a leader. The `up` command and the
//!   multi-process tests both drive clusters through it.
//! - [`endpoints`]: `DIR/endpoints.json`, where each process serves gRPC and metrics.
//! - [`status`]: the `status` command: every group's replicas, roles, indexes, lag and phase.
//! - [`demo`]: a concurrent payment workload with a live progress line, a summary table and a check
//!   that the money in the accounts equals deposits minus withdrawals.
//! - [`bench`]: the `wallet-bench` workload (pg-transfer.sh's transfers) and its figures;
//!   [`procstat`] reads what the cluster's processes cost from `/proc`.
//! - [`backup`]: online backup of every account at one oracle timestamp, CRC-checked files and
//!   a manifest, and restore into a new cluster.
//! - [`workload`]: the account-pair rule and generator shared by demo and benchmark.
pub mod backup;
pub mod bench;
pub mod demo;
pub mod endpoints;
pub mod playground;
pub mod procstat;
pub mod status;
pub mod workload;
