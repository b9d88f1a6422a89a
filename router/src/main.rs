//! `wallet-router`: serves the public Wallet API and routes each request to its shard's leader.

use clap::Parser;

/// The process's allocator: mimalloc instead of glibc's malloc (see ARCHITECTURE § The write path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    wallet_router::cli::main_with(wallet_router::cli::RouterArgs::parse());
}
