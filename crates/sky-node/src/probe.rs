//! A small blocking client of the sky protocol: what `sky probe` runs, and
//! what the integration tests use to talk to a real node over real sockets.
//!
//! It handles the cookie exchange (a request answered with a cookie is sent
//! again with it), matches replies by tag, retransmits within its timeout,
//! and checks every introduction against the keys from its `registered`
//! replies — a forged one is refused. This is an operator's tool, not the
//! earth client: it keeps no ratchet and punches no holes.

#![allow(clippy::disallowed_methods)] // a blocking tool: it reads the clock

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use crate::engine::sys;
use sky_proto::intro::{self, IntroError};
use sky_proto::ring::RingConfig;
use sky_proto::wire::{
    self, AddrKey, Cookie, Flags, IntroKey, Message, Signature, Tag, VirtualAddr,
};

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// No matching answer within the timeout.
    Timeout,
    Io(io::Error),
    /// The node answered with something this request does not expect.
    Unexpected(wire::Kind),
    /// The node is a member of a sky that gives this address to others.
    NotOwner {
        version: u32,
        hint: SocketAddr,
    },
    /// The node refused a registration; `reason` as `refused` carries it
    /// (4: too many signature checks from this source, try later; 5: the
    /// signature does not prove the address).
    Refused(u8),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Timeout => f.write_str("no answer within the timeout"),
            ProbeError::Io(e) => write!(f, "{e}"),
            ProbeError::Unexpected(k) => write!(f, "unexpected {k:?} reply"),
            ProbeError::NotOwner { version, hint } => write!(
                f,
                "not an owner of this address in ring {version:08x}; its first owner is {hint}"
            ),
            ProbeError::Refused(reason) => {
                let why = match reason {
                    1 => "the table is full",
                    2 => "this IP holds its share",
                    3 => "this prefix holds its share",
                    4 => "too many signature checks from this source: try later",
                    5 => "the signature does not prove the address",
                    _ => "unknown reason",
                };
                write!(f, "refused ({reason}: {why})")
            }
        }
    }
}

impl std::error::Error for ProbeError {}

impl From<io::Error> for ProbeError {
    fn from(e: io::Error) -> Self {
        ProbeError::Io(e)
    }
}

/// What a registration returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub address: VirtualAddr,
    pub observed: SocketAddr,
    pub keepalive: Duration,
}

/// What a lookup returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Online { endpoint: SocketAddr, flags: Flags },
    Offline,
}

/// A node's view of the sky, as its members pages tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// 0 from a node that is not part of a ring.
    pub version: u32,
    pub config: RingConfig,
    /// Service endpoints, in the node's ring order.
    pub members: Vec<SocketAddr>,
}

/// Members requests are padded to this size: the largest page a request
/// may bring back.
pub const MEMBERS_REQUEST_LEN: u16 = wire::MAX_DATAGRAM_LEN as u16;

/// An introduction the client accepted, or a datagram it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    Introduction {
        caller: VirtualAddr,
        endpoint: SocketAddr,
    },
    /// An introduction whose MAC did not verify: dropped.
    Forged,
    /// A reply to a registration's keepalive: register again.
    NotRegistered,
}

/// What `Client::receive_with` got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    Sky(Incoming),
    /// `len` bytes from a peer other than the sky node.
    Peer {
        from: SocketAddr,
        len: usize,
    },
}

/// Resolves `HOST:PORT` to its first address.
pub fn resolve(sky: &str) -> io::Result<SocketAddr> {
    sky.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{sky} resolves to nothing"),
        )
    })
}

/// The private half of an address key (Ed25519): what registers, moves
/// and drops the address of its public half. Its `Debug` prints nothing.
#[derive(Clone)]
pub struct AddrSecret {
    signing: ed25519_dalek::SigningKey,
    key: AddrKey,
}

impl fmt::Debug for AddrSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddrSecret(..)")
    }
}

impl AddrSecret {
    /// The key pair of a 32-byte seed (about 15 µs: derive it once).
    pub fn from_seed(seed: [u8; 32]) -> AddrSecret {
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let key = AddrKey(signing.verifying_key().to_bytes());
        AddrSecret { signing, key }
    }

    /// The key pair whose seed is a hash of `name`: anyone who knows the
    /// name holds the address, so it is for tests and probes only.
    pub fn from_name(name: &str) -> AddrSecret {
        AddrSecret::from_seed(Self::seed_of_name(name))
    }

    /// The seed [`AddrSecret::from_name`] uses.
    pub fn seed_of_name(name: &str) -> [u8; 32] {
        blake3::derive_key("sky v1 probe address seed", name.as_bytes())
    }

    /// The public half.
    pub fn key(&self) -> AddrKey {
        self.key
    }

    /// The address it registers.
    pub fn address(&self) -> VirtualAddr {
        VirtualAddr::from_key(&self.key)
    }

    /// Its signature over the statement of a `register` with `cookie` and
    /// `flags` (about 15 µs).
    pub fn sign_register(&self, cookie: &Cookie, flags: Flags) -> Signature {
        self.sign(&wire::register_statement(cookie, flags))
    }

    /// Its signature over the statement of an `unregister` with `cookie`.
    pub fn sign_unregister(&self, cookie: &Cookie) -> Signature {
        self.sign(&wire::unregister_statement(cookie))
    }

    /// A signed `register`.
    pub fn register(&self, tag: Tag, cookie: Cookie, flags: Flags) -> Message {
        Message::Register {
            tag,
            cookie,
            flags,
            key: self.key,
            sig: self.sign_register(&cookie, flags),
        }
    }

    /// A signed `unregister`.
    pub fn unregister(&self, tag: Tag, cookie: Cookie) -> Message {
        Message::Unregister {
            tag,
            cookie,
            key: self.key,
            sig: self.sign_unregister(&cookie),
        }
    }

    fn sign(&self, statement: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.signing.sign(statement).to_bytes())
    }
}

pub struct Client {
    socket: UdpSocket,
    sky: SocketAddr,
    timeout: Duration,
    cookie: Cookie,
    intro_keys: Vec<IntroKey>,
    next_tag: u32,
    /// Datagrams that arrived while waiting for a reply.
    pending: Vec<Incoming>,
}

impl Client {
    /// A client on a fresh ephemeral port. Every request gives up after
    /// `timeout`.
    /// Binds to loopback when the node is on loopback, else the wildcard.
    pub fn new(sky: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let ip: std::net::IpAddr = match (sky.is_ipv4(), sky.ip().is_loopback()) {
            (true, true) => std::net::Ipv4Addr::LOCALHOST.into(),
            (true, false) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            (false, true) => std::net::Ipv6Addr::LOCALHOST.into(),
            (false, false) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        Client::bind(SocketAddr::new(ip, 0), sky, timeout)
    }

    pub fn bind(local: SocketAddr, sky: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let socket = UdpSocket::bind(local)?;
        let seed = sys::random_secret()?;
        Ok(Client {
            socket,
            sky,
            timeout,
            cookie: Cookie::default(),
            intro_keys: Vec::new(),
            next_tag: u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]),
            pending: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Round trip of one ping.
    pub fn ping(&mut self) -> Result<Duration, ProbeError> {
        let mut rtt = Duration::ZERO;
        self.request(
            |tag, cookie| Message::Ping { tag, cookie },
            |msg, _, sent| match msg {
                Message::Pong { .. } => {
                    rtt = sent.elapsed();
                    Some(Ok(()))
                }
                _ => None,
            },
        )?;
        Ok(rtt)
    }

    /// Registers `secret`'s address (signed with the cookie each attempt
    /// carries).
    pub fn register(
        &mut self,
        secret: &AddrSecret,
        metered: bool,
    ) -> Result<Registration, ProbeError> {
        let flags = Flags(if metered { Flags::METERED } else { 0 });
        let reg = self.request(
            |tag, cookie| secret.register(tag, cookie, flags),
            |msg, _, _| match msg {
                Message::Registered {
                    keepalive_secs,
                    intro_key,
                    observed,
                    ..
                } => Some(Ok((keepalive_secs, intro_key, observed))),
                Message::Refused { reason, .. } => Some(Err(ProbeError::Refused(reason))),
                _ => None,
            },
        )?;
        let (keepalive_secs, intro_key, observed) = reg;
        if !self.intro_keys.contains(&intro_key) {
            self.intro_keys.push(intro_key);
        }
        Ok(Registration {
            address: secret.address(),
            observed,
            keepalive: Duration::from_secs(keepalive_secs.into()),
        })
    }

    /// Sends a keepalive (no reply is expected when all is well).
    pub fn keepalive(&mut self, address: VirtualAddr) -> io::Result<()> {
        let tag = self.tag();
        self.send(Message::Keepalive {
            ring: 0,
            tag,
            cookie: self.cookie,
            address,
        })
    }

    /// Drops `secret`'s address (signed; no reply).
    pub fn unregister(&mut self, secret: &AddrSecret) -> io::Result<()> {
        let tag = self.tag();
        self.send(secret.unregister(tag, self.cookie))
    }

    pub fn lookup(
        &mut self,
        target: VirtualAddr,
        caller: VirtualAddr,
    ) -> Result<Lookup, ProbeError> {
        self.request(
            |tag, cookie| Message::Lookup {
                tag,
                cookie,
                target,
                caller,
                // An operator's probe is nobody's friend: nothing sealed.
                hint: [0; sky_proto::hint::HINT_LEN],
            },
            |msg, _, _| match msg {
                Message::Online {
                    endpoint, flags, ..
                } => Some(Ok(Lookup::Online { endpoint, flags })),
                Message::Offline { .. } => Some(Ok(Lookup::Offline)),
                _ => None,
            },
        )
    }

    /// The node's view of the sky: every members page, from the first,
    /// until `total` members are read. Starts over (at most four times) if
    /// the ring changes between pages.
    pub fn members(&mut self) -> Result<Members, ProbeError> {
        'again: for _ in 0..4 {
            let mut view = Members {
                version: 0,
                config: RingConfig::default(),
                members: Vec::new(),
            };
            loop {
                let start = view.members.len().min(u16::MAX.into()) as u16;
                let (version, config, total, entries) = self.request(
                    |tag, cookie| Message::Members {
                        tag,
                        cookie,
                        start,
                        len: MEMBERS_REQUEST_LEN,
                    },
                    |msg, bytes, _| match msg {
                        Message::MembersPage {
                            version,
                            config,
                            total,
                            ..
                        } => {
                            let page = wire::Packet::new_checked(bytes).ok()?;
                            let entries: Vec<SocketAddr> = page.page_entries().collect();
                            Some(Ok((version, config, total, entries)))
                        }
                        _ => None,
                    },
                )?;
                if start == 0 {
                    view.version = version;
                    view.config = config;
                } else if version != view.version {
                    continue 'again;
                }
                view.members.extend(entries.iter().copied());
                if view.members.len() >= usize::from(total) || entries.is_empty() {
                    return Ok(view);
                }
            }
        }
        Err(ProbeError::Unexpected(wire::Kind::MembersPage))
    }

    /// Waits up to `wait` for an introduction (or another unsolicited
    /// datagram from the sky). `Ok(None)` when nothing came.
    pub fn receive(&mut self, wait: Duration) -> Result<Option<Incoming>, ProbeError> {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive_with(left, &mut buf)? {
                Some(Received::Sky(incoming)) => return Ok(Some(incoming)),
                Some(Received::Peer { .. }) => {} // not for a probe
                None => return Ok(None),
            }
        }
    }

    /// Like `receive`, but also hands back datagrams from anyone other than
    /// the sky node (an earth peer on a punched path), written into `buf`.
    pub fn receive_with(
        &mut self,
        wait: Duration,
        buf: &mut [u8],
    ) -> Result<Option<Received>, ProbeError> {
        if !self.pending.is_empty() {
            return Ok(Some(Received::Sky(self.pending.remove(0))));
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(buf) {
                Ok((n, from)) if from != self.sky => {
                    // A forged introduction from elsewhere is still refused.
                    match self.classify(&buf[..n], from) {
                        Some(incoming) => return Ok(Some(Received::Sky(incoming))),
                        None => return Ok(Some(Received::Peer { from, len: n })),
                    }
                }
                Ok((n, from)) => {
                    // A keepalive sent with a cookie gone stale is answered
                    // with a fresh one: keep it for the next keepalive.
                    if let Ok(Message::CookieReply { cookie, .. }) = Message::decode(&buf[..n]) {
                        self.cookie = cookie;
                        continue;
                    }
                    if let Some(incoming) = self.classify(&buf[..n], from) {
                        return Ok(Some(Received::Sky(incoming)));
                    }
                }
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `bytes` to an earth peer from this client's socket (the one its
    /// NAT mapping, and so its introductions, belong to).
    pub fn send_to_peer(&self, peer: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, peer).map(|_| ())
    }

    /// Sends a request built for the current tag and cookie, and waits for
    /// a reply with that tag that `accept` takes. A cookie reply updates the
    /// cookie and sends again; silence is retried four times per timeout.
    fn request<T>(
        &mut self,
        build: impl Fn(Tag, Cookie) -> Message,
        mut accept: impl FnMut(Message, &[u8], Instant) -> Option<Result<T, ProbeError>>,
    ) -> Result<T, ProbeError> {
        let deadline = Instant::now() + self.timeout;
        let retry = self.timeout / 4;
        let tag = self.tag();
        let mut sent = Instant::now();
        self.send(build(tag, self.cookie))?;
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProbeError::Timeout);
            }
            let wait = (sent + retry).min(deadline).saturating_duration_since(now);
            self.socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if is_timeout(&e) => {
                    sent = Instant::now();
                    self.send(build(tag, self.cookie))?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if from != self.sky {
                if let Some(incoming) = self.classify(&buf[..n], from) {
                    self.pending.push(incoming);
                }
                continue;
            }
            let msg = match Message::decode(&buf[..n]) {
                Ok(m) => m,
                Err(_) => continue,
            };
            match msg {
                Message::CookieReply { tag: t, cookie } if t == tag => {
                    self.cookie = cookie;
                    sent = Instant::now();
                    self.send(build(tag, cookie))?;
                }
                Message::Introduction { .. } | Message::NotRegistered { .. } => {
                    if let Some(incoming) = self.classify(&buf[..n], from) {
                        self.pending.push(incoming);
                    }
                }
                Message::NotOwner {
                    tag: t,
                    version,
                    hint,
                } if t == tag => {
                    return Err(ProbeError::NotOwner { version, hint });
                }
                m if m.tag() == Some(tag) => match accept(m, &buf[..n], sent) {
                    Some(result) => return result,
                    None => return Err(ProbeError::Unexpected(m.kind())),
                },
                _ => {} // a late reply to an earlier request
            }
        }
    }

    fn classify(&self, bytes: &[u8], from: SocketAddr) -> Option<Incoming> {
        if from != self.sky {
            // Introductions come only from the sky node we registered with.
            return Some(Incoming::Forged)
                .filter(|_| matches!(Message::decode(bytes), Ok(Message::Introduction { .. })));
        }
        match intro::verify_introduction(&self.intro_keys, bytes) {
            Ok((caller, endpoint, _)) => Some(Incoming::Introduction { caller, endpoint }),
            Err(IntroError::Forged) => Some(Incoming::Forged),
            Err(_) => match Message::decode(bytes) {
                Ok(Message::NotRegistered { .. }) => Some(Incoming::NotRegistered),
                _ => None,
            },
        }
    }

    fn send(&self, msg: Message) -> io::Result<()> {
        let mut buf = [0u8; wire::MAX_DATAGRAM_LEN];
        let n = msg.emit(&mut buf);
        self.socket.send_to(&buf[..n], self.sky).map(|_| ())
    }

    fn tag(&mut self) -> Tag {
        self.next_tag = self
            .next_tag
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(0x7F4A_7C15);
        Tag(self.next_tag.to_le_bytes())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
