//! The payload format of a shard's Raft entries: what a leader proposes and every replica applies.
//!
//! An entry carries a batch of commands (`Proposal`), behind a two-byte marker: `0x00` (no
//! protobuf field has number 0, so no protobuf message starts with it) and the format version.
//! Entries written before batches existed hold one bare `Command`; a log or checkpoint of that
//! age still replays, because a payload without the marker is read as one command.

use prost::Message;
use wallet_proto::v1::{Command, Proposal};

/// First byte of a batch entry: never the first byte of a protobuf message.
const MARKER: u8 = 0x00;
/// The batch format's version.
const VERSION_BATCH: u8 = 1;

/// The payload of an entry proposing `commands`, in order.
pub fn encode(commands: Vec<Command>) -> Vec<u8> {
    let proposal = Proposal { commands };
    let mut data = Vec::with_capacity(2 + proposal.encoded_len());
    data.push(MARKER);
    data.push(VERSION_BATCH);
    // Writing into a Vec cannot run out of room.
    let _ = proposal.encode(&mut data);
    data
}

/// The commands of an entry's payload, in order.
pub fn decode(data: &[u8]) -> Result<Vec<Command>, String> {
    match data {
        [MARKER, VERSION_BATCH, rest @ ..] => Proposal::decode(rest)
            .map(|p| p.commands)
            .map_err(|e| format!("batch entry does not decode: {e}")),
        [MARKER, version, ..] => Err(format!("entry of unknown format version {version}")),
        _ => Command::decode(data)
            .map(|c| vec![c])
            .map_err(|e| format!("single-command entry does not decode: {e}")),
    }
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

    #[test]
    fn a_batch_round_trips() {
        let commands = vec![deposit("a", 1), deposit("b", i64::MAX), Command::default()];
        assert_eq!(decode(&encode(commands.clone())).unwrap(), commands);
        assert_eq!(decode(&encode(Vec::new())).unwrap(), Vec::new());
    }

    #[test]
    fn an_entry_of_one_bare_command_still_replays() {
        // A bare Command starts with field 1 (request_id), the same tag a Proposal's first
        // command has: without the marker it would be misread as a batch.
        let legacy = deposit("legacy", 42);
        assert_eq!(decode(&legacy.encode_to_vec()).unwrap(), vec![legacy]);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        assert!(decode(&[MARKER, 9, 1, 2]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
