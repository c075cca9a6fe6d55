//! What the core hands the driver: datagrams to send ([`Transmit`]) and
//! what the application should know ([`Event`]), with why a lookup,
//! connection or delivery did not succeed ([`Failure`]).

use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::wire::{Flags, VirtualAddr};

use crate::handshake;

/// One address the client keeps registered ([`super::Earth::registrations`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationInfo {
    /// The virtual address.
    pub address: VirtualAddr,
    /// A cover address (random, not the user's).
    pub cover: bool,
    /// The sky nodes that hold it now.
    pub holders: Vec<SocketAddr>,
}

/// One of the client's UDP sockets. [`SocketId::MAIN`] is the one the
/// driver opens first; the core asks for fresh ones (a new local port, so a
/// new NAT mapping) by sending from an id it has not used yet: cover
/// registrations each get their own, and at an epoch boundary the client
/// moves to a new one, so that nothing on the wire ties the new address to
/// the old (`docs/PRIVACY.md`). [`super::Earth::poll_released`] says when
/// one is no longer needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u32);

impl SocketId {
    /// The socket the driver opens with the core.
    pub const MAIN: SocketId = SocketId(0);
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Which of the client's sockets to send it from.
    pub socket: SocketId,
    /// Where to send it.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub bytes: Vec<u8>,
}

/// Why a connection, delivery or lookup did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The sky says the friend is not online: every owner that answered
    /// said offline.
    Offline,
    /// No sky node answered within the time limit.
    SkySilent,
    /// The friend was online, but no handshake or acknowledgement came
    /// back within the time limit (a NAT pair that cannot be punched).
    Unreachable,
    /// The friend answered our handshake with an authenticated refusal:
    /// they do not know us (they have not added our invite, or removed us).
    Refused,
    /// No friend by that name.
    NoSuchFriend,
    /// The payload is larger than [`super::MAX_PAYLOAD`].
    TooLarge,
    /// Both sides are behind NATs that give every destination its own
    /// port, and neither holds a port mapping: no direct path exists (the
    /// sky never relays).
    BothRandomizing,
    /// The friend shares our public address (one network, or one carrier
    /// NAT that does not hairpin) and neither a local path nor a port
    /// mapping reached them.
    SharedAddress,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::Offline => "offline",
            Failure::SkySilent => "the sky did not answer",
            Failure::Unreachable => "no answer on the punched path",
            Failure::Refused => "they do not know you (they have not added your invite)",
            Failure::NoSuchFriend => "no such friend",
            Failure::TooLarge => "the payload is too large",
            Failure::BothRandomizing => {
                "both sides are behind NATs that change ports for every destination; no \
                 direct path is possible"
            }
            Failure::SharedAddress => {
                "you share one public address with them (one network or one carrier NAT that \
                 does not loop back) and neither a local path nor a port mapping reached them"
            }
        })
    }
}

/// What the application should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client holds a new view of the sky.
    Sky {
        /// The ring version (0: a standalone node, which owns every address).
        version: u32,
        /// Members of the sky.
        nodes: usize,
    },
    /// Registered (again). Reported when the first owner holds the address,
    /// and again when an owner sees us at another endpoint, not once per
    /// owner.
    Registered {
        /// The address registered.
        address: VirtualAddr,
        /// Where the sky sees us: our NAT's public endpoint.
        observed: SocketAddr,
    },
    /// No sky node held one of our addresses within the time limit (the
    /// members could not be fetched, or no owner answered a registration);
    /// the core keeps trying.
    SkySilent,
    /// The sky introduced a caller. The core punches towards friends.
    Introduced {
        /// The friend, when the caller's address is one of theirs.
        friend: Option<String>,
        /// The caller's virtual address, as the caller gave it.
        caller: VirtualAddr,
        /// Where the caller is.
        endpoint: SocketAddr,
    },
    /// An introduction that did not come from a sky node we registered
    /// with, or whose MAC did not verify under a key that node gave us:
    /// dropped.
    ForgedIntroduction,
    /// The answer to [`super::Earth::lookup`].
    Lookup {
        /// The friend looked up.
        friend: String,
        /// Their endpoint and flags, or why not.
        result: Result<(SocketAddr, Flags), Failure>,
    },
    /// A session with a friend is up (either side started it).
    Connected {
        /// The friend.
        friend: String,
        /// Their endpoint on the punched path.
        peer: SocketAddr,
    },
    /// A handshake from `from` was refused (a stranger or a forgery).
    HandshakeRefused {
        /// Who sent it.
        from: SocketAddr,
        /// Why it was refused.
        error: handshake::HandshakeError,
    },
    /// A payload given to [`super::Earth::send`] was acknowledged.
    Delivered {
        /// The friend.
        friend: String,
        /// The id `send` returned.
        id: u64,
        /// Their endpoint on the punched path.
        peer: SocketAddr,
        /// From the call to the acknowledgement.
        elapsed: Duration,
        /// Datagrams sent to the peer for it (handshake included).
        sent: u32,
    },
    /// A payload given to [`super::Earth::send`] could not be delivered.
    Failed {
        /// The friend.
        friend: String,
        /// The id `send` returned.
        id: u64,
        /// Why not.
        why: Failure,
    },
    /// Application data from a friend.
    Message {
        /// The friend.
        friend: String,
        /// What they sent.
        payload: Vec<u8>,
    },
    /// A friend's address reset was adopted: their new chain is in the
    /// state (saved before it is acknowledged).
    ResetAdopted {
        /// The friend.
        friend: String,
    },
    /// A friend acknowledged our address reset; they are no longer pending.
    ResetAcknowledged {
        /// The friend.
        friend: String,
    },
    /// [`super::Earth::state`] changed in a way that must survive a
    /// restart: save it, then call [`super::Earth::saved`] (or
    /// [`super::Earth::save_failed`]).
    SaveState,
    /// A sky node would not hold our address (`reason`: 1 its table is
    /// full, 2 our IP holds its share of it, 3 our network does, 4 our IP
    /// has spent its signature checks for this second, 5 our signature did
    /// not verify). The registration is tried again, backing off.
    RegistrationRefused {
        /// Why, as the node said.
        reason: u8,
    },
    /// Our NAT forgot an idle mapping before the keepalive interval was
    /// up (tested twice): keepalives go every `interval` from now on.
    KeepaliveShortened {
        /// The new keepalive interval.
        interval: Duration,
    },
    /// A NAT check finished ([`super::Earth::check_nat`], and once when
    /// the client first needs the sky): what it found.
    Nat(super::NatReport),
}
