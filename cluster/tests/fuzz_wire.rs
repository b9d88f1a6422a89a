//! Wire fuzzing (G9): every public and internal request type is decoded from random and mutated
//! bytes, and what decodes is sent to a running 3-node cluster and its router — public `Wallet`
//! calls to the router, `Shard` and `Raft` calls straight to a node, as a misbehaving client or a
//! confused peer would. Every call must end in an answer or an error status, never a panic: after
//! the storm every process is still running, and the cluster still serves reads and writes.
//!
//! The generator is a seeded xorshift, so a failure reproduces from the printed seed.

mod common;

use std::time::Duration;

use common::*;
use prost::Message;
use tonic::transport::Channel;
use wallet_proto::v1::raft_client::RaftClient;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::wallet_client::WalletClient as RawWallet;
use wallet_proto::v1::{
    command::Op, shard_read::Query, AuditRequest, CloseTs, Command, CreateAccountBatchRequest,
    CreateAccountRequest, CreateAccounts, DepositRequest, ForgetTransfers, GetAccountRequest,
    GetTransferRequest, IntentRef, IntentStatesQuery, ListTransfersRequest, PrepareCredit,
    PrepareDebit, RaftBatch, RaftEnvelope, SetRetention, Settling, ShardCommand, ShardRead,
    SnapshotAt, SnapshotChunk, StatusRequest, Stuck, TransferRequest, TransferStep, TsoRequest,
    WithdrawRequest,
};

/// Random bytes, or `seed` with one to four mutations (bit flips, random bytes, inserted or
/// deleted runs, truncation, a duplicated chunk, an extreme varint appended).
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    if rng.below(5) == 0 {
        let len = rng.below(96);
        return rng.bytes(len);
    }
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let len = rng.below(16);
                let run = rng.bytes(len);
                out.splice(at..at, run);
            }
            3 => {
                let end = (at + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            4 => out.truncate(at),
            5 => {
                let end = (at + rng.below(16)).min(out.len());
                let chunk = out[at..end].to_vec();
                out.extend_from_slice(&chunk);
            }
            _ => {
                // A field tag followed by u64::MAX as a varint.
                out.push((rng.below(32) as u8) << 3);
                out.extend_from_slice(&[0xff; 9]);
                out.push(0x01);
            }
        }
    }
    out
}

/// Up to `count` mutations of `seed` that decode as `M` (at most 50 tries each: most mutations
/// of a nested message break a length prefix and are refused by the decoder, which is the point).
fn decoded<M: Message + Default>(seed: &M, count: usize, rng: &mut Rng) -> Vec<M> {
    let bytes = seed.encode_to_vec();
    (0..count * 50)
        .filter_map(|_| M::decode(&mutate(&bytes, rng)[..]).ok())
        .take(count)
        .collect()
}

fn command(id: &str, ts: u64, op: Op) -> Command {
    Command {
        request_id: id.into(),
        at_ms: 0,
        ts,
        op: Some(op),
    }
}

fn shard_commands() -> Vec<ShardCommand> {
    let t = TransferRequest {
        issued_at_ms: 0,
        transfer_id: "fz-t".into(),
        from_account_id: "fz-a".into(),
        to_account_id: "fz-b".into(),
        amount: i64::MAX,
    };
    let step = TransferStep {
        transfer_id: "fz-s".into(),
        account_id: "fz-a".into(),
        from_account_id: "fz-b".into(),
        refusal: None,
        ..Default::default()
    };
    let ops = vec![
        Op::CreateAccount(CreateAccountRequest {
            account_id: "fz-a".into(),
            currency: "USD".into(),
            credit_limit: i64::MAX,
            opening_balance: 0,
        }),
        Op::Deposit(DepositRequest {
            issued_at_ms: 0,
            request_id: "fz-d".into(),
            account_id: "fz-a".into(),
            amount: i64::MAX,
        }),
        Op::CreateAccounts(CreateAccounts {
            accounts: vec![
                CreateAccountRequest {
                    account_id: "fz-c".into(),
                    currency: "USD".into(),
                    credit_limit: i64::MAX,
                    opening_balance: i64::MAX,
                };
                3
            ],
        }),
        Op::Withdraw(WithdrawRequest {
            issued_at_ms: 0,
            request_id: "fz-w".into(),
            account_id: "fz-a".into(),
            amount: 1,
        }),
        Op::Transfer(t.clone()),
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(t.clone()),
            credit_shard_id: 2,
            ..Default::default()
        }),
        Op::PrepareCredit(PrepareCredit {
            transfer: Some(t),
            primary_shard_id: 1,
            currency: "USD".into(),
            primary_start_ts: u64::MAX,
            ..Default::default()
        }),
        Op::AbortDebit(step.clone()),
        Op::ForgetTransfers(ForgetTransfers {
            transfers: vec![step.clone(); 3],
        }),
        Op::AbortCredit(step),
        Op::CloseTs(CloseTs { ts: u64::MAX }),
        Op::SetRetention(SetRetention { window_ms: 1 }),
    ];
    ops.into_iter()
        .map(|op| ShardCommand {
            shard_id: 1,
            command: Some(command("fz", u64::MAX >> 1, op)),
        })
        .collect()
}

fn shard_reads() -> Vec<ShardRead> {
    let queries = vec![
        Query::Account(GetAccountRequest {
            account_id: "fz-a".into(),
            at_ts: u64::MAX,
        }),
        Query::History(ListTransfersRequest {
            account_id: "fz-a".into(),
            limit: u32::MAX,
            cursor: u64::MAX,
            kinds: vec![1, 4, i32::MAX],
            from_ts: 1,
            to_ts: u64::MAX,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
        }),
        Query::Transfer(GetTransferRequest {
            transfer_id: "fz-t".into(),
            from_account_id: "fz-a".into(),
        }),
        Query::Stuck(Stuck {
            before_ms: i64::MAX,
            start_ts_before: u64::MAX,
            promises_after: Some(wallet_proto::v1::IntentRef {
                credit_account_id: "\u{0}".repeat(64),
                debit_account_id: String::new(),
                transfer_id: "~".into(),
            }),
        }),
        Query::SnapshotAt(SnapshotAt {
            ts: u64::MAX,
            account_id: "fz-a".into(),
        }),
        Query::Settling(Settling { limit: u32::MAX }),
        Query::IntentStates(IntentStatesQuery {
            intents: vec![
                IntentRef {
                    credit_account_id: "fz-a".into(),
                    debit_account_id: "\u{0}".into(),
                    transfer_id: String::new(),
                };
                1001
            ],
        }),
    ];
    queries
        .into_iter()
        .map(|q| ShardRead {
            shard_id: 1,
            query: Some(q),
        })
        .collect()
}

/// A raft-rs message as a peer would send it (heartbeat from a member), encoded.
fn raft_batch() -> RaftBatch {
    use protobuf::Message as _;
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
    m.from = 2;
    m.to = 1;
    m.term = u64::MAX >> 1;
    m.commit = u64::MAX;
    RaftBatch {
        from_node: 2,
        messages: vec![RaftEnvelope {
            shard_id: 1,
            message: m.write_to_bytes().unwrap(),
        }],
    }
}

/// The first chunk of a snapshot stream: a MsgSnapshot whose data is a file descriptor.
fn snapshot_chunk() -> SnapshotChunk {
    use protobuf::Message as _;
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    m.from = 2;
    m.to = 1;
    m.term = 1;
    let snapshot = m.mut_snapshot();
    let descriptor = wallet_node::snapshot_file::Descriptor {
        bytes: 8,
        crc: crc32fast::hash(b"12345678"),
    };
    snapshot.set_data(descriptor.encode().into());
    snapshot.mut_metadata().index = u64::MAX >> 1;
    snapshot.mut_metadata().term = 1;
    SnapshotChunk {
        from_node: 2,
        shard_id: 1,
        message: m.write_to_bytes().unwrap(),
        data: b"1234".to_vec(),
    }
}

/// Decoding alone: random and mutated bytes of every request type never panic.
#[test]
fn every_request_type_decodes_garbage_without_panicking() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..2_000 {
        let noise = {
            let len = rng.below(256);
            rng.bytes(len)
        };
        let _ = CreateAccountRequest::decode(&noise[..]);
        let _ = TransferRequest::decode(&noise[..]);
        let _ = CreateAccountBatchRequest::decode(&noise[..]);
        let _ = SnapshotChunk::decode(&noise[..]);
        let _ = ShardCommand::decode(&noise[..]);
        let _ = ShardRead::decode(&noise[..]);
        let _ = RaftBatch::decode(&noise[..]);
        let _ = <raft::eraftpb::Message as protobuf::Message>::parse_from_bytes(&noise);
    }
    for seed in shard_commands() {
        decoded(&seed, 500, &mut rng);
    }
    for seed in shard_reads() {
        decoded(&seed, 500, &mut rng);
    }
    decoded(&snapshot_chunk(), 500, &mut rng);
    let n = decoded(&raft_batch(), 1_000, &mut rng).len();
    let c: usize = shard_commands()
        .iter()
        .map(|s| decoded(s, 100, &mut rng).len())
        .sum();
    let r: usize = shard_reads()
        .iter()
        .map(|s| decoded(s, 100, &mut rng).len())
        .sum();
    assert_eq!(
        (n, c, r),
        (1_000, 1_200, 700),
        "the mutator reaches every type"
    );
}

async fn connect(address: &str) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_to_a_running_cluster_get_errors_never_panics() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    client.create_account("fz-a", "USD", 0).await.unwrap();
    client.deposit("fz-0", "fz-a", 100).await.unwrap();
    let seed = 0x5eed_0002;
    let mut rng = Rng(seed);
    let per_seed = 60;
    let mut sent = 0usize;

    let router = connect(&cluster.playground.router_address).await;
    let mut wallet = RawWallet::new(router);
    let t = TransferRequest {
        issued_at_ms: 0,
        transfer_id: "fz-t".into(),
        from_account_id: "fz-a".into(),
        to_account_id: "fz-b".into(),
        amount: i64::MAX,
    };
    for m in decoded(
        &CreateAccountRequest {
            account_id: "fz-a".into(),
            currency: "USD".into(),
            credit_limit: i64::MAX,
            opening_balance: 0,
        },
        per_seed,
        &mut rng,
    ) {
        sent += 1;
        let _ = wallet.create_account(m).await;
    }
    let bulk = CreateAccountBatchRequest {
        accounts: vec![
            CreateAccountRequest {
                account_id: "fz-bulk".into(),
                currency: "USD".into(),
                credit_limit: i64::MAX,
                opening_balance: i64::MAX,
            };
            2
        ],
    };
    for m in decoded(&bulk, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.create_account_batch(m).await;
    }
    let get = GetAccountRequest {
        account_id: "fz-a".into(),
        at_ts: 1,
    };
    for m in decoded(&get, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.get_account(m).await;
    }
    let deposit = DepositRequest {
        issued_at_ms: 0,
        request_id: "fz-d".into(),
        account_id: "fz-a".into(),
        amount: i64::MAX,
    };
    for m in decoded(&deposit, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.deposit(m).await;
    }
    let withdraw = WithdrawRequest {
        issued_at_ms: 0,
        request_id: "fz-w".into(),
        account_id: "fz-a".into(),
        amount: i64::MAX,
    };
    for m in decoded(&withdraw, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.withdraw(m).await;
    }
    for m in decoded(&t, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.transfer(m).await;
    }
    let get_transfer = GetTransferRequest {
        transfer_id: "fz-t".into(),
        from_account_id: "fz-a".into(),
    };
    for m in decoded(&get_transfer, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.get_transfer(m).await;
    }
    let list = ListTransfersRequest {
        account_id: "fz-a".into(),
        limit: u32::MAX,
        cursor: u64::MAX,
        kinds: vec![1, 4],
        from_ts: 1,
        to_ts: u64::MAX,
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };
    for m in decoded(&list, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.list_transfers(m).await;
    }
    let change = wallet_client::AccountStateRequest {
        request_id: "fz-s".into(),
        account_id: "fz-a".into(),
        issued_at_ms: i64::MAX,
    };
    for m in decoded(&change, per_seed, &mut rng) {
        sent += 1;
        let _ = wallet.freeze_account(m.clone()).await;
        let _ = wallet.unfreeze_account(m.clone()).await;
        let _ = wallet.close_account(m).await;
    }
    sent += 1;
    let _ = wallet.audit(AuditRequest {}).await;

    for node_id in cluster.playground.node_ids() {
        let address = cluster.playground.topology.address_of(node_id).unwrap();
        let channel = connect(address).await;
        let mut shard = ShardClient::new(channel.clone());
        let mut raft_peer = RaftClient::new(channel);
        for seed in shard_commands() {
            for m in decoded(&seed, per_seed / 3, &mut rng) {
                sent += 1;
                let _ = shard.execute(m).await;
            }
        }
        for seed in shard_reads() {
            for m in decoded(&seed, per_seed / 3, &mut rng) {
                sent += 1;
                let _ = shard.read(m).await;
            }
        }
        for m in decoded(&TsoRequest { count: u32::MAX }, per_seed / 3, &mut rng) {
            sent += 1;
            let _ = shard.tso(m).await;
        }
        sent += 1;
        let _ = shard.status(StatusRequest {}).await;
        for m in decoded(&raft_batch(), per_seed * 3, &mut rng) {
            sent += 1;
            let _ = raft_peer.send(m).await;
        }
        // Snapshot streams: a mutated first chunk, then mutated data chunks (never a whole,
        // matching file: nothing may reach a replica).
        for first in decoded(&snapshot_chunk(), per_seed / 3, &mut rng) {
            sent += 1;
            let rest = decoded(&snapshot_chunk(), 2, &mut rng);
            let stream = tokio_stream::iter(std::iter::once(first).chain(rest));
            let _ = raft_peer.snapshot(stream).await;
        }
    }

    assert!(sent > 1_500, "only {sent} mutated requests decoded");
    eprintln!("sent {sent} mutated requests");
    for node_id in cluster.playground.node_ids() {
        assert!(
            cluster.playground.node_running(node_id),
            "node {node_id} died (seed {seed:#x})\n{}",
            cluster.logs()
        );
    }
    // Every shard still serves writes and reads.
    cluster.ready().await;
    let [on1, on2] = accounts(&cluster, &client, 1, 10).await;
    client
        .transfer("fz-after", &on1[0], &on2[0], 3)
        .await
        .unwrap();
    let balances = settled(&client, &[on1[0].clone(), on2[0].clone()]).await;
    assert_eq!((balances[&on1[0]], balances[&on2[0]]), (7, 13));
}
