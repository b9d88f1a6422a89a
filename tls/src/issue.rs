//! Issuing a cluster's certificates (the `issue` feature: the playground and tests): a CA, and
//! leaves signed by it for each node (`node-N`), the routers (`router`) and a client (`client`).
//! Node and router certificates serve and dial (server and client use); the client's only dials.
//! Every leaf is also valid for `localhost`, `127.0.0.1` and any extra hosts given, so a client
//! can dial a playground by address. The CA key stays in the directory so that more leaves can
//! be issued (a rotation); a production CA keeps its key elsewhere.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{node_name, TlsError, TlsFiles, ROUTER_NAME};

/// The client certificate's name (not a member's).
pub const CLIENT_NAME: &str = "client";

/// What a leaf is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Serves and dials: a node or a router.
    Member,
    /// Only dials: a client.
    Client,
}

/// The files of the leaf `name` in `dir`.
pub fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.crt"),
        cert: Some(dir.join(format!("{name}.crt"))),
        key: Some(dir.join(format!("{name}.key"))),
    }
}

/// The CA certificate of `dir`.
pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca.crt")
}

/// Creates `dir` with a new CA and leaves for `node_ids`, the router and a client; a `dir` that
/// already holds a CA is left as it is. Returns whether it created them.
pub fn ensure_cluster(dir: &Path, node_ids: &[u64], hosts: &[String]) -> Result<bool, TlsError> {
    if ca_file(dir).exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::new(dir.display(), e))?;
    let key = KeyPair::generate().map_err(|e| TlsError::new("CA key", e))?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| TlsError::new("CA certificate", e))?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    for id in node_ids {
        issue(dir, &node_name(*id), hosts, Usage::Member)?;
    }
    issue(dir, ROUTER_NAME, hosts, Usage::Member)?;
    issue(dir, CLIENT_NAME, &[], Usage::Client)?;
    // The CA certificate last: its presence says the directory is complete.
    write(&ca_file(dir), &cert.pem(), false)?;
    Ok(true)
}

/// Issues (or issues again, replacing the files) the leaf `name`, signed by `dir`'s CA key.
pub fn issue(dir: &Path, name: &str, hosts: &[String], usage: Usage) -> Result<(), TlsError> {
    let ca_key_file = dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&ca_key_file)
        .map_err(|e| TlsError::new(ca_key_file.display(), e))?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| TlsError::new(ca_key_file.display(), e))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut names = vec![name.to_string()];
    if usage == Usage::Member {
        names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
        names.extend(hosts.iter().cloned());
    }
    let mut params =
        CertificateParams::new(names).map_err(|e| TlsError::new(format!("names of {name}"), e))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match usage {
        Usage::Member => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate().map_err(|e| TlsError::new(format!("key of {name}"), e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| TlsError::new(format!("certificate of {name}"), e))?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write(&dir.join(format!("{name}.crt")), &cert.pem(), false)
}

/// The CA's parameters; the same every time, so a leaf issued later names the same issuer.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::new("CA", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "wallet store cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes a file whole (through a temporary name, so a reader never sees half of it); keys are
/// readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&partial)
        .map_err(|e| TlsError::new(partial.display(), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError::new(partial.display(), e))?;
    std::fs::rename(&partial, path).map_err(|e| TlsError::new(path.display(), e))
}
