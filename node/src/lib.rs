//! wallet-node: a server hosting replicas of several shards (multi-raft on sled).
//!
//! Module map, bottom up:
//! - [`record`]: CRC32-framed records, the only format that touches the disk (G7).
//! - [`state_machine`]: the pure wallet state machine of one shard (DESIGN §5).
pub mod record;
pub mod state_machine;
pub mod shard_store;
