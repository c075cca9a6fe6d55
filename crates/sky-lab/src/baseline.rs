//! The benchmark's ceiling: a core with no logic that answers each request
//! with exactly the datagrams a sky node would send — same sizes, same
//! destinations — so that `sky bench` can measure the node against what the
//! same engine does with nothing to decide.
//!
//! It reads only the kind byte and the length. Each request kind gets its
//! node-shaped answer: a zero cookie is answered with a 14-byte cookie;
//! `ping` with a 6-byte `pong`; `register` (111 bytes: key and signature,
//! never checked) with a 46-byte `registered`; `lookup` with a 13-byte
//! `online` to the caller plus a 48-byte introduction, or a 6-byte
//! `offline` when the lookup names no target endpoint. The baseline
//! has no presence table, so it sends the introduction to the endpoint that
//! `sky bench` writes into the first six bytes of the lookup's `caller`
//! field (the target it registered). This is a benchmark tool for loopback:
//! reading a destination from a payload is exactly what the sky never does.

use sky_proto::time::MonoTime;
use std::net::SocketAddr;

use sky_node::shard::{Core, Output, Stats, Transmit};
use sky_proto::wire::{self, Kind};

/// The no-logic core. It keeps only the engine's own drop counts.
#[derive(Default)]
pub struct Baseline {
    stats: Stats,
}

impl Core for Baseline {
    fn handle_datagram(
        &mut self,
        _now: MonoTime,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        reply: &mut [u8],
    ) -> Output {
        let none = Output::default();
        if len < wire::REQUEST_HEADER_LEN {
            return none;
        }
        if buf[6..14] == [0; 8] && buf[1] != Kind::Ping as u8 {
            let out = answer(buf, reply, Kind::Cookie, 14);
            reply[6..14].copy_from_slice(&[0xba; 8]);
            return out;
        }
        match buf[1] {
            k if k == Kind::Ping as u8 => answer(buf, reply, Kind::Pong, 6),
            // A signed register (key and signature: 111 bytes) is answered
            // unchecked: no signature is verified here, as no entry is kept.
            k if k == Kind::Register as u8 && len == Kind::Register.min_len() => {
                let out = answer(buf, reply, Kind::Registered, 46);
                if let SocketAddr::V4(v4) = wire::canonical(from) {
                    reply[40..44].copy_from_slice(&v4.ip().octets());
                    reply[44..46].copy_from_slice(&v4.port().to_be_bytes());
                }
                out
            }
            k if k == Kind::Lookup as u8 && len >= 62 => {
                // No endpoint in the caller field: the bench meant an
                // offline target.
                let dst = match wire::decode_endpoint(&buf[30..36]) {
                    Some(dst) if dst.port() != 0 => dst,
                    _ => return answer(buf, reply, Kind::Offline, 6),
                };
                let out = answer(buf, reply, Kind::Online, 13);
                reply[7..13].copy_from_slice(&buf[30..36]);
                // As long as the node's (caller, MAC, hint, endpoint).
                buf[1] = Kind::Introduction as u8;
                Output {
                    in_place: Some(Transmit { dst, len: 48 }),
                    ..out
                }
            }
            _ => none,
        }
    }

    fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    fn drop_oversized(&mut self, _len: usize) {}
}

/// Writes `version kind tag` and pads to `len` (the rest of the request's
/// bytes stand in for the fields).
fn answer(buf: &[u8], reply: &mut [u8], kind: Kind, len: usize) -> Output {
    reply[0] = wire::VERSION;
    reply[1] = kind as u8;
    reply[2..6].copy_from_slice(&buf[2..6]);
    Output {
        reply: Some(len),
        in_place: None,
    }
}

/// Serves the baseline on `config`'s address: the very same engine,
/// sockets and threads as a node (its gossip thread alone, lonely), with
/// [`Baseline`] in place of the sky's shard.
pub fn start(
    config: &sky_node::config::Config,
) -> Result<sky_node::engine::Node, sky_node::engine::StartError> {
    sky_node::engine::Node::start_with(
        config,
        std::sync::Arc::new(sky_node::presence::Presence::new(1)),
        |_, _, _, _| Baseline::default(),
    )
}
