//! wallet-router: the stateless front door of the wallet store.
//!
//! - [`shards`]: routes a command or read to the leader of the shard owning an account, following
//!   `NOT_LEADER` hints and retrying with backoff (safe because every command carries its id, G4).
//! - [`service`]: the public `wallet.v1.Wallet` API: input checks, placement on the ring, the bound
//!   on requests in flight (`OVERLOADED` beyond it).
//! - [`audit`]: adds up the shards' totals at one timestamp and checks conservation.
//! - [`timestamps`]: oracle timestamps for commands, batched.
//! - [`two_phase`]: the coordinator of a transfer between accounts on different shards.
pub mod audit;
pub mod cli;
pub mod service;
pub mod shards;
pub mod timestamps;
pub mod two_phase;
