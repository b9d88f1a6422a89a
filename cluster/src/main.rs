//! `wallet-cluster`: the wallet store on one machine. `up` starts a playground cluster, `demo` runs
//! a payment workload against one, `node` and `router` run a single process in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wallet_client::{ClientOptions, WalletClient};
use wallet_cluster::demo::{self, DemoOptions};
use wallet_cluster::playground::{Playground, PlaygroundOptions};
use wallet_proto::topology::Topology;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Run the wallet store on one machine: playground cluster and demo workload"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Args, Debug, Clone)]
struct ClusterShape {
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Number of shards (Raft groups).
    #[arg(long, default_value_t = 3)]
    shards: u64,
    /// Replicas per shard.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Snapshot and compact each shard's log every this many entries.
    #[arg(long, default_value_t = 10_000)]
    compact_every: u64,
    /// Resolve cross-shard transfers whose router died after this many ms.
    #[arg(long, default_value_t = 10_000)]
    resolve_after_ms: u64,
    /// How long request ids are remembered (README § Retention), written to a new cluster file.
    #[arg(long, default_value_t = wallet_proto::topology::REQUEST_RETENTION_SECS_DEFAULT)]
    request_retention_secs: u64,
    /// Plaintext everywhere, for quick experiments. Without it every process speaks TLS with
    /// certificates created in DIR/certs/, and nodes take internal calls from members only.
    #[arg(long)]
    insecure: bool,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Start nodes and a router on 127.0.0.1 and keep them running until Ctrl-C / SIGTERM.
    /// Run again on the same --dir to resume its data.
    Up {
        #[command(flatten)]
        shape: ClusterShape,
        /// Playground directory (cluster.toml, data, logs).
        #[arg(long, default_value = "./wallet-data")]
        dir: PathBuf,
        /// Router port; nodes take the next ones.
        #[arg(long, default_value_t = 7000)]
        port: u16,
    },
    /// Run a concurrent payment workload and check that money is conserved. Starts its own
    /// playground in a temporary directory unless --endpoint is given.
    Demo {
        #[command(flatten)]
        shape: ClusterShape,
        /// Use a running router instead of starting a playground.
        #[arg(long, requires = "cluster")]
        endpoint: Option<String>,
        /// Cluster file of that running cluster (tells which shard holds an account).
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// TLS to that running router.
        #[command(flatten)]
        tls: wallet_client::TlsArgs,
        /// How transfers pick their accounts.
        #[arg(long, value_enum, default_value = "random")]
        pairs: demo::Pairs,
        /// Playground directory (default: a fresh temporary one, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Duration of the workload in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Accounts to open.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
    },
    /// Show every Raft group of a running cluster: replicas with node, role, term, commit and
    /// applied index, lag, request records remembered, and phase (serving, probing, recovering,
    /// DOWN with its last panic).
    Status {
        /// Playground directory (reads its cluster.toml, and panics.log of each node's data).
        #[arg(long, default_value = "./wallet-data", conflicts_with = "cluster")]
        dir: PathBuf,
        /// Cluster file of a cluster that is not a local playground.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// TLS to that cluster's nodes: a member's certificate (a router's); a playground's
        /// own are found in DIR/certs.
        #[command(flatten)]
        tls: wallet_client::TlsArgs,
    },
    /// Back up every account of a running cluster at one oracle timestamp (both legs of every
    /// transfer, or neither), while it serves, into TO: one CRC-checked file per shard and a
    /// manifest.
    Backup {
        /// Where to write the backup (created; must not hold one already).
        #[arg(long)]
        to: PathBuf,
        /// Playground directory of the cluster (its cluster.toml and certificates).
        #[arg(long, default_value = "./wallet-data", conflicts_with = "cluster")]
        dir: PathBuf,
        /// Cluster file of a cluster that is not a local playground.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// TLS to that cluster's nodes: a member's certificate (a router's).
        #[command(flatten)]
        tls: wallet_client::TlsArgs,
    },
    /// Build a new playground cluster in DIR from a backup: check every file against the
    /// manifest, start the cluster, open every account with its balance, audit it against the
    /// backup, and stop it (`up --dir DIR` then serves it).
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// The new playground directory (must not hold a cluster).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        shape: ClusterShape,
    },
    /// Create a CA and certificates for a cluster in DIR (ca.crt, ca.key, node-N, router and
    /// client .crt/.key), for the compose file, Kubernetes Secrets or your own hosts. A DIR that
    /// already holds a CA is left as it is.
    Certs {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// Node ids 1..=N get a certificate each.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// More names or addresses every node and router certificate is valid for (besides
        /// node-N or router, localhost and 127.0.0.1), comma-separated: the names clients dial.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Run one node in the foreground (same flags as `wallet-node`).
    Node(wallet_node::cli::NodeArgs),
    /// Run one router in the foreground (same flags as `wallet-router`).
    Router(wallet_router::cli::RouterArgs),
}

/// The process's allocator: mimalloc instead of glibc's malloc (see ARCHITECTURE § The write path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Commands::Node(args) => {
            wallet_node::cli::main_with(args);
            0
        }
        Commands::Router(args) => {
            wallet_router::cli::main_with(args);
            0
        }
        command => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => match runtime.block_on(run(command)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("wallet-cluster: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("wallet-cluster: cannot start runtime: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn options(shape: &ClusterShape, dir: PathBuf, port: u16) -> Result<PlaygroundOptions, String> {
    Ok(PlaygroundOptions {
        dir,
        nodes: shape.nodes,
        shards: shape.shards,
        replicas: shape.replicas.min(shape.nodes),
        port,
        compact_every: shape.compact_every,
        resolve_after_ms: shape.resolve_after_ms,
        request_retention_secs: shape.request_retention_secs,
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        insecure: shape.insecure,
    })
}

async fn start(options: &PlaygroundOptions) -> Result<Playground, String> {
    let mut playground = Playground::create(options)?;
    println!(
        "starting {} nodes, {} shards x {} replicas in {}",
        playground.topology.nodes.len(),
        playground.topology.shards.len(),
        options.replicas,
        playground.dir.display()
    );
    playground.start_all()?;
    let leaders = playground.wait_ready(Duration::from_secs(60)).await?;
    for node in &playground.topology.nodes {
        println!("node {} at {}", node.id, node.address);
    }
    for (shard, leader) in &leaders {
        if *shard == wallet_proto::topology::META_GROUP_ID {
            println!("meta group (timestamp oracle) led by node {leader}");
        } else {
            println!("shard {shard} led by node {leader}");
        }
    }
    println!("router at {}", playground.router_address);
    println!(
        "router metrics at http://{}/metrics, HTTP API at http://{}/v1/",
        playground.endpoints.router.metrics, playground.endpoints.router.http
    );
    match playground.client_tls() {
        Some(files) => {
            println!(
                "TLS on (certificates in {}); a client needs:",
                playground.dir.join("certs").display()
            );
            for (name, path) in [
                ("WALLET_TLS_CA", Some(&files.ca)),
                ("WALLET_TLS_CERT", files.cert.as_ref()),
                ("WALLET_TLS_KEY", files.key.as_ref()),
            ] {
                if let Some(path) = path {
                    let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                    println!("  export {name}={}", path.display());
                }
            }
        }
        None => println!("TLS off (--insecure): every port speaks plaintext"),
    }
    println!(
        "every address: {}",
        playground
            .dir
            .join(wallet_cluster::endpoints::FILE)
            .display()
    );
    Ok(playground)
}

/// The cluster file, playground directory and member TLS of a cluster named by a playground
/// directory (its `cluster.toml` and `certs/router.*`, when it has certificates) or by a cluster
/// file and TLS flags.
#[allow(clippy::type_complexity)]
fn cluster_access(
    dir: PathBuf,
    cluster: Option<PathBuf>,
    tls: &wallet_client::TlsArgs,
) -> Result<
    (
        Topology,
        Option<PathBuf>,
        Option<std::sync::Arc<wallet_tls::ClientTls>>,
    ),
    String,
> {
    let (topology, dir, files) = match cluster {
        Some(path) => (
            Topology::load(&path)?,
            None,
            tls.files().map_err(|e| e.to_string())?,
        ),
        None => {
            let certs = dir.join("certs");
            let files = wallet_tls::issue::ca_file(&certs)
                .exists()
                .then(|| wallet_tls::issue::files(&certs, wallet_tls::ROUTER_NAME));
            (Topology::load(&dir.join("cluster.toml"))?, Some(dir), files)
        }
    };
    let tls = match files {
        Some(files) => Some(wallet_tls::ClientTls::load(files).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok((topology, dir, tls))
}

async fn run(command: Commands) -> Result<i32, String> {
    match command {
        Commands::Up { shape, dir, port } => {
            let mut playground = start(&options(&shape, dir, port)?).await?;
            println!(
                "ready (WALLET_ENDPOINT={}); Ctrl-C stops",
                playground.router_address
            );
            // The supervisor: a node or router that exits by itself (a panic ends the process,
            // G9) is restarted with backoff, and every exit and restart is logged here.
            let stop = wallet_proto::shutdown::signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        for event in playground.supervise() {
                            println!("supervisor: {event}");
                        }
                    }
                }
            }
            println!("stopping ...");
            let killed = playground.stop_all();
            if killed.is_empty() {
                println!("stopped cleanly");
            } else {
                println!("had to kill: {}", killed.join(", "));
            }
            Ok(0)
        }
        Commands::Demo {
            shape,
            endpoint,
            cluster,
            tls,
            dir,
            clients,
            seconds,
            accounts,
            pairs,
        } => {
            let mut temp = None;
            let (endpoint, ring, tls, mut playground) = match endpoint {
                Some(endpoint) => {
                    let path = cluster.ok_or("--endpoint needs --cluster")?;
                    let tls = tls.files().map_err(|e| e.to_string())?;
                    (endpoint, Topology::load(&path)?.ring(), tls, None)
                }
                None => {
                    let dir = match dir {
                        Some(dir) => dir,
                        None => {
                            let path = std::env::temp_dir()
                                .join(format!("wallet-demo-{}", std::process::id()));
                            temp = Some(path.clone());
                            path
                        }
                    };
                    let playground = start(&options(&shape, dir, 0)?).await?;
                    let ring = playground.topology.ring();
                    let tls = playground.client_tls();
                    (
                        playground.router_address.clone(),
                        ring,
                        tls,
                        Some(playground),
                    )
                }
            };
            let client = WalletClient::with_options(
                &[endpoint.as_str()],
                ClientOptions {
                    tls,
                    ..ClientOptions::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let result = demo::run(
                client,
                ring,
                DemoOptions {
                    accounts,
                    clients,
                    seconds,
                    initial_balance: 1_000_000,
                    ops_per_client_max: 10_000_000,
                    pairs,
                },
            )
            .await;
            if let Some(playground) = playground.as_mut() {
                playground.stop_all();
            }
            if let Some(path) = temp {
                let _ = std::fs::remove_dir_all(path);
            }
            let report = result?;
            println!("{}", report.table());
            Ok(if report.conserved() { 0 } else { 2 })
        }
        Commands::Status { dir, cluster, tls } => {
            let (topology, dir, tls) = cluster_access(dir, cluster, &tls)?;
            let nodes = wallet_cluster::status::gather(&topology, tls.as_ref()).await;
            print!(
                "{}",
                wallet_cluster::status::render(&topology, &nodes, dir.as_deref())
            );
            Ok(0)
        }
        Commands::Backup {
            to,
            dir,
            cluster,
            tls,
        } => {
            let (topology, _, tls) = cluster_access(dir, cluster, &tls)?;
            let service = wallet_router::service::WalletService::for_topology(
                topology,
                wallet_router::service::MAX_IN_FLIGHT_DEFAULT,
                tls,
            )?;
            let manifest =
                wallet_cluster::backup::backup(&service, &to, |line| println!("{line}")).await?;
            let accounts: u64 = manifest.files.iter().map(|f| f.accounts).sum();
            println!(
                "backup of {accounts} accounts at ts {} in {}",
                manifest.ts,
                to.display()
            );
            Ok(0)
        }
        Commands::Restore { from, dir, shape } => {
            if dir.join("cluster.toml").exists() {
                return Err(format!("{} already holds a cluster", dir.display()));
            }
            let (manifest, lines) = wallet_cluster::backup::verify(&from)?;
            println!(
                "backup of {} accounts at ts {} checked against its manifest",
                lines.len(),
                manifest.ts
            );
            let mut playground = start(&options(&shape, dir.clone(), 0)?).await?;
            let client = WalletClient::with_options(
                &[playground.router_address.as_str()],
                ClientOptions {
                    tls: playground.client_tls(),
                    ..ClientOptions::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let restored = wallet_cluster::backup::restore(&manifest, &lines, &client, |line| {
                println!("{line}")
            })
            .await;
            let killed = playground.stop_all();
            restored?;
            if !killed.is_empty() {
                return Err(format!("had to kill: {}", killed.join(", ")));
            }
            println!(
                "restored {} accounts into {}; the audit matches the backup. Serve it with: wallet-cluster up --dir {}",
                lines.len(),
                dir.display(),
                dir.display()
            );
            Ok(0)
        }
        Commands::Certs { dir, nodes, hosts } => {
            let ids: Vec<u64> = (1..=nodes).collect();
            let created =
                wallet_tls::issue::ensure_cluster(&dir, &ids, &hosts).map_err(|e| e.to_string())?;
            println!(
                "{} {}",
                if created {
                    "certificates written to"
                } else {
                    "a CA is already in"
                },
                dir.display()
            );
            Ok(0)
        }
        Commands::Node(_) | Commands::Router(_) => unreachable!("handled in main"),
    }
}
