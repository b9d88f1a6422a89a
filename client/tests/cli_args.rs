//! The `wallet` CLI without a cluster: help, argument errors, and an unreachable endpoint all end
//! with a non-zero exit and a one-line reason. (The commands against a real cluster are tested in
//! `cluster/tests/cluster.rs`.)

use std::process::Command;

fn wallet(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wallet"))
        .args(args)
        .env_remove("WALLET_ENDPOINT")
        .output()
        .expect("run wallet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command() {
    let (code, out, _) = wallet(&["--help"]);
    assert_eq!(code, 0);
    for command in ["account", "deposit", "withdraw", "transfer", "history"] {
        assert!(out.contains(command), "{out}");
    }
}

#[test]
fn an_amount_that_is_not_an_integer_is_refused_before_any_call() {
    let (code, _, err) = wallet(&["deposit", "alice", "12.50"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid value"), "{err}");
}

#[test]
fn an_unreachable_endpoint_fails_with_unavailable() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let (code, _, err) = wallet(&[
        "--endpoint",
        "127.0.0.1:9",
        "--timeout",
        "1",
        "account",
        "get",
        "alice",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("error: UNAVAILABLE"), "{err}");
}
