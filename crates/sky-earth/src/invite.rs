//! Invites: the copy-pasteable string that makes someone a friend.
//!
//! ```text
//! "sky1-" hex( epoch u64 | R seconds u32 | phase seconds u32 | chain key [32]
//!              | long-term X25519 public key [32] | check [4] )      (all big-endian)
//! check = BLAKE3.derive_key("sky v1 invite check", everything before it)[0..4]
//! ```
//!
//! An invite holds the chain key of its epoch: whoever has it can find the
//! user from that epoch on, so it is shared with friends only, over a
//! channel the user trusts. The check catches copy-and-paste damage; it
//! authenticates nothing.

use std::fmt;
use std::time::Duration;

use crate::ratchet::{ChainKey, Epoch, Schedule};
use sky_proto::wire;

const PREFIX: &str = "sky1-";
const BODY: usize = 8 + 4 + 4 + 32 + 32;
const LEN: usize = BODY + 4;

/// What a friend needs: where the user's chain is, when its epochs turn,
/// and the user's long-term public key for the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// The epoch whose chain key this is.
    pub epoch: Epoch,
    /// The chain key of `epoch`: every later key follows from it.
    pub chain_key: ChainKey,
    /// The user's epochs.
    pub schedule: Schedule,
    /// The user's long-term X25519 public key.
    pub public_key: [u8; 32],
}

/// Why a string is not an invite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteError {
    /// Not `sky1-` followed by the right number of hex digits.
    Format,
    /// The check does not match: the string was damaged.
    Check,
    /// An epoch length of zero, or a phase not below it.
    Schedule,
}

impl fmt::Display for InviteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InviteError::Format => "not a sky invite (expected sky1- and 176 hex digits)",
            InviteError::Check => "the invite is damaged (its check does not match)",
            InviteError::Schedule => "the invite's epoch schedule is invalid",
        })
    }
}

impl std::error::Error for InviteError {}

fn check(body: &[u8]) -> [u8; 4] {
    let hash = blake3::derive_key("sky v1 invite check", body);
    [hash[0], hash[1], hash[2], hash[3]]
}

impl Invite {
    /// The invite's bytes (what `encode` writes as hex), as a reset notice
    /// carries them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let text = self.encode();
        wire::from_hex::<LEN>(&text[PREFIX.len()..])
            .expect("own encoding")
            .to_vec()
    }

    /// Reads `to_bytes` output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Invite, InviteError> {
        Invite::decode(&format!("{PREFIX}{}", wire::to_hex(bytes)))
    }

    /// The `sky1-…` text.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(&self.epoch.0.to_be_bytes());
        b.extend_from_slice(&(self.schedule.length.as_secs() as u32).to_be_bytes());
        b.extend_from_slice(&(self.schedule.phase.as_secs() as u32).to_be_bytes());
        b.extend_from_slice(self.chain_key.as_bytes());
        b.extend_from_slice(&self.public_key);
        let c = check(&b);
        b.extend_from_slice(&c);
        format!("{PREFIX}{}", wire::to_hex(&b))
    }

    /// Parses the `sky1-…` text (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Invite, InviteError> {
        let hex = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(InviteError::Format)?;
        let b: [u8; LEN] = wire::from_hex(hex).ok_or(InviteError::Format)?;
        if check(&b[..BODY]) != b[BODY..] {
            return Err(InviteError::Check);
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&b[..8]);
        let (length, phase) = (u32_at(8), u32_at(12));
        if length == 0 || phase >= length {
            return Err(InviteError::Schedule);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[16..48]);
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(&b[48..80]);
        Ok(Invite {
            epoch: Epoch(u64::from_be_bytes(epoch)),
            chain_key: ChainKey::from_bytes(key),
            schedule: Schedule {
                length: Duration::from_secs(length.into()),
                phase: Duration::from_secs(phase.into()),
            },
            public_key,
        })
    }
}

#[cfg(test)]
#[path = "tests/invite.rs"]
mod tests;
