//! `wallet-bench`: the wallet store's own benchmark. Runs the transfer workload of
//! `../shared/bench/pg-transfer.sh` against a running cluster (`--endpoint` + `--cluster`), or
//! starts a playground of its own (3 nodes × 3 shards × 3 replicas, fsync on) in a temporary
//! directory and stops it afterwards. Prints progress once a second, then throughput, latency,
//! cluster CPU per 1 000 transfers, node memory and disk growth (`--json`: one object).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wallet_client::{ClientOptions, WalletClient};
use wallet_cluster::bench::{self, BenchOptions};
use wallet_cluster::playground::{Playground, PlaygroundOptions};
use wallet_cluster::workload::Pairs;
use wallet_proto::topology::Topology;
use wallet_router::service::{WalletService, MAX_IN_FLIGHT_DEFAULT};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmark the wallet store with the transfer workload of pg-transfer.sh",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    process: Option<Process>,
    #[command(flatten)]
    bench: BenchArgs,
}

/// The playground starts its nodes and router from this executable.
#[derive(Subcommand, Debug)]
enum Process {
    #[command(hide = true)]
    Node(wallet_node::cli::NodeArgs),
    #[command(hide = true)]
    Router(wallet_router::cli::RouterArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Accounts to open and fund before the run.
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    /// How a transfer picks its two accounts.
    #[arg(long, value_enum, default_value = "same-shard")]
    pairs: Pairs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Duration of the measured run in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Transfers per request through the batch API (0: one Transfer call each).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Each call is one linked chain of this many transfers (2..=8189), all or nothing across
    /// shards (README § Linked chains); the figures count transfers. 0: no chains.
    #[arg(long, default_value_t = 0)]
    chain: usize,
    /// Money each account starts with (pg-transfer.sh: 1 000 000).
    #[arg(long, default_value_t = 1_000_000)]
    initial_balance: i64,
    /// Batches (of 8 189 accounts, each with its opening balance) in flight while opening them.
    #[arg(long, default_value_t = 4)]
    setup_concurrency: usize,
    /// A running cluster's router instead of a playground of its own.
    #[arg(long, requires = "cluster", env = "WALLET_ENDPOINT")]
    endpoint: Option<String>,
    /// That cluster's file (which shard holds an account; its processes are measured).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// TLS to that running cluster: a client certificate for its router, and with
    /// --in-process a member's (a router's) for its nodes.
    #[command(flatten)]
    tls: wallet_client::TlsArgs,
    /// Playground: plaintext everywhere (by default it speaks TLS, as `wallet-cluster up` does).
    #[arg(long, conflicts_with = "endpoint")]
    insecure: bool,
    /// Directory of the playground it starts (default: a temporary one, removed afterwards).
    #[arg(long, conflicts_with = "endpoint")]
    dir: Option<PathBuf>,
    /// Playground: node processes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Playground: shards.
    #[arg(long, default_value_t = 3)]
    shards: u64,
    /// Playground: replicas per shard.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Playground: snapshot and compact each shard's log every this many entries.
    #[arg(long, default_value_t = 10_000)]
    compact_every: u64,
    /// Playground: how long request ids are remembered (README § Retention).
    #[arg(long, default_value_t = wallet_proto::topology::REQUEST_RETENTION_SECS_DEFAULT)]
    request_retention_secs: u64,
    /// Account ids are PREFIX-0 .. PREFIX-(N-1) (default: unique to this run).
    #[arg(long)]
    prefix: Option<String>,
    /// Do not open and fund the accounts: an earlier run with the same --prefix did.
    #[arg(long, requires = "prefix")]
    no_setup: bool,
    /// Embed the router: the client routes by itself (ring, leader cache, timestamps, the
    /// two-phase coordinator in this process), so no call goes through a router process. This
    /// process's CPU and memory are then counted with the cluster's.
    #[arg(long)]
    in_process: bool,
    /// Print one JSON object at the end (progress still goes to stdout before it).
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// The process's allocator: mimalloc instead of glibc's malloc (see ARCHITECTURE § The write path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    match cli.process {
        Some(Process::Node(args)) => wallet_node::cli::main_with(args),
        Some(Process::Router(args)) => wallet_router::cli::main_with(args),
        None => {
            let code = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => match runtime.block_on(run(cli.bench)) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("wallet-bench: {e}");
                        1
                    }
                },
                Err(e) => {
                    eprintln!("wallet-bench: cannot start runtime: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

async fn run(args: BenchArgs) -> Result<(), String> {
    let mut temp = None;
    let (endpoint, topology, cluster_file, client_tls, member_tls, mut playground) =
        match &args.endpoint {
            Some(endpoint) => {
                let path = args.cluster.clone().ok_or("--endpoint needs --cluster")?;
                let tls = args.tls.files().map_err(|e| e.to_string())?;
                (
                    endpoint.clone(),
                    Topology::load(&path)?,
                    path,
                    tls.clone(),
                    tls,
                    None,
                )
            }
            None => {
                let dir = match &args.dir {
                    Some(dir) => dir.clone(),
                    None => {
                        let path = std::env::temp_dir()
                            .join(format!("wallet-bench-{}", std::process::id()));
                        temp = Some(path.clone());
                        path
                    }
                };
                let options = PlaygroundOptions {
                    dir,
                    nodes: args.nodes,
                    shards: args.shards,
                    replicas: args.replicas.min(args.nodes),
                    port: 0,
                    compact_every: args.compact_every,
                    resolve_after_ms: 10_000,
                    request_retention_secs: args.request_retention_secs,
                    exe: std::env::current_exe().map_err(|e| e.to_string())?,
                    insecure: args.insecure,
                };
                let mut playground = Playground::create(&options)?;
                println!(
                    "starting a playground: {} nodes, {} shards x {} replicas in {}",
                    options.nodes,
                    options.shards,
                    options.replicas,
                    options.dir.display()
                );
                playground.start_all()?;
                playground.wait_ready(Duration::from_secs(60)).await?;
                (
                    playground.router_address.clone(),
                    playground.topology.clone(),
                    playground.cluster_file(),
                    playground.client_tls(),
                    playground.tls_files(wallet_tls::ROUTER_NAME),
                    Some(playground),
                )
            }
        };
    let replicas = topology
        .shards
        .first()
        .map(|s| s.replicas.len() as u64)
        .unwrap_or(1);
    let result = async {
        let client = if args.in_process {
            // The router's code now runs here: a panic in it must end this process, as it would
            // end a router process (G9), not leave a task dead behind a live client.
            wallet_proto::fail_stop::install("wallet-bench", None);
            let tls = match member_tls {
                Some(files) => Some(wallet_tls::ClientTls::load(files).map_err(|e| e.to_string())?),
                None => None,
            };
            let service =
                WalletService::for_topology(topology.clone(), MAX_IN_FLIGHT_DEFAULT, tls)?;
            WalletClient::in_process(Arc::new(service), ClientOptions::default())
        } else {
            WalletClient::with_options(
                &[endpoint.as_str()],
                ClientOptions {
                    tls: client_tls,
                    ..ClientOptions::default()
                },
            )
            .map_err(|e| e.to_string())?
        };
        bench::run(
            client,
            topology.ring(),
            Some(cluster_file),
            BenchOptions {
                accounts: args.accounts,
                clients: args.clients,
                seconds: args.seconds,
                pairs: args.pairs,
                batch: args.batch,
                chain: args.chain,
                initial_balance: args.initial_balance,
                setup_concurrency: args.setup_concurrency,
                replicas,
                progress: !args.quiet,
                prefix: args.prefix.clone().unwrap_or_else(|| {
                    let secs = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    format!("b{secs}")
                }),
                setup: !args.no_setup,
                in_process: args.in_process,
            },
        )
        .await
    }
    .await;
    if let Some(playground) = playground.as_mut() {
        playground.stop_all();
    }
    if let Some(path) = temp {
        let _ = std::fs::remove_dir_all(path);
    }
    let report = result?;
    print!("{}", report.text());
    if args.json {
        println!("{}", report.json());
    }
    Ok(())
}
