//! wallet-router: the stateless front door of the wallet store.
//!
//! - [`service`]: the public `wallet.v1.Wallet` API: input checks, placement on the ring, the bound
//!   on requests in flight (`OVERLOADED` beyond it). It reaches the shards through
//!   `wallet-shard-client` (leader cache, retries, timestamps, the two-phase coordinator).
//! - [`audit`]: adds up the shards' totals at one timestamp and checks conservation.
//! - [`metrics`]: its Prometheus metrics (RPCs, audits).
//! - [`http`]: the HTTP/JSON API over the same service.
pub mod audit;
pub mod cli;
pub mod http;
pub mod metrics;
pub mod service;
