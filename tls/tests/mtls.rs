//! Mutual TLS on real sockets: a tonic server behind [`ServerTls`] (optional client
//! certificates) whose service only members may call, dialled by a member, by a client
//! certificate, by no certificate and in plaintext; and a reload that takes effect for new
//! connections only.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wallet_tls::issue::{self, Usage};
use wallet_tls::{Alpn, ClientAuth, ClientTls, Members, Refused, Reload, ServerTls};

/// Serves the health service over TLS as `node-1`, to members only; returns its address.
async fn serve(certs: &std::path::Path) -> (std::net::SocketAddr, Arc<ServerTls>) {
    let tls = ServerTls::load(issue::files(certs, "node-1"), ClientAuth::Optional).unwrap();
    let members = Members::new(["node-1".to_string(), "node-2".into(), "router".into()]).unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let guarded = tonic::service::interceptor::InterceptedService::new(
        health,
        move |request: tonic::Request<()>| match members.check(&request) {
            Ok(()) => Ok(request),
            Err(Refused::NoCertificate) => Err(Status::unauthenticated("no certificate")),
            Err(Refused::NotAMember) => Err(Status::permission_denied("not a member")),
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = tls.listen(listener, Alpn::Grpc);
    tokio::spawn(
        Server::builder()
            .add_service(guarded)
            .serve_with_incoming(incoming),
    );
    (address, tls)
}

async fn check(
    address: std::net::SocketAddr,
    files: Option<wallet_tls::TlsFiles>,
    server_name: Option<&str>,
) -> Result<(), Status> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let channel = match files {
        Some(files) => ClientTls::load(files)
            .unwrap()
            .channel(&endpoint, server_name)
            .unwrap(),
        None => endpoint.connect_lazy(),
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// A connection that never got through its handshake: tonic reports it as unavailable (refused
/// by this side), or unknown or cancelled (closed by the other).
fn assert_handshake_refused(e: &Status) {
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{e}"
    );
}

#[tokio::test]
async fn only_members_get_through_and_everyone_else_is_told_why() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    assert!(issue::ensure_cluster(certs, &[1, 2], &[]).unwrap());
    assert!(!issue::ensure_cluster(certs, &[1, 2], &[]).unwrap(), "kept");
    let (address, _tls) = serve(certs).await;

    // A node dialling node 1 by name, and a router dialling it by address.
    check(address, Some(issue::files(certs, "node-2")), Some("node-1"))
        .await
        .expect("a member");
    check(address, Some(issue::files(certs, "router")), None)
        .await
        .expect("a member, by address");
    // The client certificate chains to the CA, but names no member.
    let e = check(address, Some(issue::files(certs, issue::CLIENT_NAME)), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // The CA alone: TLS, no certificate.
    let ca_only = wallet_tls::TlsFiles {
        ca: issue::ca_file(certs),
        cert: None,
        key: None,
    };
    let e = check(address, Some(ca_only), None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // Plaintext never completes a handshake (the server closes the connection).
    let e = check(address, None, None).await.unwrap_err();
    assert_handshake_refused(&e);
    // A server that is not the one named is refused by the client.
    let e = check(address, Some(issue::files(certs, "node-2")), Some("node-2"))
        .await
        .unwrap_err();
    assert_handshake_refused(&e);

    // Another CA's certificate for a member's name is refused in the handshake.
    let other = tempfile::tempdir().unwrap();
    issue::ensure_cluster(other.path(), &[2], &[]).unwrap();
    let mut forged = issue::files(other.path(), "node-2");
    forged.ca = issue::ca_file(certs);
    let e = check(address, Some(forged), Some("node-1"))
        .await
        .unwrap_err();
    assert_handshake_refused(&e);
}

#[tokio::test]
async fn a_reload_serves_the_new_files_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    issue::ensure_cluster(certs, &[1, 2], &[]).unwrap();
    let (address, tls) = serve(certs).await;
    let member = || Some(issue::files(certs, "node-2"));
    check(address, member(), Some("node-1")).await.unwrap();

    // node-1's files now hold a certificate for another name: a half-done rotation.
    issue::issue(certs, "node-9", &[], Usage::Member).unwrap();
    std::fs::copy(certs.join("node-9.crt"), certs.join("node-1.crt")).unwrap();
    // A key that does not match its certificate is refused, and the old files keep serving.
    assert!(tls.reload().is_err());
    check(address, member(), Some("node-1")).await.unwrap();
    std::fs::copy(certs.join("node-9.key"), certs.join("node-1.key")).unwrap();
    tls.reload().expect("reloaded");
    let e = check(address, member(), Some("node-1")).await.unwrap_err();
    assert_handshake_refused(&e);
    check(address, member(), Some("node-9"))
        .await
        .expect("new connections get the new certificate");

    // Missing files: an error, never a panic; plaintext is refused, and so is a key without a
    // certificate.
    let gone = wallet_tls::TlsFiles {
        ca: certs.join("nothing.crt"),
        cert: None,
        key: None,
    };
    assert!(ClientTls::load(gone).is_err());
    assert!(wallet_tls::TlsFiles::from_flags(None, Some("a".into()), Some("b".into())).is_err());
    assert!(wallet_tls::TlsFiles::from_flags(Some("a".into()), None, Some("b".into())).is_err());
    assert_eq!(wallet_tls::TlsFiles::from_flags(None, None, None), Ok(None));
}
