//! Who may call a node's internal services (`Shard`, `Raft`): a caller whose certificate — already
//! verified against the cluster's CA in the handshake — is valid for the name of a member (a
//! node of the cluster file, or a router). Without this, anyone who reaches a node could prepare
//! and commit a credit and create money.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::TlsError;

/// The member names a node accepts.
#[derive(Clone, Debug)]
pub struct Members {
    names: Arc<Vec<ServerName<'static>>>,
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No certificate at all (UNAUTHENTICATED).
    NoCertificate,
    /// A certificate of the CA, but not a member's (PERMISSION_DENIED).
    NotAMember,
}

impl Members {
    /// Members named `names` (for example `node-1`, `node-2`, `router`).
    pub fn new(names: impl IntoIterator<Item = String>) -> Result<Members, TlsError> {
        let names = names
            .into_iter()
            .map(|n| {
                ServerName::try_from(n.clone()).map_err(|e| TlsError::new(format!("name {n:?}"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Members {
            names: Arc::new(names),
        })
    }

    /// Whether the caller of `request` is a member.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), Refused> {
        self.identify(request).map(|_| ())
    }

    /// The member the caller of `request` is: the first of the names its certificate is valid
    /// for (a certificate names one member).
    pub fn identify<T>(&self, request: &tonic::Request<T>) -> Result<String, Refused> {
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(Refused::NoCertificate);
        };
        self.identify_certificate(leaf)
    }

    /// The member a (CA-verified) leaf certificate names.
    pub fn identify_certificate(&self, leaf: &CertificateDer<'_>) -> Result<String, Refused> {
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
            return Err(Refused::NotAMember);
        };
        self.names
            .iter()
            .find(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
            .map(|name| name.to_str().into_owned())
            .ok_or(Refused::NotAMember)
    }
}
