//! A user's identity and friend list, as values (no IO; `state` persists
//! them).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sky_proto::time::UnixTime;

use x25519_dalek::{PublicKey, StaticSecret};

use crate::invite::Invite;
use crate::ratchet::{Chain, ChainKey, Epoch, Schedule};

/// The user's own secrets on this device: the chain the user registers
/// under (shared by all their devices), this device's long-term X25519 key
/// pair, and which device it is. Its `Debug` shows no secret.
#[derive(Clone)]
pub struct Identity {
    /// The user's own chain, from its origin epoch.
    pub chain: Chain,
    /// The user's epochs (length and phase).
    pub schedule: Schedule,
    secret: StaticSecret,
    /// Which of the user's devices this is (its index in `devices`).
    device: u8,
    /// The public keys of all the user's devices, device 0 first (what
    /// invites carry).
    devices: Vec<[u8; 32]>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("origin", &self.chain.origin())
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new identity from 64 random bytes (the caller draws them), whose
    /// chain starts at the epoch of `now` under epochs of `length`.
    pub fn generate(random: [u8; 64], length: Duration, now: UnixTime) -> Identity {
        let mut ck = [0u8; 32];
        ck.copy_from_slice(&random[..32]);
        let mut sk = [0u8; 32];
        sk.copy_from_slice(&random[32..]);
        Identity::from_parts(ChainKey::from_bytes(ck), length, now, sk)
    }

    /// An identity whose chain is `key` from the epoch of `now`; the
    /// phase is derived from `key`.
    pub fn from_parts(
        key: ChainKey,
        length: Duration,
        now: UnixTime,
        secret: [u8; 32],
    ) -> Identity {
        let schedule = Schedule {
            length,
            phase: key.phase(length),
        };
        let origin = schedule.epoch_at(now);
        Identity::restore(origin, key, schedule, secret, 0, Vec::new())
    }

    /// Restores an identity saved with `secret_bytes`, its chain origin,
    /// which device it is and the keys of all the user's devices (empty:
    /// a single-device user, this device's key alone).
    pub fn restore(
        origin: Epoch,
        key: ChainKey,
        schedule: Schedule,
        secret: [u8; 32],
        device: u8,
        mut devices: Vec<[u8; 32]>,
    ) -> Identity {
        let secret = StaticSecret::from(secret);
        let own = PublicKey::from(&secret).to_bytes();
        if devices.get(usize::from(device)) != Some(&own) {
            devices = vec![own];
        }
        let device = devices.iter().position(|k| *k == own).unwrap_or(0) as u8;
        Identity {
            chain: Chain::new(origin, key),
            schedule,
            secret,
            device,
            devices,
        }
    }

    /// This device's long-term X25519 public key (friends know it from the
    /// invite).
    pub fn public_key(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// Which of the user's devices this is (0 for the first).
    pub fn device(&self) -> u8 {
        self.device
    }

    /// The public keys of all the user's devices, device 0 first.
    pub fn devices(&self) -> &[[u8; 32]] {
        &self.devices
    }

    /// Adds a device whose long-term secret is `secret`; returns its index.
    /// `None` when the user has [`crate::invite::MAX_DEVICES`] already.
    pub fn add_device(&mut self, secret: [u8; 32]) -> Option<u8> {
        if self.devices.len() >= crate::invite::MAX_DEVICES {
            return None;
        }
        let key = PublicKey::from(&StaticSecret::from(secret)).to_bytes();
        self.devices.push(key);
        Some((self.devices.len() - 1) as u8)
    }

    /// The same user on another of their devices: that device's secret and
    /// index (the chain, schedule and device keys are shared).
    pub fn for_device(&self, secret: [u8; 32], device: u8) -> Identity {
        Identity::restore(
            self.chain.origin(),
            self.chain.origin_key().clone(),
            self.schedule,
            secret,
            device,
            self.devices.clone(),
        )
    }

    /// Address reset: a fresh chain from `key`, starting at the epoch of
    /// `now`, on the same schedule. Nobody holding the old chain can
    /// compute the new addresses.
    pub fn reset(&mut self, key: ChainKey, now: UnixTime) {
        let origin = self.schedule.epoch_at(now);
        self.chain = Chain::new(origin, key);
    }

    /// The long-term X25519 secret, for the handshake.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The invite for the epoch of `now`: it reveals nothing of
    /// earlier epochs.
    pub fn invite(&mut self, now: UnixTime) -> Invite {
        let epoch = self.schedule.epoch_at(now).max(self.chain.origin());
        Invite {
            epoch,
            chain_key: self
                .chain
                .key_at(epoch)
                .expect("epoch at or after the origin"),
            schedule: self.schedule,
            keys: self.devices.clone(),
        }
    }
}

/// A friend: their chain from the epoch their invite (or last reset) gave,
/// their schedule and long-term public key.
#[derive(Clone, Debug)]
pub struct Friend {
    /// Their chain, from the epoch their invite or last reset carried.
    pub chain: Chain,
    /// Their epochs.
    pub schedule: Schedule,
    /// The long-term X25519 public keys of their devices, device 0 first
    /// (the handshake proves one of them).
    pub keys: Vec<[u8; 32]>,
}

impl From<Invite> for Friend {
    fn from(i: Invite) -> Friend {
        Friend {
            chain: Chain::new(i.epoch, i.chain_key),
            schedule: i.schedule,
            keys: i.keys,
        }
    }
}

/// Why a friend could not be added or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FriendError {
    /// Names are 1 to 64 characters of letters, digits, `-`, `_`, `.`.
    BadName(String),
    /// A friend by that name exists already.
    AlreadyFriend(String),
    /// No friend by that name.
    NoSuchFriend(String),
    /// The invite is this user's own.
    OwnInvite,
    /// The invite's key is already the friend of that name's: a second
    /// name for one friend would keep them on the old chain after a reset.
    SameKey(String),
    /// The invite's chain is already the friend of that name's.
    SameChain(String),
    /// The user has as many devices as an invite can carry.
    TooManyDevices,
}

impl fmt::Display for FriendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FriendError::BadName(n) => write!(
                f,
                "`{n}` is not a friend name (1 to 64 letters, digits, '-', '_' or '.')"
            ),
            FriendError::AlreadyFriend(n) => write!(f, "`{n}` is already a friend"),
            FriendError::NoSuchFriend(n) => write!(f, "no friend named `{n}`"),
            FriendError::OwnInvite => f.write_str("that is your own invite"),
            FriendError::SameKey(n) => {
                write!(f, "that invite's key is already your friend `{n}`'s")
            }
            FriendError::SameChain(n) => {
                write!(f, "that invite's addresses are already your friend `{n}`'s")
            }
            FriendError::TooManyDevices => write!(
                f,
                "you have {} devices already, as many as an invite carries",
                crate::invite::MAX_DEVICES
            ),
        }
    }
}

impl std::error::Error for FriendError {}

/// Friends by name.
#[derive(Clone, Debug, Default)]
pub struct Friends(pub BTreeMap<String, Friend>);

impl Friends {
    /// Adds `friend` under `name`. Refuses a name in use, and a key or a
    /// chain that is already another friend's (one person under two names
    /// would keep the old chain after an address reset).
    pub fn add(&mut self, name: &str, friend: Friend) -> Result<(), FriendError> {
        check_name(name)?;
        if self.0.contains_key(name) {
            return Err(FriendError::AlreadyFriend(name.to_string()));
        }
        for (other, f) in &self.0 {
            if f.keys.iter().any(|k| friend.keys.contains(k)) {
                return Err(FriendError::SameKey(other.clone()));
            }
            if same_chain(&f.chain, &friend.chain) {
                return Err(FriendError::SameChain(other.clone()));
            }
        }
        self.0.insert(name.to_string(), friend);
        Ok(())
    }

    /// Renames the friend `from` to `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), FriendError> {
        check_name(to)?;
        if self.0.contains_key(to) {
            return Err(FriendError::AlreadyFriend(to.to_string()));
        }
        let f = self.remove(from)?;
        self.0.insert(to.to_string(), f);
        Ok(())
    }

    /// Removes the friend `name` and returns them.
    pub fn remove(&mut self, name: &str) -> Result<Friend, FriendError> {
        self.0
            .remove(name)
            .ok_or_else(|| FriendError::NoSuchFriend(name.to_string()))
    }
}

#[cfg(test)]
#[path = "tests/identity.rs"]
mod tests;

fn check_name(name: &str) -> Result<(), FriendError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(FriendError::BadName(name.to_string()))
    }
}

/// Whether two chains are one: the same key at an epoch both know.
pub(crate) fn same_chain(a: &Chain, b: &Chain) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    let e = a.origin().max(b.origin());
    a.key_at(e) == b.key_at(e)
}
