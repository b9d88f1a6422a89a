//! Starting and stopping a node: open the sled database, start the transport and one Raft loop per
//! hosted shard, serve gRPC, and on SIGTERM/SIGINT stop serving, stop the loops (each flushes) and
//! flush the database before exiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use wallet_proto::topology::Topology;
use wallet_proto::v1::raft_server::RaftServer;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::shard_server::ShardServer;
use wallet_proto::v1::StatusRequest;

use crate::group_commit::GroupCommit;
use crate::replica::{Replica, ReplicaConfig};
use crate::service::NodeService;
use crate::state_machine::StateMachine;
use crate::transport::{Registry, Transport};
use wallet_router::shards::Shards;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub topology: Topology,
    pub replica: ReplicaConfig,
    /// Age after which recovery resolves an undecided cross-shard transfer.
    pub resolve_after: std::time::Duration,
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    options: NodeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let topology = &options.topology;
    if topology.address_of(options.node_id).is_none() {
        return Err(format!("node {} is not in the cluster file", options.node_id).into());
    }
    std::fs::create_dir_all(&options.data_dir)?;
    let db = sled::Config::new()
        .path(options.data_dir.join("sled"))
        .cache_capacity(256 * 1024 * 1024)
        .open()?;
    let group_commit = Arc::new(GroupCommit::new(db.clone()));
    let registry: Registry = Arc::new(OnceLock::new());
    let peers: Vec<(u64, String)> = topology
        .nodes
        .iter()
        .map(|n| (n.id, n.address.clone()))
        .collect();
    let transport = Transport::start(options.node_id, &peers, registry.clone());
    let ring = topology.ring();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = HashMap::new();
    let mut opened = Vec::new();
    for shard in topology.groups_on(options.node_id) {
        opened.push(Replica::open(
            &group_commit,
            shard.id,
            options.node_id,
            &shard.replicas,
            StateMachine::new(shard.id, ring.clone()),
            transport.clone(),
            options.replica.clone(),
        )?);
    }
    if opened.iter().any(|o| o.pristine) {
        let commits = peer_commits(topology, options.node_id).await;
        for o in opened.iter_mut().filter(|o| o.pristine) {
            o.replica
                .recover_to(commits.get(&o.handle.shard_id).copied().unwrap_or(0));
        }
    }
    let mut tasks = Vec::new();
    for o in opened {
        handles.insert(o.handle.shard_id, o.handle);
        tasks.push(tokio::spawn(o.replica.run(o.inbox, stop_rx.clone())));
    }
    let shard_count = handles.len();
    let _ = registry.set(handles);
    let service = NodeService::new(options.node_id, ring, registry);
    let shards = Arc::new(Shards::new(topology.clone())?);
    let recovery = tokio::spawn(crate::recovery::run(
        service.clone(),
        shards,
        options.resolve_after,
        stop_rx.clone(),
    ));
    tracing::info!(node = options.node_id, listen = %options.listen, shards = shard_count, "node serving");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            ShardServer::new(service.clone())
                .max_decoding_message_size(wallet_proto::REQUEST_BYTES_MAX),
        )
        .add_service(
            RaftServer::new(service).max_decoding_message_size(wallet_proto::MESSAGE_BYTES_MAX),
        )
        .serve_with_shutdown(options.listen, shutdown)
        .await?;
    tracing::info!(node = options.node_id, "stopping replicas");
    let _ = stop_tx.send(true);
    let _ = recovery.await;
    for task in tasks {
        let _ = task.await;
    }
    db.flush_async().await?;
    tracing::info!(node = options.node_id, "node stopped cleanly");
    Ok(())
}

/// The highest commit index each shard's replicas on other nodes report, asking each peer once
/// (one second each, in parallel). A node whose store is empty uses it to tell a brand-new cluster
/// (nobody has data) from a rejoin after its data was lost (peers have data).
async fn peer_commits(topology: &Topology, node_id: u64) -> HashMap<u64, u64> {
    let asks = topology
        .nodes
        .iter()
        .filter(|n| n.id != node_id)
        .map(|peer| {
            let address = format!("http://{}", peer.address);
            async move {
                let call = async {
                    let mut client = ShardClient::connect(address).await.ok()?;
                    client
                        .status(StatusRequest {})
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                };
                tokio::time::timeout(std::time::Duration::from_secs(1), call)
                    .await
                    .ok()
                    .flatten()
            }
        });
    let mut commits = HashMap::new();
    for status in futures_join_all(asks).await.into_iter().flatten() {
        for replica in status.replicas {
            let entry = commits.entry(replica.shard_id).or_insert(0);
            *entry = (*entry).max(replica.commit_index);
        }
    }
    commits
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}
