//! `wallet-node`: serves replicas of the shards the cluster file places on this node.

use clap::Parser;

fn main() {
    wallet_node::cli::main_with(wallet_node::cli::NodeArgs::parse());
}
