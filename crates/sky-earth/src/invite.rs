//! Invites: the copy-pasteable string that makes someone a friend.
//!
//! ```text
//! "sky1-" hex( epoch u64 | R seconds u32 | phase seconds u32 | chain key [32]
//!              | device keys [32] × n | check [4] )                 (all big-endian)
//! check = BLAKE3.derive_key("sky v1 invite check", everything before it)[0..4]
//! ```
//!
//! The device keys are the long-term X25519 public keys of the user's
//! devices, device 0 first (`n` = 1 to [`MAX_DEVICES`]; the length says how
//! many): 84 bytes for the common single-device user, 32 more per device.
//!
//! An invite holds the chain key of its epoch: whoever has it can find the
//! user from that epoch on, so it is shared with friends only, over a
//! channel the user trusts. The check catches copy-and-paste damage; it
//! authenticates nothing.

use std::fmt;
use std::time::Duration;

use crate::ratchet::{ChainKey, Epoch, MAX_EPOCH, MAX_WALK, MIN_EPOCH, Schedule};
use sky_proto::time::UnixTime;
use sky_proto::wire;

const PREFIX: &str = "sky1-";
/// Bytes before the device keys.
const HEAD: usize = 8 + 4 + 4 + 32;
/// The check's length.
const CHECK: usize = 4;

/// The most devices one user may have (each its own key and address).
pub const MAX_DEVICES: usize = 8;

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
    /// The long-term X25519 public keys of the user's devices, device 0
    /// first: a friend's handshake proves one of them.
    pub keys: Vec<[u8; 32]>,
}

/// Why a string is not an invite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteError {
    /// Not `sky1-` followed by the right number of hex digits.
    Format,
    /// The check does not match: the string was damaged.
    Check,
    /// An epoch length outside [`MIN_EPOCH`]..=[`MAX_EPOCH`], or a phase
    /// not below it.
    Schedule,
    /// The invite's epoch is further from now than the ratchet walks
    /// ([`MAX_WALK`] epochs back), or ahead of now: stale or forged.
    Epoch,
}

impl fmt::Display for InviteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InviteError::Format => {
                "not a sky invite (expected sky1- and 176 hex digits, 64 more per extra device)"
            }
            InviteError::Check => "the invite is damaged (its check does not match)",
            InviteError::Schedule => {
                "the invite's epoch schedule is invalid (epochs of 1 hour to 365 days)"
            }
            InviteError::Epoch => {
                "the invite's epoch is too far from now (stale or forged): ask for a new one"
            }
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
        let mut b = Vec::with_capacity(HEAD + 32 * self.keys.len() + CHECK);
        b.extend_from_slice(&self.epoch.0.to_be_bytes());
        b.extend_from_slice(&(self.schedule.length.as_secs() as u32).to_be_bytes());
        b.extend_from_slice(&(self.schedule.phase.as_secs() as u32).to_be_bytes());
        b.extend_from_slice(self.chain_key.as_bytes());
        for key in &self.keys {
            b.extend_from_slice(key);
        }
        let c = check(&b);
        b.extend_from_slice(&c);
        b
    }

    /// Reads `to_bytes` output.
    pub fn from_bytes(b: &[u8]) -> Result<Invite, InviteError> {
        let n = b
            .len()
            .checked_sub(HEAD + CHECK)
            .ok_or(InviteError::Format)?;
        if n == 0 || n % 32 != 0 || n / 32 > MAX_DEVICES {
            return Err(InviteError::Format);
        }
        let body = b.len() - CHECK;
        if check(&b[..body]) != b[body..] {
            return Err(InviteError::Check);
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&b[..8]);
        let (length, phase) = (u32_at(8), u32_at(12));
        let bounds = MIN_EPOCH.as_secs()..=MAX_EPOCH.as_secs();
        if !bounds.contains(&u64::from(length)) || phase >= length {
            return Err(InviteError::Schedule);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[16..48]);
        let keys = b[HEAD..body]
            .chunks_exact(32)
            .map(|k| k.try_into().expect("32 bytes"))
            .collect();
        Ok(Invite {
            epoch: Epoch(u64::from_be_bytes(epoch)),
            chain_key: ChainKey::from_bytes(key),
            schedule: Schedule {
                length: Duration::from_secs(length.into()),
                phase: Duration::from_secs(phase.into()),
            },
            keys,
        })
    }

    /// Whether this invite's epoch can be reached from `now`: no more than
    /// [`MAX_WALK`] epochs back, and not ahead of now by more than one
    /// (clock skew). What an application checks before it adds a friend
    /// (`sky earth add-friend` does).
    pub fn check_at(&self, now: UnixTime) -> Result<(), InviteError> {
        let current = self.schedule.epoch_at(now).0;
        if self.epoch.0 > current + 1 || current - self.epoch.0.min(current) > MAX_WALK {
            return Err(InviteError::Epoch);
        }
        Ok(())
    }

    /// The `sky1-…` text.
    pub fn encode(&self) -> String {
        format!("{PREFIX}{}", wire::to_hex(&self.to_bytes()))
    }

    /// Parses the `sky1-…` text (surrounding whitespace ignored).
    pub fn decode(text: &str) -> Result<Invite, InviteError> {
        let hex = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(InviteError::Format)?;
        if hex.len() % 2 != 0
            || hex.len() > 2 * (HEAD + 32 * MAX_DEVICES + CHECK)
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(InviteError::Format);
        }
        let mut b = Vec::with_capacity(hex.len() / 2);
        for pair in hex.as_bytes().chunks_exact(2) {
            let pair = std::str::from_utf8(pair).map_err(|_| InviteError::Format)?;
            b.push(u8::from_str_radix(pair, 16).map_err(|_| InviteError::Format)?);
        }
        Invite::from_bytes(&b)
    }
}

#[cfg(test)]
#[path = "tests/invite.rs"]
mod tests;
