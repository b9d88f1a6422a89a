//! The serving side: a rustls server configuration rebuilt from its files on reload, and a TLS
//! listener that accepts TCP connections, runs each handshake in a task of its own (bounded in
//! number and time, so a slow or silent peer holds up nobody), and hands finished TLS streams to
//! a tonic server (as a stream of connections) or an axum one (through `accept`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::{provider, Reload, TlsError, TlsFiles};

/// Handshakes in progress at once per listener; connections beyond are closed at once.
pub const HANDSHAKES_MAX: usize = 256;
/// A handshake not finished in this time is dropped (a silent peer holds a slot this long).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a server asks its clients for certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client may present a certificate (it must then chain to the CA) or none; the services
    /// decide (a node's internal services refuse a caller without a member's certificate).
    Optional,
    /// The handshake fails without a certificate that chains to the CA.
    Required,
}

impl FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<ClientAuth, String> {
        match s {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            other => Err(format!(
                "client auth {other:?}: expected none, optional or required"
            )),
        }
    }
}

/// The application protocol a listener negotiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 only: gRPC.
    Grpc,
    /// HTTP/1.1: the HTTP API.
    Http1,
}

/// A server's TLS configuration, rebuilt from its files by [`Reload::reload`]. Connections
/// already open keep the configuration they were accepted with.
pub struct ServerTls {
    files: TlsFiles,
    auth: ClientAuth,
    current: RwLock<[Arc<ServerConfig>; 2]>,
}

impl ServerTls {
    /// Reads the files; the certificate and key are required.
    pub fn load(files: TlsFiles, auth: ClientAuth) -> Result<Arc<ServerTls>, TlsError> {
        let current = RwLock::new(build(&files, auth)?);
        Ok(Arc::new(ServerTls {
            files,
            auth,
            current,
        }))
    }

    /// The configuration new connections get.
    fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let configs = match self.current.read() {
            Ok(configs) => configs,
            Err(poisoned) => poisoned.into_inner(),
        };
        configs[alpn as usize].clone()
    }

    /// Accepts TLS connections on `listener` until the returned listener is dropped.
    pub fn listen(self: &Arc<Self>, listener: TcpListener, alpn: Alpn) -> TlsListener {
        let (tx, rx) = mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, then go on.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many TLS handshakes in progress; connection closed");
                    continue;
                };
                let acceptor = TlsAcceptor::from(tls.config(alpn));
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { rx }
    }
}

impl Reload for ServerTls {
    fn reload(&self) -> Result<(), TlsError> {
        let fresh = build(&self.files, self.auth)?;
        match self.current.write() {
            Ok(mut configs) => *configs = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn what(&self) -> String {
        format!(
            "server certificate {}",
            self.files
                .cert
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default()
        )
    }
}

fn build(files: &TlsFiles, auth: ClientAuth) -> Result<[Arc<ServerConfig>; 2], TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("TLS versions", e))?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(files.roots()?), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::new("client certificate verifier", e))?,
            )
        }
    };
    let Some((chain, key)) = files.identity()? else {
        return Err(TlsError(
            "a TLS server needs --tls-cert and --tls-key".into(),
        ));
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::new("server certificate and key", e))?;
    let mut grpc = config.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    let mut http = config;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok([Arc::new(grpc), Arc::new(http)])
}

/// A server's end of a TLS connection.
pub type ServerStream = TlsStream<TcpStream>;

/// TLS connections whose handshake finished, in the order they finished.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// The next connection (for axum's `Listener`); pends for ever once accepting stopped.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.rx.recv().await {
            Some(next) => next,
            None => std::future::pending().await,
        }
    }
}

impl tokio_stream::Stream for TlsListener {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}
