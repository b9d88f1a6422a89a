//! Everything the wallet crates share on the wire and about the cluster's shape.
//!
//! - [`v1`]: the generated gRPC types and services (`wallet.v1`): the public `Wallet` API, the
//!   internal `Shard` and `Raft` services, and the records the state machine stores.
//! - [`reason`]: the stable reason codes carried by every error, and their gRPC mapping.
//! - [`validate`]: the input rules of DESIGN §10, applied at every entry point.
//! - [`topology`]: the TOML cluster file and the consistent-hashing ring (account id → shard).
//! - [`shutdown`]: the SIGTERM/SIGINT signal every binary stops on.
//! - [`fail_stop`]: the panic hook that ends a process on any panic (G9).
//! - [`json`]: how the public messages' enums read in JSON (the router's HTTP API).

pub mod fail_stop;
pub mod json;
pub mod reason;
pub mod shutdown;
pub mod topology;
pub mod validate;

/// Generated code for package `wallet.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("wallet.v1");
}

/// The encoded descriptors of every service and message in `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wallet_descriptor");

/// Largest encoded gRPC message any service accepts or sends (raft batches and snapshots included).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most commands in one `ExecuteBatch` call, and most transfers in one `TransferBatch` request
/// (TigerBeetle's batch size, rounded up to a power of two for the internal call).
pub const BATCH_COMMANDS_MAX: usize = 8192;
/// Most transfers in one public `TransferBatch` request.
pub const TRANSFER_BATCH_MAX: usize = 8189;
/// Largest batch request (internal `ExecuteBatch` or public `TransferBatch`).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Accounts per page of a snapshot scan (`AccountsAt`): a page stays far below
/// [`BATCH_BYTES_MAX`] with ids of the longest length.
pub const ACCOUNTS_PAGE_MAX: u32 = 4096;
