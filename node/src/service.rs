//! The node's gRPC services: `wallet.v1.Shard` (commands and reads from routers, status) and
//! `wallet.v1.Raft` (messages from peer nodes).
//!
//! Before a command reaches Raft the node checks what it can check alone: that it hosts the shard
//! and that the shard owns the command's accounts (`WRONG_SHARD` otherwise, nothing proposed, so a
//! stale router cannot write to the wrong place), then stamps the proposal time. Answers wait for
//! the replica at most [`REQUEST_TIMEOUT`]; a timeout is `UNAVAILABLE`, safe to retry by id (G4).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use wallet_proto::reason::{Reason, Refusal};
use wallet_proto::topology::Ring;
use wallet_proto::topology::META_GROUP_ID;
use wallet_proto::v1::{
    command::Op, shard_read::Query, BatchOutcome, Command, NodeStatus, Outcome, RaftAck, RaftBatch,
    ReadResult, Rejection, ReplicaStatus, ShardBatch, ShardCommand, ShardRead, SnapshotChunk,
    StatusRequest, TsoRequest, TsoResponse,
};

use crate::inbox::{ReplicaHandle, ReplicaMsg};
use crate::state_machine::two_phase::FORGET_TRANSFERS_MAX;
use crate::transport::{self, Registry};
use crate::ts_bound::TsBound;
use std::sync::Arc;
use wallet_shard_client::shards::Shards;

/// How long a command or read may wait for its replica.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest message of a refusal carried by an `AbortDebit` (it is stored as an outcome).
pub const REFUSAL_MESSAGE_MAX: usize = 1024;

/// Implements both services over this node's replicas.
#[derive(Clone)]
pub struct NodeService {
    node_id: u64,
    ring: Ring,
    registry: Registry,
    ts_bound: Arc<TsBound>,
    snapshots: crate::snapshot_file::SnapshotDir,
    /// Turns true when the node starts shutting down: inbound Raft streams then end, or the
    /// server's graceful shutdown would wait for them for ever.
    closing: tokio::sync::watch::Receiver<bool>,
}

impl NodeService {
    pub fn new(
        node_id: u64,
        ring: Ring,
        registry: Registry,
        shards: Arc<Shards>,
        snapshots: crate::snapshot_file::SnapshotDir,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> NodeService {
        NodeService {
            node_id,
            ring,
            registry,
            ts_bound: Arc::new(TsBound::new(shards)),
            snapshots,
            closing,
        }
    }

    /// Shards whose replica on this node currently leads.
    pub fn led_shards(&self) -> Vec<u64> {
        self.replicas()
            .map(|r| {
                r.values()
                    .filter(|h| h.status().is_leader)
                    .map(|h| h.shard_id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The published status of every replica this node hosts, by shard id (none while starting).
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        let mut statuses: Vec<_> = self
            .replicas()
            .map(|r| r.values().map(|h| h.status()).collect())
            .unwrap_or_default();
        statuses.sort_by_key(|s| s.shard_id);
        statuses
    }

    fn replicas(&self) -> Result<&HashMap<u64, ReplicaHandle>, Status> {
        self.registry
            .get()
            .ok_or_else(|| Reason::Unavailable.status("node is starting"))
    }

    fn replica(&self, shard_id: u64) -> Result<&ReplicaHandle, Status> {
        self.replicas()?.get(&shard_id).ok_or_else(|| {
            Reason::WrongShard.status(format!(
                "node {} hosts no replica of shard {shard_id}",
                self.node_id
            ))
        })
    }

    fn check_owner(&self, shard_id: u64, account_id: &str) -> Result<(), Status> {
        let owner = self.ring.shard_of(account_id);
        if owner != shard_id {
            return Err(Reason::WrongShard.status(format!(
                "account {account_id} belongs to shard {owner}, not {shard_id}"
            )));
        }
        Ok(())
    }

    /// What the node checks alone before a command reaches Raft: it hosts the shard, the shard
    /// owns the command's accounts, an abort's refusal is well formed, and the timestamps are ones
    /// a router could have (G9).
    async fn admit(&self, shard_id: u64, command: &Command) -> Result<(), Status> {
        match &command.op {
            Some(Op::CreateAccount(c)) => self.check_owner(shard_id, &c.account_id)?,
            Some(Op::CreateAccounts(batch)) => {
                if batch.accounts.len() > wallet_proto::TRANSFER_BATCH_MAX {
                    return Err(Reason::InvalidArgument.status(format!(
                        "at most {} accounts in one command",
                        wallet_proto::TRANSFER_BATCH_MAX
                    )));
                }
                for c in &batch.accounts {
                    self.check_owner(shard_id, &c.account_id)?;
                }
            }
            Some(Op::Deposit(d)) => self.check_owner(shard_id, &d.account_id)?,
            Some(Op::Withdraw(w)) => self.check_owner(shard_id, &w.account_id)?,
            Some(Op::CloseAccount(r) | Op::FreezeAccount(r) | Op::UnfreezeAccount(r)) => {
                self.check_owner(shard_id, &r.account_id)?
            }
            // The payee may live on another shard (a cross-shard hold).
            Some(Op::Authorize(a)) => self.check_owner(shard_id, &a.from_account_id)?,
            Some(Op::HoldPromised(h)) => {
                self.check_owner(shard_id, &h.from_account_id)?;
                check_stored_refusal(h.refusal.as_ref())?;
            }
            Some(Op::Capture(c)) => self.check_owner(shard_id, &c.from_account_id)?,
            Some(Op::Void(v)) => self.check_owner(shard_id, &v.from_account_id)?,
            Some(Op::ExpireHolds(_)) => {}
            Some(Op::Transfer(t)) => {
                self.check_owner(shard_id, &t.from_account_id)?;
                self.check_owner(shard_id, &t.to_account_id)?;
            }
            Some(Op::PrepareDebit(p)) => {
                let t = p.transfer.as_ref();
                self.check_owner(shard_id, t.map_or("", |t| &t.from_account_id))?;
            }
            Some(Op::PrepareCredit(p)) => {
                let t = p.transfer.as_ref();
                self.check_owner(shard_id, t.map_or("", |t| &t.to_account_id))?;
            }
            Some(Op::AbortDebit(s)) => {
                self.check_owner(shard_id, &s.account_id)?;
                check_stored_refusal(s.refusal.as_ref())?;
            }
            Some(Op::ChainDecide(d)) => {
                let chain = d.chain.as_ref();
                self.check_owner(shard_id, chain.map_or("", |c| &c.account_id))?;
                check_stored_refusal(d.refusal.as_ref())?;
            }
            Some(Op::CommitDebit(s) | Op::CommitCredit(s) | Op::AbortCredit(s)) => {
                self.check_owner(shard_id, &s.account_id)?
            }
            Some(Op::CloseTs(close)) => self.ts_bound.check("close timestamp", close.ts).await?,
            Some(Op::ExtendTso(_)) => {
                return Err(
                    Reason::InvalidArgument.status("ExtendTso is internal to the meta group")
                )
            }
            Some(Op::ForgetTransfers(forget)) => {
                if forget.transfers.len() > FORGET_TRANSFERS_MAX {
                    return Err(Reason::InvalidArgument.status(format!(
                        "at most {FORGET_TRANSFERS_MAX} transfers to forget at once"
                    )));
                }
                for step in &forget.transfers {
                    self.check_owner(shard_id, &step.account_id)?;
                }
            }
            Some(Op::SetRetention(_)) => {
                return Err(Reason::InvalidArgument
                    .status("SetRetention is proposed by a shard's leader only"))
            }
            None => return Err(Reason::InvalidArgument.status("command has no operation")),
        }
        self.ts_bound.check("timestamp", command.ts).await
    }

    async fn ask<T>(
        &self,
        replica: &ReplicaHandle,
        make: impl FnOnce(oneshot::Sender<Result<T, Status>>) -> ReplicaMsg,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, replica.inbox.send(make(tx))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(Reason::Overloaded.status(format!(
                "shard {} replica is not keeping up",
                replica.shard_id
            )));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Reason::Unavailable.status("replica stopped")),
            Err(_) => Err(Reason::Unavailable.status(format!(
                "shard {} did not answer within {REQUEST_TIMEOUT:?}",
                replica.shard_id
            ))),
        }
    }
}

/// A refusal a decision stores as its outcome (an abort's, a chain's): a known code and a short
/// message only.
fn check_stored_refusal(refusal: Option<&Rejection>) -> Result<(), Status> {
    match refusal {
        Some(r) if Reason::parse(&r.reason).is_none() || r.message.len() > REFUSAL_MESSAGE_MAX => {
            Err(Reason::InvalidArgument
                .status("a decision's refusal must carry a reason code and a short message"))
        }
        _ => Ok(()),
    }
}

/// Milliseconds since the epoch on this node's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl wallet_proto::v1::shard_server::Shard for NodeService {
    async fn execute(&self, request: Request<ShardCommand>) -> Result<Response<Outcome>, Status> {
        let ShardCommand { shard_id, command } = request.into_inner();
        let replica = self.replica(shard_id)?;
        let mut command =
            command.ok_or_else(|| Reason::InvalidArgument.status("missing command"))?;
        self.admit(shard_id, &command).await?;
        command.at_ms = now_ms();
        let mut outcomes = self
            .ask(replica, |reply| ReplicaMsg::Propose {
                commands: vec![command],
                reply,
            })
            .await?;
        let outcome = outcomes
            .pop()
            .ok_or_else(|| Reason::Internal.status("no outcome for the command"))?;
        Ok(Response::new(outcome))
    }

    async fn execute_batch(
        &self,
        request: Request<ShardBatch>,
    ) -> Result<Response<BatchOutcome>, Status> {
        let ShardBatch { shard_id, commands } = request.into_inner();
        let replica = self.replica(shard_id)?;
        if commands.len() > wallet_proto::BATCH_COMMANDS_MAX {
            return Err(Reason::InvalidArgument.status(format!(
                "{} commands in one batch; at most {}",
                commands.len(),
                wallet_proto::BATCH_COMMANDS_MAX
            )));
        }
        let at_ms = now_ms();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; commands.len()];
        let mut admitted = Vec::with_capacity(commands.len());
        let mut slots = Vec::with_capacity(commands.len());
        for (slot, mut command) in commands.into_iter().enumerate() {
            match self.admit(shard_id, &command).await {
                Ok(()) => {
                    command.at_ms = at_ms;
                    admitted.push(command);
                    slots.push(slot);
                }
                Err(status) => outcomes[slot] = Some(Refusal::of_status(&status).into()),
            }
        }
        if !admitted.is_empty() {
            let applied = self
                .ask(replica, |reply| ReplicaMsg::Propose {
                    commands: admitted,
                    reply,
                })
                .await?;
            if applied.len() != slots.len() {
                return Err(Reason::Internal.status("outcomes do not match the commands"));
            }
            for (slot, outcome) in slots.into_iter().zip(applied) {
                outcomes[slot] = Some(outcome);
            }
        }
        Ok(Response::new(BatchOutcome {
            outcomes: outcomes
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
        }))
    }

    async fn read(&self, request: Request<ShardRead>) -> Result<Response<ReadResult>, Status> {
        let ShardRead { shard_id, query } = request.into_inner();
        let replica = self.replica(shard_id)?;
        let query = query.ok_or_else(|| Reason::InvalidArgument.status("missing query"))?;
        match &query {
            Query::Account(a) => self.check_owner(shard_id, &a.account_id)?,
            Query::History(h) => self.check_owner(shard_id, &h.account_id)?,
            Query::Transfer(t) => self.check_owner(shard_id, &t.from_account_id)?,
            Query::Hold(h) => self.check_owner(shard_id, &h.from_account_id)?,
            Query::Holds(h) => self.check_owner(shard_id, &h.account_id)?,
            Query::NextHoldExpiry(_) => {}
            Query::SnapshotAt(at) => {
                if !at.account_id.is_empty() {
                    self.check_owner(shard_id, &at.account_id)?;
                }
                self.ts_bound.check("snapshot timestamp", at.ts).await?;
            }
            Query::AccountsAt(at) => {
                if at.limit == 0 || at.limit > wallet_proto::ACCOUNTS_PAGE_MAX {
                    return Err(Reason::InvalidArgument.status(format!(
                        "a page holds 1 to {} accounts",
                        wallet_proto::ACCOUNTS_PAGE_MAX
                    )));
                }
                self.ts_bound.check("snapshot timestamp", at.ts).await?;
            }
            Query::Stuck(_) | Query::Settling(_) => {}
            Query::IntentStates(asked) => {
                if asked.intents.len() > FORGET_TRANSFERS_MAX {
                    return Err(Reason::InvalidArgument
                        .status(format!("at most {FORGET_TRANSFERS_MAX} intents per query")));
                }
                for intent in &asked.intents {
                    self.check_owner(shard_id, &intent.credit_account_id)?;
                }
            }
        }
        let result = self
            .ask(replica, |reply| ReplicaMsg::Read { query, reply })
            .await?;
        Ok(Response::new(result))
    }

    async fn tso(&self, request: Request<TsoRequest>) -> Result<Response<TsoResponse>, Status> {
        let count = request.into_inner().count;
        let replica = self.replica(META_GROUP_ID)?;
        let answer = self
            .ask(replica, |reply| ReplicaMsg::Tso { count, reply })
            .await?;
        Ok(Response::new(answer))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<NodeStatus>, Status> {
        self.replicas()?;
        Ok(Response::new(NodeStatus {
            node_id: self.node_id,
            replicas: self.statuses(),
        }))
    }
}

#[tonic::async_trait]
impl wallet_proto::v1::raft_server::Raft for NodeService {
    async fn send(&self, request: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let caller = request.extensions().get::<transport::CallerNode>().copied();
        transport::deliver(&self.registry, request.into_inner(), caller);
        Ok(Response::new(RaftAck {}))
    }

    async fn stream(
        &self,
        request: Request<tonic::Streaming<RaftBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        let caller = request.extensions().get::<transport::CallerNode>().copied();
        transport::receive_stream(
            &self.registry,
            request.into_inner(),
            caller,
            self.closing.clone(),
        )
        .await?;
        Ok(Response::new(RaftAck {}))
    }

    async fn snapshot(
        &self,
        request: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let caller = request.extensions().get::<transport::CallerNode>().copied();
        let bytes = transport::receive_snapshot(
            &self.registry,
            &self.snapshots,
            request.into_inner(),
            caller,
        )
        .await
        .inspect_err(|e| tracing::warn!(error = %e.message(), "snapshot not received"))?;
        tracing::info!(bytes, "snapshot received");
        Ok(Response::new(RaftAck {}))
    }
}
