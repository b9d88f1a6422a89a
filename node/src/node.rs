//! Starting and stopping a node: open the sled database, start the transport and one Raft loop per
//! hosted shard, serve gRPC, and on SIGTERM/SIGINT stop serving, stop the loops (each flushes) and
//! flush the database before exiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tonic::codec::CompressionEncoding::{Gzip, Zstd};
use tonic::service::interceptor::InterceptedService;
use wallet_proto::reason::Reason;
use wallet_proto::topology::Topology;
use wallet_proto::v1::raft_server::RaftServer;
use wallet_proto::v1::shard_server::ShardServer;

use crate::group_commit::GroupCommit;
use crate::mark::Marks;
use crate::replica::{Replica, ReplicaConfig};
use crate::service::NodeService;
use crate::state_machine::StateMachine;
use crate::transport::{Registry, Transport};
use wallet_shard_client::shards::Shards;

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
    /// Where to serve `/metrics` (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Raft batches of at least this many bytes are sent zstd-compressed (0: never).
    pub raft_compress_above: usize,
    /// TLS files (none: plaintext). The node serves with them, dials its peers with them, and
    /// takes `Shard` and `Raft` calls only from certificates that name a member.
    pub tls: Option<wallet_tls::TlsFiles>,
}

/// How far (in entries) a replica's applied index may trail its commit index and still count as
/// caught up for the health service.
pub const CAUGHT_UP_LAG: u64 = 1_000;

/// How old (ms) the status a replica's loop last published may be: the loop publishes at least
/// every Raft tick (100 ms), so an older one means the loop stopped turning.
pub const STATUS_STALE_MS: i64 = 2_000;

/// Why this node cannot do its job right now (health NOT_SERVING), if it cannot: every replica
/// it hosts must be turning its loop, know a leader, take part in Raft normally, and have
/// applied what it knows committed. (A follower's commit index covers only entries it holds, so
/// one that is far behind its leader can still pass; `wallet-cluster status` shows that lag.)
pub fn unhealthy(
    hosted: usize,
    statuses: &[wallet_proto::v1::ReplicaStatus],
    now_ms: i64,
) -> Option<String> {
    if statuses.len() < hosted {
        return Some("replicas are still opening".into());
    }
    for s in statuses {
        if now_ms.saturating_sub(s.published_at_ms) > STATUS_STALE_MS {
            return Some(format!(
                "shard {}: its loop published nothing for {} ms",
                s.shard_id,
                now_ms.saturating_sub(s.published_at_ms)
            ));
        }
        if s.phase != wallet_proto::v1::ReplicaPhase::Serving as i32 {
            return Some(format!("shard {}: {} ({})", s.shard_id, s.role, s.note));
        }
        if s.leader_id == 0 {
            return Some(format!("shard {}: no leader known", s.shard_id));
        }
        if s.commit_index.saturating_sub(s.applied_index) > CAUGHT_UP_LAG {
            return Some(format!(
                "shard {}: applied {} of {} committed",
                s.shard_id, s.applied_index, s.commit_index
            ));
        }
    }
    None
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
    let metrics_listener = match options.metrics_listen {
        Some(listen) => Some(wallet_ops::metrics_http::bind(listen).await?),
        None => None,
    };
    let tls = match &options.tls {
        Some(files) => Some(wallet_tls::MemberTls::load(
            files.clone(),
            wallet_tls::ClientAuth::Optional,
        )?),
        None => None,
    };
    // Installed before the (possibly long) start-up, so a rotation's SIGHUP never meets the
    // signal's default action (the end of the process).
    let reload = match &tls {
        Some(tls) => Some(tls.reload_on_sighup()?),
        None => None,
    };
    let db = open_db(&options.data_dir)?;
    let marks = Arc::new(Marks::open(&options.data_dir)?);
    let snapshots = crate::snapshot_file::SnapshotDir::open(&options.data_dir)?;
    let group_commit = Arc::new(GroupCommit::new(
        db.clone(),
        &options.data_dir.join("sled"),
        snapshots.clone(),
    ));
    let registry: Registry = Arc::new(OnceLock::new());
    let peers: Vec<(u64, String)> = topology
        .nodes
        .iter()
        .map(|n| (n.id, n.address.clone()))
        .collect();
    let transport = Transport::start(
        options.node_id,
        &peers,
        registry.clone(),
        snapshots.clone(),
        options.raft_compress_above,
        tls.as_ref().map(|tls| tls.client.clone()),
    );
    let ring = topology.ring();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = HashMap::new();
    let mut opened = Vec::new();
    // Replicas to probe later (set aside while running) reach the prober through this channel.
    let (prober, more_probes) = tokio::sync::mpsc::unbounded_channel();
    let starting = std::time::Instant::now();
    tracing::info!(
        node = options.node_id,
        "node starting: opening its replicas"
    );
    for shard in topology.groups_on(options.node_id) {
        let opening = std::time::Instant::now();
        opened.push(Replica::open(
            &group_commit,
            &marks,
            &prober,
            shard.id,
            options.node_id,
            &shard.replicas,
            StateMachine::new(shard.id, ring.clone()),
            Box::new(transport.clone()),
            ReplicaConfig {
                retention_window_ms: topology.request_retention_ms(),
                ..options.replica.clone()
            },
        )?);
        tracing::info!(
            shard = shard.id,
            ms = opening.elapsed().as_millis() as u64,
            "replica opened (its state loaded)"
        );
    }
    // Replicas whose store is empty learn their peers' term and commit before any Raft step.
    let probes: Vec<crate::probe::Pending> = opened
        .iter()
        .filter(|o| o.pristine)
        .map(|o| crate::probe::Pending {
            shard_id: o.handle.shard_id,
            others: topology
                .replicas_of(o.handle.shard_id)
                .unwrap_or_default()
                .into_iter()
                .filter(|id| *id != options.node_id)
                .collect(),
            inbox: o.handle.inbox.clone(),
        })
        .collect();
    let mut tasks = Vec::new();
    for o in opened {
        handles.insert(o.handle.shard_id, o.handle);
        tasks.push(tokio::spawn(o.replica.run(o.inbox, stop_rx.clone())));
    }
    let shard_count = handles.len();
    let _ = registry.set(handles);
    let shards = Arc::new(Shards::with_tls(
        topology.clone(),
        tls.as_ref().map(|tls| tls.client.clone()),
    )?);
    // Turned true when shutdown begins: inbound Raft streams end, so the server can stop.
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing_tx.send(true);
    };
    let service = NodeService::new(
        options.node_id,
        ring,
        registry,
        shards.clone(),
        snapshots,
        closing,
    );
    let recovery = tokio::spawn(crate::recovery::run(
        service.clone(),
        shards,
        options.resolve_after,
        stop_rx.clone(),
    ));
    let probe = tokio::spawn(crate::probe::run(
        topology.clone(),
        probes,
        more_probes,
        tls.as_ref().map(|tls| tls.client.clone()),
        stop_rx.clone(),
    ));
    drop(prober);
    tracing::info!(
        node = options.node_id,
        listen = %options.listen,
        shards = shard_count,
        ms = starting.elapsed().as_millis() as u64,
        "node serving"
    );
    let (metrics_registry, rpc_metrics, refresh) = crate::exporter::registry(service.clone());
    let verdict = wallet_ops::grpc_meta::Verdict::default();
    let metrics = match metrics_listener {
        Some(listener) => Some(
            wallet_ops::metrics_http::spawn(listener, metrics_registry, refresh, verdict.clone())?
                .1,
        ),
        None => None,
    };
    let (reporter, health) = wallet_ops::grpc_meta::health_reporter();
    // Raft stays SERVING while the process runs: it is what a shard without a leader needs to
    // elect one (a readiness gate on it could keep a cluster that lost quorum from regaining it).
    reporter
        .set_service_status("wallet.v1.Raft", tonic_health::ServingStatus::Serving)
        .await;
    let checked = service.clone();
    let health_check = wallet_ops::grpc_meta::keep_health(
        reporter,
        verdict,
        &["wallet.v1.Shard"],
        std::time::Duration::from_millis(500),
        1,
        move || {
            let verdict = unhealthy(shard_count, &checked.statuses(), crate::service::now_ms());
            async move { verdict.map_or(Ok(()), Err) }
        },
    )
    .await;
    let (reflection_v1, reflection_v1alpha) = wallet_ops::grpc_meta::reflection()?;
    // Shard: nodes and routers. Raft: nodes only (a router never sends Raft messages, and a
    // Raft message is trusted with a replica's whole state).
    let node_names: Vec<String> = topology
        .nodes
        .iter()
        .map(|n| wallet_tls::node_name(n.id))
        .collect();
    let (shard_members, raft_members) = match &tls {
        Some(_) => (
            Some(wallet_tls::Members::new(
                node_names
                    .iter()
                    .cloned()
                    .chain([wallet_tls::ROUTER_NAME.to_string()]),
            )?),
            Some(wallet_tls::Members::new(node_names)?),
        ),
        None => (None, None),
    };
    let shard_guard =
        move |request: tonic::Request<()>| members_only(shard_members.as_ref(), request);
    let raft_guard =
        move |request: tonic::Request<()>| members_only(raft_members.as_ref(), request);
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A peer that vanished behind a partition leaves its Raft stream open here: pings find
        // its connection dead and end it.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .layer(rpc_metrics)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            ShardServer::new(service.clone())
                .max_decoding_message_size(wallet_proto::BATCH_BYTES_MAX)
                .accept_compressed(Gzip)
                .accept_compressed(Zstd)
                .send_compressed(Gzip)
                .send_compressed(Zstd),
            shard_guard,
        ))
        .add_service(InterceptedService::new(
            RaftServer::new(service)
                .max_decoding_message_size(wallet_proto::MESSAGE_BYTES_MAX)
                .accept_compressed(Gzip)
                .accept_compressed(Zstd)
                .send_compressed(Gzip)
                .send_compressed(Zstd),
            raft_guard,
        ));
    // Bound only now that the replicas are open: until then a caller is refused at once and
    // goes to another replica instead of waiting on a port nobody serves yet.
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    wallet_ops::rpc_metrics::serve(
        router,
        listener,
        tls.as_ref().map(|tls| &tls.server),
        shutdown,
    )
    .await?;
    health_check.abort();
    if let Some(reload) = reload {
        reload.abort();
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    tracing::info!(node = options.node_id, "stopping replicas");
    let _ = stop_tx.send(true);
    let _ = recovery.await;
    let _ = probe.await;
    for task in tasks {
        let _ = task.await;
    }
    db.flush_async().await?;
    tracing::info!(node = options.node_id, "node stopped cleanly");
    Ok(())
}

/// The gate of the internal services: over TLS, only a caller whose certificate names a member
/// (a node of the cluster file or a router) gets through; without TLS (`members` none), all do.
#[allow(clippy::result_large_err)]
fn members_only(
    members: Option<&wallet_tls::Members>,
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let Some(members) = members else {
        return Ok(request);
    };
    match members.identify(&request) {
        Ok(name) => {
            let mut request = request;
            if let Some(id) = name
                .strip_prefix("node-")
                .and_then(|id| id.parse::<u64>().ok())
            {
                request
                    .extensions_mut()
                    .insert(crate::transport::CallerNode(id));
            }
            Ok(request)
        }
        Err(wallet_tls::Refused::NoCertificate) => Err(Reason::Unauthenticated
            .status("internal services need the client certificate of a cluster member")),
        Err(wallet_tls::Refused::NotAMember) => Err(Reason::PermissionDenied
            .status("this certificate names no member allowed to call this service")),
    }
}

/// Opens the node's sled database. One that sled itself reports corrupt — or panics on while
/// recovering it, as sled 0.34 does for some damaged files — is set aside whole (renamed
/// `sled.set-aside`, replacing the one set aside before) and the node starts empty: every replica
/// then rebuilds from its peers (G7), instead of the node never starting again.
fn open_db(data_dir: &std::path::Path) -> Result<sled::Db, Box<dyn std::error::Error>> {
    let path = data_dir.join("sled");
    let open = || {
        sled::Config::new()
            .path(&path)
            .cache_capacity(256 * 1024 * 1024)
            .open()
    };
    let opened = wallet_proto::fail_stop::catch(open).unwrap_or_else(|panic| {
        Err(sled::Error::Corruption { at: None, bt: () })
            .inspect_err(|_| tracing::error!(%panic, "sled panicked while opening the database"))
    });
    match opened {
        Err(e @ sled::Error::Corruption { .. }) => {
            tracing::error!(error = %e, "sled database corrupt: set aside; every replica is rebuilt from its peers");
            let aside = data_dir.join("sled.set-aside");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(&path, &aside)?;
            Ok(open()?)
        }
        other => Ok(other?),
    }
}
