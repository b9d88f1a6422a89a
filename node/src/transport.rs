//! Raft transport: carries raft-rs messages between nodes over gRPC (`wallet.v1.Raft/Stream`).
//!
//! One sender task per peer node owns the HTTP/2 channels to it. Replicas hand messages over
//! without waiting; the task batches everything queued for the peer (all shards together, up to
//! [`BATCH_MESSAGES_MAX`]) and writes the batch to one long-lived stream (`wallet.v1.Raft/Stream`):
//! no answer per batch, so a batch never waits for the previous one to be acknowledged, and a
//! message costs one HTTP/2 data frame instead of a request and its answer. A stream that fails,
//! or that the peer stops reading for [`SEND_TIMEOUT`] (HTTP/2 keep-alive pings find a silent
//! peer), is given up and opened again; its batches may be lost, which Raft tolerates by
//! resending. With compression on, the stream compresses every batch. A peer of an earlier
//! release, without `Stream`, gets one `Send` request per batch as before (compressed from
//! `--raft-compress-above` bytes), and the stream is tried again a minute later. A failed send is
//! reported to the replicas involved (`report_unreachable`, and `report_snapshot(Failure)` for
//! snapshots) so raft-rs probes again; messages beyond a full queue are dropped.
//!
//! Snapshots go another way (`wallet.v1.Raft/Snapshot`, a client stream on a channel of their
//! own, so a large one delays no heartbeat): the `MsgSnapshot` carries only the descriptor of a
//! file the leader built ([`crate::snapshot_file`]); the sender streams the file in chunks of
//! [`SNAPSHOT_CHUNK_BYTES`], the receiver writes them to a file of its own, checks its length and
//! CRC against the descriptor, fsyncs it, and only then hands the message to its replica. Memory
//! stays at a few chunks whatever the snapshot's size.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Status;
use wallet_proto::v1::raft_client::RaftClient;
use wallet_proto::v1::{RaftBatch, RaftEnvelope, SnapshotChunk};

use crate::inbox::{Outbox, ReplicaHandle, ReplicaMsg};
use crate::snapshot_file::{Descriptor, Side, SnapshotDir};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_CAPACITY: usize = 16_384;
/// Messages carried by one request at most.
pub const BATCH_MESSAGES_MAX: usize = 4096;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer without `Raft/Stream` gets one `Send` per batch before the stream is tried again.
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Batches waiting to enter a peer's stream beyond what HTTP/2 is sending.
const STREAM_BATCHES_QUEUED: usize = 64;
/// HTTP/2 pings on a stream's connection, and how long an answer may take before the
/// connection (and the stream) is given up.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of a snapshot file per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;
/// A snapshot stream may take this long, plus one second per [`SNAPSHOT_BYTES_PER_S_MIN`].
const SNAPSHOT_TIMEOUT_BASE: Duration = Duration::from_secs(30);
const SNAPSHOT_BYTES_PER_S_MIN: u64 = 4 << 20;
/// The receiver gives up on a snapshot stream silent for this long.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest snapshot a node accepts (a bound on what a peer can make it write).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;
/// Snapshot streams a node receives at once; more are refused (the leader tries again).
const SNAPSHOT_RECEIVES_MAX: usize = 2;

/// Receives in progress, node-wide.
static RECEIVING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SNAPSHOT_RECEIVES_MAX);

/// The replicas of this node by shard id, set once at start.
pub type Registry = Arc<OnceLock<HashMap<u64, ReplicaHandle>>>;

/// Hands Raft messages to the peer sender tasks. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    peers: Arc<HashMap<u64, mpsc::Sender<(u64, Message)>>>,
}

impl Transport {
    /// Starts one sender task per peer (`node id → address`); snapshot files are read from
    /// `snapshots`.
    pub fn start(
        node_id: u64,
        peers: &[(u64, String)],
        registry: Registry,
        snapshots: SnapshotDir,
        compress_above: usize,
        tls: Option<Arc<wallet_tls::ClientTls>>,
    ) -> Transport {
        let mut senders = HashMap::new();
        for (peer_id, address) in peers {
            if *peer_id == node_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
            senders.insert(*peer_id, tx);
            tokio::spawn(peer_sender(
                Peer {
                    node_id,
                    peer_id: *peer_id,
                    registry: registry.clone(),
                    snapshots: snapshots.clone(),
                },
                address.clone(),
                rx,
                compress_above,
                tls.clone(),
            ));
        }
        Transport {
            peers: Arc::new(senders),
        }
    }
}

impl Outbox for Transport {
    /// Queues messages of one shard for their peers; never waits.
    fn send(&self, shard_id: u64, messages: Vec<Message>) {
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

/// What a peer's sender task knows besides its queue.
#[derive(Clone)]
struct Peer {
    node_id: u64,
    peer_id: u64,
    registry: Registry,
    snapshots: SnapshotDir,
}

impl Peer {
    /// Hands a report to the local replica of `shard_id`.
    fn report(&self, shard_id: u64, msg: ReplicaMsg) {
        if let Some(replica) = self.registry.get().and_then(|r| r.get(&shard_id)) {
            let _ = replica.inbox.try_send(msg);
        }
    }
}

/// The size (encoded bytes) from which to send Raft batches zstd-compressed, once every node of
/// the cluster reads compressed messages (`--raft-compress-above`; snapshot streams too then).
pub const COMPRESS_ABOVE_RECOMMENDED: usize = 32 * 1024;

/// Off by default in the release that brought compression: a node of an earlier release cannot
/// read a compressed message, so a cluster being upgraded node by node would stall on it. Turn it
/// on ([`COMPRESS_ABOVE_RECOMMENDED`]) once every node runs this release or a later one.
pub const COMPRESS_ABOVE_DEFAULT: usize = 0;

async fn peer_sender(
    peer: Peer,
    address: String,
    mut queue: mpsc::Receiver<(u64, Message)>,
    compress_above: usize,
    tls: Option<Arc<wallet_tls::ClientTls>>,
) {
    let peer_id = peer.peer_id;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(peer_id, %address, error = %e, "bad peer address; not sending to it");
            return;
        }
    };
    // Over TLS, the peer must prove it is `node-<peer_id>`, and this node presents its own.
    let connect = |endpoint: Endpoint| match &tls {
        Some(tls) => tls.channel(&endpoint, Some(&wallet_tls::node_name(peer_id))),
        None => Ok(endpoint.connect_lazy()),
    };
    let streaming = endpoint
        .clone()
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let (messages, snapshots, streaming) = match (
        connect(endpoint.clone().timeout(SEND_TIMEOUT)),
        connect(endpoint),
        connect(streaming),
    ) {
        (Ok(messages), Ok(snapshots), Ok(streaming)) => (messages, snapshots, streaming),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            tracing::error!(peer_id, %address, error = %e, "no TLS channel to peer; not sending to it");
            return;
        }
    };
    let mut client = RaftClient::new(messages)
        .max_decoding_message_size(wallet_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(wallet_proto::MESSAGE_BYTES_MAX);
    // The same connection, compressing: for batches of at least `compress_above` bytes (catch-up
    // appends), where fewer bytes on the wire pay for the CPU; heartbeats and small appends stay
    // plain.
    let mut compressing = client.clone().send_compressed(CompressionEncoding::Zstd);
    // Batches go on the peer's stream, on a connection of its own (no per-request timeout: the
    // stream lives as long as the connection; keep-alive pings watch it). With compression on,
    // the stream compresses every batch: one stream keeps them in order, where a compressed batch
    // sent on the side could overtake the ones before it.
    let mut stream_client = RaftClient::new(streaming)
        .max_decoding_message_size(wallet_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(wallet_proto::MESSAGE_BYTES_MAX);
    if compress_above > 0 {
        stream_client = stream_client.send_compressed(CompressionEncoding::Zstd);
    }
    let mut stream: Option<OpenStream> = None;
    // Since when the peer answered that it has no `Stream` (an earlier release): one `Send` per
    // batch until [`STREAM_RETRY_AFTER`] has passed (the peer may have been upgraded since).
    let mut unary_since: Option<std::time::Instant> = None;
    // Snapshots stream on a connection of their own, with a timeout by size; compressed whenever
    // compression is on (their chunks are far above any threshold).
    let mut snapshot_client = RaftClient::new(snapshots);
    if compress_above > 0 {
        snapshot_client = snapshot_client.send_compressed(CompressionEncoding::Zstd);
    }
    let mut pending = Vec::with_capacity(BATCH_MESSAGES_MAX);
    while let Some(first) = queue.recv().await {
        pending.push(first);
        while pending.len() < BATCH_MESSAGES_MAX {
            match queue.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let mut shards = BTreeSet::new();
        let mut messages = Vec::with_capacity(pending.len());
        for (shard_id, message) in pending.drain(..) {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(send_snapshot(
                    peer.clone(),
                    snapshot_client.clone(),
                    shard_id,
                    message,
                ));
                continue;
            }
            shards.insert(shard_id);
            messages.push(RaftEnvelope {
                shard_id,
                message: message.write_to_bytes().unwrap_or_default(),
            });
        }
        if messages.is_empty() {
            continue;
        }
        let batch = RaftBatch {
            from_node: peer.node_id,
            messages,
        };
        let unary = unary_since.is_some_and(|since| since.elapsed() < STREAM_RETRY_AFTER);
        let sent = if !unary {
            send_on_stream(&mut stream, &stream_client, batch).await
        } else if compress_above > 0 && batch.encoded_len() >= compress_above {
            compressing.send(batch).await.map(drop)
        } else {
            client.send(batch).await.map(drop)
        };
        if let Err(status) = sent {
            if !unary && status.code() == tonic::Code::Unimplemented {
                tracing::info!(
                    peer_id,
                    "peer has no Raft/Stream (an earlier release): one request per batch for now"
                );
                unary_since = Some(std::time::Instant::now());
            }
            tracing::debug!(peer_id, error = %status.message(), "raft send failed");
            for shard_id in shards {
                peer.report(shard_id, ReplicaMsg::Unreachable(peer_id));
            }
            // Do not spin on a dead peer: the queue keeps filling and dropping meanwhile.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A peer's open `Raft/Stream` call: batches go in through `batches`, the call runs in `call`.
struct OpenStream {
    batches: mpsc::Sender<RaftBatch>,
    call: tokio::task::JoinHandle<Result<(), Status>>,
}

/// Writes `batch` to the peer's stream, opening one if none is open. An error means the stream
/// ended (its status says why) or the peer stopped reading it; the stream is then dropped, and
/// the next batch opens a new one. Batches written to a stream that fails are lost.
async fn send_on_stream(
    open: &mut Option<OpenStream>,
    client: &RaftClient<Channel>,
    batch: RaftBatch,
) -> Result<(), Status> {
    let stream = match open.take() {
        Some(ended) if ended.call.is_finished() => {
            ended_with(ended).await?;
            open_stream(client)
        }
        Some(stream) => stream,
        None => open_stream(client),
    };
    match tokio::time::timeout(SEND_TIMEOUT, stream.batches.send(batch)).await {
        Ok(Ok(())) => {
            *open = Some(stream);
            Ok(())
        }
        Ok(Err(_)) => ended_with(stream).await.and(Err(Status::unavailable(
            "the raft stream ended; opening another",
        ))),
        Err(_) => {
            stream.call.abort();
            Err(Status::deadline_exceeded(
                "the peer stopped reading its raft stream",
            ))
        }
    }
}

/// Opens a `Raft/Stream` call to the peer, run by a task of its own.
fn open_stream(client: &RaftClient<Channel>) -> OpenStream {
    let (batches, queued) = mpsc::channel(STREAM_BATCHES_QUEUED);
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .stream(tokio_stream::wrappers::ReceiverStream::new(queued))
            .await
            .map(drop)
    });
    OpenStream { batches, call }
}

/// How a stream's call ended.
async fn ended_with(stream: OpenStream) -> Result<(), Status> {
    drop(stream.batches);
    match stream.call.await {
        Ok(result) => result,
        Err(e) => Err(Status::internal(format!(
            "the raft stream task failed: {e}"
        ))),
    }
}

/// Receives a peer's `Raft/Stream`: hands each batch to the replicas as it arrives, until the
/// peer closes the stream, it fails, or `closing` turns true (this node shuts down).
pub async fn receive_stream(
    registry: &Registry,
    mut stream: tonic::Streaming<RaftBatch>,
    caller: Option<CallerNode>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Status> {
    loop {
        let batch = tokio::select! {
            batch = stream.message() => batch,
            // A dropped sender (no shutdown to come) never ends the stream.
            Ok(_) = closing.wait_for(|closing| *closing) => return Ok(()),
        };
        let Some(batch) = batch? else {
            return Ok(());
        };
        deliver(registry, batch, caller);
    }
}

/// Streams the file of a `MsgSnapshot` to the peer and tells raft-rs how it went.
async fn send_snapshot(peer: Peer, client: RaftClient<Channel>, shard_id: u64, message: Message) {
    let index = message.get_snapshot().get_metadata().index;
    let status = match stream_snapshot(&peer, client, shard_id, message).await {
        Ok(bytes) => {
            tracing::info!(
                shard = shard_id,
                to = peer.peer_id,
                index,
                bytes,
                "snapshot sent"
            );
            SnapshotStatus::Finish
        }
        Err(e) => {
            tracing::warn!(shard = shard_id, to = peer.peer_id, index, error = %e, "snapshot not sent");
            peer.report(shard_id, ReplicaMsg::Unreachable(peer.peer_id));
            SnapshotStatus::Failure
        }
    };
    peer.report(shard_id, ReplicaMsg::SnapshotReport(peer.peer_id, status));
}

async fn stream_snapshot(
    peer: &Peer,
    mut client: RaftClient<Channel>,
    shard_id: u64,
    message: Message,
) -> Result<u64, String> {
    let descriptor = Descriptor::decode(message.get_snapshot().get_data())?;
    let meta = message.get_snapshot().get_metadata();
    let path = peer
        .snapshots
        .path(Side::Sent, shard_id, meta.index, meta.term);
    // Opened now: a newer snapshot may replace the file meanwhile, this stream keeps reading it.
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{path:?}: {e}"))?;
    let (tx, rx) = mpsc::channel(4);
    let header = SnapshotChunk {
        from_node: peer.node_id,
        shard_id,
        message: message.write_to_bytes().map_err(|e| e.to_string())?,
        data: Vec::new(),
    };
    tx.try_send(header).map_err(|e| e.to_string())?;
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut left = descriptor.bytes;
        while left > 0 {
            let mut data = vec![0u8; left.min(SNAPSHOT_CHUNK_BYTES) as usize];
            file.read_exact(&mut data)
                .map_err(|e| format!("reading {path:?}: {e}"))?;
            left -= data.len() as u64;
            let chunk = SnapshotChunk {
                data,
                ..Default::default()
            };
            if tx.blocking_send(chunk).is_err() {
                return Err("the stream ended early".into());
            }
        }
        Ok(())
    });
    let timeout =
        SNAPSHOT_TIMEOUT_BASE + Duration::from_secs(descriptor.bytes / SNAPSHOT_BYTES_PER_S_MIN);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let sent = tokio::time::timeout(timeout, client.snapshot(stream)).await;
    let read = reader.await.map_err(|e| e.to_string())?;
    match sent {
        Err(_) => Err(format!("timed out after {timeout:?}")),
        Ok(Err(status)) => Err(status.message().to_string()),
        Ok(Ok(_)) => read.map(|()| descriptor.bytes),
    }
}

/// The node a Raft call came from, by the certificate it presented (over TLS): each message it
/// carries must name that node as its sender, so one node cannot speak for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerNode(pub u64);

/// Receives a streamed snapshot: writes it to this node's received file, checks it against the
/// descriptor in its message, and hands the message to the shard's replica.
pub async fn receive_snapshot(
    registry: &Registry,
    snapshots: &SnapshotDir,
    mut stream: tonic::Streaming<SnapshotChunk>,
    caller: Option<CallerNode>,
) -> Result<u64, Status> {
    let _receiving = RECEIVING
        .try_acquire()
        .map_err(|_| Status::resource_exhausted("receiving other snapshots; try again"))?;
    let first = next_chunk(&mut stream)
        .await?
        .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
    let message = Message::parse_from_bytes(&first.message)
        .map_err(|_| Status::invalid_argument("a snapshot stream without a raft message"))?;
    if message.get_msg_type() != MessageType::MsgSnapshot {
        return Err(Status::invalid_argument("not a MsgSnapshot"));
    }
    if caller.is_some_and(|c| c.0 != message.get_from()) {
        return Err(
            wallet_proto::reason::Reason::PermissionDenied.status(format!(
                "a snapshot from node {} sent by another node",
                message.get_from()
            )),
        );
    }
    let replica = registry
        .get()
        .and_then(|r| r.get(&first.shard_id))
        .ok_or_else(|| Status::not_found(format!("shard {} is not here", first.shard_id)))?;
    let descriptor =
        Descriptor::decode(message.get_snapshot().get_data()).map_err(Status::invalid_argument)?;
    if descriptor.bytes > SNAPSHOT_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "a snapshot of {} bytes; at most {SNAPSHOT_BYTES_MAX}",
            descriptor.bytes
        )));
    }
    let meta = message.get_snapshot().get_metadata();
    let path = snapshots.path(Side::Received, first.shard_id, meta.index, meta.term);
    let mut writer = snapshots
        .create(path.clone())
        .map_err(|e| Status::internal(format!("{path:?}: {e}")))?;
    // Dropped on any error below (or with this future, if the stream is cut off), the writer
    // removes its unfinished file.
    let mut chunk = first.data;
    loop {
        if chunk.len() as u64 > 2 * SNAPSHOT_CHUNK_BYTES
            || writer.len() + chunk.len() as u64 > descriptor.bytes
        {
            return Err(Status::invalid_argument(
                "a snapshot chunk too long, or more bytes than its descriptor says",
            ));
        }
        writer
            .raw(&chunk)
            .map_err(|e| Status::internal(format!("{path:?}: {e}")))?;
        match next_chunk(&mut stream).await? {
            Some(next) => chunk = next.data,
            None => break,
        }
    }
    // Checked before it takes its name (length and CRC), then record by record; a file that
    // fails goes, so a complete name is always a file that checked out whole.
    let checked = path.clone();
    let received = tokio::task::spawn_blocking(move || {
        let received = writer
            .finish(true, Some(descriptor))
            .map_err(|e| e.to_string())?;
        crate::shard_store::verify_received(&checked, received).inspect_err(|_| {
            let _ = std::fs::remove_file(&checked);
        })?;
        Ok::<_, String>(received)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::data_loss(format!("{path:?}: {e}")))?;
    replica
        .inbox
        .try_send(ReplicaMsg::Raft(Box::new(message)))
        .map_err(|_| Status::unavailable("the replica's inbox is full"))?;
    crate::metrics::NODE
        .snapshot_bytes
        .get_or_create(&crate::metrics::SnapshotLabel {
            direction: "received",
        })
        .inc_by(received.bytes);
    Ok(received.bytes)
}

async fn next_chunk(
    stream: &mut tonic::Streaming<SnapshotChunk>,
) -> Result<Option<SnapshotChunk>, Status> {
    match tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, stream.message()).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded("the snapshot stream went silent")),
    }
}

/// Decodes an inbound batch and hands each message to its replica. Messages for shards this node
/// does not host, or that do not decode, are dropped, counted and logged.
pub fn deliver(registry: &Registry, batch: RaftBatch, caller: Option<CallerNode>) -> usize {
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
            Ok(message) if caller.is_some_and(|c| c.0 != message.get_from()) => {
                tracing::warn!(
                    shard = envelope.shard_id,
                    from = message.get_from(),
                    caller = caller.map(|c| c.0),
                    "dropped a Raft message whose sender is not the node that sent it"
                );
                dropped += 1;
            }
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
    if dropped > 0 {
        tracing::debug!(dropped, "dropped inbound raft messages");
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::ReplicaHandle;
    use wallet_proto::v1::raft_server::{Raft, RaftServer};
    use wallet_proto::v1::RaftAck;

    /// A node's `Raft` service, reduced to the transport's entry points; `no_stream` plays a
    /// node of an earlier release, without `Raft/Stream`.
    struct Receiver {
        registry: Registry,
        snapshots: SnapshotDir,
        no_stream: bool,
        closing: tokio::sync::watch::Receiver<bool>,
    }

    #[tonic::async_trait]
    impl Raft for Receiver {
        async fn send(
            &self,
            request: tonic::Request<RaftBatch>,
        ) -> Result<tonic::Response<RaftAck>, Status> {
            deliver(&self.registry, request.into_inner(), None);
            Ok(tonic::Response::new(RaftAck {}))
        }

        async fn stream(
            &self,
            request: tonic::Request<tonic::Streaming<RaftBatch>>,
        ) -> Result<tonic::Response<RaftAck>, Status> {
            if self.no_stream {
                return Err(Status::unimplemented("an earlier release"));
            }
            receive_stream(
                &self.registry,
                request.into_inner(),
                None,
                self.closing.clone(),
            )
            .await?;
            Ok(tonic::Response::new(RaftAck {}))
        }

        async fn snapshot(
            &self,
            request: tonic::Request<tonic::Streaming<SnapshotChunk>>,
        ) -> Result<tonic::Response<RaftAck>, Status> {
            receive_snapshot(&self.registry, &self.snapshots, request.into_inner(), None).await?;
            Ok(tonic::Response::new(RaftAck {}))
        }
    }

    /// Over TLS the caller's certificate names a node: a message that says it comes from
    /// another node is dropped (one node cannot vote or append for another), the rest arrive.
    #[test]
    #[allow(clippy::field_reassign_with_default)] // protobuf-2 messages, as raft-rs does
    fn a_raft_message_is_delivered_only_from_the_node_that_sent_it() {
        let (registry, mut inbox) = registry(7);
        let envelope = |from: u64| {
            let mut message = Message::default();
            message.set_msg_type(MessageType::MsgHeartbeat);
            message.set_from(from);
            message.set_to(1);
            RaftEnvelope {
                shard_id: 7,
                message: message.write_to_bytes().unwrap(),
            }
        };
        let batch = RaftBatch {
            from_node: 2,
            messages: vec![envelope(2), envelope(3)],
        };
        assert_eq!(deliver(&registry, batch.clone(), Some(CallerNode(2))), 1);
        match inbox.try_recv() {
            Ok(ReplicaMsg::Raft(message)) => assert_eq!(message.get_from(), 2),
            _ => panic!("node 2's message was not delivered"),
        }
        assert!(inbox.try_recv().is_err(), "node 3's message was delivered");
        // Without TLS nothing names the caller: both arrive.
        assert_eq!(deliver(&registry, batch, None), 0);
    }

    /// A registry whose only replica is an inbox the test reads.
    fn registry(shard_id: u64) -> (Registry, mpsc::Receiver<ReplicaMsg>) {
        let (inbox, rx) = mpsc::channel(4096);
        let handle = ReplicaHandle {
            shard_id,
            inbox,
            status: Default::default(),
        };
        let registry: Registry = Arc::new(OnceLock::new());
        let _ = registry.set(HashMap::from([(shard_id, handle)]));
        (registry, rx)
    }

    #[allow(clippy::field_reassign_with_default)] // protobuf-2 messages, as raft-rs does
    fn snapshot_message(descriptor: Descriptor) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.from = 1;
        message.to = 2;
        let snapshot = message.mut_snapshot();
        snapshot.set_data(descriptor.encode().into());
        snapshot.mut_metadata().index = 10;
        snapshot.mut_metadata().term = 2;
        message
    }

    /// A snapshot several chunks long crosses real sockets into the follower's file, byte for
    /// byte, and only then reaches its replica; one that does not match its descriptor never does.
    #[tokio::test]
    async fn a_snapshot_file_streams_in_chunks_and_a_mismatched_one_is_refused() {
        let (leader_dir, follower_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader_snapshots = SnapshotDir::open(leader_dir.path()).unwrap();
        let follower_snapshots = SnapshotDir::open(follower_dir.path()).unwrap();
        let sent = leader_snapshots.path(Side::Sent, 7, 10, 2);
        let mut writer = leader_snapshots.create(sent.clone()).unwrap();
        for i in 0..3500u32 {
            let value: Vec<u8> = (0..1000u32).map(|b| (b * 31 + i) as u8).collect();
            writer
                .record(
                    format!("Sa{i:08}").as_bytes(),
                    &crate::record::frame(&value),
                )
                .unwrap();
        }
        let descriptor = writer.finish(false, None).unwrap();
        assert!(descriptor.bytes > 3 * SNAPSHOT_CHUNK_BYTES);

        let (follower_registry, mut follower_inbox) = registry(7);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = serve(
            listener,
            follower_registry,
            follower_snapshots.clone(),
            false,
        );
        let (leader_registry, mut leader_inbox) = registry(7);
        let peer = Peer {
            node_id: 1,
            peer_id: 2,
            registry: leader_registry,
            snapshots: leader_snapshots.clone(),
        };
        let client = RaftClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                .unwrap()
                .connect_lazy(),
        );

        send_snapshot(
            peer.clone(),
            client.clone(),
            7,
            snapshot_message(descriptor),
        )
        .await;
        match leader_inbox.try_recv() {
            Ok(ReplicaMsg::SnapshotReport(2, SnapshotStatus::Finish)) => {}
            _ => panic!("the leader's replica is told the snapshot arrived"),
        }
        let received = follower_snapshots.path(Side::Received, 7, 10, 2);
        assert_eq!(
            std::fs::read(&received).unwrap(),
            std::fs::read(&sent).unwrap()
        );
        match follower_inbox.try_recv() {
            Ok(ReplicaMsg::Raft(message)) => {
                assert_eq!(message.get_msg_type(), MessageType::MsgSnapshot);
                assert_eq!(message.get_snapshot().get_metadata().index, 10);
            }
            _ => panic!("the follower's replica gets the message once the file is here"),
        }

        // The same file under a descriptor it does not match: refused, nothing delivered or kept.
        std::fs::remove_file(&received).unwrap();
        let wrong = Descriptor {
            crc: descriptor.crc ^ 1,
            ..descriptor
        };
        send_snapshot(peer.clone(), client.clone(), 7, snapshot_message(wrong)).await;
        let mut reports = Vec::new();
        while let Ok(msg) = leader_inbox.try_recv() {
            reports.push(matches!(
                msg,
                ReplicaMsg::SnapshotReport(2, SnapshotStatus::Failure)
            ));
        }
        assert!(
            reports.contains(&true),
            "the leader's replica is told it failed"
        );
        assert!(follower_inbox.try_recv().is_err());
        assert!(!received.exists());
        // A file missing on the leader's side (replaced meanwhile) fails the same way.
        std::fs::remove_file(&sent).unwrap();
        send_snapshot(peer, client, 7, snapshot_message(descriptor)).await;
        let mut failed = false;
        while let Ok(msg) = leader_inbox.try_recv() {
            failed |= matches!(msg, ReplicaMsg::SnapshotReport(2, SnapshotStatus::Failure));
        }
        assert!(failed);
        assert!(follower_inbox.try_recv().is_err());
        let left: Vec<_> = std::fs::read_dir(follower_dir.path().join("snapshots"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "no partial file is left behind: {left:?}");
        server.abort();
    }

    /// Serves a receiver on `listener` whose replica of shard 7 is `registry`'s.
    fn serve(
        listener: std::net::TcpListener,
        registry: Registry,
        snapshots: SnapshotDir,
        no_stream: bool,
    ) -> tokio::task::JoinHandle<()> {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RaftServer::new(Receiver {
                    registry,
                    snapshots,
                    no_stream,
                    closing: tokio::sync::watch::channel(false).1,
                }))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        })
    }

    #[allow(clippy::field_reassign_with_default)] // protobuf-2 messages, as raft-rs does
    fn heartbeat(commit: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgHeartbeat);
        message.from = 1;
        message.to = 2;
        message.commit = commit;
        message
    }

    /// Sends heartbeats numbered from `from` through the peer's queue, one every 20 ms, until the
    /// follower's replica got one, and returns the numbers it got (in order) within 10 s.
    async fn until_delivered(
        queue: &mpsc::Sender<(u64, Message)>,
        inbox: &mut mpsc::Receiver<ReplicaMsg>,
        from: u64,
    ) -> Vec<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut n = from;
        loop {
            assert!(std::time::Instant::now() < deadline, "nothing delivered");
            queue.send((7, heartbeat(n))).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut got = Vec::new();
            while let Ok(msg) = inbox.try_recv() {
                if let ReplicaMsg::Raft(message) = msg {
                    got.push(message.commit);
                }
            }
            if !got.is_empty() {
                return got;
            }
        }
    }

    /// Batches reach the follower in order over one stream; when the follower's server goes
    /// away and comes back, the sender gives the broken stream up and opens another; a peer
    /// without `Raft/Stream` (an earlier release) gets the batches as `Send` requests.
    #[tokio::test]
    async fn raft_batches_stream_in_order_survive_a_restart_and_reach_an_older_peer() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (follower_registry, mut follower_inbox) = registry(7);
        let server = serve(
            listener,
            follower_registry.clone(),
            snapshots.clone(),
            false,
        );
        let (leader_registry, _leader_inbox) = registry(7);
        let peer = Peer {
            node_id: 1,
            peer_id: 2,
            registry: leader_registry,
            snapshots: snapshots.clone(),
        };
        let (queue, queued) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let sender = tokio::spawn(peer_sender(peer, address.to_string(), queued, 0, None));

        // In order, over many batches.
        let first = until_delivered(&queue, &mut follower_inbox, 0).await;
        let mut next = first.last().copied().unwrap() + 1;
        let mut got = Vec::new();
        let sent: Vec<u64> = (1_000..3_000).collect();
        for n in &sent {
            queue.send((7, heartbeat(*n))).await.unwrap();
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() && std::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), follower_inbox.recv()).await {
                Ok(Some(ReplicaMsg::Raft(message))) => got.push(message.commit),
                Ok(_) => {}
                Err(_) => {}
            }
        }
        got.retain(|n| *n >= 1_000);
        assert!(
            got == sent,
            "every message arrives, in order: {} of {}, first gap after {:?}",
            got.len(),
            sent.len(),
            got.iter().zip(&sent).find(|(a, b)| a != b)
        );

        // The follower's server goes away (the stream breaks) and comes back on the same port.
        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = std::net::TcpListener::bind(address).unwrap();
        let server = serve(
            listener,
            follower_registry.clone(),
            snapshots.clone(),
            false,
        );
        next = next.max(10_000);
        let again = until_delivered(&queue, &mut follower_inbox, next).await;
        assert!(again.iter().all(|n| *n >= 10_000));

        // A follower of an earlier release: no stream, one request per batch.
        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = std::net::TcpListener::bind(address).unwrap();
        let server = serve(listener, follower_registry, snapshots, true);
        let older = until_delivered(&queue, &mut follower_inbox, 20_000).await;
        assert!(older.iter().all(|n| *n >= 20_000));
        sender.abort();
        server.abort();
    }

    /// A node shutting down ends its inbound Raft streams, so its server's graceful shutdown
    /// finishes instead of waiting for peers that keep their streams open.
    #[tokio::test]
    async fn an_inbound_stream_ends_when_the_node_shuts_down() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (follower_registry, mut follower_inbox) = registry(7);
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(Receiver {
                    registry: follower_registry,
                    snapshots: snapshots.clone(),
                    no_stream: false,
                    closing,
                }))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = stop.await;
                        let _ = closing_tx.send(true);
                    },
                ),
        );
        let (leader_registry, _leader_inbox) = registry(7);
        let peer = Peer {
            node_id: 1,
            peer_id: 2,
            registry: leader_registry,
            snapshots,
        };
        let (queue, queued) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let sender = tokio::spawn(peer_sender(peer, address.to_string(), queued, 0, None));
        until_delivered(&queue, &mut follower_inbox, 0).await;
        let _ = stop_tx.send(());
        let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(stopped.is_ok(), "the server waited for the open stream");
        sender.abort();
    }
}
