//! `wallet-jepsen`: judges a stored history of the chaos harness.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use wallet_jepsen::{checker, history::History};

#[derive(Parser, Debug)]
#[command(version, about = "Chaos harness of the wallet store")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Re-check a stored history (DIR/history.jsonl); writes DIR/results.edn, prints a summary, and
    /// exits 1 when the history is invalid.
    Check {
        dir: PathBuf,
        /// Money put into the accounts before the history began (default: DIR/initial-total).
        #[arg(long)]
        initial_total: Option<i128>,
    },
}

fn main() {
    let Commands::Check { dir, initial_total } = Cli::parse().command;
    let initial_total = match initial_total {
        Some(total) => total,
        None => match std::fs::read_to_string(dir.join("initial-total"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            Some(total) => total,
            None => {
                eprintln!(
                    "wallet-jepsen: no --initial-total and no {}/initial-total",
                    dir.display()
                );
                std::process::exit(2);
            }
        },
    };
    let history = match History::load(&dir) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("wallet-jepsen: {e}");
            std::process::exit(2);
        }
    };
    let report = checker::check(&history, initial_total);
    if let Err(e) = std::fs::write(dir.join("results.edn"), report.to_edn()) {
        eprintln!("wallet-jepsen: cannot write results.edn: {e}");
    }
    print!("{}", report.summary());
    std::process::exit(if report.valid() { 0 } else { 1 });
}
