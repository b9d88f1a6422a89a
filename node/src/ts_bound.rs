//! Timestamps no router could have sent (G9).
//!
//! Every timestamp a router stamps comes from the oracle, which hands out only timestamps below
//! its committed limit. A command stamped at or above the highest limit the oracle has committed
//! is therefore no member's: a `CloseTs{ts: u64::MAX}` would block the shard's writes forever, and
//! a deposit stamped u64::MAX would make every later snapshot read too old. The node refuses such
//! commands with `INVALID_ARGUMENT` before they reach Raft.
//!
//! The node keeps the highest limit it has seen; a timestamp at or above it makes the node ask the
//! oracle for a fresh one (one call at a time), so legitimate commands almost never wait: the limit
//! runs a few seconds ahead of the clock and is refreshed about once per window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::Status;
use wallet_proto::reason::Reason;
use wallet_shard_client::shards::Shards;

/// The highest committed oracle limit this node knows, and how to learn a newer one.
pub struct TsBound {
    limit: AtomicU64,
    refresh: tokio::sync::Mutex<()>,
    shards: Arc<Shards>,
}

impl TsBound {
    pub fn new(shards: Arc<Shards>) -> TsBound {
        TsBound {
            limit: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
            shards,
        }
    }

    /// Ok if some router could have stamped `ts` (0, for commands without one, always is).
    pub async fn check(&self, what: &str, ts: u64) -> Result<(), Status> {
        if ts == 0 || ts < self.limit.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.refresh.lock().await;
        if ts < self.limit.load(Ordering::Acquire) {
            return Ok(());
        }
        let fresh = self.shards.tso(1).await?;
        let limit = self
            .limit
            .fetch_max(fresh.limit, Ordering::AcqRel)
            .max(fresh.limit);
        if ts < limit {
            return Ok(());
        }
        Err(Reason::InvalidArgument.status(format!(
            "{what} {ts} is beyond every timestamp the oracle has handed out (limit {limit})"
        )))
    }
}
