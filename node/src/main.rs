//! `wallet-node`: serves replicas of the shards the cluster file places on this node.

use clap::Parser;

/// The process's allocator: mimalloc instead of glibc's malloc (see ARCHITECTURE § The write path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    wallet_node::cli::main_with(wallet_node::cli::NodeArgs::parse());
}
