//! A replica's inbox: what the rest of the node (its services, the transport, the prober) hands
//! to a replica task, the handle they hold on it, and the one thing a replica hands out, its
//! outgoing Raft messages ([`Outbox`]).
//!
//! It sits below the replica, the transport and the services, so that none of them imports the
//! other to talk to it; a test or a simulation can run a replica with an [`Outbox`] of its own.

use std::sync::{Arc, Mutex};

use raft::eraftpb::Message;
use raft::SnapshotStatus;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use wallet_proto::reason::{Reason, LEADER_HINT_KEY};
use wallet_proto::v1::{
    shard_read::Query, Command, Outcome, ReadResult, ReplicaStatus, TsoResponse,
};

/// Where a replica's outgoing Raft messages go: the node's transport, or whatever a test wires in.
/// Sending never waits; a message that cannot be queued is dropped (Raft resends).
pub trait Outbox: Send + 'static {
    fn send(&self, shard_id: u64, messages: Vec<Message>);
}

/// Where the outcomes of proposed commands go.
pub type BatchReply = oneshot::Sender<Result<Vec<Outcome>, Status>>;

/// What a replica's inbox carries.
pub enum ReplicaMsg {
    Raft(Box<Message>),
    /// Commands to propose, answered with one outcome each, in order. Every command waiting at
    /// the end of a loop turn goes into one Raft entry (up to the replica's `ENTRY_COMMANDS_MAX`).
    Propose {
        commands: Vec<Command>,
        reply: BatchReply,
    },
    Read {
        query: Query,
        reply: oneshot::Sender<Result<ReadResult, Status>>,
    },
    Unreachable(u64),
    SnapshotReport(u64, SnapshotStatus),
    /// Meta group only: timestamps from the oracle.
    Tso {
        count: u32,
        reply: oneshot::Sender<Result<TsoResponse, Status>>,
    },
    /// A probing replica's peers answered (a majority of the other replicas): the highest term
    /// and commit index they reported.
    Probed {
        term: u64,
        commit: u64,
    },
    /// A probing replica still waits for its peers: why, for the status view.
    ProbeWaiting(String),
}

/// A handle on a running replica: its inbox and its last published status.
#[derive(Clone)]
pub struct ReplicaHandle {
    pub shard_id: u64,
    pub inbox: mpsc::Sender<ReplicaMsg>,
    pub status: Arc<Mutex<ReplicaStatus>>,
}

impl ReplicaHandle {
    /// A copy of the replica's last published status.
    pub fn status(&self) -> ReplicaStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A `NOT_LEADER` status with the leader hint (0 = unknown).
pub fn not_leader(shard_id: u64, leader_id: u64) -> Status {
    let mut status = Reason::NotLeader.status(format!(
        "this node does not lead shard {shard_id} (leader hint: {leader_id})"
    ));
    if let Ok(value) = leader_id.to_string().parse() {
        status.metadata_mut().insert(LEADER_HINT_KEY, value);
    }
    status
}
