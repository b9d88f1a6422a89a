//! Tests of the shard store: log persistence, compaction, and corruption detection (G7).

#![allow(clippy::field_reassign_with_default)] // protobuf-2 messages, as raft-rs does

use super::*;
use crate::state_machine::Write;
use wallet_proto::topology::Ring;

fn machine() -> StateMachine {
    StateMachine::new(1, Ring::new([1], 4))
}

fn database() -> (tempfile::TempDir, Arc<GroupCommit>) {
    let dir = tempfile::tempdir().unwrap();
    let db = with_snapshots(
        sled::open(dir.path().join("sled")).unwrap(),
        &dir.path().join("sled"),
        dir.path(),
    );
    (dir, db)
}

fn with_snapshots(
    db: sled::Db,
    sled_dir: &std::path::Path,
    dir: &std::path::Path,
) -> Arc<GroupCommit> {
    Arc::new(GroupCommit::new(
        db,
        sled_dir,
        SnapshotDir::open(dir).unwrap(),
    ))
}

fn open(db: &Arc<GroupCommit>) -> Recovered {
    ShardStore::open(db, 1, &[1, 2, 3], machine()).unwrap()
}

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = vec![index as u8].into();
    e
}

fn alice(balance: i64) -> Account {
    Account {
        account_id: "alice".into(),
        currency: "USD".into(),
        balance,
        ..Default::default()
    }
}

/// Flips one bit of a stored value.
fn flip(db: &Arc<GroupCommit>, key: &[u8], byte: usize, mask: u8) {
    let tree = db.db().open_tree("shard-1").unwrap();
    let mut bytes = tree.get(key).unwrap().unwrap().to_vec();
    let at = byte.min(bytes.len() - 1);
    bytes[at] ^= mask;
    tree.insert(key, bytes).unwrap();
}

#[test]
fn log_survives_reopen_and_conflicting_tail_is_replaced() {
    let (_dir, db) = database();
    let r = open(&db);
    r.store
        .append(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
        .unwrap();
    r.store.append(&[entry(2, 2)], None).unwrap();
    let mut hs = HardState::default();
    hs.term = 2;
    hs.commit = 2;
    r.store.append(&[], Some(&hs)).unwrap();
    drop(r);
    let r = open(&db);
    let log = r.store.log();
    assert_eq!(log.last_index().unwrap(), 2);
    assert_eq!(log.term(2).unwrap(), 2);
    assert_eq!(log.initial_state().unwrap().hard_state.commit, 2);
    assert_eq!(
        log.initial_state().unwrap().conf_state.voters,
        vec![1, 2, 3]
    );
    assert!(!r.pristine);
}

#[test]
fn compaction_keeps_the_term_of_the_truncation_point() {
    let (_dir, db) = database();
    let mut r = open(&db);
    assert!(r.pristine);
    r.store
        .append(&[entry(1, 1), entry(2, 1), entry(3, 2)], None)
        .unwrap();
    r.store.compact(2).unwrap();
    let log = r.store.log();
    assert_eq!(log.first_index().unwrap(), 3);
    assert_eq!(log.term(2).unwrap(), 1);
    assert!(log
        .entries(2, 4, None, GetEntriesContext::empty(false))
        .is_err());
    drop(r);
    let r = open(&db);
    assert_eq!(r.store.log().first_index().unwrap(), 3);
    assert_eq!(r.store.log().term(3).unwrap(), 2);
}

/// G7: a flipped byte in a stored record is detected on read and reported, never served.
#[test]
fn a_flipped_byte_in_a_stored_record_is_detected_on_read() {
    let (_dir, db) = database();
    let mut r = open(&db);
    r.store
        .write_applied(vec![Write::Account(alice(500))], 7)
        .unwrap();
    assert_eq!(
        r.store.stored_account("alice").unwrap(),
        None,
        "not yet checkpointed"
    );
    r.store.checkpoint_now().unwrap();
    assert_eq!(r.store.stored_account("alice").unwrap(), Some(alice(500)));
    flip(&db, &account_key("alice"), usize::MAX, 0x01);
    assert!(matches!(
        r.store.stored_account("alice"),
        Err(StoreError::Corrupt(_))
    ));
    drop(r);
    // Opening the replica reads every account: it refuses to start rather than serve it.
    match ShardStore::open(&db, 1, &[1], machine()) {
        Err(StoreError::Corrupt(message)) => assert!(message.contains("crc32"), "{message}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a corrupt account was loaded"),
    }
}

#[test]
fn a_corrupt_log_entry_is_detected_on_open() {
    let (_dir, db) = database();
    let r = open(&db);
    r.store.append(&[entry(1, 1)], None).unwrap();
    drop(r);
    flip(&db, &log_key(1), 6, 0x80);
    assert!(matches!(
        ShardStore::open(&db, 1, &[1], machine()),
        Err(StoreError::Corrupt(_))
    ));
}

/// A store of shard 1 whose state is `accounts` accounts at applied index 1, with a snapshot
/// built; returns it and its snapshot (data: the file's descriptor).
async fn store_with_snapshot(db: &Arc<GroupCommit>, accounts: usize) -> (Recovered, Snapshot) {
    let mut r = open(db);
    r.store.append(&[entry(1, 1)], None).unwrap();
    let writes = (0..accounts)
        .map(|i| {
            Write::Account(Account {
                account_id: format!("account-{i:06}"),
                ..alice(i as i64)
            })
        })
        .collect();
    r.store.write_applied(writes, 1).unwrap();
    r.store.build_snapshot(1).await.unwrap();
    let snapshot = r.store.log().snapshot(0, 2).unwrap();
    (r, snapshot)
}

/// What the transport does: the leader's file arrives as the follower's received file.
fn deliver_file(
    from: &Arc<GroupCommit>,
    to: &Arc<GroupCommit>,
    snapshot: &Snapshot,
) -> std::path::PathBuf {
    let meta = snapshot.get_metadata();
    let sent = from.snapshots().path(Side::Sent, 1, meta.index, meta.term);
    let received = to
        .snapshots()
        .path(Side::Received, 1, meta.index, meta.term);
    std::fs::copy(sent, &received).unwrap();
    received
}

#[tokio::test]
async fn a_corrupt_snapshot_is_refused_and_an_intact_one_installs() {
    let (_dir, db) = database();
    let (_r, snapshot) = store_with_snapshot(&db, 3).await;
    assert_eq!(
        snapshot.get_data().len(),
        snapshot_file::DESCRIPTOR_LEN,
        "only the descriptor travels in the message"
    );

    let (_dir2, db2) = database();
    let mut r2 = open(&db2);
    let mut sm = machine();
    // Not received yet: raft-rs must not take the message.
    assert!(r2.store.has_received(&snapshot).is_err());
    let received = deliver_file(&db, &db2, &snapshot);
    r2.store.has_received(&snapshot).unwrap();
    let good = std::fs::read(&received).unwrap();
    // A file that does not check out whole is refused on receipt (it never takes its name, so
    // raft-rs never sees the message); one of another length is not taken either.
    let descriptor = snapshot_file::Descriptor::decode(snapshot.get_data()).unwrap();
    verify_received(&received, descriptor).unwrap();
    for at in [0, 10, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        std::fs::write(&received, &bad).unwrap();
        assert!(verify_received(&received, descriptor).is_err(), "byte {at}");
    }
    std::fs::write(&received, &good[..good.len() - 1]).unwrap();
    assert!(r2.store.has_received(&snapshot).is_err());
    // A message whose data is not a descriptor (an older release sent the state inline).
    let mut inline = snapshot.clone();
    inline.set_data(good.clone().into());
    assert!(r2.store.has_received(&inline).is_err());
    std::fs::write(&received, &good).unwrap();
    r2.store.has_received(&snapshot).unwrap();
    r2.store.install_snapshot(&snapshot, &mut sm).await.unwrap();
    assert_eq!(sm.account("account-000002").map(|a| a.balance), Some(2));
    assert_eq!(r2.store.log().first_index().unwrap(), 2);
    // Kept until the install is surely durable (a later compaction removes it).
    assert!(received.exists());
    r2.store.remove_received_up_to(1);
    assert!(!received.exists());
}

/// A snapshot larger than one install batch, installed over an older state; a crash in the
/// middle of an install (the marker written, part of the state replaced) is finished by the next
/// open from the received file; without that file the store is set aside.
#[tokio::test]
async fn an_interrupted_install_is_finished_at_open_or_the_store_is_set_aside() {
    let (_dir, leader) = database();
    let accounts = INSTALL_BATCH_RECORDS * 2 + 5;
    let (_r, snapshot) = store_with_snapshot(&leader, accounts).await;

    for file_kept in [true, false] {
        let (dir2, db2) = database();
        {
            let mut r2 = open(&db2);
            r2.store.append(&[entry(1, 1), entry(2, 1)], None).unwrap();
            r2.store
                .write_applied(vec![Write::Account(alice(77))], 2)
                .unwrap();
            r2.store.checkpoint_now().unwrap();
            deliver_file(&leader, &db2, &snapshot);
            // The install's first steps, then a crash: the marker and a half-replaced state.
            let tree = db2.db().open_tree("shard-1").unwrap();
            tree.insert(KEY_INSTALLING, encode_pb(&snapshot)).unwrap();
            remove_prefix(&tree, STATE_PREFIX).unwrap();
            tree.insert(b"Sa-partial", record::encode(&alice(1)))
                .unwrap();
        }
        if !file_kept {
            let meta = snapshot.get_metadata();
            std::fs::remove_file(
                db2.snapshots()
                    .path(Side::Received, 1, meta.index, meta.term),
            )
            .unwrap();
        }
        let (recovered, why) =
            ShardStore::open_checked(&db2, 1, &[1, 2, 3], machine(), None).unwrap();
        if file_kept {
            assert_eq!(why, None);
            assert_eq!(recovered.applied, 1);
            assert_eq!(recovered.state_machine.account_count(), accounts);
            assert_eq!(recovered.state_machine.account("alice"), None);
            assert_eq!(
                recovered
                    .state_machine
                    .account("account-000007")
                    .map(|a| a.balance),
                Some(7)
            );
            let log = recovered.store.log();
            assert_eq!(log.first_index().unwrap(), 2);
            assert_eq!(log.last_index().unwrap(), 1);
            assert_eq!(log.hard_state().term, 1);
            assert_eq!(log.hard_state().commit, 1);
            let tree = db2.db().open_tree("shard-1").unwrap();
            assert!(tree.get(KEY_INSTALLING).unwrap().is_none());
            assert!(tree.get(b"Sa-partial").unwrap().is_none());
        } else {
            assert!(why.unwrap().contains("snapshot file"));
            assert!(recovered.pristine, "set aside: rebuilt from its peers");
        }
        drop(recovered);
        drop(dir2);
    }
}

/// Compaction by size: the log counts its payload bytes through appends, conflicting tails,
/// compaction and reopen, and the compaction point keeps at most the slack asked for.
#[test]
fn the_log_counts_its_bytes_and_compaction_keeps_a_bounded_slack() {
    let (_dir, db) = database();
    let mut r = open(&db);
    let big = |index: u64| {
        let mut e = entry(index, 1);
        e.data = vec![7u8; 1000].into();
        e
    };
    let entries: Vec<Entry> = (1..=10).map(big).collect();
    r.store.append(&entries, None).unwrap();
    let log = r.store.log();
    assert_eq!(log.entry_bytes(), 10_000);
    // A conflicting tail from index 9 replaces two entries by one small one.
    r.store.append(&[entry(9, 2)], None).unwrap();
    assert_eq!(log.entry_bytes(), 8 * 1000 + 1);
    // Slack of at most 3 entries, or 2 500 bytes: two big entries behind the applied index 8.
    assert_eq!(log.compaction_point(8, 3, 2_500), 6);
    assert_eq!(log.compaction_point(8, 3, 100_000), 5);
    // Nothing is ever kept beyond the applied index, and an applied index past the log is clamped.
    assert_eq!(log.compaction_point(9, 0, 0), 9);
    assert_eq!(log.compaction_point(50, 0, 0), 9);
    r.store.compact(6).unwrap();
    assert_eq!(log.entry_bytes(), 2 * 1000 + 1);
    drop(r);
    let r = open(&db);
    assert_eq!(r.store.log().entry_bytes(), 2 * 1000 + 1);
    assert_eq!(r.store.log().first_index_now(), 7);
}

/// G7: whatever bytes of the sled file are damaged, a replica's store either opens, or is set aside
/// (and rebuilt from its peers); opening it never fails and never panics (a failure would
/// crash-loop the node). Seeds whose damage sled itself refuses at open are the node's business
/// (`node::open_db` sets the whole database aside) and are skipped here.
#[test]
fn a_damaged_sled_file_is_set_aside_and_never_fails_the_open() {
    let config = |dir: &std::path::Path| {
        sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024)
            .segment_size(64 * 1024)
    };
    let mut reached = 0;
    let mut outcomes = std::collections::BTreeMap::new();
    for seed in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        let snapshot_dir = tempfile::tempdir().unwrap();
        {
            let db = with_snapshots(
                config(dir.path()).open().unwrap(),
                dir.path(),
                snapshot_dir.path(),
            );
            let mut r = ShardStore::open(&db, 1, &[1], machine()).unwrap();
            let mut writes = vec![Write::Account(alice(5))];
            writes.extend((1..=3000u64).map(|seq| Write::History {
                account_id: "alice".into(),
                entry: HistoryEntry {
                    seq,
                    request_id: format!("request-{seq}"),
                    ..Default::default()
                },
            }));
            r.store.write_applied(writes, 1).unwrap();
            r.store.checkpoint_now().unwrap();
            db.db().flush().unwrap();
        }
        // Reopened intact; then the disk goes bad under the running process: pages that are no
        // longer cached are read back damaged.
        let Ok(db) = config(dir.path()).open() else {
            continue;
        };
        let file = dir.path().join("db");
        let mut bytes = std::fs::read(&file).unwrap();
        // Damage only bytes that hold something (most of a segment is unused zeroes).
        let used: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = used[(x % used.len() as u64) as usize];
            bytes[at] ^= 1 << (x % 8);
        }
        std::fs::write(&file, bytes).unwrap();
        reached += 1;
        let db = with_snapshots(db, dir.path(), snapshot_dir.path());
        let outcome = wallet_proto::fail_stop::catch(|| {
            let (mut r, why) = ShardStore::open_checked(&db, 1, &[1], machine(), None)?;
            if why.is_some() {
                assert!(r.pristine, "seed {seed}");
                return Ok("set aside at open");
            }
            // Read every page, as history pages and snapshot builds do while running; what
            // fails there is set aside in place (`Replica::set_aside_in_place`).
            let mut cursor = 0;
            loop {
                match r.store.history(&ListTransfersRequest {
                    account_id: "alice".into(),
                    limit: 1000,
                    cursor,
                    ..Default::default()
                }) {
                    Ok(page) if page.next_cursor == 0 => return Ok("intact"),
                    Ok(page) => cursor = page.next_cursor,
                    Err(StoreError::Corrupt(_))
                    | Err(StoreError::Sled(sled::Error::Corruption { .. })) => {
                        drop(r);
                        let r = ShardStore::set_aside(&db, 1, &[1], machine(), "test")?;
                        assert!(r.pristine, "seed {seed}");
                        return Ok("set aside while running");
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        match outcome {
            Ok(Ok(what)) => *outcomes.entry(what).or_insert(0) += 1,
            Ok(Err(e)) => panic!("seed {seed}: {e}"),
            Err(panic) => panic!("seed {seed}: panicked: {panic}"),
        }
    }
    eprintln!("{reached} opened by sled: {outcomes:?}");
    assert!(
        outcomes.keys().any(|k| *k != "intact"),
        "no damage was ever found: {outcomes:?}"
    );
}

#[test]
fn the_window_the_clock_and_forgotten_requests_survive_a_restart() {
    use wallet_proto::v1::{
        command::Op, Command, CreateAccountRequest, DepositRequest, SetRetention,
    };
    let (_dir, db) = database();
    let mut r = open(&db);
    let mut sm = r.state_machine;
    // Each command stamped by the oracle at `ms`.
    let apply = |sm: &mut StateMachine, ms: u64, id: &str, op: Op| {
        let mut writes = Vec::new();
        let command = Command {
            request_id: id.into(),
            at_ms: 1,
            ts: ms << 18,
            op: Some(op),
        };
        sm.apply(&command, &mut writes);
        writes
    };
    let deposit = |id: &str| {
        Op::Deposit(DepositRequest {
            request_id: id.into(),
            account_id: "alice".into(),
            amount: 1,
            issued_at_ms: 0,
        })
    };
    let mut writes = apply(
        &mut sm,
        1,
        "",
        Op::CreateAccount(CreateAccountRequest {
            account_id: "alice".into(),
            currency: "USD".into(),
            credit_limit: 0,
            opening_balance: 0,
        }),
    );
    writes.extend(apply(
        &mut sm,
        0,
        "",
        Op::SetRetention(SetRetention { window_ms: 1_000 }),
    ));
    writes.extend(apply(&mut sm, 10_000, "old", deposit("old")));
    writes.extend(apply(&mut sm, 10_600, "new", deposit("new")));
    writes.extend(apply(&mut sm, 11_200, "newest", deposit("newest")));
    writes.extend(sm.clock_write());
    assert!(writes.contains(&Write::ForgetRequest(("alice".into(), "old".into()))));
    assert_eq!(sm.request_count(), 2);
    r.store.write_applied(writes, 5).unwrap();
    r.store.checkpoint_now().unwrap();
    drop(r.store);

    let loaded = open(&db).state_machine;
    assert_eq!(
        loaded.request_count(),
        2,
        "the forgotten record is gone from sled too"
    );
    assert_eq!(loaded.retention().window_ms(), Some(1_000));
    assert_eq!(loaded.retention().clock_ms(), 11_200);
    assert_eq!(loaded.retention().tracked(), 2);
}

/// A large checkpoint cut off by a crash after its redo record: the next open finishes it, so
/// the store holds all of it with its applied index (never part of it).
#[test]
fn a_checkpoint_cut_off_by_a_crash_is_finished_at_open() {
    let (_dir, db) = database();
    let writes: Vec<Write> = (0..1000)
        .map(|i| {
            Write::Account(Account {
                account_id: format!("account-{i:04}"),
                ..alice(i)
            })
        })
        .collect();
    {
        let r = open(&db);
        r.store.append(&[entry(1, 1), entry(2, 1)], None).unwrap();
        let tree = db.db().open_tree("shard-1").unwrap();
        let changes = checkpoint_changes(writes);
        checkpoint::write_redo(
            &tree,
            &checkpoint::encode(&changes, KEY_APPLIED, &encode_u64s(&[2])),
        )
        .unwrap();
        // The crash: the record is there, none of its keys and not its applied index.
        assert!(tree.get(KEY_APPLIED).unwrap().is_none());
    }
    let r = open(&db);
    assert_eq!(r.applied, 2);
    assert_eq!(r.state_machine.account_count(), 1000);
    assert_eq!(
        r.state_machine.account("account-0999").map(|a| a.balance),
        Some(999)
    );
    let tree = db.db().open_tree("shard-1").unwrap();
    assert!(tree.get(checkpoint::KEY_REDO).unwrap().is_none());
}

/// History filters: kinds and inclusive commit-timestamp and time ranges over the whole value
/// range; a filtered page examines at most HISTORY_SCAN_MAX entries and says where to go on,
/// so paging to the end visits every match once, newest first.
#[test]
fn filtered_history_pages_visit_every_match_once_within_a_bounded_scan() {
    use wallet_proto::v1::EntryKind;
    let (_dir, db) = database();
    let mut r = open(&db);
    let n = (HISTORY_SCAN_MAX as u64) * 2 + 7;
    let kind = |seq: u64| {
        if seq.is_multiple_of(5) {
            EntryKind::Withdraw
        } else {
            EntryKind::Deposit
        }
    };
    let mut writes = vec![Write::Account(alice(5))];
    writes.extend((1..=n).map(|seq| Write::History {
        account_id: "alice".into(),
        entry: HistoryEntry {
            seq,
            kind: kind(seq) as i32,
            // The newest entries sit at the top of the ranges.
            commit_ts: u64::MAX - (n - seq),
            at_ms: i64::MAX - (n - seq) as i64,
            ..Default::default()
        },
    }));
    r.store.write_applied(writes, 1).unwrap();
    let page_all = |r: &mut Recovered, list: ListTransfersRequest| {
        let (mut seqs, mut cursor, mut pages) = (Vec::new(), 0, 0);
        loop {
            let page = r
                .store
                .history(&ListTransfersRequest {
                    cursor,
                    ..list.clone()
                })
                .unwrap();
            assert!(page.entries.len() <= 1000);
            seqs.extend(page.entries.iter().map(|e| e.seq));
            pages += 1;
            if page.next_cursor == 0 {
                return (seqs, pages);
            }
            cursor = page.next_cursor;
        }
    };
    let withdrawals = ListTransfersRequest {
        account_id: "alice".into(),
        limit: 1000,
        kinds: vec![EntryKind::Withdraw as i32],
        ..Default::default()
    };
    let (seqs, pages) = page_all(&mut r, withdrawals.clone());
    let want: Vec<u64> = (1..=n).rev().filter(|s| s.is_multiple_of(5)).collect();
    assert_eq!(seqs, want);
    // 4 003 matches in 20 007 entries: the scan bound cuts pages short, never loses a match.
    assert!(pages >= 3, "{pages}");
    // One page at the top of the ranges: both bounds inclusive, at u64::MAX and i64::MAX.
    let top = ListTransfersRequest {
        from_ts: u64::MAX - 9,
        to_ts: u64::MAX,
        to_ms: i64::MAX,
        ..withdrawals.clone()
    };
    assert_eq!(page_all(&mut r, top).0, vec![n - 2, n - 7]);
    let by_ms = ListTransfersRequest {
        account_id: "alice".into(),
        from_ms: i64::MAX - 2,
        to_ms: i64::MAX - 1,
        ..Default::default()
    };
    assert_eq!(page_all(&mut r, by_ms).0, vec![n - 1, n - 2]);
    // Unfiltered pages are unchanged: full pages of 1000.
    let plain = ListTransfersRequest {
        account_id: "alice".into(),
        limit: 1000,
        ..Default::default()
    };
    let first = r.store.history(&plain).unwrap();
    assert_eq!(first.entries.len(), 1000);
    assert_eq!(first.next_cursor, n - 999);
}
