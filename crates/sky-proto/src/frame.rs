//! Earth-to-earth frames: what friends send each other directly, on the
//! path the sky helped them punch (`docs/PROTOCOL.md`, "Earth: the friends'
//! handshake"). A sky node never sees, sends or parses these.
//!
//! The first byte says what a datagram is ([`Registry`]), for every
//! datagram an earth client or a sky node may receive:
//!
//! | byte | what | length | layout |
//! | --- | --- | --- | --- |
//! | `0x01` | a sky message, protocol v1 ([`crate::wire`]) | per kind | `01 kind …` |
//! | `0x20` | punch: opens the sender's NAT mapping, ignored | ≥ 1 | `20` |
//! | `0x21` | handshake msg1 (initiator → responder) | 97 | `21 e_i[32] enc(S_i)[32] tag[16] tag[16]` |
//! | `0x22` | handshake msg2 (responder → initiator) | 49 | `22 e_r[32] tag[16]` |
//! | `0x23` | sealed data | payload + 25 | `23 counter[8] enc(payload) tag[16]` |
//! | `0x24` | handshake refusal (responder → a caller it does not know) | 49 | `24 e_r[32] tag[16]` |
//! | `0x25` | probe: a punch only the friend can make ([`crate::hint`]) | 13 | `25 nonce[4] tag[8]` |
//! | other | unassigned: dropped | | |
//!
//! The first byte of a sealed payload (after opening) is a [`Payload`]
//! kind. This module is only the layout: the cryptography (X25519,
//! ChaCha20-Poly1305, the replay window) is the earth client's. Like
//! [`crate::wire`], [`Frame::new_checked`] never panics on any input.

use std::ops::Range;

/// What the first byte of a datagram says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registry {
    /// A sky message ([`crate::wire::VERSION`]).
    Sky,
    /// An earth-to-earth frame.
    Frame(FrameKind),
    /// Empty, or a first byte nobody assigned.
    Unknown,
}

impl Registry {
    /// Classifies a datagram by its first byte.
    pub fn of(datagram: &[u8]) -> Registry {
        match datagram.first() {
            Some(&crate::wire::VERSION) => Registry::Sky,
            Some(&b) => FrameKind::from_byte(b).map_or(Registry::Unknown, Registry::Frame),
            None => Registry::Unknown,
        }
    }
}

/// The earth-to-earth frame kinds (byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Opens a NAT mapping; carries nothing.
    Punch = 0x20,
    /// The initiator's handshake message.
    Msg1 = 0x21,
    /// The responder's handshake message.
    Msg2 = 0x22,
    /// A sealed datagram of an established session.
    Data = 0x23,
    /// The responder's authenticated "I do not know you".
    Refuse = 0x24,
    /// A punch under the friends' pair key ([`crate::hint::probe`]).
    Probe = 0x25,
}

impl FrameKind {
    /// Every frame kind, in byte order.
    pub const ALL: [FrameKind; 6] = [
        FrameKind::Punch,
        FrameKind::Msg1,
        FrameKind::Msg2,
        FrameKind::Data,
        FrameKind::Refuse,
        FrameKind::Probe,
    ];

    /// The kind whose first byte is `byte`.
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|k| *k as u8 == byte)
    }
}

/// The first byte of a punch.
pub const PUNCH: u8 = FrameKind::Punch as u8;
/// The first byte of handshake msg1.
pub const MSG1: u8 = FrameKind::Msg1 as u8;
/// The first byte of handshake msg2.
pub const MSG2: u8 = FrameKind::Msg2 as u8;
/// The first byte of a sealed datagram.
pub const DATA: u8 = FrameKind::Data as u8;
/// The first byte of a handshake refusal.
pub const REFUSE: u8 = FrameKind::Refuse as u8;
/// The first byte of a probe.
pub const PROBE: u8 = FrameKind::Probe as u8;

/// An X25519 public key.
pub const KEY_LEN: usize = 32;
/// A ChaCha20-Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Length of msg1.
pub const MSG1_LEN: usize = 1 + KEY_LEN + KEY_LEN + AEAD_TAG_LEN + AEAD_TAG_LEN;
/// Length of msg2.
pub const MSG2_LEN: usize = 1 + KEY_LEN + AEAD_TAG_LEN;
/// Length of a refusal.
pub const REFUSE_LEN: usize = 1 + KEY_LEN + AEAD_TAG_LEN;
/// Length of a sealed datagram's header: the kind and the counter.
pub const DATA_HEADER_LEN: usize = 9;
/// Bytes a sealed datagram adds to its payload.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + AEAD_TAG_LEN;

/// Byte offsets of every frame field.
pub mod field {
    use std::ops::Range;

    /// msg1: the initiator's ephemeral public key.
    pub const MSG1_EPHEMERAL: Range<usize> = 1..33;
    /// msg1: the initiator's static public key, encrypted under k1.
    pub const MSG1_STATIC: Range<usize> = 33..65;
    /// msg1: the tag over the encrypted static key.
    pub const MSG1_STATIC_TAG: Range<usize> = 65..81;
    /// msg1: everything the second tag covers (ephemeral, encrypted static, tag).
    pub const MSG1_TRANSCRIPT: Range<usize> = 1..81;
    /// msg1: the tag under k2 (proves the initiator's static secret).
    pub const MSG1_TAG: Range<usize> = 81..97;
    /// msg2: the responder's ephemeral public key.
    pub const MSG2_EPHEMERAL: Range<usize> = 1..33;
    /// msg2: the tag under k3.
    pub const MSG2_TAG: Range<usize> = 33..49;
    /// data: the sender's counter (big-endian u64), the AEAD nonce.
    pub const DATA_COUNTER: Range<usize> = 1..9;
}

/// Why bytes are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Empty, or a first byte that names no frame.
    NotAFrame,
    /// The length does not fit the kind.
    BadLength,
}

/// A checked view over one earth-to-earth frame: the kind is known and the
/// length fits it, so every field accessor is in bounds.
#[derive(Clone, Copy, Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
    kind: FrameKind,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks the first byte and the length; never panics.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, FrameError> {
        let bytes = buffer.as_ref();
        let kind = bytes
            .first()
            .and_then(|b| FrameKind::from_byte(*b))
            .ok_or(FrameError::NotAFrame)?;
        let ok = match kind {
            FrameKind::Punch => true,
            FrameKind::Msg1 => bytes.len() == MSG1_LEN,
            FrameKind::Msg2 => bytes.len() == MSG2_LEN,
            FrameKind::Refuse => bytes.len() == REFUSE_LEN,
            FrameKind::Probe => bytes.len() == crate::hint::PROBE_LEN,
            FrameKind::Data => {
                bytes.len() >= DATA_OVERHEAD && bytes.len() <= crate::wire::MAX_DATAGRAM_LEN
            }
        };
        if !ok {
            return Err(FrameError::BadLength);
        }
        Ok(Frame { buffer, kind })
    }

    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The whole frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// A 32-byte field of the frame (an ephemeral key).
    pub fn key(&self, range: Range<usize>) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&self.as_bytes()[range]);
        out
    }

    /// A sealed datagram's counter (0 for other kinds).
    pub fn counter(&self) -> u64 {
        match self.kind {
            FrameKind::Data => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.as_bytes()[field::DATA_COUNTER]);
                u64::from_be_bytes(b)
            }
            _ => 0,
        }
    }

    /// The length of a sealed datagram's payload (0 for other kinds).
    pub fn payload_len(&self) -> usize {
        match self.kind {
            FrameKind::Data => self.as_bytes().len() - DATA_OVERHEAD,
            _ => 0,
        }
    }
}

/// The first byte of a sealed payload: what the friend sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Payload {
    /// Acknowledges the sealed datagram whose counter follows (8 bytes).
    Ack = 0x00,
    /// Application data, delivered reliably (acknowledged, retried).
    Text = 0x01,
    /// An address reset notice: the sender's new chain, as invite bytes.
    Reset = 0x02,
    /// Application data, best effort (no acknowledgement).
    Datagram = 0x03,
}

impl Payload {
    /// The payload kind whose first byte is `byte`.
    pub fn from_byte(byte: u8) -> Option<Payload> {
        [
            Payload::Ack,
            Payload::Text,
            Payload::Reset,
            Payload::Datagram,
        ]
        .into_iter()
        .find(|p| *p as u8 == byte)
    }
}

/// The sealed payload that acknowledges the datagram with `counter`.
pub fn ack_payload(counter: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = Payload::Ack as u8;
    p[1..].copy_from_slice(&counter.to_be_bytes());
    p
}

/// The counter an acknowledgement payload's body names.
pub fn parse_ack(body: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(body).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
#[path = "tests/frame.rs"]
mod tests;
