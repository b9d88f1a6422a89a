//! Raft transport: carries raft-rs messages between nodes over gRPC (`wallet.v1.Raft/Send`).
//!
//! One sender task per peer node owns one HTTP/2 channel to it. Replicas hand messages over without
//! waiting; the task batches everything queued for the peer (all shards together, up to
//! [`BATCH_MESSAGES_MAX`]) into one request. A failed send is reported to the replicas involved
//! (`report_unreachable`, and `report_snapshot(Failure)` for snapshots) so raft-rs probes again;
//! messages beyond a full queue are dropped, which Raft tolerates by resending.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;
use wallet_proto::v1::raft_client::RaftClient;
use wallet_proto::v1::{RaftBatch, RaftEnvelope};

use crate::replica::{ReplicaHandle, ReplicaMsg};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 16_384;
/// Messages carried by one request at most.
pub const BATCH_MESSAGES_MAX: usize = 4096;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The replicas of this node by shard id, set once at start.
pub type Registry = Arc<OnceLock<HashMap<u64, ReplicaHandle>>>;

/// Hands Raft messages to the peer sender tasks. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    peers: Arc<HashMap<u64, mpsc::Sender<(u64, Message)>>>,
}

impl Transport {
    /// Starts one sender task per peer (`node id → address`).
    pub fn start(node_id: u64, peers: &[(u64, String)], registry: Registry) -> Transport {
        let mut senders = HashMap::new();
        for (peer_id, address) in peers {
            if *peer_id == node_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
            senders.insert(*peer_id, tx);
            tokio::spawn(peer_sender(
                node_id,
                *peer_id,
                address.clone(),
                rx,
                registry.clone(),
            ));
        }
        Transport {
            peers: Arc::new(senders),
        }
    }

    /// Queues messages of one shard for their peers; never waits.
    pub fn send(&self, shard_id: u64, messages: Vec<Message>) {
        for message in messages {
            match self.peers.get(&message.to) {
                Some(peer) => {
                    if peer.try_send((shard_id, message)).is_err() {
                        tracing::debug!(shard_id, "peer queue full, dropped a raft message");
                    }
                }
                None => tracing::warn!(shard_id, to = message.to, "message to an unknown node"),
            }
        }
    }
}

async fn peer_sender(
    node_id: u64,
    peer_id: u64,
    address: String,
    mut queue: mpsc::Receiver<(u64, Message)>,
    registry: Registry,
) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(SEND_TIMEOUT)
            .tcp_nodelay(true),
        Err(e) => {
            tracing::error!(peer_id, %address, error = %e, "bad peer address; not sending to it");
            return;
        }
    };
    let mut client = RaftClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(wallet_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(wallet_proto::MESSAGE_BYTES_MAX);
    let mut pending = Vec::with_capacity(BATCH_MESSAGES_MAX);
    while let Some(first) = queue.recv().await {
        pending.push(first);
        while pending.len() < BATCH_MESSAGES_MAX {
            match queue.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let mut snapshots = Vec::new();
        let mut shards = BTreeSet::new();
        let messages = pending
            .drain(..)
            .map(|(shard_id, message)| {
                shards.insert(shard_id);
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    snapshots.push(shard_id);
                }
                RaftEnvelope {
                    shard_id,
                    message: message.write_to_bytes().unwrap_or_default(),
                }
            })
            .collect();
        let batch = RaftBatch {
            from_node: node_id,
            messages,
        };
        let result = client.send(batch).await;
        let Some(replicas) = registry.get() else {
            continue;
        };
        let report = |shard_id: &u64, msg: ReplicaMsg| {
            if let Some(replica) = replicas.get(shard_id) {
                let _ = replica.inbox.try_send(msg);
            }
        };
        match result {
            Ok(_) => {
                for shard_id in &snapshots {
                    report(
                        shard_id,
                        ReplicaMsg::SnapshotReport(peer_id, SnapshotStatus::Finish),
                    );
                }
            }
            Err(status) => {
                tracing::debug!(peer_id, error = %status.message(), "raft send failed");
                for shard_id in &shards {
                    report(shard_id, ReplicaMsg::Unreachable(peer_id));
                }
                for shard_id in &snapshots {
                    report(
                        shard_id,
                        ReplicaMsg::SnapshotReport(peer_id, SnapshotStatus::Failure),
                    );
                }
                // Do not spin on a dead peer: the queue keeps filling and dropping meanwhile.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Decodes an inbound batch and hands each message to its replica. Messages for shards this node
/// does not host, or that do not decode, are dropped and counted.
pub fn deliver(registry: &Registry, batch: RaftBatch) -> usize {
    let Some(replicas) = registry.get() else {
        return 0;
    };
    let mut dropped = 0;
    for envelope in batch.messages {
        let Some(replica) = replicas.get(&envelope.shard_id) else {
            dropped += 1;
            continue;
        };
        match Message::parse_from_bytes(&envelope.message) {
            Ok(message) => {
                if replica
                    .inbox
                    .try_send(ReplicaMsg::Raft(Box::new(message)))
                    .is_err()
                {
                    dropped += 1;
                }
            }
            Err(_) => dropped += 1,
        }
    }
    dropped
}
