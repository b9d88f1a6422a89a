//! Talking to shards: which node leads which shard, and retrying until one answers.
//!
//! The router keeps no state worth losing: a leader cache (shard → node id) learnt from answers and
//! `NOT_LEADER` hints, and one lazily connected gRPC channel per node. A retryable failure
//! (`NOT_LEADER`, `UNAVAILABLE`, a broken connection) is retried on the hinted leader or the next
//! replica, with exponential backoff, until [`RETRY_BUDGET`] is spent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use wallet_proto::reason::{self, Reason};
use wallet_proto::topology::{Ring, Topology, META_GROUP_ID};
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::{
    shard_read::Query, Command, Outcome, ReadResult, ShardCommand, ShardRead, TsoRequest,
    TsoResponse,
};

/// How long one request may keep retrying across leader changes.
pub const RETRY_BUDGET: Duration = Duration::from_secs(8);
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The shards of a cluster, as the router sees them.
pub struct Shards {
    topology: Topology,
    ring: Ring,
    clients: HashMap<u64, ShardClient<Channel>>,
    leaders: Mutex<HashMap<u64, u64>>,
}

impl Shards {
    /// Builds channels (connected lazily) to every node of the topology.
    pub fn new(topology: Topology) -> Result<Shards, String> {
        let mut clients = HashMap::new();
        for node in &topology.nodes {
            let endpoint = Endpoint::from_shared(format!("http://{}", node.address))
                .map_err(|e| format!("bad address {}: {e}", node.address))?
                .connect_timeout(Duration::from_secs(1))
                .timeout(CALL_TIMEOUT)
                // A node that died without closing its connections (host crash, power loss,
                // SIGSTOP) is noticed within about a second and a half, instead of each call
                // waiting out CALL_TIMEOUT; its calls then fail over like any other.
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            clients.insert(node.id, ShardClient::new(endpoint.connect_lazy()));
        }
        Ok(Shards {
            ring: topology.ring(),
            topology,
            clients,
            leaders: Mutex::new(HashMap::new()),
        })
    }

    /// Ids of the data shards.
    pub fn shard_ids(&self) -> Vec<u64> {
        self.topology.shards.iter().map(|s| s.id).collect()
    }

    /// The shard owning an account.
    pub fn shard_of(&self, account_id: &str) -> u64 {
        self.ring.shard_of(account_id)
    }

    /// Proposes a command to a shard.
    pub async fn execute(&self, shard_id: u64, command: Command) -> Result<Outcome, Status> {
        self.with_leader(shard_id, |mut client| {
            let request = ShardCommand {
                shard_id,
                command: Some(command.clone()),
            };
            async move { client.execute(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// A linearizable read on a shard.
    pub async fn read(&self, shard_id: u64, query: Query) -> Result<ReadResult, Status> {
        self.with_leader(shard_id, |mut client| {
            let request = ShardRead {
                shard_id,
                query: Some(query.clone()),
            };
            async move { client.read(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// `count` strictly increasing timestamps from the meta group's oracle.
    pub async fn tso(&self, count: u32) -> Result<TsoResponse, Status> {
        self.with_leader(META_GROUP_ID, |mut client| async move {
            client
                .tso(TsoRequest { count })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    fn guess_leader(&self, shard_id: u64, replicas: &[u64], attempt: usize) -> u64 {
        let cached = self
            .leaders
            .lock()
            .ok()
            .and_then(|l| l.get(&shard_id).copied());
        cached.unwrap_or(replicas[attempt % replicas.len()])
    }

    fn set_leader(&self, shard_id: u64, node_id: Option<u64>) {
        if let Ok(mut leaders) = self.leaders.lock() {
            match node_id {
                Some(node_id) => leaders.insert(shard_id, node_id),
                None => leaders.remove(&shard_id),
            };
        }
    }

    async fn with_leader<T, F, Fut>(&self, shard_id: u64, call: F) -> Result<T, Status>
    where
        F: Fn(ShardClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let replicas = self
            .topology
            .replicas_of(shard_id)
            .ok_or_else(|| Reason::Internal.status(format!("no shard {shard_id} in topology")))?;
        let started = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        let mut attempt = 0;
        loop {
            let node_id = self.guess_leader(shard_id, &replicas, attempt);
            let client = self
                .clients
                .get(&node_id)
                .cloned()
                .ok_or_else(|| Reason::Internal.status(format!("no node {node_id}")))?;
            let status = match call(client).await {
                Ok(answer) => {
                    self.set_leader(shard_id, Some(node_id));
                    return Ok(answer);
                }
                Err(status) => status,
            };
            let reason = reason::of_status(&status);
            if !reason.is_retryable() {
                return Err(status);
            }
            let hint = reason::leader_hint(&status).filter(|h| *h != node_id);
            self.set_leader(shard_id, hint);
            attempt += 1;
            if started.elapsed() + backoff > RETRY_BUDGET {
                tracing::debug!(shard_id, %reason, "retry budget spent");
                return Err(Reason::Unavailable.status(format!(
                    "shard {shard_id} has no reachable leader: {}",
                    status.message()
                )));
            }
            // A fresh hint is worth trying at once; otherwise wait for an election.
            if hint.is_none() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
