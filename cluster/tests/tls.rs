//! TLS on real processes (README § TLS): a playground started as `wallet-cluster up` starts it
//! (certificates in `DIR/certs`), where clients reach the router over TLS, nodes talk Raft and
//! two-phase transfers to each other over mutual TLS, and a node's internal services refuse
//! every caller that is not a member: no certificate (UNAUTHENTICATED), a client's certificate
//! (PERMISSION_DENIED), plaintext (no handshake). A router with `--client-auth required` refuses
//! clients without a certificate, and one that rotates its certificate on SIGHUP keeps serving.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tonic::transport::Endpoint;
use wallet_client::{ClientOptions, Reason, WalletClient};
use wallet_proto::v1::raft_client::RaftClient;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::{RaftBatch, ShardCommand, StatusRequest};
use wallet_tls::issue::{self, Usage};
use wallet_tls::{ClientTls, TlsFiles};

/// A channel to `address` over TLS with `files`, verifying the server as `name`.
fn channel(address: &str, files: TlsFiles, name: &str) -> tonic::transport::Channel {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    ClientTls::load(files)
        .unwrap()
        .channel(&endpoint, Some(name))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_reach_a_nodes_internal_services_and_clients_go_through_the_router() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(2).await;
    let certs = cluster.playground.dir.join("certs");
    for file in [
        "ca.crt",
        "node-1.crt",
        "node-3.key",
        "router.crt",
        "client.key",
    ] {
        assert!(certs.join(file).exists(), "{file}");
    }

    // Clients: over TLS through the router, same-shard and two-phase transfers (Raft and the
    // two-phase steps between nodes run over mutual TLS).
    let client = cluster.client();
    let [s1, s2] = accounts(&cluster, &client, 2, 1_000).await;
    client
        .transfer("t-same", &s1[0], &s1[1], 10)
        .await
        .expect("same shard");
    client
        .transfer("t-cross", &s1[0], &s2[0], 20)
        .await
        .expect("two shards");
    client.audit().await.expect("audit balanced");
    let node_1 = cluster
        .playground
        .topology
        .address_of(1)
        .unwrap()
        .to_string();

    // A client without TLS does not get through the router either.
    let plain = WalletClient::with_options(
        &[cluster.playground.router_address.as_str()],
        ClientOptions {
            retry_budget: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(2),
            tls: None,
        },
    )
    .unwrap();
    assert!(plain.get_account(&s1[0]).await.is_err());

    // A node's internal services, called directly.
    let member = issue::files(&certs, wallet_tls::ROUTER_NAME);
    let mut as_member = ShardClient::new(channel(&node_1, member, "node-1"));
    as_member
        .status(StatusRequest {})
        .await
        .expect("a router's certificate is a member's");
    let mut as_client = ShardClient::new(channel(
        &node_1,
        issue::files(&certs, issue::CLIENT_NAME),
        "node-1",
    ));
    for status in [
        as_client.status(StatusRequest {}).await.unwrap_err(),
        // What would create money: a shard command (a credit's prepare, its commit) from anyone.
        as_client
            .execute(ShardCommand::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert_eq!(
            wallet_proto::reason::of_status(&status),
            Reason::PermissionDenied
        );
    }
    let ca_only = TlsFiles {
        ca: issue::ca_file(&certs),
        cert: None,
        key: None,
    };
    let mut anonymous = ShardClient::new(channel(&node_1, ca_only.clone(), "node-1"));
    let status = anonymous
        .execute(ShardCommand::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert_eq!(
        wallet_proto::reason::of_status(&status),
        Reason::Unauthenticated
    );
    let mut raft_as_client = RaftClient::new(channel(
        &node_1,
        issue::files(&certs, issue::CLIENT_NAME),
        "node-1",
    ));
    let status = raft_as_client.send(RaftBatch::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // Raft is for nodes only: not even a router may send Raft messages.
    let mut raft_as_router = RaftClient::new(channel(
        &node_1,
        issue::files(&certs, wallet_tls::ROUTER_NAME),
        "node-1",
    ));
    let status = raft_as_router.send(RaftBatch::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    // Plaintext never gets a handshake.
    let mut plaintext = ShardClient::new(
        Endpoint::from_shared(format!("http://{node_1}"))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    let status = plaintext
        .execute(ShardCommand::default())
        .await
        .unwrap_err();
    // (How the client reports the closed connection varies: unavailable, cancelled, an HTTP/2
    // error; never an answer of the node, which would carry a reason.)
    assert!(
        status
            .metadata()
            .get(wallet_proto::reason::METADATA_KEY)
            .is_none(),
        "{status}"
    );
    // Health stays open to anyone with the CA (probes carry no client certificate).
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(&node_1, ca_only, "node-1"));
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a client certificate");

    // `wallet-cluster status` finds the playground's certificates; the `wallet` CLI takes them
    // from WALLET_TLS_*.
    let status = Command::new(exe())
        .args(["status", "--dir"])
        .arg(&cluster.playground.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && !text.contains("DOWN"), "{text}");
    let files = cluster.playground.client_tls().unwrap();
    let cli = |tls: bool| {
        let mut command = Command::new(wallet_cli());
        command
            .args(["--endpoint", &cluster.playground.router_address])
            .args(["--timeout", "3", "account", "get", &s1[0]])
            .env_remove("WALLET_TLS_CA")
            .env_remove("WALLET_TLS_CERT")
            .env_remove("WALLET_TLS_KEY");
        if tls {
            command
                .env("WALLET_TLS_CA", &files.ca)
                .env("WALLET_TLS_CERT", files.cert.as_ref().unwrap())
                .env("WALLET_TLS_KEY", files.key.as_ref().unwrap());
        }
        command.output().unwrap()
    };
    let with = cli(true);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("970"));
    assert!(!cli(false).status.success());

    // The HTTP API is HTTPS.
    let url = format!(
        "https://{}/v1/accounts/{}",
        cluster.playground.endpoints.router.http, s1[0]
    );
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&files.ca)
        .arg(&url)
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success() && body.contains("\"balance\":970"),
        "{body} {curl:?}"
    );
    let insecure = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(url.replacen("https", "http", 1))
        .output()
        .expect("curl");
    assert!(!String::from_utf8_lossy(&insecure.stdout).contains("balance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_can_require_client_certificates_and_rotates_its_own_on_sighup() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(2).await;
    let certs = cluster.playground.dir.join("certs");
    let address = format!(
        "127.0.0.1:{}",
        wallet_cluster::playground::free_port().unwrap()
    );
    let mut strict = cluster
        .playground
        .spawn_router(
            &address,
            "router-strict",
            &[("WALLET_CLIENT_AUTH", "required")],
        )
        .unwrap();
    let client_files = issue::files(&certs, issue::CLIENT_NAME);
    let ca_only = TlsFiles {
        cert: None,
        key: None,
        ..client_files.clone()
    };
    let client = |files: TlsFiles| {
        WalletClient::with_options(
            &[address.as_str()],
            ClientOptions {
                retry_budget: Duration::from_secs(20),
                attempt_timeout: Duration::from_secs(5),
                tls: Some(files),
            },
        )
        .unwrap()
    };
    client(client_files.clone())
        .create_account("strict-1", "USD", 0)
        .await
        .expect("a client certificate of the CA");
    let impatient = WalletClient::with_options(
        &[address.as_str()],
        ClientOptions {
            retry_budget: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(2),
            tls: Some(ca_only),
        },
    )
    .unwrap();
    assert!(impatient.get_account("strict-1").await.is_err());

    // Rotation: a new router certificate (same CA) that is also valid for another name. New
    // connections see it after SIGHUP; the router never stops serving.
    let renamed = || {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5));
        let channel = ClientTls::load(client_files.clone())
            .unwrap()
            .channel(&endpoint, Some("router.rotated.example"))
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    };
    assert!(renamed()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_err());
    issue::issue(
        &certs,
        wallet_tls::ROUTER_NAME,
        &["router.rotated.example".to_string()],
        Usage::Member,
    )
    .unwrap();
    let hangup = Command::new("kill")
        .args(["-HUP", &strict.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match renamed()
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
        {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the rotated certificate was never served: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    client(client_files)
        .get_account("strict-1")
        .await
        .expect("still serving after the rotation");
    assert!(
        strict.try_wait().unwrap().is_none(),
        "SIGHUP did not end it"
    );
    let _ = strict.kill();
    let _ = strict.wait();
}
