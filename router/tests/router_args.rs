//! The router binary refuses a missing or malformed cluster file with a clear message.

use std::process::Command;

#[test]
fn a_bad_cluster_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, "nodes = []\nshards = []\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wallet-router"))
        .args(["--listen", "127.0.0.1:0", "--cluster"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad cluster file"), "{err}");
}
