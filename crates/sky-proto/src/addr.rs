//! The values every sky message carries: virtual addresses, address keys
//! and their signatures, tags, cookies, introduction keys and MACs (byte newtypes whose `Debug` never
//! prints a secret or an earth address), registration flags, and endpoints
//! (an IP address and a port, 6 or 18 bytes on the wire).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Length of an endpoint on the wire: IPv4 address and port.
pub const ENDPOINT_V4_LEN: usize = 6;
/// Length of an endpoint on the wire: IPv6 address and port.
pub const ENDPOINT_V6_LEN: usize = 18;

macro_rules! bytes_newtype {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl Default for $name {
            fn default() -> Self {
                $name([0; $len])
            }
        }

        impl $name {
            /// Its length on the wire.
            pub const LEN: usize = $len;

            /// Copies exactly `LEN` bytes (the caller has checked the length).
            pub(crate) fn read(bytes: &[u8]) -> Self {
                let mut out = [0u8; $len];
                out.copy_from_slice(bytes);
                $name(out)
            }

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }
    };
}

bytes_newtype!(
    /// A 16-byte virtual address: where an earth node can be reached this
    /// epoch. Its `Debug` prints nothing of the value: addresses are never
    /// logged above debug level, and not by accident at debug either.
    VirtualAddr,
    16
);
bytes_newtype!(
    /// The public half of an address's key pair (Ed25519): the address is
    /// its hash, and only the holder of the private half can register,
    /// move or unregister it. Its `Debug` prints nothing: it names an
    /// address as surely as the address does.
    AddrKey,
    32
);
bytes_newtype!(
    /// An Ed25519 signature by an address key over a statement
    /// ([`crate::wire::register_statement`]).
    Signature,
    64
);
bytes_newtype!(
    /// A client-chosen request tag, echoed in the reply.
    Tag,
    4
);
bytes_newtype!(
    /// A stateless cookie binding a source IP and port (see `keys`).
    Cookie,
    8
);
bytes_newtype!(
    /// The key a registrant receives to check introductions.
    IntroKey,
    32
);
bytes_newtype!(
    /// A truncated keyed-BLAKE3 tag over an introduction.
    Mac,
    8
);

macro_rules! redacted_debug {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(..)"))
            }
        }
    )*};
}
redacted_debug!(VirtualAddr, AddrKey, Signature, Cookie, IntroKey, Mac);

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:02x?})", self.0)
    }
}

impl VirtualAddr {
    /// The address an address key registers: the first 16 bytes of a
    /// domain-separated BLAKE3 hash of the public key. The address commits
    /// to the key; knowing the address does not give it.
    pub fn from_key(key: &AddrKey) -> VirtualAddr {
        // `derive_key` hashes its context string on every call; the hasher
        // keyed with it is made once and cloned (one compression, not two).
        static CONTEXT: std::sync::LazyLock<blake3::Hasher> =
            std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key("sky v1 virtual address"));
        let hash = CONTEXT.clone().update(&key.0).finalize();
        VirtualAddr::read(&hash.as_bytes()[..16])
    }

    /// Lower-case hex, for the operator's tools (never for logs).
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

/// Lower-case hex of any bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses exactly `N` bytes of hex.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    // Digits only: `from_str_radix` alone would take a sign (`+f`).
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
/// Flags a registration carries and a lookup reply repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// The registrant is on a metered connection: go easy on it.
    pub const METERED: u8 = 0x01;
    /// Set by the sky in an `online` reply when it did not introduce the
    /// caller because the target's introduction rate limit was reached.
    pub const NOT_INTRODUCED: u8 = 0x02;

    /// The registrant is metered.
    pub fn metered(self) -> bool {
        self.0 & Self::METERED != 0
    }

    /// The sky introduced the caller (the target's limit was not reached).
    pub fn introduced(self) -> bool {
        self.0 & Self::NOT_INTRODUCED == 0
    }
}

/// IPv4-mapped IPv6 addresses become IPv4: one endpoint, one encoding.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Bytes an endpoint takes on the wire.
pub fn endpoint_len(addr: &SocketAddr) -> usize {
    match canonical(*addr) {
        SocketAddr::V4(_) => ENDPOINT_V4_LEN,
        SocketAddr::V6(_) => ENDPOINT_V6_LEN,
    }
}

/// Writes an endpoint (address, then big-endian port) into exactly
/// `endpoint_len` bytes.
pub(crate) fn encode_endpoint(addr: &SocketAddr, out: &mut [u8]) {
    match canonical(*addr) {
        SocketAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.ip().octets());
            out[4..6].copy_from_slice(&v4.port().to_be_bytes());
        }
        SocketAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.ip().octets());
            out[16..18].copy_from_slice(&v6.port().to_be_bytes());
        }
    }
}

/// Reads an endpoint from exactly 6 (IPv4) or 18 (IPv6) bytes.
pub fn decode_endpoint(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        ENDPOINT_V4_LEN => {
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[4], b[5]]),
            ))
        }
        ENDPOINT_V6_LEN => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[16], b[17]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}
