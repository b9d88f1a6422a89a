//! Timestamps for commands, from the meta group's oracle, batched: every request waiting while a
//! call to the oracle is in flight rides the next call together (one RPC for up to
//! [`BATCH_MAX`] timestamps), so the oracle costs the router one round trip per batch, not per
//! request.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use wallet_proto::reason::Reason;
use wallet_proto::v1::{outcome, Command, Outcome};

use crate::shards::Shards;

/// Times a command is re-stamped when a snapshot read closed its timestamp first.
const RESTAMP_MAX: usize = 8;
/// Timestamps taken in one oracle call at most.
pub const BATCH_MAX: usize = 4096;
const QUEUE_CAPACITY: usize = 65_536;

type Waiter = oneshot::Sender<Result<u64, Status>>;

/// Hands out oracle timestamps to the commands of its users (the router, a node's recovery). Cheap to clone.
#[derive(Clone)]
pub struct Timestamps {
    queue: mpsc::Sender<Waiter>,
}

impl Timestamps {
    /// Starts the batching task.
    pub fn start(shards: Arc<Shards>) -> Timestamps {
        let (queue, waiting) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(batcher(shards, waiting));
        Timestamps { queue }
    }

    /// Proposes a new command stamped with a fresh timestamp, re-stamping it when a snapshot read
    /// closed the shard at or above its timestamp first (`TIMESTAMP_TOO_OLD`; the refusal wrote
    /// nothing, so the same request id is free).
    pub async fn execute_fresh(
        &self,
        shards: &Shards,
        shard_id: u64,
        mut command: Command,
    ) -> Result<Outcome, Status> {
        for _ in 0..RESTAMP_MAX {
            command.ts = self.next().await?;
            let outcome = shards.execute(shard_id, command.clone()).await?;
            match &outcome.result {
                Some(outcome::Result::Rejected(r))
                    if r.reason == Reason::TimestampTooOld.as_str() => {}
                _ => return Ok(outcome),
            }
        }
        Err(Reason::TimestampTooOld.status("snapshot reads kept overtaking this request"))
    }

    /// One fresh timestamp, above every timestamp handed out before this call began.
    pub async fn next(&self) -> Result<u64, Status> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(tx)
            .await
            .map_err(|_| Reason::Unavailable.status("timestamp batcher stopped"))?;
        rx.await
            .map_err(|_| Reason::Unavailable.status("timestamp batcher dropped the request"))?
    }
}

async fn batcher(shards: Arc<Shards>, mut waiting: mpsc::Receiver<Waiter>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = waiting.recv().await {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match shards.tso(batch.len() as u32).await {
            Ok(answer) if answer.count as usize == batch.len() => {
                for (i, waiter) in batch.drain(..).enumerate() {
                    let _ = waiter.send(Ok(answer.first + i as u64));
                }
            }
            Ok(answer) => {
                let status = Reason::Internal.status(format!(
                    "oracle returned {} timestamps for {}",
                    answer.count,
                    batch.len()
                ));
                for waiter in batch.drain(..) {
                    let _ = waiter.send(Err(status.clone()));
                }
            }
            Err(status) => {
                for waiter in batch.drain(..) {
                    let _ = waiter.send(Err(status.clone()));
                }
            }
        }
    }
}
