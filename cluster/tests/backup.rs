//! Online backup and restore on real processes (README § Backup and restore): a backup taken by
//! `wallet-cluster backup` while clients keep paying, same-shard and across shards, holds every
//! account exactly as a snapshot read at the backup's timestamp shows it; a damaged file is found
//! before anything is restored; `wallet-cluster restore` builds a new cluster (of another shape)
//! whose every account matches, and which balances.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wallet_client::{ClientOptions, WalletClient};
use wallet_cluster::backup::{self, MANIFEST};
use wallet_cluster::playground::{Playground, PlaygroundOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_account_as_of_its_timestamp() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_tls(2).await;
    let client = cluster.client();
    let [s1, s2] = accounts(&cluster, &client, 6, 1_000_000).await;
    // The whole range: a balance of i64::MAX, and one owing all its credit limit of i64::MAX.
    client.create_account("max", "EUR", 0).await.unwrap();
    client.deposit("max-d", "max", i64::MAX).await.unwrap();
    client
        .create_account("owing", "EUR", i64::MAX)
        .await
        .unwrap();
    client.withdraw("owing-w", "owing", i64::MAX).await.unwrap();
    // Lifecycle states come back: a frozen account owing all its credit, a closed empty one.
    client.freeze_account("frz", "owing").await.unwrap();
    client.create_account("gone", "EUR", 0).await.unwrap();
    client.close_account("close", "gone").await.unwrap();
    let ids: Vec<String> = s1.iter().chain(&s2).cloned().collect();

    // Load: transfers between random pairs (about half across shards), and now and then a new
    // account, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, ids, stop) = (cluster.client(), ids.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Rng(0xbac0_0001);
            let mut committed = 0u32;
            let until = Instant::now() + Duration::from_secs(120);
            for n in 0..20_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > until {
                    break;
                }
                if n % 25 == 0 {
                    let _ = client.create_account(&format!("new-{n}"), "USD", 0).await;
                }
                let from = rng.below(ids.len());
                let to = (from + 1 + rng.below(ids.len() - 1)) % ids.len();
                let amount = 1 + rng.below(1_000) as i64;
                if client
                    .transfer(&format!("load-{n}"), &ids[from], &ids[to], amount)
                    .await
                    .is_ok()
                {
                    committed += 1;
                }
            }
            committed
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let place = tempfile::tempdir().unwrap();
    let backup_dir = place.path().join("backup");
    let out = Command::new(exe())
        .args(["backup", "--to"])
        .arg(&backup_dir)
        .arg("--dir")
        .arg(&cluster.playground.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (manifest, lines) = backup::verify(&backup_dir).expect("the backup checks");
    // Within the 30 s the shards keep changes for: every account as of the backup's timestamp.
    let mut at_ts = BTreeMap::new();
    let mut every: std::collections::BTreeSet<String> =
        lines.iter().map(|l| l.id.clone()).collect();
    for id in ids.iter().chain([&"max".to_string(), &"owing".to_string()]) {
        assert!(every.contains(id), "{id} missing from the backup");
    }
    every.extend(ids.iter().cloned());
    for id in &every {
        let account = client.get_account_at(id, manifest.ts).await.unwrap();
        at_ts.insert(id.clone(), (account.balance, account.floor));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = load.await.unwrap();
    assert!(committed > 0, "the load paid nothing");
    let backed_up: BTreeMap<String, (i64, i64)> = lines
        .iter()
        .map(|l| (l.id.clone(), (l.balance, l.floor)))
        .collect();
    assert_eq!(
        backed_up, at_ts,
        "the backup is the snapshot at {}",
        manifest.ts
    );
    // The load had moved money before the backup's timestamp (it ran 2 s first).
    assert!(
        ids.iter().any(|id| at_ts[id].0 != 1_000_000),
        "the backup saw no transfer"
    );
    // A second backup into the same directory is refused.
    let again = Command::new(exe())
        .args(["backup", "--to"])
        .arg(&backup_dir)
        .arg("--dir")
        .arg(&cluster.playground.dir)
        .output()
        .unwrap();
    assert!(!again.status.success());

    // A damaged copy is refused before anything starts.
    let damaged = place.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for entry in std::fs::read_dir(&backup_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), damaged.join(entry.file_name())).unwrap();
    }
    let victim = damaged.join(&manifest.files[0].file);
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.iter().position(|b| b.is_ascii_digit()).unwrap();
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    std::fs::write(&victim, bytes).unwrap();
    let refused_dir = place.path().join("refused");
    let refused = Command::new(exe())
        .args(["restore", "--from"])
        .arg(&damaged)
        .arg("--dir")
        .arg(&refused_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("CRC32"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !refused_dir.join("cluster.toml").exists(),
        "nothing started"
    );
    assert!(std::fs::read(backup_dir.join(MANIFEST)).is_ok());

    // Restore into a new cluster of another shape (3 shards: every account finds its new shard).
    let restored_dir = place.path().join("restored");
    let out = Command::new(exe())
        .args(["restore", "--shards", "3", "--from"])
        .arg(&backup_dir)
        .arg("--dir")
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut restored = Playground::create(&PlaygroundOptions {
        dir: restored_dir.clone(),
        nodes: 3,
        shards: 3,
        replicas: 3,
        port: 0,
        compact_every: 10_000,
        resolve_after_ms: 500,
        request_retention_secs: wallet_proto::topology::REQUEST_RETENTION_SECS_DEFAULT,
        exe: exe(),
        insecure: false,
    })
    .unwrap();
    assert_eq!(restored.topology.shards.len(), 3);
    restored.start_all().unwrap();
    restored
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("the restored cluster serves");
    let new_client = WalletClient::with_options(
        &[restored.router_address.as_str()],
        ClientOptions {
            tls: restored.client_tls(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    for (id, (balance, floor)) in &at_ts {
        let account = new_client.get_account(id).await.unwrap();
        assert_eq!((account.balance, account.floor), (*balance, *floor), "{id}");
    }
    let state = |a: &wallet_client::Account| wallet_client::AccountState::try_from(a.state);
    let owing = new_client.get_account("owing").await.unwrap();
    assert_eq!(state(&owing), Ok(wallet_client::AccountState::Frozen));
    let gone = new_client.get_account("gone").await.unwrap();
    assert_eq!(state(&gone), Ok(wallet_client::AccountState::Closed));
    let audit = new_client
        .audit()
        .await
        .expect("the restored cluster balances");
    let accounts: u64 = audit.totals.iter().map(|t| t.accounts).sum();
    assert_eq!(accounts as usize, at_ts.len());
    restored.stop_all();
}
