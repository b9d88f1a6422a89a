//! `wallet-jepsen`: runs the chaos harness against real processes, or re-checks a stored history.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wallet_jepsen::nemesis::{self, Nemesis};
use wallet_jepsen::run::{self, BackendKind, RunOptions, Workload};
use wallet_jepsen::{checker, history::History, plots};

#[derive(Parser, Debug)]
#[command(version, about = "Chaos harness of the wallet store")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run a workload under faults on a real cluster (processes on 127.0.0.1, or containers),
    /// then check the history and draw it; exits 1 when it is invalid.
    Run {
        /// What the clients do.
        #[arg(long, value_enum, default_value = "bank")]
        workload: Workload,
        /// Faults, comma-separated (partition needs --backend docker).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "kill,leader,pause,router,clock"
        )]
        nemesis: Vec<Nemesis>,
        /// Seconds of workload.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Client processes.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Nodes in the cluster (as many shards, 3 replicas each).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(3..=9))]
        nodes: u64,
        /// Bank accounts.
        #[arg(long, default_value_t = 8)]
        accounts: usize,
        /// Seed of the workload and fault schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where histories and results go.
        #[arg(long, default_value = "store")]
        store: PathBuf,
        /// Where the cluster runs: processes on 127.0.0.1, or containers (image wallet:dev).
        #[arg(long, value_enum, default_value = "local")]
        backend: BackendKind,
        /// Bank workload over the whole range: accounts with a credit limit of i64::MAX, funded
        /// with i64::MAX / 2 each, and transfer amounts up to i64::MAX.
        #[arg(long)]
        extremes: bool,
    },
    /// Re-check a stored history (DIR/history.jsonl); writes DIR/results.edn, redraws the
    /// pictures, prints a summary, and exits 1 when the history is invalid.
    Check {
        dir: PathBuf,
        /// Money put into the accounts before the history began (default: DIR/initial-total).
        #[arg(long)]
        initial_total: Option<i128>,
    },
    /// Run one node (used by `run` to start its cluster).
    #[command(hide = true)]
    Node(wallet_node::cli::NodeArgs),
    /// Run one router (used by `run` to start its cluster).
    #[command(hide = true)]
    Router(wallet_router::cli::RouterArgs),
}

fn fail(message: String) -> ! {
    eprintln!("wallet-jepsen: {message}");
    std::process::exit(2);
}

/// The process's allocator: mimalloc instead of glibc's malloc (see ARCHITECTURE § The write path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    match Cli::parse().command {
        Commands::Node(args) => wallet_node::cli::main_with(args),
        Commands::Router(args) => wallet_router::cli::main_with(args),
        Commands::Check { dir, initial_total } => {
            let initial_total = initial_total
                .or_else(|| {
                    std::fs::read_to_string(dir.join("initial-total"))
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                })
                .unwrap_or_else(|| {
                    fail(format!(
                        "no --initial-total and no {}/initial-total",
                        dir.display()
                    ))
                });
            let history = History::load(&dir).unwrap_or_else(|e| fail(e));
            // The accounts' floor (DIR/floor: -i64::MAX for --extremes runs; absent: 0).
            let floor = std::fs::read_to_string(dir.join("floor"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            let report = checker::check(&history, initial_total, floor);
            if let Err(e) = std::fs::write(dir.join("results.edn"), report.to_edn()) {
                eprintln!("wallet-jepsen: cannot write results.edn: {e}");
            }
            let events = nemesis::load(&dir).unwrap_or_else(|e| fail(e));
            match plots::draw(&dir, &history, &events) {
                Ok(paths) => println!("pictures: {}", paths.join(", ")),
                Err(e) => println!("pictures skipped: {e}"),
            }
            print!("{}", report.summary());
            std::process::exit(if report.valid() { 0 } else { 1 });
        }
        Commands::Run {
            workload,
            nemesis,
            time,
            concurrency,
            nodes,
            accounts,
            seed,
            store,
            backend,
            extremes,
        } => {
            let exe = std::env::current_exe().unwrap_or_else(|e| fail(e.to_string()));
            let options = RunOptions {
                backend,
                workload,
                time: Duration::from_secs(time),
                concurrency: concurrency.max(1),
                accounts: accounts.max(2),
                nemeses: nemesis,
                nodes,
                seed,
                store,
                exe,
                extremes,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(e.to_string()));
            match runtime.block_on(run::run(options)) {
                Ok((dir, report)) => {
                    print!("{}", report.summary());
                    println!("store: {}", dir.display());
                    std::process::exit(if report.valid() { 0 } else { 1 });
                }
                Err(e) => fail(e),
            }
        }
    }
}
