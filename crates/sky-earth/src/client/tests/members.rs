//! The earth core driven by hand, without a sky: the members fetch page by
//! page, wildcard members, a `not owner` answer to a registration. (The
//! core against real shards, on a simulated network, is `sky-harness`.)

use std::time::Duration;

use super::*;
use crate::client::{Config, Earth, Event};
use crate::identity::{Friends, Identity};
use crate::ratchet::DEFAULT_EPOCH;
use crate::state::State;

const T0: UnixTime = UnixTime::from_secs(1_800_000_000);

fn sky() -> SocketAddr {
    "198.51.100.1:7700".parse().unwrap()
}

fn node(n: u8) -> SocketAddr {
    SocketAddr::new([198, 51, 100, n].into(), 7700)
}

fn slash32() -> RingConfig {
    RingConfig {
        prefix_v4: 32,
        ..RingConfig::default()
    }
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn owners(ring: &Ring, address: &VirtualAddr) -> Vec<SocketAddr> {
    sorted(ring.owners(address).as_slice().collect())
}

/// Alice's core (friend "bob") bootstrapping from `bootstrap`.
fn lone(bootstrap: Vec<SocketAddr>) -> Earth {
    let identity = |seed: u8| {
        Identity::generate(
            [seed; 64],
            DEFAULT_EPOCH,
            T0 - Duration::from_secs(86_400 * 3),
        )
    };
    let mut bob = identity(2);
    let mut friends = Friends::default();
    friends.add("bob", bob.invite(T0).into()).unwrap();
    let state = State::new(identity(1), friends);
    Earth::new(Config::new(bootstrap), state, [50; 32], T0)
}

fn drain(earth: &mut Earth) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some(t) = earth.poll_transmit() {
        if let Ok(m) = Message::decode(&t.bytes) {
            out.push((t.dst, m));
        }
    }
    out
}

/// The members request among `sent`: (node, tag, start).
fn members_request(sent: &[(SocketAddr, Message)]) -> Option<(SocketAddr, Tag, u16)> {
    sent.iter().find_map(|(dst, m)| match *m {
        Message::Members {
            tag, start, len, ..
        } => {
            assert_eq!(len, MEMBERS_REQUEST_LEN);
            Some((*dst, tag, start))
        }
        _ => None,
    })
}

fn registers(sent: &[(SocketAddr, Message)]) -> Vec<(SocketAddr, Tag)> {
    sent.iter()
        .filter_map(|(dst, m)| match *m {
            Message::Register { tag, .. } => Some((*dst, tag)),
            _ => None,
        })
        .collect()
}

/// A members page as a node writes it, from index `start` of `members`.
fn page(tag: Tag, version: u32, start: u16, members: &[SocketAddr]) -> Vec<u8> {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM_LEN];
    let header = Message::MembersPage {
        tag,
        version,
        config: slash32(),
        total: members.len() as u16,
        start,
    };
    let rest = members.iter().skip(start.into()).copied();
    let (n, _) = wire::emit_members_page(&mut buf, MEMBERS_REQUEST_LEN.into(), header, rest);
    buf.truncate(n);
    buf
}

fn own_address(earth: &Earth, now: UnixTime) -> VirtualAddr {
    let mut id = earth.state().identity.clone();
    id.chain.address_at(id.schedule.epoch_at(now)).unwrap()
}

#[test]
fn members_are_read_page_by_page_and_again_when_the_view_changes_meanwhile() {
    let mut earth = lone(vec![sky()]);
    earth.go_online(T0);
    let sent = drain(&mut earth);
    let (dst, tag, start) = members_request(&sent).expect("a members request");
    assert_eq!((dst, start), (sky(), 0));
    assert!(registers(&sent).is_empty(), "no owners before the view");
    let many: Vec<SocketAddr> = (1..=200).map(node).collect();
    let fewer = &many[..199];
    earth.handle_datagram(T0, sky(), &mut page(tag, 111, 0, &many));
    let (_, tag, second) = members_request(&drain(&mut earth)).unwrap();
    assert!((100..200).contains(&second), "{second}");
    // A page from elsewhere, or for another start, is not the answer.
    earth.handle_datagram(T0, node(2), &mut page(tag, 111, second, &many));
    earth.handle_datagram(T0, sky(), &mut page(tag, 111, 0, &many));
    assert!(drain(&mut earth).is_empty());
    // The view changes before the second page: start over.
    earth.handle_datagram(T0, sky(), &mut page(tag, 222, second, fewer));
    let (_, tag, start) = members_request(&drain(&mut earth)).unwrap();
    assert_eq!(start, 0);
    earth.handle_datagram(T0, sky(), &mut page(tag, 222, 0, fewer));
    let (_, tag, start) = members_request(&drain(&mut earth)).unwrap();
    assert_eq!(start, second);
    earth.handle_datagram(T0, sky(), &mut page(tag, 222, start, fewer));
    let sent = drain(&mut earth);
    assert_eq!(members_request(&sent), None);
    let expected = Ring::new(slash32(), fewer.iter().copied());
    let (ring, version) = earth.ring().unwrap();
    assert_eq!((ring, version), (&expected, 222));
    let address = own_address(&earth, T0);
    let to: Vec<SocketAddr> = registers(&sent).into_iter().map(|r| r.0).collect();
    assert_eq!(sorted(to), owners(&expected, &address));
    let events: Vec<Event> = std::iter::from_fn(|| earth.poll_event()).collect();
    assert!(events.contains(&Event::Sky {
        version: 222,
        nodes: 199
    }));
}

#[test]
fn a_member_without_an_address_stands_for_the_node_that_sent_the_page() {
    let mut earth = lone(vec![sky()]);
    earth.lookup(T0, "bob");
    let (_, tag, _) = members_request(&drain(&mut earth)).unwrap();
    let wildcard: SocketAddr = "0.0.0.0:7700".parse().unwrap();
    earth.handle_datagram(T0, sky(), &mut page(tag, 7, 0, &[wildcard, node(9)]));
    let (ring, _) = earth.ring().unwrap();
    assert!(ring.contains(sky()) && ring.contains(node(9)));
    assert!(!ring.contains(wildcard));
    // The lookup went on to bob's owners in that view.
    assert!(
        drain(&mut earth)
            .iter()
            .any(|(_, m)| matches!(m, Message::Lookup { .. }))
    );
}

#[test]
fn a_not_owner_answer_to_a_registration_registers_with_the_hint_at_once() {
    let mut earth = lone(vec![sky()]);
    earth.go_online(T0);
    let (_, tag, _) = members_request(&drain(&mut earth)).unwrap();
    earth.handle_datagram(T0, sky(), &mut page(tag, 5, 0, &[node(1), node(2)]));
    let regs = registers(&drain(&mut earth));
    assert_eq!(
        sorted(regs.iter().map(|r| r.0).collect()),
        vec![node(1), node(2)]
    );
    // Node 2 has left the sky: it says so and names node 3.
    let t2 = regs.iter().find(|r| r.0 == node(2)).unwrap().1;
    let not_owner = Message::NotOwner {
        tag: t2,
        version: 6,
        hint: node(3),
    };
    let mut bytes = vec![0u8; not_owner.buffer_len()];
    not_owner.emit(&mut bytes);
    earth.handle_datagram(T0 + ms(20), node(2), &mut bytes);
    let sent = drain(&mut earth);
    assert_eq!(
        registers(&sent).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![node(3)]
    );
    // The members again, from the node that said so, once a second
    // has passed since the last fetch.
    assert_eq!(members_request(&sent), None);
    let at = earth.poll_timeout().unwrap();
    assert!(at <= T0 + REFETCH_EVERY, "{at:?}");
    earth.handle_timeout(T0 + REFETCH_EVERY);
    let (from, _, start) = members_request(&drain(&mut earth)).expect("a refetch");
    assert_eq!((from, start), (node(2), 0));
}
