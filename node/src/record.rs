//! CRC32-framed records: the only way bytes reach or leave the disk (G7).
//!
//! Frame: `crc32 (u32 LE) | format version (u8) | payload`. The CRC covers version and payload.
//! A record is checked when written (it must decode back) in debug builds and on every read; a bad
//! frame is reported as [`Corrupt`] and never served.

use prost::Message;

/// Version of the frame format, so a future layout can be told apart from today's.
const FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 5;

/// A record whose frame or payload did not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt record: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

/// Frames raw bytes.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&[0; 4]);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a frame and returns its payload.
pub fn unframe(bytes: &[u8]) -> Result<&[u8], Corrupt> {
    if bytes.len() < HEADER_BYTES {
        return Err(Corrupt(format!(
            "frame of {} bytes is too short",
            bytes.len()
        )));
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let actual = crc32fast::hash(&bytes[4..]);
    if stored != actual {
        return Err(Corrupt(format!(
            "crc32 mismatch: stored {stored:08x}, computed {actual:08x}"
        )));
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(Corrupt(format!("unknown format version {}", bytes[4])));
    }
    Ok(&bytes[HEADER_BYTES..])
}

/// Encodes and frames a prost message.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    frame(&message.encode_to_vec())
}

/// Checks a frame and decodes the prost message inside.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, Corrupt> {
    let payload = unframe(bytes)?;
    M::decode(payload).map_err(|e| Corrupt(format!("undecodable payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_proto::v1::Account;

    #[test]
    fn a_record_round_trips() {
        let account = Account {
            account_id: "alice".into(),
            currency: "USD".into(),
            balance: 42,
            ..Default::default()
        };
        let bytes = encode(&account);
        assert_eq!(decode::<Account>(&bytes).unwrap(), account);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let account = Account {
            account_id: "alice".into(),
            currency: "USD".into(),
            balance: 42,
            ..Default::default()
        };
        let bytes = encode(&account);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode::<Account>(&bad).is_err(),
                    "flip at byte {i} bit {bit}"
                );
            }
        }
        assert!(decode::<Account>(&bytes[..3]).is_err());
    }
}
