//! `wallet-router`: serves the public Wallet API and routes each request to its shard's leader.

use clap::Parser;

fn main() {
    wallet_router::cli::main_with(wallet_router::cli::RouterArgs::parse());
}
