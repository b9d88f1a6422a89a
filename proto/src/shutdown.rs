//! Graceful shutdown, the same for every binary: resolve on SIGTERM (how orchestrators and the
//! playground stop a process) or SIGINT (Ctrl-C), so servers stop accepting, finish what is in
//! flight, flush and exit 0.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
