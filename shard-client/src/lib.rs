//! wallet-shard-client: how anything inside the cluster reaches a shard. It sits below both the
//! router (which serves the public API with it) and the nodes (whose recovery pass settles
//! two-phase transfers with it), so neither depends on the other.
//!
//! - [`shards`]: routes a command or read to the leader of the shard owning an account, following
//!   `NOT_LEADER` hints and retrying with backoff (safe because every command carries its id, G4).
//! - [`timestamps`]: oracle timestamps for commands, batched.
//! - [`two_phase`]: the coordinator of a transfer between accounts on different shards, and the
//!   settling of an intent left behind by a coordinator that stopped.
//! - [`chain`]: the coordinator of a linked chain of transfers, decided once on one shard, and
//!   the settling of a chain's item left behind.
//! - [`holds`]: the steps of a hold whose payee lives on another shard, and the settling of its
//!   promise.

/// A failpoint on the coordinator's path, compiled in only with the `failpoints` feature and armed
/// at run time with `FAILPOINTS=<name>=<action>`: `return(exit)` ends the router process right
/// there (a router crash mid-transfer), `return` fails the request with UNAVAILABLE, `panic`
/// panics, which ends the router (fail-stop). Names: in [`two_phase`], `after-prepare-debit`,
/// `after-prepare-credit`, `before-commit-primary`, `after-commit-primary`, `before-commit-credit`
/// (and `commit-credit-lost`); in [`chain`], `chain-after-prepare`, `chain-after-decide`,
/// `chain-after-first-commit`; in [`holds`], `hold-after-authorize`, `hold-before-promised`,
/// `hold-after-capture`.
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |arg: Option<String>| {
            if arg.as_deref() == Some("exit") {
                tracing::error!(failpoint = $name, "failpoint: router exits");
                std::process::exit(86);
            }
            Err(wallet_proto::reason::Reason::Unavailable.status(concat!("failpoint ", $name)))
        })
    };
}

pub mod chain;
pub mod holds;
pub mod shards;
mod steps;
pub mod timestamps;
pub mod two_phase;
