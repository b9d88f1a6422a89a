//! The payload format of a shard's Raft entries: what a leader proposes and every replica applies.
//!
//! Three formats exist, and every one of them replays:
//! - **bare command** (the first release): one `Command`;
//! - **batch** (since coalescing): one `Proposal{commands}`, unmarked; what leaders write today;
//! - **marked batch**: `0x00` (no protobuf field has number 0, so no protobuf message starts with
//!   it), a format version (`1`), then a `Proposal`. Read already, written by a later release: a
//!   format can only change once every node reads it, or a follower of an older release would
//!   apply a newer leader's entries as nothing and diverge.
//!
//! The two unmarked formats can share their first tag (field 1, length-delimited: a batch's first
//! command, a bare command's request id), and protobuf decoding skips unknown fields, so either
//! may decode as the other. What tells them apart: a batch holds nothing but field 1, while a
//! bare command always holds its operation (field 10 and up) at the top level.

use prost::Message;
use wallet_proto::v1::{Command, Proposal};

/// First byte of a marked entry: never the first byte of a protobuf message.
const MARKER: u8 = 0x00;
/// The marked batch format's version.
const VERSION_BATCH: u8 = 1;

/// The payload of an entry proposing `commands`, in order (the unmarked batch format).
pub fn encode(commands: Vec<Command>) -> Vec<u8> {
    Proposal { commands }.encode_to_vec()
}

/// The commands of an entry's payload, in order, whichever format wrote it.
pub fn decode(data: &[u8]) -> Result<Vec<Command>, String> {
    match data {
        [MARKER, VERSION_BATCH, rest @ ..] => Proposal::decode(rest)
            .map(|p| p.commands)
            .map_err(|e| format!("marked batch entry does not decode: {e}")),
        [MARKER, version, ..] => Err(format!("entry of unknown format version {version}")),
        _ if only_field_one(data) => Proposal::decode(data)
            .map(|p| p.commands)
            .map_err(|e| format!("batch entry does not decode: {e}")),
        _ => match Command::decode(data) {
            Ok(c) if c.op.is_some() => Ok(vec![c]),
            Ok(_) => Err("entry names no operation".into()),
            Err(e) => Err(format!("entry does not decode: {e}")),
        },
    }
}

/// Whether `data` is one or more length-delimited field-1 records and nothing else (a batch).
fn only_field_one(mut data: &[u8]) -> bool {
    use prost::encoding::{decode_key, decode_varint, WireType};
    if data.is_empty() {
        return false;
    }
    while !data.is_empty() {
        let Ok((1, WireType::LengthDelimited)) = decode_key(&mut data) else {
            return false;
        };
        let Some(len) = decode_varint(&mut data)
            .ok()
            .and_then(|len| usize::try_from(len).ok())
            .filter(|len| *len <= data.len())
        else {
            return false;
        };
        data = &data[len..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_proto::v1::{command::Op, DepositRequest};

    fn deposit(id: &str, amount: i64) -> Command {
        Command {
            request_id: id.into(),
            at_ms: 7,
            ts: u64::MAX,
            op: Some(Op::Deposit(DepositRequest {
                request_id: id.into(),
                account_id: "alice".into(),
                amount,
                issued_at_ms: i64::MAX,
            })),
        }
    }

    /// Commands over the whole value range, ids of every allowed character, and the first
    /// release's commands without a request id (account creation, the oracle's windows).
    fn samples() -> Vec<Command> {
        use wallet_proto::v1::{CreateAccountRequest, ExtendTso};
        let mut commands = vec![deposit("a", 1), deposit("b", i64::MAX)];
        commands.push(Command {
            at_ms: 1_764_000_000_000,
            op: Some(Op::CreateAccount(CreateAccountRequest {
                account_id: "alice".into(),
                currency: "USD".into(),
                credit_limit: i64::MAX,
                opening_balance: 0,
            })),
            ..Default::default()
        });
        commands.push(Command {
            op: Some(Op::ExtendTso(ExtendTso { limit: u64::MAX })),
            ..Default::default()
        });
        // A request id whose bytes are themselves a protobuf command naming an operation.
        commands.push(deposit(&format!("b-{}", "A".repeat(45)), 3));
        for id in [
            "x",
            "A-z.0:9_",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            for (at_ms, ts) in [
                (0, 0),
                (1, 1),
                (i64::MAX, u64::MAX),
                (1_764_000_000_000, 1 << 62),
            ] {
                let mut c = deposit(id, 5);
                c.at_ms = at_ms;
                c.ts = ts;
                commands.push(c);
            }
        }
        commands
    }

    #[test]
    fn a_batch_round_trips() {
        let commands = samples();
        assert_eq!(decode(&encode(commands.clone())).unwrap(), commands);
        for c in &commands {
            assert_eq!(decode(&encode(vec![c.clone()])).unwrap(), vec![c.clone()]);
        }
    }

    #[test]
    fn entries_of_the_first_release_still_replay() {
        // A bare Command starts with field 1 (request_id), the same tag a batch's first command
        // has: each must still be read as what it is.
        for c in samples() {
            assert_eq!(
                decode(&c.encode_to_vec()).unwrap(),
                vec![c.clone()],
                "{c:?}"
            );
        }
    }

    #[test]
    fn marked_batches_of_a_later_release_replay() {
        let commands = samples();
        let mut data = vec![MARKER, VERSION_BATCH];
        data.extend(
            Proposal {
                commands: commands.clone(),
            }
            .encode_to_vec(),
        );
        assert_eq!(decode(&data).unwrap(), commands);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        assert!(decode(&[MARKER, 9, 1, 2]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        let no_op = Command {
            request_id: "x".into(),
            ..Default::default()
        };
        assert!(decode(&no_op.encode_to_vec()).is_err());
    }
}
