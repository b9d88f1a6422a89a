//! wallet-shard-client: how anything inside the cluster reaches a shard. It sits below both the
//! router (which serves the public API with it) and the nodes (whose recovery pass settles
//! two-phase transfers with it), so neither depends on the other.
//!
//! - [`shards`]: routes a command or read to the leader of the shard owning an account, following
//!   `NOT_LEADER` hints and retrying with backoff (safe because every command carries its id, G4).
//! - [`timestamps`]: oracle timestamps for commands, batched.
//! - [`two_phase`]: the coordinator of a transfer between accounts on different shards, and the
//!   settling of an intent left behind by a coordinator that stopped.
pub mod shards;
pub mod timestamps;
pub mod two_phase;
