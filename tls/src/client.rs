//! The dialling side: a rustls client configuration rebuilt from its files on reload, and tonic
//! channels that dial through it. A channel verifies the name it is given (a member's name
//! between members, the host it dials otherwise) and presents this process's certificate when it
//! has one. Each new connection uses the configuration of the moment, so a reload reaches
//! connections as they are made again.

use std::sync::{Arc, RwLock};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{provider, Reload, TlsError, TlsFiles};

/// A client's TLS configuration.
pub struct ClientTls {
    files: TlsFiles,
    current: RwLock<Arc<ClientConfig>>,
}

impl ClientTls {
    /// Reads the files (a certificate and key are optional: without them, no client
    /// certificate is presented).
    pub fn load(files: TlsFiles) -> Result<Arc<ClientTls>, TlsError> {
        let current = RwLock::new(build(&files)?);
        Ok(Arc::new(ClientTls { files, current }))
    }

    fn config(&self) -> Arc<ClientConfig> {
        match self.current.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A lazily connected channel to `endpoint` (whose URI is `http://host:port`) over TLS; the
    /// server must present a certificate valid for `server_name`, or for the URI's host when
    /// none is given.
    pub fn channel(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        server_name: Option<&str>,
    ) -> Result<Channel, TlsError> {
        let uri = endpoint.uri();
        let host = uri
            .host()
            .ok_or_else(|| TlsError(format!("endpoint {uri} has no host")))?;
        let name = server_name
            .unwrap_or(host.trim_start_matches('[').trim_end_matches(']'))
            .to_string();
        let name = ServerName::try_from(name.clone())
            .map_err(|e| TlsError::new(format!("server name {name:?}"), e))?;
        let tls = self.clone();
        let connector = tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            let name = name.clone();
            async move {
                let address = uri
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .ok_or_else(|| std::io::Error::other(format!("{uri} has no address")))?;
                let tcp = TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let stream = TlsConnector::from(tls.config()).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

impl Reload for ClientTls {
    fn reload(&self) -> Result<(), TlsError> {
        let fresh = build(&self.files)?;
        match self.current.write() {
            Ok(mut config) => *config = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn what(&self) -> String {
        match &self.files.cert {
            Some(cert) => format!("client certificate {}", cert.display()),
            None => format!("CA {}", self.files.ca.display()),
        }
    }
}

fn build(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("TLS versions", e))?
        .with_root_certificates(files.roots()?);
    let mut config = match files.identity()? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::new("client certificate and key", e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
