//! Which PEM files a process reads for TLS, and reading them: the CA it trusts, and its own
//! certificate chain and key (a server always has them; a client has them for mutual TLS).

use std::path::PathBuf;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::RootCertStore;

use crate::TlsError;

/// The TLS files of one process. Read again on every reload, so replacing them and sending
/// SIGHUP rotates them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificates (PEM) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The files from three optional flags: none given is plaintext (`None`); a certificate
    /// without its key (or the other way round), or either without a CA, is an error.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (None, _, _) => Err(TlsError(
                "a TLS certificate or key was given without --tls-ca".into(),
            )),
            (Some(ca), cert, key) => {
                if cert.is_some() != key.is_some() {
                    return Err(TlsError(
                        "--tls-cert and --tls-key go together: give both or neither".into(),
                    ));
                }
                Ok(Some(TlsFiles { ca, cert, key }))
            }
        }
    }

    /// The CA certificates, as a root store; an empty or unreadable file is an error.
    pub(crate) fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        let what = format!("CA file {}", self.ca.display());
        for cert in CertificateDer::pem_file_iter(&self.ca).map_err(|e| TlsError::new(&what, e))? {
            let cert = cert.map_err(|e| TlsError::new(&what, e))?;
            roots.add(cert).map_err(|e| TlsError::new(&what, e))?;
        }
        if roots.is_empty() {
            return Err(TlsError(format!("{what}: no certificate in it")));
        }
        Ok(roots)
    }

    /// This process's chain and key, when it has them.
    #[allow(clippy::type_complexity)]
    pub(crate) fn identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let what = format!("certificate file {}", cert.display());
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| TlsError::new(&what, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::new(&what, e))?;
        if chain.is_empty() {
            return Err(TlsError(format!("{what}: no certificate in it")));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError::new(format!("key file {}", key.display()), e))?;
        Ok(Some((chain, key)))
    }
}
