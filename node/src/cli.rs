//! Command line of a node (`wallet-node`, and `wallet-cluster node`).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::node::{self, NodeOptions};
use crate::replica::ReplicaConfig;
use clap::Parser;
use wallet_proto::topology::Topology;

/// A wallet store node: hosts Raft replicas of several shards on sled and serves them over gRPC.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct NodeArgs {
    /// This node's id in the cluster file.
    #[arg(long, env = "WALLET_NODE_ID")]
    pub id: u64,
    /// Address to serve gRPC on (defaults to this node's address in the cluster file).
    #[arg(long, env = "WALLET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for this node's data (created if missing).
    #[arg(long, env = "WALLET_DATA_DIR")]
    pub data_dir: PathBuf,
    /// TOML cluster file: nodes with addresses, shards with replica node ids, virtual nodes.
    #[arg(long, env = "WALLET_CLUSTER")]
    pub cluster: PathBuf,
    /// Snapshot and compact a shard's Raft log every this many applied entries.
    #[arg(long, env = "WALLET_COMPACT_EVERY", default_value_t = 10_000)]
    pub compact_every: u64,
    /// Resolve a cross-shard transfer left undecided (its router died) after this many ms.
    #[arg(long, env = "WALLET_RESOLVE_AFTER_MS", default_value_t = 10_000)]
    pub resolve_after_ms: u64,
    /// Address to serve Prometheus metrics on, at `/metrics` (not served when absent).
    #[arg(long, env = "WALLET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Send Raft batches of at least this many bytes zstd-compressed (catch-up appends), and
    /// snapshot streams too; 0 (the default) never compresses. Turn it on (32768 is a good value)
    /// only once every node runs a release that reads compressed messages (this one or later).
    #[arg(long, env = "WALLET_RAFT_COMPRESS_ABOVE", default_value_t = crate::transport::COMPRESS_ABOVE_DEFAULT)]
    pub raft_compress_above: usize,
    /// TLS: serve over it, dial peers over it, and take `Shard` and `Raft` calls only from
    /// member certificates (nodes, routers). Without --tls-ca the node speaks plaintext.
    #[command(flatten)]
    pub tls: wallet_tls::TlsArgs,
}

/// Sets up logging (`RUST_LOG`, default info) on stderr.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a node with these arguments until SIGTERM/SIGINT; exits the process on a start-up error.
pub fn main_with(args: NodeArgs) {
    init_logging();
    wallet_proto::fail_stop::install("wallet-node", Some(args.data_dir.clone()));
    // Arms the failpoints named in FAILPOINTS (a no-op unless built with `failpoints`).
    let _failpoints = fail::FailScenario::setup();
    if let Err(e) = start(args) {
        eprintln!("wallet-node: {e}");
        std::process::exit(1);
    }
}

fn start(args: NodeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let topology = Topology::load(&args.cluster)?;
    let listen = match args.listen {
        Some(listen) => listen,
        None => topology
            .address_of(args.id)
            .ok_or_else(|| format!("node {} is not in the cluster file", args.id))?
            .parse()?,
    };
    let options = NodeOptions {
        node_id: args.id,
        listen,
        data_dir: args.data_dir,
        topology,
        replica: ReplicaConfig {
            compact_every: args.compact_every,
            ..ReplicaConfig::default()
        },
        resolve_after: std::time::Duration::from_millis(args.resolve_after_ms.max(1)),
        metrics_listen: args.metrics_listen,
        raft_compress_above: args.raft_compress_above,
        tls: args.tls.files()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(node::run(options, wallet_proto::shutdown::signal()))
}
