//! TLS for the wallet store, in one place: which files a process reads ([`TlsFiles`]), the rustls
//! configurations built from them and rebuilt on SIGHUP ([`ServerTls`], [`ClientTls`],
//! [`reload_on_sighup`]), the TLS listener a tonic or axum server serves from and the connector a
//! tonic channel dials through, the check that lets only cluster members call a node's internal
//! services ([`Members`]), and — with the `issue` feature — issuing a cluster's certificates.
//!
//! Names are the identity: a node's certificate is valid for `node-N` ([`node_name`]), a router's
//! for `router` ([`ROUTER_NAME`]), both signed by the cluster's CA. Connections between members
//! verify the peer's name, not its address, so a node moved to another host keeps its identity.
//! Every configuration uses rustls with the ring provider, TLS 1.2 and 1.3.

mod args;
mod client;
mod files;
#[cfg(feature = "issue")]
pub mod issue;
mod member;
mod reload;
mod server;

pub use args::TlsArgs;
pub use client::ClientTls;
pub use files::TlsFiles;
pub use member::{Members, Refused};
pub use reload::{reload_on_sighup, MemberTls, Reload};
pub use server::{Alpn, ClientAuth, ServerStream, ServerTls, TlsListener};

/// The name a node's certificate is valid for, and what a peer verifies when it dials node `id`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// The name a router's certificate is valid for.
pub const ROUTER_NAME: &str = "router";

/// What went wrong reading or using TLS material; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl TlsError {
    pub(crate) fn new(what: impl std::fmt::Display, e: impl std::fmt::Display) -> TlsError {
        TlsError(format!("{what}: {e}"))
    }
}

/// The one crypto provider every configuration is built with.
pub(crate) fn provider() -> std::sync::Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}
