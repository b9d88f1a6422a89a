//! wallet-node: a server hosting replicas of several shards (multi-raft on sled).
//!
//! Module map, bottom up:
//! - [`record`]: CRC32-framed records, the only format that touches the disk (G7).
//! - [`writes`]: what an apply changed, as records for storage; [`retention`]: the shard's clock
//!   and what it forgets when.
//! - [`state_machine`]: the pure wallet state machine of one shard (DESIGN §5); its parts
//!   [`state_machine::two_phase`] (its side of cross-shard transfers, DESIGN §6) and
//!   [`state_machine::snapshot_read`] (reads at a timestamp, audits).
//! - [`metrics`]: the counters and histograms the write path, snapshots and recovery update;
//!   [`exporter`]: the node's Prometheus registry, with per-shard gauges read at each scrape.
//! - [`group_commit`]: one fsync for every replica of the node that needs one meanwhile.
//! - [`mark`]: what each replica last made durable, outside sled, to catch a store that came
//!   back older (sled drops a corrupt log tail silently).
//! - [`checkpoint`]: a checkpoint's changes reach sled atomically, in small batches.
//! - [`shard_store`]: one replica's Raft log, Raft state and state machine records in one sled tree;
//!   [`snapshot_file`]: snapshots as files (built, streamed and installed record by record).
//! - [`inbox`]: what the node hands a replica and the [`inbox::Outbox`] its messages leave by.
//! - [`replica`]: the Raft loop of one replica (Ready handling, proposals, ReadIndex reads).
//! - [`transport`]: Raft messages between nodes, batched per peer; snapshot files streamed.
//! - [`service`]: the gRPC services (`Shard` for routers, `Raft` for peers); [`ts_bound`]: the
//!   timestamps no router could have sent, refused.
//! - [`probe`]: what a replica with an empty store learns from its peers before any Raft step.
//! - [`recovery`]: decides and resolves cross-shard transfers whose router went away.
//! - [`tso`]: the timestamp oracle the meta group's leader serves.
//! - [`node`]: start-up and graceful shutdown; [`cli`]: its command line.
pub mod blob_sync;
pub mod checkpoint;
pub mod cli;
pub mod entry;
pub mod exporter;
pub mod group_commit;
pub mod inbox;
pub mod mark;
pub mod metrics;
pub mod node;
pub mod probe;
mod raft_log;
pub mod raft_wal;
pub mod record;
pub mod recovery;
pub mod replica;
pub mod retention;
pub mod segment_log;
pub mod service;
pub mod shard_store;
pub mod snapshot_file;
pub mod state_machine;
pub mod transport;
pub mod ts_bound;
pub mod tso;
pub mod writes;
