//! `wallet-cluster up`: starts a playground (TLS by default: it prints the environment a client
//! needs), prints its endpoints and `ready`, stops its children cleanly on SIGTERM, and resumes
//! the same data (and certificates) when run again on the same directory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wallet_client::{ClientOptions, TlsFiles, WalletClient};

/// Ends an `up` process left running by a failed assertion (it then stops its own children).
struct Up(Option<Child>);

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }
}

/// Starts `up` and returns the child, the router address, the TLS files it printed and the
/// channel of further output lines.
fn up(dir: &std::path::Path) -> (Up, String, TlsFiles, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wallet-cluster"))
        .args(["up", "--shards", "2", "--port", "0", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start wallet-cluster up");
    let stdout = child.stdout.take().expect("stdout");
    let child = Up(Some(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut router = None;
    let mut exports = std::collections::BTreeMap::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("`up` printed ready within 60 s");
        if let Some(address) = line.strip_prefix("router at ") {
            router = Some(address.trim().to_string());
        }
        if let Some((name, value)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|e| e.split_once('='))
        {
            exports.insert(name.to_string(), std::path::PathBuf::from(value));
        }
        if line.starts_with("ready") {
            break;
        }
    }
    let tls = TlsFiles {
        ca: exports
            .remove("WALLET_TLS_CA")
            .expect("WALLET_TLS_CA printed"),
        cert: exports.remove("WALLET_TLS_CERT"),
        key: exports.remove("WALLET_TLS_KEY"),
    };
    assert!(tls.ca.starts_with(dir) && tls.ca.exists(), "{tls:?}");
    (child, router.expect("router address printed"), tls, rx)
}

fn tls_client(router: &str, tls: TlsFiles) -> WalletClient {
    WalletClient::with_options(
        &[router],
        ClientOptions {
            tls: Some(tls),
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

fn sigterm_and_wait(mut up: Up, lines: mpsc::Receiver<String>) {
    let mut child = up.0.take().expect("running");
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "up exits 0 on SIGTERM: {status:?}");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l == "stopped cleanly"),
        "children stopped cleanly: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_stops_cleanly_on_sigterm_and_resumes_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (child, router, tls, lines) = up(dir.path());
    assert!(dir.path().join("cluster.toml").exists());
    let ca = std::fs::read(&tls.ca).unwrap();
    let client = tls_client(&router, tls);
    client.create_account("keeper", "EUR", 0).await.unwrap();
    client.deposit("keep-1", "keeper", 4242).await.unwrap();
    sigterm_and_wait(child, lines);

    let (child, router_again, tls, lines) = up(dir.path());
    assert_eq!(std::fs::read(&tls.ca).unwrap(), ca, "the same certificates");
    assert_eq!(
        router_again, router,
        "same directory, same topology and addresses"
    );
    let client = tls_client(&router, tls);
    let account = client.get_account("keeper").await.unwrap();
    assert_eq!((account.currency.as_str(), account.balance), ("EUR", 4242));
    // The request id is still remembered: the retry does not pay twice.
    client.deposit("keep-1", "keeper", 4242).await.unwrap();
    assert_eq!(client.get_account("keeper").await.unwrap().balance, 4242);
    sigterm_and_wait(child, lines);
}
