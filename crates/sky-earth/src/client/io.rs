//! What every state machine of the core shares: the randomness, the sky
//! nodes' cookies and introduction keys, the timer table, and the queues
//! of datagrams and events the driver drains. Machines get `&mut Io` in
//! each call; they own everything else they need.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use sky_proto::wire::{Cookie, IntroKey, Message, Tag};

use super::event::{Event, SocketId, Transmit};
use super::timers::Timers;

/// Introduction keys kept per sky node (keys of addresses long gone are of
/// no use).
const INTRO_KEYS_PER_NODE: usize = 16;

/// A BLAKE3 key stream: the core's only source of randomness, seeded once
/// by the driver.
pub(crate) struct Rng {
    key: [u8; 32],
    counter: u64,
}

impl Rng {
    pub(crate) fn new(seed: [u8; 32]) -> Rng {
        Rng {
            key: seed,
            counter: 0,
        }
    }

    pub(crate) fn bytes(&mut self) -> [u8; 32] {
        self.counter += 1;
        *blake3::keyed_hash(&self.key, &self.counter.to_le_bytes()).as_bytes()
    }

    fn u64(&mut self) -> u64 {
        let b = self.bytes();
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean` (at most 20 means).
    pub(crate) fn exponential(&mut self, mean: Duration) -> Duration {
        mean.mul_f64((-(1.0 - self.unit()).ln()).min(20.0))
    }

    pub(crate) fn tag(&mut self) -> Tag {
        let b = self.bytes();
        Tag([b[0], b[1], b[2], b[3]])
    }
}

/// What the client keeps per sky node it talks to.
#[derive(Default)]
pub(crate) struct SkyNode {
    /// The cookie this node gave each of our sockets (a cookie binds an IP
    /// and a port: every socket needs its own).
    pub(crate) cookies: HashMap<SocketId, Cookie>,
    /// The introduction keys this node gave us in `registered` replies: an
    /// introduction from this node must verify under one of them.
    pub(crate) intro_keys: Vec<IntroKey>,
}

/// The shared context of one call into the core.
pub(crate) struct Io {
    pub(crate) rng: Rng,
    /// Every sky node we have sent to. A datagram from one of them is the
    /// sky's; anything else is a peer's.
    pub(crate) nodes: HashMap<SocketAddr, SkyNode>,
    pub(crate) timers: Timers,
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    /// Nothing leaves until the state is saved: set when a change must be
    /// on disk before the sky or a friend hears of it (a reset's new chain).
    pub(crate) hold_until_saved: bool,
    /// A [`Event::SaveState`] has not been answered by `saved` yet.
    pub(crate) unsaved: bool,
    /// The socket the client's own traffic goes out of now.
    pub(crate) main: SocketId,
    next_socket: u32,
    /// Sockets the driver may close.
    pub(crate) released: VecDeque<SocketId>,
}

impl Io {
    pub(crate) fn new(seed: [u8; 32]) -> Io {
        Io {
            rng: Rng::new(seed),
            nodes: HashMap::new(),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            hold_until_saved: false,
            unsaved: false,
            main: SocketId::MAIN,
            next_socket: 1,
            released: VecDeque::new(),
        }
    }

    pub(crate) fn tag(&mut self) -> Tag {
        self.rng.tag()
    }

    pub(crate) fn event(&mut self, event: Event) {
        if event == Event::SaveState {
            self.unsaved = true;
        }
        self.events.push_back(event);
    }

    /// Sends `bytes` to `dst` from `socket`.
    pub(crate) fn send(&mut self, socket: SocketId, dst: SocketAddr, bytes: Vec<u8>) {
        self.transmits.push_back(Transmit { socket, dst, bytes });
    }

    /// Sends a request to `node` from `socket`, with the cookie the node
    /// gave that socket (zeros before).
    pub(crate) fn request(
        &mut self,
        socket: SocketId,
        node: SocketAddr,
        build: impl FnOnce(Cookie) -> Message,
    ) {
        let entry = self.nodes.entry(node).or_default();
        let cookie = entry.cookies.get(&socket).copied().unwrap_or_default();
        let msg = build(cookie);
        let mut bytes = vec![0u8; msg.buffer_len()];
        let n = msg.emit(&mut bytes);
        bytes.truncate(n);
        self.send(socket, node, bytes);
    }

    /// A socket nobody has used yet (a new local port).
    pub(crate) fn new_socket(&mut self) -> SocketId {
        let id = SocketId(self.next_socket);
        self.next_socket += 1;
        id
    }

    /// The driver may close `socket`; its cookies are forgotten.
    pub(crate) fn release(&mut self, socket: SocketId) {
        for node in self.nodes.values_mut() {
            node.cookies.remove(&socket);
        }
        self.released.push_back(socket);
    }

    /// Keeps an introduction key `node` gave us (the newest few).
    pub(crate) fn keep_intro_key(&mut self, node: SocketAddr, key: IntroKey) {
        let keys = &mut self.nodes.entry(node).or_default().intro_keys;
        if !keys.contains(&key) {
            keys.push(key);
            if keys.len() > INTRO_KEYS_PER_NODE {
                keys.remove(0);
            }
        }
    }
}
