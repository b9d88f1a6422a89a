//! raft-rs logs through `slog`; this drain forwards its records to `tracing` so a node has one log.
//! raft-rs is chatty at info level (every election step), so its info becomes our debug.

use slog::{o, Drain, Level, OwnedKVList, Record};

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let message = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{message}"),
            Level::Warning => tracing::warn!(target: "raft", "{message}"),
            Level::Info => tracing::debug!(target: "raft", "{message}"),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

/// A logger for one replica's RawNode.
pub fn logger(shard_id: u64, node_id: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        o!("shard" => shard_id, "node" => node_id),
    )
}
