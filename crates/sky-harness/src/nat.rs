//! NATs the hosts sit behind, beyond the home router every host has: a
//! port-randomising ("symmetric") NAT, and the sky nodes' NAT check ports
//! (the node's check threads, as `sky_node::engine` runs them: a `check`
//! answered with the observed source, from the port asked or the other).

use std::collections::HashMap;
use std::net::SocketAddr;

use sky_earth::client::SocketId;
use sky_proto::wire::{self, Message};

use crate::Net;

/// The check ports every harness node serves (the engine's defaults).
pub const CHECK_PORTS: [u16; 2] = [7702, 7703];

/// A NAT that gives every (socket, destination) its own random public
/// port, and lets in only what comes from that destination.
#[derive(Debug, Default)]
pub struct RandomNat {
    by_dst: HashMap<(SocketId, SocketAddr), u16>,
    by_port: HashMap<u16, (SocketId, SocketAddr)>,
    state: u64,
}

impl RandomNat {
    pub fn new(seed: u64) -> RandomNat {
        RandomNat {
            state: seed,
            ..RandomNat::default()
        }
    }

    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The public port of `socket` towards `dst` (a new one on first use,
    /// from 1024..=65535 like Linux's `masquerade random`).
    pub fn port(&mut self, socket: SocketId, dst: SocketAddr) -> u16 {
        if let Some(&p) = self.by_dst.get(&(socket, dst)) {
            return p;
        }
        let port = loop {
            let p = 1024 + (self.next() % 64512) as u16;
            if !self.by_port.contains_key(&p) {
                break p;
            }
        };
        self.by_dst.insert((socket, dst), port);
        self.by_port.insert(port, (socket, dst));
        port
    }

    /// The socket a datagram from `from` to public port `port` reaches.
    pub fn inbound(&self, port: u16, from: SocketAddr) -> Option<SocketId> {
        match self.by_port.get(&port) {
            Some(&(socket, dst)) if dst == from => Some(socket),
            _ => None,
        }
    }

    /// `socket` is closed: its mappings go.
    pub fn forget(&mut self, socket: SocketId) {
        self.by_dst.retain(|(s, _), _| *s != socket);
        self.by_port.retain(|_, (s, _)| *s != socket);
    }

    /// Mappings held.
    pub fn len(&self) -> usize {
        self.by_dst.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_dst.is_empty()
    }
}

impl Net {
    /// Puts host `i` behind a port-randomising NAT (its public IP stays).
    pub fn randomize(&mut self, i: usize) {
        self.hosts[i].random = Some(RandomNat::new(0xC0FFEE + i as u64));
    }

    /// A `check` to a node's check port: answered as the node's check
    /// threads do. `true` if `to` was a check port.
    pub(crate) fn check_port(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> bool {
        let node = self.skies.iter().any(|s| s.addr.ip() == to.ip());
        if !node || !CHECK_PORTS.contains(&to.port()) {
            return false;
        }
        if let Ok(Message::Check { tag, flags, .. }) = Message::decode(bytes) {
            let reply = Message::Checked {
                tag,
                check_port: CHECK_PORTS[0],
                endpoint: wire::canonical(from),
            };
            let mut out = vec![0u8; reply.buffer_len()];
            let n = reply.emit(&mut out);
            out.truncate(n);
            let port = match flags & Message::CHECK_FROM_OTHER != 0 {
                true if to.port() == CHECK_PORTS[0] => CHECK_PORTS[1],
                true => CHECK_PORTS[0],
                false => to.port(),
            };
            self.sky_egress += n as u64;
            self.send(SocketAddr::new(to.ip(), port), from, out);
        }
        true
    }
}
