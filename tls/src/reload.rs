//! Rotating certificates without downtime: on SIGHUP every registered configuration is rebuilt
//! from its files. One that fails to load (a half-written file, a key that does not match) keeps
//! serving with what it had and says why in the log; the next SIGHUP tries again.

use std::sync::Arc;

use crate::TlsError;

/// A TLS configuration that can be rebuilt from its files.
pub trait Reload: Send + Sync {
    /// Reads the files again and uses them for new connections.
    fn reload(&self) -> Result<(), TlsError>;
    /// What it is, for the log.
    fn what(&self) -> String;
}

/// Reloads each of `configs` on every SIGHUP, until the process ends.
pub fn reload_on_sighup(
    configs: Vec<Arc<dyn Reload>>,
) -> Result<tokio::task::JoinHandle<()>, TlsError> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| TlsError::new("listening for SIGHUP", e))?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            for config in &configs {
                match config.reload() {
                    Ok(()) => tracing::info!(what = %config.what(), "TLS files reloaded"),
                    Err(e) => tracing::error!(
                        what = %config.what(),
                        error = %e,
                        "TLS files not reloaded; still serving with the previous ones"
                    ),
                }
            }
        }
    }))
}

/// A member's TLS (a node's, a router's): it serves with its certificate and dials with it.
pub struct MemberTls {
    pub server: Arc<crate::ServerTls>,
    pub client: Arc<crate::ClientTls>,
}

impl MemberTls {
    /// Reads `files` for both sides; the server asks clients for certificates as `auth` says.
    pub fn load(files: crate::TlsFiles, auth: crate::ClientAuth) -> Result<MemberTls, TlsError> {
        Ok(MemberTls {
            server: crate::ServerTls::load(files.clone(), auth)?,
            client: crate::ClientTls::load(files)?,
        })
    }

    /// Reloads both sides on every SIGHUP (see [`reload_on_sighup`]).
    pub fn reload_on_sighup(&self) -> Result<tokio::task::JoinHandle<()>, TlsError> {
        reload_on_sighup(vec![
            self.server.clone() as Arc<dyn Reload>,
            self.client.clone(),
        ])
    }
}
