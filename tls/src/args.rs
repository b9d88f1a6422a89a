//! The TLS flags every binary takes (`--tls-ca`, `--tls-cert`, `--tls-key`, or `WALLET_TLS_*` in
//! the environment), flattened into its command line.

use std::path::PathBuf;

use crate::{TlsError, TlsFiles};

/// TLS files from the command line or the environment; none given is plaintext.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsArgs {
    /// CA certificate (PEM) the peers' certificates must chain to; turns TLS on.
    #[arg(long, env = "WALLET_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate chain (PEM), for serving and for mutual TLS.
    #[arg(long, env = "WALLET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "WALLET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, if TLS is on.
    pub fn files(&self) -> Result<Option<TlsFiles>, TlsError> {
        TlsFiles::from_flags(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )
    }

    /// Flags that pass these files on to a child process.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, path) in [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ] {
            if let Some(path) = path {
                flags.push(flag.to_string());
                flags.push(path.display().to_string());
            }
        }
        flags
    }
}

impl From<TlsFiles> for TlsArgs {
    fn from(files: TlsFiles) -> TlsArgs {
        TlsArgs {
            tls_ca: Some(files.ca),
            tls_cert: files.cert,
            tls_key: files.key,
        }
    }
}
