//! The Raft loop of one shard replica: one task owning one `RawNode`, its store and state machine.
//!
//! Everything that touches the replica arrives through its inbox (Raft messages, proposals, reads,
//! transport reports) and is handled by this one task, so no lock guards the state machine. Each
//! turn of the loop drains the inbox (up to [`INBOX_DRAIN_MAX`] messages: many proposals ride one
//! Ready), then handles the Ready in raft-rs's order (DESIGN §4):
//! send leader messages → install snapshot → apply committed entries → append entries + HardState
//! → **one fsync** → send persisted messages → advance → apply the LightReady's entries.
//!
//! A proposal is answered when its entry is applied here, which happens only after a majority
//! fsynced it (G3). A leader that steps down fails its pending proposals with `NOT_LEADER`; their
//! entries may still commit, which is safe because every command applies once by its id (G4).
//! Reads use ReadIndex, batched: all reads that arrive in one turn share one read index.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::Storage;
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use wallet_proto::reason::Reason;
use wallet_proto::topology::META_GROUP_ID;
use wallet_proto::v1::{
    command::Op, outcome, read_result, shard_read::Query, AccountsPage, Command, ExtendTso,
    Outcome, ReadResult, ReplicaPhase, ReplicaStatus, SetRetention, TsoResponse, TsoWindow,
};

use crate::inbox::{not_leader, BatchReply, Outbox, ReplicaHandle, ReplicaMsg};
use crate::mark::{Mark, Marks};
use crate::shard_store::{ShardStore, StoreError};
use crate::state_machine::StateMachine;
use crate::tso::Oracle;

/// One Raft tick.
pub const TICK: Duration = Duration::from_millis(100);
/// Messages handled per loop turn before the Ready is processed.
pub const INBOX_DRAIN_MAX: usize = 4096;
/// Capacity of a replica's inbox; Raft messages beyond it are dropped (Raft resends).
pub const INBOX_CAPACITY: usize = 16_384;

/// A replica's log is compacted once its entries hold more than this many payload bytes (with
/// coalesced entries, an entry count alone would let the log in memory grow with batch size).
pub const LOG_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most commands one Raft entry carries (a proposal's commands are never split).
pub const ENTRY_COMMANDS_MAX: usize = 8192;

/// Tunables of a replica.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Build a snapshot and compact the log every this many applied entries.
    pub compact_every: u64,
    /// The request retention window this node's cluster file asks for; as leader, the replica
    /// proposes it (`SetRetention`) when the replicated window differs.
    pub retention_window_ms: i64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            compact_every: 10_000,
            retention_window_ms: wallet_proto::topology::REQUEST_RETENTION_SECS_DEFAULT as i64
                * 1000,
        }
    }
}

/// How often a leader proposes the configured retention window while the replicated one differs.
const RETENTION_PROPOSAL_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a failed snapshot build the next one is tried.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// The name of a Raft role, as `wallet-cluster status` shows it.
pub fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

/// A replica ready to run, with its handle and inbox.
pub struct OpenedReplica {
    pub replica: Replica,
    pub handle: ReplicaHandle,
    pub inbox: mpsc::Receiver<ReplicaMsg>,
    /// Its store was empty (new, or wiped).
    pub pristine: bool,
}

/// Proposal id of the oracle's own `ExtendTso` entries (no caller waits for them).
const TSO_PROPOSAL: u64 = u64::MAX;
/// Proposal id of a leader's own `SetRetention` entries (no caller waits for them either).
const RETENTION_PROPOSAL: u64 = u64::MAX - 1;

/// What waits for a read index: a read, or a batch of timestamps. The oracle hands timestamps out
/// only after a quorum confirmed that this replica still led when they were asked for (G6): a
/// leader cut off from its majority, or one just resumed from a pause, never hands out timestamps
/// below those a newer leader already served.
enum Waiter {
    Read(Query, oneshot::Sender<Result<ReadResult, Status>>),
    Tso(u32, oneshot::Sender<Result<TsoResponse, Status>>),
}

impl Waiter {
    fn fail(self, status: Status) {
        match self {
            Waiter::Read(_, reply) => {
                let _ = reply.send(Err(status));
            }
            Waiter::Tso(_, reply) => {
                let _ = reply.send(Err(status));
            }
        }
    }

    fn abandoned(&self) -> bool {
        match self {
            Waiter::Read(_, reply) => reply.is_closed(),
            Waiter::Tso(_, reply) => reply.is_closed(),
        }
    }
}

type ReadReply = Waiter;

/// The replica task's state.
pub struct Replica {
    shard_id: u64,
    node_id: u64,
    config: ReplicaConfig,
    raw: RawNode<crate::shard_store::LogStore>,
    store: ShardStore,
    state_machine: StateMachine,
    applied: u64,
    outbox: Box<dyn Outbox>,
    status: Arc<Mutex<ReplicaStatus>>,
    next_proposal: u64,
    /// Commands handed in this turn, proposed together at its end, and who waits for them.
    pending: Vec<Command>,
    pending_replies: Vec<(usize, BatchReply)>,
    /// Proposed entries (by proposal id): how many commands each caller put in, in order.
    proposals: HashMap<u64, Vec<(usize, BatchReply)>>,
    next_read: u64,
    read_batch: Vec<ReadReply>,
    reads_awaiting_index: HashMap<u64, Vec<ReadReply>>,
    reads_awaiting_apply: Vec<(u64, Vec<ReadReply>)>,
    /// While a replica rebuilds after its data was lost, it must not vote (its empty log could
    /// elect a leader missing entries it had acknowledged): it abstains until it has applied this
    /// index, the highest commit its peers reported when it started. 0 when not recovering.
    recover_to: u64,
    /// The timestamp oracle, on the meta group's replicas only.
    oracle: Option<Oracle>,
    /// When this replica last proposed the configured retention window.
    retention_proposed: Option<Instant>,
    /// When building a snapshot file last failed (it is tried again [`SNAPSHOT_RETRY`] later).
    snapshot_failed_at: Option<Instant>,
    /// While its store is empty and a majority of the other replicas has not yet told it their
    /// term and commit: why it waits. Such a replica takes no part in Raft at all (G9).
    probing: Option<String>,
    /// Node ids of the group's voters (this node included).
    members: Vec<u64>,
    /// Why its store was set aside at start, if it was (shown in its status).
    set_aside: Option<String>,
    marks: Arc<Marks>,
    last_mark: Option<Mark>,
    /// Its own inbox, and the node's prober, for a probe after a set-aside while running.
    inbox: mpsc::Sender<ReplicaMsg>,
    prober: mpsc::UnboundedSender<crate::probe::Pending>,
    /// The peers' answer, applied at the next turn.
    probed: Option<(u64, u64)>,
    /// The last leader raft-rs reported (0: none yet), to count changes to another leader (an
    /// election that ends with the same leader is none).
    known_leader: u64,
    raft_config: raft::Config,
    logger: slog::Logger,
}

impl Replica {
    /// Opens the replica's store and creates its RawNode.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        db: &Arc<crate::group_commit::GroupCommit>,
        marks: &Arc<Marks>,
        prober: &mpsc::UnboundedSender<crate::probe::Pending>,
        shard_id: u64,
        node_id: u64,
        voters: &[u64],
        state_machine: StateMachine,
        outbox: Box<dyn Outbox>,
        config: ReplicaConfig,
    ) -> Result<OpenedReplica, Box<dyn std::error::Error>> {
        let mark = marks.read(shard_id);
        let (recovered, set_aside) =
            ShardStore::open_checked(db, shard_id, voters, state_machine, mark)?;
        // The mark checked at open is what the store holds durably: the next one written before
        // an install claims no more commit than it (see `write_mark_without_log`).
        let last_mark = if set_aside.is_some() {
            marks.clear(shard_id)?;
            None
        } else {
            mark
        };
        let pristine = recovered.pristine;
        let raft_config = raft::Config {
            id: node_id,
            election_tick: 10,
            heartbeat_tick: 3,
            applied: recovered.applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config.validate()?;
        let logger = crate::raft_log::logger(shard_id, node_id);
        let raw = RawNode::new(&raft_config, recovered.store.log(), &logger)?;
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        // What it recovered, published before its task first runs: a peer probing this node
        // must never read an unset status as "term 0, commit 0" (G9).
        let recovered_state = recovered.store.log().hard_state();
        let status = Arc::new(Mutex::new(ReplicaStatus {
            shard_id,
            term: recovered_state.term,
            commit_index: recovered_state.commit,
            applied_index: recovered.applied,
            phase: if pristine {
                ReplicaPhase::Probing
            } else {
                ReplicaPhase::Serving
            } as i32,
            ..Default::default()
        }));
        // Proposal and read ids start at the clock so a restarted node never reuses one.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let replica = Replica {
            shard_id,
            node_id,
            config,
            raw,
            store: recovered.store,
            state_machine: recovered.state_machine,
            applied: recovered.applied,
            outbox,
            status: status.clone(),
            next_proposal: start,
            pending: Vec::new(),
            pending_replies: Vec::new(),
            proposals: HashMap::new(),
            next_read: start,
            read_batch: Vec::new(),
            reads_awaiting_index: HashMap::new(),
            reads_awaiting_apply: Vec::new(),
            recover_to: 0,
            oracle: (shard_id == META_GROUP_ID).then(Oracle::default),
            retention_proposed: None,
            snapshot_failed_at: None,
            probing: pristine.then(|| "waiting for the other replicas to answer".to_string()),
            set_aside,
            marks: marks.clone(),
            last_mark,
            inbox: inbox_tx.clone(),
            prober: prober.clone(),
            probed: None,
            known_leader: 0,
            members: voters.to_vec(),
            raft_config,
            logger,
        };
        let handle = ReplicaHandle {
            shard_id,
            inbox: inbox_tx,
            status,
        };
        Ok(OpenedReplica {
            replica,
            handle,
            inbox: inbox_rx,
            pristine,
        })
    }

    /// Runs the loop until the inbox closes or `stop` fires. A storage failure (I/O error or a
    /// corrupt record) ends the process: a replica must never serve from a store it cannot trust.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<ReplicaMsg>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // A rebuilding replica neither campaigns nor votes: without ticks a follower
                    // never starts an election.
                    if self.probing.is_none() && !self.recovering() {
                        self.raw.tick();
                    }
                    self.forget_abandoned_requests();
                }
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                _ = stop.changed() => break,
            }
            for _ in 0..INBOX_DRAIN_MAX {
                match inbox.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            self.propose_pending();
            self.start_read_batch();
            let failed = match self.turn().await {
                // A record that fails its check: this replica alone is set aside and rebuilt,
                // the node's other replicas go on serving (G7).
                Err(StoreError::Corrupt(why)) => self.set_aside_in_place(why).err(),
                // sled found one of its own pages corrupt (lazily, on a read): the same.
                Err(StoreError::Sled(e @ sled::Error::Corruption { .. })) => {
                    self.set_aside_in_place(format!("corrupt store: {e}")).err()
                }
                Err(e) => Some(e),
                Ok(()) => None,
            };
            if let Some(e) = failed {
                tracing::error!(shard = self.shard_id, error = %e, "replica storage failed; stopping the node");
                std::process::exit(70);
            }
        }
        if let Err(e) = self.store.checkpoint_now() {
            tracing::error!(shard = self.shard_id, error = %e, "final checkpoint failed");
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(shard = self.shard_id, error = %e, "final flush failed");
        }
        tracing::info!(shard = self.shard_id, "replica stopped");
    }

    async fn turn(&mut self) -> Result<(), StoreError> {
        if let Some((term, commit)) = self.probed.take() {
            self.finish_probe(term, commit).await?;
        }
        if self.probing.is_some() {
            self.publish_status();
            return Ok(());
        }
        if self.raw.has_ready() {
            self.on_ready().await?;
        }
        self.serve_reads()?;
        self.serve_timestamps();
        self.propose_retention();
        self.maybe_snapshot().await?;
        self.publish_status();
        Ok(())
    }

    fn handle(&mut self, msg: ReplicaMsg) {
        if self.probing.is_some() {
            return self.handle_while_probing(msg);
        }
        match msg {
            ReplicaMsg::Raft(message) => {
                let lost_from = Self::lost_entries_claim(&message, self.last_index());
                let Some(message) = self.screen(*message) else {
                    return;
                };
                if let Err(e) = self.raw.step(message) {
                    tracing::debug!(shard = self.shard_id, error = %e, "raft step refused a message");
                }
                if let Some((leader, claimed)) = lost_from {
                    self.tell_leader_what_we_have(leader, claimed);
                }
            }
            ReplicaMsg::Propose { commands, reply } => self.take_commands(commands, reply),
            ReplicaMsg::Read { query, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(not_leader(self.shard_id, self.raw.raft.leader_id)));
                } else {
                    self.read_batch.push(Waiter::Read(query, reply));
                }
            }
            ReplicaMsg::Tso { count, reply } => match self.oracle.as_mut() {
                Some(_) if self.raw.raft.state == StateRole::Leader => {
                    match crate::tso::check_count(count) {
                        Ok(()) => self.read_batch.push(Waiter::Tso(count, reply)),
                        Err(status) => {
                            let _ = reply.send(Err(status));
                        }
                    }
                }
                Some(_) => {
                    let _ = reply.send(Err(not_leader(self.shard_id, self.raw.raft.leader_id)));
                }
                None => {
                    let _ = reply.send(Err(Reason::WrongShard
                        .status(format!("shard {} is not the meta group", self.shard_id))));
                }
            },
            ReplicaMsg::Unreachable(to) => self.raw.report_unreachable(to),
            ReplicaMsg::SnapshotReport(to, status) => self.raw.report_snapshot(to, status),
            ReplicaMsg::Probed { .. } | ReplicaMsg::ProbeWaiting(_) => {}
        }
    }

    /// A probing replica drops Raft messages (their senders retry) and refuses work.
    fn handle_while_probing(&mut self, msg: ReplicaMsg) {
        let busy =
            || Reason::Unavailable.status("this replica is rebuilding: it waits for its peers");
        match msg {
            ReplicaMsg::Probed { term, commit } => self.probed = Some((term, commit)),
            ReplicaMsg::ProbeWaiting(note) => self.probing = Some(note),
            ReplicaMsg::Propose { reply, .. } => {
                let _ = reply.send(Err(busy()));
            }
            ReplicaMsg::Read { reply, .. } => {
                let _ = reply.send(Err(busy()));
            }
            ReplicaMsg::Tso { reply, .. } => {
                let _ = reply.send(Err(busy()));
            }
            ReplicaMsg::Raft(_) | ReplicaMsg::Unreachable(_) | ReplicaMsg::SnapshotReport(..) => {}
        }
    }

    /// A record found corrupt while running: the store is set aside and the replica starts over
    /// empty, in place (same inbox, same task), probing its peers like a wiped one. Whatever
    /// waited on it is told to go elsewhere.
    fn set_aside_in_place(&mut self, why: String) -> Result<(), StoreError> {
        // A checkpoint still being written lands before the tree is copied aside (its failure,
        // if the store is what broke, changes nothing: the store is set aside either way).
        let _ = self.store.wait_checkpoint();
        self.step_down(0);
        self.state_machine.clear();
        let fresh = self.state_machine.fresh();
        let machine = std::mem::replace(&mut self.state_machine, fresh);
        let recovered = ShardStore::set_aside(
            &self.store.group_commit().clone(),
            self.shard_id,
            &self.members,
            machine,
            &why,
        )?;
        self.marks
            .clear(self.shard_id)
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        self.last_mark = None;
        self.store = recovered.store;
        self.state_machine = recovered.state_machine;
        self.applied = recovered.applied;
        self.raft_config.applied = recovered.applied;
        self.raw = RawNode::new(&self.raft_config, self.store.log(), &self.logger)
            .map_err(|e| StoreError::Raft(format!("after setting aside: {e}")))?;
        self.recover_to = 0;
        self.probed = None;
        self.probing = Some("set aside while running: waiting for the other replicas".into());
        self.set_aside = Some(why);
        let pending = crate::probe::Pending {
            shard_id: self.shard_id,
            others: self
                .members
                .iter()
                .copied()
                .filter(|id| *id != self.node_id)
                .collect(),
            inbox: self.inbox.clone(),
        };
        if self.prober.send(pending).is_err() {
            return Err(StoreError::Raft("the prober has stopped".into()));
        }
        Ok(())
    }

    /// The peers answered: adopt the highest term they reported (so no leader of an older term,
    /// which this replica may have voted against or acknowledged before it lost its data, can
    /// use it), and rebuild up to the highest commit they reported before voting or acknowledging
    /// anything new. The RawNode is made afresh from the stored state: it has done nothing yet.
    async fn finish_probe(&mut self, term: u64, commit: u64) -> Result<(), StoreError> {
        if term > 0 {
            let hard_state = raft::eraftpb::HardState {
                term,
                ..Default::default()
            };
            self.store.append(&[], Some(&hard_state))?;
            self.store.flush().await?;
        }
        self.raw = RawNode::new(&self.raft_config, self.store.log(), &self.logger)
            .map_err(|e| StoreError::Raft(format!("after probing: {e}")))?;
        self.probing = None;
        tracing::info!(
            shard = self.shard_id,
            term,
            commit,
            "peers answered; taking part in raft again"
        );
        self.recover_to(commit);
        Ok(())
    }

    /// Records what is durable now (after a flush), if it changed: see [`crate::mark`].
    /// The current mark with no log entry claimed (term, vote and commit still checked). Called
    /// without a flush first: the term and vote in memory are durable (a Ready that changes them
    /// is synced), but a commit index alone is not synced, so the mark keeps the last durable
    /// one — claiming more would set the store aside after a crash that lost only that commit.
    fn write_mark_without_log(&mut self) -> Result<(), StoreError> {
        let log = self.store.log();
        let durable = Mark::of(&log.hard_state(), &log);
        let mark = Mark {
            last_index: 0,
            last_term: 0,
            commit: self.last_mark.map_or(0, |m| m.commit).min(durable.commit),
            ..durable
        };
        self.marks
            .write(self.shard_id, &mark)
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        self.last_mark = Some(mark);
        Ok(())
    }

    fn write_mark(&mut self) -> Result<(), StoreError> {
        let log = self.store.log();
        let mark = Mark::of(&log.hard_state(), &log);
        if self.last_mark != Some(mark) {
            self.marks
                .write(self.shard_id, &mark)
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
            self.last_mark = Some(mark);
        }
        Ok(())
    }

    /// Sends Raft messages to peers. While rebuilding, an acknowledgement never claims more than
    /// what was already committed when the replica started (`recover_to`): its entries beyond
    /// that do not count towards any quorum until it has caught up (G9).
    fn send(&self, mut messages: Vec<Message>) {
        if self.recovering() {
            for m in &mut messages {
                if m.get_msg_type() == MessageType::MsgAppendResponse
                    && !m.reject
                    && m.index > self.recover_to
                {
                    m.index = self.recover_to;
                }
            }
        }
        self.outbox.send(self.shard_id, messages);
    }

    /// Whether this replica still rebuilds after a data loss.
    pub fn recovering(&self) -> bool {
        self.recover_to > self.applied
    }

    /// Starts the replica in recovery: no votes until it has applied `commit`.
    pub fn recover_to(&mut self, commit: u64) {
        if commit > self.applied {
            tracing::warn!(
                shard = self.shard_id,
                commit,
                "replica has no data but its peers do: rebuilding from them, not voting until caught up"
            );
            self.recover_to = commit;
        }
    }

    fn last_index(&self) -> u64 {
        self.store.log().last_index().unwrap_or(0)
    }

    /// A heartbeat whose commit is beyond our log means its leader believes we hold entries we do
    /// not have (our data was lost): returns (leader, the commit it claimed).
    fn lost_entries_claim(message: &Message, last_index: u64) -> Option<(u64, u64)> {
        (message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > last_index)
            .then_some((message.from, message.commit))
    }

    /// Answers such a leader with an append rejection carrying our real last index, so that it
    /// resets our progress (see `screen`) and sends us what we miss (entries or a snapshot).
    fn tell_leader_what_we_have(&mut self, leader: u64, claimed: u64) {
        let mut reply = Message::default();
        reply.set_msg_type(MessageType::MsgAppendResponse);
        reply.to = leader;
        reply.from = self.node_id;
        reply.term = self.raw.raft.term;
        reply.reject = true;
        reply.index = claimed;
        reply.reject_hint = self.last_index();
        self.outbox.send(self.shard_id, vec![reply]);
    }

    /// Adjusts or drops inbound Raft messages around a replica that lost its data (raft-rs assumes
    /// storage is never lost):
    /// - a recovering replica ignores vote requests;
    /// - a heartbeat's commit is clamped to the local log (raft-rs would panic on a commit beyond
    ///   it; the entries arrive by append or snapshot next);
    /// - a leader whose follower rejects an append with a hint below what it had acknowledged
    ///   resets that follower's progress, so it is probed and rebuilt from its actual log.
    fn screen(&mut self, mut message: Message) -> Option<Message> {
        // Only the group's other members talk to this replica, and only to it.
        if message.to != self.node_id
            || message.from == self.node_id
            || !self.members.contains(&message.from)
        {
            return None;
        }
        match message.get_msg_type() {
            // raft-rs takes a snapshot only once its file arrived whole (checked against its
            // descriptor on receipt, see `transport`): otherwise it would believe it has it. A
            // MsgSnapshot from anywhere else is dropped; the leader sends it again.
            MessageType::MsgSnapshot => {
                if let Err(e) = self.store.has_received(message.get_snapshot()) {
                    tracing::warn!(shard = self.shard_id, from = message.from, error = %e, "dropped a snapshot whose file is not here");
                    return None;
                }
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote if self.recovering() => {
                return None;
            }
            MessageType::MsgHeartbeat => {
                let last = self.last_index();
                if message.commit > last {
                    message.commit = last;
                }
            }
            MessageType::MsgAppendResponse if message.reject => {
                if let Some(progress) = self.raw.raft.mut_prs().get_mut(message.from) {
                    if message.reject_hint < progress.matched {
                        tracing::warn!(
                            shard = self.shard_id,
                            follower = message.from,
                            acknowledged = progress.matched,
                            has = message.reject_hint,
                            "follower lost log entries it had acknowledged; rebuilding it"
                        );
                        progress.matched = message.reject_hint;
                        progress.become_probe();
                        progress.next_idx = message.reject_hint + 1;
                    }
                }
            }
            _ => {}
        }
        Some(message)
    }

    /// Queues commands for the entry proposed at the end of this turn.
    fn take_commands(&mut self, commands: Vec<Command>, reply: BatchReply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(not_leader(self.shard_id, self.raw.raft.leader_id)));
            return;
        }
        if commands.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        self.pending_replies.push((commands.len(), reply));
        self.pending.extend(commands);
    }

    /// Proposes the commands handed in this turn: as few entries as [`ENTRY_COMMANDS_MAX`] allows,
    /// never splitting one caller's commands (its outcomes come from one entry).
    fn propose_pending(&mut self) {
        if self.pending_replies.is_empty() {
            return;
        }
        let mut commands = std::mem::take(&mut self.pending).into_iter();
        let replies = std::mem::take(&mut self.pending_replies);
        let mut entry_commands = Vec::new();
        let mut entry_replies = Vec::new();
        for (count, reply) in replies {
            if !entry_replies.is_empty() && entry_commands.len() + count > ENTRY_COMMANDS_MAX {
                self.propose_entry(
                    std::mem::take(&mut entry_commands),
                    std::mem::take(&mut entry_replies),
                );
            }
            entry_commands.extend(commands.by_ref().take(count));
            entry_replies.push((count, reply));
        }
        self.propose_entry(entry_commands, entry_replies);
    }

    fn propose_entry(&mut self, commands: Vec<Command>, replies: Vec<(usize, BatchReply)>) {
        if self.raw.raft.state != StateRole::Leader {
            for (_, reply) in replies {
                let _ = reply.send(Err(not_leader(self.shard_id, self.raw.raft.leader_id)));
            }
            return;
        }
        let id = self.next_proposal;
        self.next_proposal = self.next_proposal.wrapping_add(1);
        let count = commands.len();
        match self.propose_with_id(id, commands) {
            Ok(()) => {
                crate::metrics::NODE.entry_commands.observe(count as f64);
                self.proposals.insert(id, replies);
            }
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(Reason::Unavailable
                        .status(format!("shard {} dropped the proposal: {e}", self.shard_id))));
                }
            }
        }
    }

    fn start_read_batch(&mut self) {
        // raft-rs drops a ReadIndex that reaches a leader before it committed an entry of its own
        // term (its first act is to commit an empty one): the batch waits for that instead of
        // timing out.
        if self.read_batch.is_empty() || !self.raw.raft.commit_to_current_term() {
            return;
        }
        let id = self.next_read;
        self.next_read = self.next_read.wrapping_add(1);
        self.raw.read_index(id.to_be_bytes().to_vec());
        let batch = std::mem::take(&mut self.read_batch);
        self.reads_awaiting_index.insert(id, batch);
    }

    async fn on_ready(&mut self) -> Result<(), StoreError> {
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        if let Some(soft) = ready.ss() {
            if soft.leader_id != 0 && soft.leader_id != self.known_leader {
                crate::metrics::NODE
                    .leader_changes
                    .get_or_create(&crate::metrics::ShardLabel {
                        shard: self.shard_id,
                    })
                    .inc();
            }
            if soft.leader_id != 0 {
                self.known_leader = soft.leader_id;
            }
            if soft.raft_state != StateRole::Leader {
                self.step_down(soft.leader_id);
            }
        }
        for read in ready.take_read_states() {
            if read.request_ctx.len() == 8 {
                let mut id = [0u8; 8];
                id.copy_from_slice(&read.request_ctx);
                if let Some(batch) = self.reads_awaiting_index.remove(&u64::from_be_bytes(id)) {
                    self.reads_awaiting_apply.push((read.index, batch));
                }
            }
        }
        if *ready.snapshot() != Snapshot::default() {
            let snapshot = ready.snapshot().clone();
            // The install drops the log, maybe a tail beyond the snapshot: the mark must not
            // claim those entries, or a crash before the next mark would set the store aside.
            self.write_mark_without_log()?;
            self.store
                .install_snapshot(&snapshot, &mut self.state_machine)
                .await?;
            self.applied = snapshot.get_metadata().index;
            tracing::info!(
                shard = self.shard_id,
                index = self.applied,
                "installed snapshot"
            );
        }
        self.apply(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.store.append(ready.entries(), ready.hs())?;
        }
        // A snapshot, entries or a new term or vote must be durable before the Ready's messages
        // go out (raft-rs's `must_sync` covers all three); a HardState that only moves the commit
        // index may reach the disk with the next flush (a restart then re-learns the commit from
        // the leader; applied entries raise it on open).
        if ready.must_sync() {
            self.store.flush().await?;
            self.write_mark()?;
            // `FAILPOINTS=node-after-fsync=return` (with the `failpoints` feature) ends the node
            // between the fsync and the apply of what it made durable: a crash there loses nothing.
            fail::fail_point!("node-after-fsync", |_| {
                tracing::error!(shard = self.shard_id, "failpoint: node exits after fsync");
                std::process::exit(86)
            });
        }
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            self.send(light.take_messages());
        }
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    /// Applies committed entries, stores their effects with the applied index in one batch, then
    /// answers the proposals made here.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let last_index = last.index;
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        for entry in &entries {
            if entry.index <= self.applied {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal if !entry.data.is_empty() => {
                    // `FAILPOINTS=replica-apply=panic` (with the `failpoints` feature): a bug that
                    // panics while applying; the process must end (fail-stop, G9).
                    fail::fail_point!("replica-apply");
                    let outcomes = match crate::entry::decode(&entry.data) {
                        Ok(commands) => commands
                            .iter()
                            .map(|command| self.state_machine.apply(command, &mut writes))
                            .collect(),
                        // Only a node of this cluster proposes: an entry that does not decode
                        // changes nothing on any replica.
                        Err(e) => vec![Reason::InvalidArgument
                            .refuse(format!("undecodable entry: {e}"))
                            .into()],
                    };
                    if let Some(waiting) = self.take_proposal(&entry.context) {
                        replies.push((waiting, outcomes));
                    } else if let Some(outcome::Result::TsoWindow(window)) =
                        outcomes.first().and_then(|o| o.result.as_ref())
                    {
                        self.on_tso_window(entry, window);
                    }
                }
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => {
                    if let Ok(cc) = ConfChange::parse_from_bytes(&entry.data) {
                        if let Ok(cs) = self.raw.apply_conf_change(&cc) {
                            self.store.set_conf_state(&cs)?;
                        }
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    if let Ok(cc) = ConfChangeV2::parse_from_bytes(&entry.data) {
                        if let Ok(cs) = self.raw.apply_conf_change(&cc) {
                            self.store.set_conf_state(&cs)?;
                        }
                    }
                }
            }
        }
        if last_index > self.applied {
            self.applied = last_index;
            writes.extend(self.state_machine.clock_write());
            self.store.write_applied(writes, self.applied)?;
        }
        for (waiting, outcomes) in replies {
            let mut outcomes = outcomes.into_iter();
            for (count, reply) in waiting {
                let mine: Vec<Outcome> = outcomes.by_ref().take(count).collect();
                let answer = if mine.len() == count {
                    Ok(mine)
                } else {
                    Err(Reason::Internal.status("an entry's outcomes do not match its commands"))
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    /// A committed timestamp window is ours to serve from if this node proposed it in its current
    /// term and still leads.
    fn on_tso_window(&mut self, entry: &Entry, window: &TsoWindow) {
        let ours = entry.context.len() == 16
            && entry.context[..8] == self.node_id.to_be_bytes()
            && entry.context[8..] == TSO_PROPOSAL.to_be_bytes();
        if ours && entry.term == self.raw.raft.term && self.raw.raft.state == StateRole::Leader {
            if let Some(oracle) = self.oracle.as_mut() {
                oracle.on_window(window.previous_limit, window.limit);
            }
        }
    }

    fn take_proposal(&mut self, context: &[u8]) -> Option<Vec<(usize, BatchReply)>> {
        if context.len() != 16 || context[..8] != self.node_id.to_be_bytes() {
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&context[8..]);
        self.proposals.remove(&u64::from_be_bytes(id))
    }

    /// Meta group leader: answers timestamp requests the committed window allows, and proposes a
    /// larger window when needed (context: this node + [`TSO_PROPOSAL`], answered by nobody).
    fn serve_timestamps(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let Some(limit) = self.oracle.as_mut().and_then(|o| o.serve(Instant::now())) else {
            return;
        };
        let command = Command {
            request_id: String::new(),
            at_ms: 0,
            ts: 0,
            op: Some(Op::ExtendTso(ExtendTso { limit })),
        };
        if let Err(e) = self.propose_with_id(TSO_PROPOSAL, vec![command]) {
            tracing::debug!(error = %e, "timestamp window proposal dropped; retried later");
        }
    }

    /// A data shard's leader whose cluster file asks for another retention window than the
    /// replicated one proposes it (at most once per [`RETENTION_PROPOSAL_INTERVAL`]; context: this
    /// node + [`RETENTION_PROPOSAL`], answered by nobody). Every replica switches at its entry.
    fn propose_retention(&mut self) {
        let wanted = self.config.retention_window_ms;
        let retention = self.state_machine.retention();
        if self.shard_id == META_GROUP_ID
            || self.raw.raft.state != StateRole::Leader
            || retention.window_ms() == Some(wanted)
            // Not before the shard has a time (it would refuse): its first timestamped command.
            || retention.clock_ms() == 0
            || self
                .retention_proposed
                .is_some_and(|at| at.elapsed() < RETENTION_PROPOSAL_INTERVAL)
        {
            return;
        }
        self.retention_proposed = Some(Instant::now());
        if let Some(current) = retention.window_ms() {
            tracing::warn!(
                shard_id = self.shard_id,
                current,
                wanted,
                "this node's cluster file sets another request retention window than the shard's: \
                 proposing it (keep request_retention_secs the same on every node)"
            );
        }
        let command = Command {
            op: Some(Op::SetRetention(SetRetention { window_ms: wanted })),
            ..Default::default()
        };
        if let Err(e) = self.propose_with_id(RETENTION_PROPOSAL, vec![command]) {
            tracing::debug!(error = %e, "retention window proposal dropped; retried later");
        }
    }

    /// Proposes `commands` as one entry whose context names this node and proposal `id` (how
    /// [`Replica::take_proposal`] finds its callers).
    fn propose_with_id(&mut self, id: u64, commands: Vec<Command>) -> raft::Result<()> {
        let mut context = Vec::with_capacity(16);
        context.extend_from_slice(&self.node_id.to_be_bytes());
        context.extend_from_slice(&id.to_be_bytes());
        self.raw.propose(context, crate::entry::encode(commands))
    }

    /// Lost leadership: nobody here will see these through, so tell the callers now.
    fn step_down(&mut self, leader_id: u64) {
        let shard_id = self.shard_id;
        if let Some(oracle) = self.oracle.as_mut() {
            oracle.step_down(|| not_leader(shard_id, leader_id));
        }
        let replies = self
            .proposals
            .drain()
            .flat_map(|(_, waiting)| waiting)
            .chain(self.pending_replies.drain(..));
        for (_, reply) in replies {
            let _ = reply.send(Err(not_leader(self.shard_id, leader_id)));
        }
        self.pending.clear();
        let waiting = self
            .reads_awaiting_index
            .drain()
            .flat_map(|(_, batch)| batch)
            .chain(self.reads_awaiting_apply.drain(..).flat_map(|(_, b)| b))
            .chain(self.read_batch.drain(..));
        for waiter in waiting {
            waiter.fail(not_leader(self.shard_id, leader_id));
        }
    }

    /// Drops waiters whose caller gave up (timed out), so the maps stay bounded.
    fn forget_abandoned_requests(&mut self) {
        // An entry's outcomes are split among its callers by position: it is forgotten only
        // once all of them gave up.
        self.proposals
            .retain(|_, waiting| waiting.iter().any(|(_, reply)| !reply.is_closed()));
        self.read_batch.retain(|waiter| !waiter.abandoned());
        self.reads_awaiting_index.retain(|_, batch| {
            batch.retain(|waiter| !waiter.abandoned());
            !batch.is_empty()
        });
    }

    fn serve_reads(&mut self) -> Result<(), StoreError> {
        if self.reads_awaiting_apply.is_empty() {
            return Ok(());
        }
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads_awaiting_apply = waiting;
        for (_, batch) in ready {
            for waiter in batch {
                match waiter {
                    Waiter::Read(query, reply) => {
                        let result = self.answer(&query)?;
                        let _ = reply.send(Ok(result));
                    }
                    Waiter::Tso(count, reply) => match self.oracle.as_mut() {
                        Some(oracle) => oracle.request(count, reply),
                        None => {
                            let _ =
                                reply.send(Err(Reason::WrongShard.status("not the meta group")));
                        }
                    },
                }
            }
        }
        Ok(())
    }

    fn answer(&mut self, query: &Query) -> Result<ReadResult, StoreError> {
        let rejected = |reason: Reason, message: String| ReadResult::from(reason.refuse(message));
        Ok(match query {
            Query::Account(get) => match self.state_machine.account(&get.account_id) {
                Some(account) => {
                    // Pair assertion: what memory serves is what the disk holds, CRC-checked.
                    debug_assert!(
                        !self.store.checkpointed()
                            || self.store.stored_account(&get.account_id)?.as_ref()
                                == Some(account)
                    );
                    ReadResult {
                        result: Some(read_result::Result::Account(account.clone())),
                    }
                }
                None => rejected(
                    Reason::AccountNotFound,
                    format!("account {} does not exist", get.account_id),
                ),
            },
            Query::History(list) => {
                if let Err(refusal) = wallet_proto::validate::history_filter(list) {
                    ReadResult::from(refusal)
                } else if self.state_machine.account(&list.account_id).is_none() {
                    rejected(
                        Reason::AccountNotFound,
                        format!("account {} does not exist", list.account_id),
                    )
                } else {
                    let page = self.store.history(list)?;
                    ReadResult {
                        result: Some(read_result::Result::History(page)),
                    }
                }
            }
            Query::Stuck(stuck) => ReadResult {
                result: Some(read_result::Result::Stuck(self.state_machine.stuck(stuck))),
            },
            Query::IntentStates(asked) => ReadResult {
                result: Some(read_result::Result::IntentStates(
                    self.state_machine.intent_states(asked),
                )),
            },
            Query::Settling(settling) => ReadResult {
                result: Some(read_result::Result::Settling(
                    self.state_machine.settling(settling),
                )),
            },
            Query::SnapshotAt(at) if !at.account_id.is_empty() => {
                match self.state_machine.account_at(&at.account_id, at.ts) {
                    Ok(account) => ReadResult {
                        result: Some(read_result::Result::AccountAt(account)),
                    },
                    Err(refusal) => refusal.into(),
                }
            }
            Query::AccountsAt(at) => {
                match self
                    .state_machine
                    .accounts_at(at.ts, &at.after, at.limit as usize)
                {
                    Ok((accounts, more)) => ReadResult {
                        result: Some(read_result::Result::AccountsPage(AccountsPage {
                            accounts,
                            more,
                        })),
                    },
                    Err(refusal) => refusal.into(),
                }
            }
            Query::SnapshotAt(at) => match self.state_machine.snapshot_at(at.ts) {
                Ok(report) => ReadResult {
                    result: Some(read_result::Result::Snapshot(report)),
                },
                Err(refusal) => refusal.into(),
            },
            Query::Hold(get) => match self.state_machine.hold(get) {
                Ok(hold) => ReadResult {
                    result: Some(read_result::Result::Hold(hold)),
                },
                Err(refusal) => refusal.into(),
            },
            Query::Holds(list) => match self.state_machine.holds(list) {
                Ok(page) => ReadResult {
                    result: Some(read_result::Result::Holds(page)),
                },
                Err(refusal) => refusal.into(),
            },
            Query::NextHoldExpiry(_) => ReadResult {
                result: Some(read_result::Result::NextHoldExpiryTs(
                    self.state_machine.next_hold_expiry(),
                )),
            },
            Query::Transfer(get) => {
                match self
                    .state_machine
                    .transfer(&get.from_account_id, &get.transfer_id)
                {
                    Some(transfer) => ReadResult {
                        result: Some(read_result::Result::Transfer(transfer)),
                    },
                    None => rejected(
                        Reason::TransferNotFound,
                        format!(
                            "no transfer {} from account {}",
                            get.transfer_id, get.from_account_id
                        ),
                    ),
                }
            }
        })
    }

    /// Builds a snapshot when raft-rs asked for one (a follower needs entries already dropped),
    /// and compacts the log every `compact_every` applied entries or once its entries hold more
    /// than [`LOG_BYTES_MAX`], keeping a slack of half the interval (at most a quarter of the
    /// bytes) for followers that are only a little behind. Compaction writes a checkpoint first.
    async fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        let log = self.store.log();
        let retry_due = self
            .snapshot_failed_at
            .is_none_or(|at| at.elapsed() >= SNAPSHOT_RETRY);
        if log.snapshot_wanted() && retry_due {
            match self.store.build_snapshot(self.applied).await {
                Ok(()) => self.snapshot_failed_at = None,
                // A file that cannot be written (a full disk) costs the follower its snapshot for
                // now, not the replica: tried again later.
                Err(StoreError::Io(e)) => {
                    tracing::error!(shard = self.shard_id, error = %e, "cannot write a snapshot file; trying again later");
                    self.snapshot_failed_at = Some(Instant::now());
                }
                Err(e) => return Err(e),
            }
        }
        let first = log.first_index_now();
        let every = self.config.compact_every.max(2);
        if self.applied >= first + every || log.entry_bytes() > LOG_BYTES_MAX {
            let point = log.compaction_point(self.applied, every / 2, LOG_BYTES_MAX / 4);
            // Once a checkpoint at or past the point is in sled; until then the loop goes on
            // (the checkpoint is being written) and tries again next turn.
            if point >= first && self.store.compactable(point)? {
                self.store.compact(point)?;
                self.store.remove_received_up_to(self.applied);
                tracing::debug!(
                    shard = self.shard_id,
                    applied = self.applied,
                    up_to = point,
                    "compacted the log"
                );
            }
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let (prepared, pending) = self.state_machine.undecided_count();
        let status = ReplicaStatus {
            shard_id: self.shard_id,
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_log_index: self.store.log().first_index_now(),
            is_leader: raft.state == StateRole::Leader,
            accounts: self.state_machine.account_count() as u64,
            requests: self.state_machine.request_count() as u64,
            intents: self.state_machine.intent_count() as u64,
            prepared: prepared as u64,
            pending: pending as u64,
            published_at_ms: crate::service::now_ms(),
            retention_window_ms: self.state_machine.retention().window_ms().unwrap_or(0),
            clock_ms: self.state_machine.retention().clock_ms(),
            role: role_name(raft.state).to_string(),
            phase: if self.probing.is_some() {
                ReplicaPhase::Probing
            } else if self.recovering() {
                ReplicaPhase::Recovering
            } else {
                ReplicaPhase::Serving
            } as i32,
            recover_to: self.recover_to,
            last_index: self.last_index(),
            note: match (&self.set_aside, &self.probing) {
                (Some(why), Some(probe)) => format!("set aside ({why}); {probe}"),
                (Some(why), None) if self.recovering() => format!("set aside ({why})"),
                (_, Some(probe)) => probe.clone(),
                _ => String::new(),
            },
        };
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_proto::topology::Ring;
    use wallet_proto::v1::Stuck;

    /// The outbox of a group of one: it has no peers to send to.
    struct NoPeers;

    impl Outbox for NoPeers {
        fn send(&self, _shard_id: u64, messages: Vec<Message>) {
            assert!(messages.is_empty(), "a group of one sends nothing");
        }
    }

    /// The database and snapshot directory of a node in `dir`.
    fn test_group_commit(dir: &std::path::Path) -> Arc<crate::group_commit::GroupCommit> {
        let snapshots = crate::snapshot_file::SnapshotDir::open(dir).unwrap();
        // A database just dropped by the same test may still hold its file lock for a moment
        // (sled's flusher thread lets go of it asynchronously).
        let mut tries = 0;
        let db = loop {
            match sled::open(dir.join("sled")) {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if tries < 100 && e.to_string().contains("lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("sled: {e}"),
            }
        };
        Arc::new(crate::group_commit::GroupCommit::new(
            db,
            &dir.join("sled"),
            snapshots,
        ))
    }

    /// Opens node 1's replica of the one-voter group `shard_id`, as a node does at start.
    fn open_one_voter(
        group_commit: &Arc<crate::group_commit::GroupCommit>,
        marks: &Arc<Marks>,
        shard_id: u64,
    ) -> OpenedReplica {
        let (prober, _probes) = mpsc::unbounded_channel();
        Replica::open(
            group_commit,
            marks,
            &prober,
            shard_id,
            1,
            &[1],
            StateMachine::new(shard_id, Ring::new([1], 16)),
            Box::new(NoPeers),
            ReplicaConfig::default(),
        )
        .unwrap()
    }

    /// A replica of a one-voter group on a temporary sled, driven by hand, past its probe (a
    /// group of one has no peers to ask).
    async fn single_replica(dir: &std::path::Path, shard_id: u64) -> Replica {
        let group_commit = test_group_commit(dir);
        let marks = Arc::new(Marks::open(dir).unwrap());
        let mut replica = open_one_voter(&group_commit, &marks, shard_id).replica;
        assert!(replica.probing.is_some(), "an empty store probes first");
        replica.handle(ReplicaMsg::Probed { term: 0, commit: 0 });
        replica.turn().await.unwrap();
        assert!(replica.probing.is_none());
        replica
    }

    /// G9: a replica's status says what it recovered before its task ever runs; a peer's probe
    /// must not read an unpublished status as "term 0, commit 0" and take part with an empty log.
    #[tokio::test]
    #[allow(clippy::field_reassign_with_default)] // protobuf-2 messages, as raft-rs does
    async fn the_status_reports_the_recovered_state_before_the_first_turn() {
        let dir = tempfile::tempdir().unwrap();
        {
            let group_commit = test_group_commit(dir.path());
            let recovered = ShardStore::open(
                &group_commit,
                1,
                &[1],
                StateMachine::new(1, Ring::new([1], 16)),
            )
            .unwrap();
            let entries: Vec<Entry> = (1..=10)
                .map(|index| {
                    let mut e = Entry::default();
                    e.index = index;
                    e.term = 5;
                    e
                })
                .collect();
            let mut hs = raft::eraftpb::HardState::default();
            hs.term = 5;
            hs.commit = 10;
            recovered.store.append(&entries, Some(&hs)).unwrap();
            recovered.store.flush().await.unwrap();
        }
        let group_commit = test_group_commit(dir.path());
        let marks = Arc::new(Marks::open(dir.path()).unwrap());
        let opened = open_one_voter(&group_commit, &marks, 1);
        let status = opened.handle.status();
        assert_eq!((status.term, status.commit_index), (5, 10));
        assert_eq!(status.phase, ReplicaPhase::Serving as i32);
        assert!(!opened.pristine);
    }

    /// One turn of the loop, as `run` does it after draining the inbox.
    async fn turn(replica: &mut Replica) {
        replica.start_read_batch();
        replica.turn().await.unwrap();
    }

    /// raft-rs drops a ReadIndex that reaches a leader before it committed an entry of its term;
    /// such a read used to wait out the 3 s request timeout. It is now answered once that entry
    /// commits.
    #[tokio::test]
    async fn a_read_reaching_a_new_leader_before_its_first_commit_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = single_replica(dir.path(), 1).await;
        replica.raw.campaign().unwrap();
        assert_eq!(replica.raw.raft.state, StateRole::Leader);
        assert!(!replica.raw.raft.commit_to_current_term());
        let (tx, mut rx) = oneshot::channel();
        replica.handle(ReplicaMsg::Read {
            query: Query::Stuck(Stuck::default()),
            reply: tx,
        });
        for _ in 0..5 {
            turn(&mut replica).await;
        }
        assert!(matches!(rx.try_recv(), Ok(Ok(_))), "the read was answered");
    }

    /// A commit index that only reached sled's memory (a Ready that moves nothing but the
    /// commit is not synced) is never claimed by the mark written before a snapshot install: a
    /// crash that loses it must not make the store look rolled back (set aside for nothing).
    #[tokio::test]
    async fn the_mark_before_an_install_claims_only_a_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = single_replica(dir.path(), 1).await;
        replica.raw.campaign().unwrap();
        for _ in 0..5 {
            turn(&mut replica).await;
        }
        // The leader's first entry committed; a flush makes that commit durable.
        replica.store.flush().await.unwrap();
        replica.write_mark().unwrap();
        let durable = replica.last_mark.expect("a mark after a flush");
        assert!(durable.commit > 0);
        let claimed = |replica: &mut Replica| {
            // A commit index beyond the durable one, in sled's memory only.
            replica.store.set_commit(durable.commit + 5).unwrap();
            replica.write_mark_without_log().unwrap();
            let mark = replica.marks.read(1).expect("the mark is on disk");
            assert_eq!((mark.last_index, mark.last_term), (0, 0));
            mark.commit
        };
        assert_eq!(
            claimed(&mut replica),
            durable.commit,
            "only what a flush made durable"
        );

        // Reopened, the replica starts from the mark it checked, not from nothing: the mark
        // before an install still claims the durable commit (not 0, which would stop checking it).
        let (marks, group_commit) = (replica.marks.clone(), replica.store.group_commit().clone());
        replica.store.set_commit(durable.commit).unwrap();
        replica.write_mark().unwrap();
        drop(replica);
        let mut reopened = open_one_voter(&group_commit, &marks, 1).replica;
        assert_eq!(reopened.last_mark, Some(durable));
        assert_eq!(claimed(&mut reopened), durable.commit);
    }

    /// Timestamps are handed out only after a quorum confirmed the leadership (here: the group
    /// of one), and strictly increase.
    #[tokio::test]
    async fn timestamps_wait_for_a_confirmed_leadership() {
        let dir = tempfile::tempdir().unwrap();
        let mut replica = single_replica(dir.path(), META_GROUP_ID).await;
        replica.raw.campaign().unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let (tx, mut rx) = oneshot::channel();
            replica.handle(ReplicaMsg::Tso {
                count: 2,
                reply: tx,
            });
            let mut answer = None;
            for _ in 0..10 {
                turn(&mut replica).await;
                if let Ok(result) = rx.try_recv() {
                    answer = Some(result.unwrap());
                    break;
                }
            }
            let answer = answer.expect("timestamps served");
            assert!(answer.first > last);
            last = answer.first + 1;
        }
    }
}
