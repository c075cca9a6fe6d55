//! Gossip against liars: identities that are not their source, spoofed
//! announces, forged signatures, a member that lies about others, and a
//! closed sky's key list.

use super::*;

#[test]
fn identities_order_by_bump_and_placeholders_lose() {
    let a = node_id(0, 1);
    let renewed = a.renew().unwrap();
    assert!(renewed.win_addr_conflict(&a));
    assert!(!a.win_addr_conflict(&renewed));
    let wrapped = node_id(0, u16::MAX);
    assert!(wrapped.renew().unwrap().win_addr_conflict(&wrapped));
    let seed = NodeId::seed(a.gossip);
    assert!(seed.is_placeholder() && !a.is_placeholder());
    assert!(a.win_addr_conflict(&seed));
    assert!(!seed.win_addr_conflict(&a));
    assert_eq!(seed.addr(), a.addr());
    // Half-way apart still decides one way.
    let (x, y) = (node_id(0, 0), node_id(0, 0x8000));
    assert_ne!(x.win_addr_conflict(&y), y.win_addr_conflict(&x));
    // Equal bumps, different service endpoints: one way too.
    let other = NodeId::new(a.gossip, "10.9.9.9:7700".parse().unwrap(), 1);
    assert_ne!(a.win_addr_conflict(&other), other.win_addr_conflict(&a));
}

#[test]
fn an_identity_that_is_not_its_source_is_refused_and_not_answered() {
    let mut a = node(0, 1, 1, GossipConfig::default());
    let mut b = node(1, 1, 2, GossipConfig::default());
    b.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
    let (dst, announce) = b.poll_transmit().expect("an announce");
    assert_eq!(dst, node_id(0, 1).gossip);
    // Sent from elsewhere (a spoofer aiming a's answer at b).
    let victim: SocketAddr = "192.0.2.9:7701".parse().unwrap();
    assert_eq!(
        a.handle_datagram(MonoTime::ZERO, victim, &announce),
        Err(GossipError::Spoofed)
    );
    assert_eq!(
        a.poll_transmit(),
        None,
        "nothing sent for a spoofed announce"
    );
    assert_eq!(a.take_errors(), 1);
    assert_eq!(a.ring().len(), 1, "and nobody joined");
    // From its real source it is asked to prove it receives there: a
    // cookie, shorter than the announce.
    assert_eq!(
        a.handle_datagram(MonoTime::ZERO, node_id(1, 1).gossip, &announce),
        Err(GossipError::Unproven)
    );
    let (dst, cookie) = a.poll_transmit().expect("a cookie reply");
    assert_eq!(dst, node_id(1, 1).gossip);
    assert_eq!(cookie.len(), 9);
    assert!(cookie.len() <= announce.len());
    assert_eq!(a.poll_transmit(), None);
}

/// Joins `b` (node 1) to `a` (node 0) by shuttling datagrams between them,
/// answering `a`'s pings at `b`'s service endpoint (and `b`'s at `a`'s) as
/// the shards would. Returns the datagrams and bytes each sent.
fn shuttle(a: &mut Gossip, b: &mut Gossip, rounds: usize) -> [(usize, usize); 2] {
    let mut sent = [(0, 0); 2];
    let ids = [a.identity(), b.identity()];
    let mut now = MonoTime::ZERO;
    for _ in 0..rounds {
        now += Duration::from_millis(5);
        let mut moved = false;
        for i in 0..2 {
            let (x, y) = if i == 0 {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            while let Some((dst, bytes)) = x.poll_transmit() {
                moved = true;
                sent[i].0 += 1;
                sent[i].1 += bytes.len();
                let other = ids[1 - i];
                if dst == other.gossip {
                    let _ = y.handle_datagram(now, ids[i].gossip, &bytes);
                } else if dst == other.service {
                    let Ok(wire::Message::Ping { tag, .. }) = wire::Message::decode(&bytes) else {
                        panic!("not a ping: {bytes:?}");
                    };
                    let pong = wire::Message::Pong { tag };
                    let mut out = vec![0; pong.buffer_len()];
                    let n = pong.emit(&mut out);
                    let _ = x.handle_datagram(now, other.service, &out[..n]);
                } else {
                    panic!("sent to {dst}");
                }
            }
        }
        if !moved {
            for g in [&mut *a, &mut *b] {
                if g.poll_timeout().is_some_and(|t| t <= now) {
                    g.handle_timeout(now);
                }
            }
        }
    }
    sent
}

#[test]
fn a_node_joins_once_it_proved_both_its_endpoints() {
    let mut a = node(0, 1, 1, GossipConfig::default());
    let mut b = node(1, 1, 2, GossipConfig::default());
    b.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
    shuttle(&mut a, &mut b, 50);
    assert_eq!(a.ring().len(), 2);
    assert_eq!(b.ring().len(), 2);
    assert_eq!(
        a.members().map(|(id, _)| id).collect::<Vec<_>>(),
        [node_id(1, 1)]
    );
    assert_eq!(
        b.members().map(|(id, _)| id).collect::<Vec<_>>(),
        [node_id(0, 1)]
    );
}

#[test]
fn a_spoofed_announce_adds_no_member_and_is_answered_with_less() {
    // The attacker signs with its own key and claims an endpoint it does
    // not receive at: it never sees the cookie, so it cannot send it back.
    let mut a = node(0, 1, 1, GossipConfig::default());
    let mut sent = 0;
    let mut answered = 0;
    for i in 1..=200 {
        let mut b = node(i, 1, i as u64, GossipConfig::default());
        b.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
        let (_, announce) = b.poll_transmit().expect("an announce");
        for k in 0..3 {
            let now = MonoTime::from_millis((i * 3 + k) as u64);
            sent += announce.len();
            let r = a.handle_datagram(now, node_id(i, 1).gossip, &announce);
            assert_eq!(r, Err(GossipError::Unproven));
            while let Some((dst, reply)) = a.poll_transmit() {
                assert_eq!(dst, node_id(i, 1).gossip, "only to the claimed source");
                assert!(reply.len() <= announce.len());
                answered += reply.len();
            }
        }
    }
    assert_eq!(a.members().count(), 0, "no member");
    assert_eq!(a.ring().len(), 1);
    assert!(answered * 10 < sent, "{answered} bytes answered to {sent}");
    // Held to the strangers' budget as well: a full bucket and what 0.6 s
    // refilled.
    let most = (STRANGER_BUDGET as usize * 16 / 10 + 1) * 9;
    assert!(answered <= most, "{answered} bytes of cookies");
    assert_eq!(a.take_refusals().unproven, 600);
}

#[test]
fn a_forged_signature_is_refused() {
    let mut a = node(0, 1, 1, GossipConfig::default());
    let mut b = node(1, 1, 2, GossipConfig::default());
    b.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
    shuttle(&mut a, &mut b, 50);
    // A member's datagram, one byte changed: the signature fails.
    b.handle_timeout(MonoTime::from_millis(10_000));
    let (_, mut bytes) = b.poll_transmit().expect("gossip");
    let at = PREFIX_LEN + 2;
    bytes[at] ^= 1;
    let r = a.handle_datagram(MonoTime::from_millis(10_000), node_id(1, 1).gossip, &bytes);
    assert!(
        matches!(
            r,
            Err(GossipError::Forged | GossipError::Undecodable | GossipError::Spoofed)
        ),
        "{r:?}"
    );
    // A valid message signed with another key.
    let mut c = Gossip::new(
        node_id(1, 1),
        secret(9),
        slash32(),
        3,
        GossipConfig::default(),
    );
    c.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
    let (_, mut announce) = c.poll_transmit().unwrap();
    // Claim b's key in the header: same length, so only the key bytes move.
    let header_key = announce
        .windows(32)
        .position(|w| w == public_key_of(secret(9)))
        .expect("the key in the header");
    announce[header_key..header_key + 32].copy_from_slice(&public_key_of(secret(1)));
    let r = a.handle_datagram(
        MonoTime::from_millis(10_001),
        node_id(1, 1).gossip,
        &announce,
    );
    assert_eq!(r, Err(GossipError::Forged));
    assert_eq!(a.take_refusals().forged, 1);
}

/// A gossip datagram from `sender` (signed with `secret`) to `dst`,
/// carrying `updates`: what a lying member can send.
fn forge(
    sender: NodeId,
    secret: [u8; 32],
    dst: NodeId,
    updates: &[foca::Member<NodeId>],
) -> Vec<u8> {
    let header = foca::Header {
        src: sender,
        src_incarnation: 0,
        dst,
        message: foca::Message::Gossip,
    };
    let mut out = vec![MARKER];
    out.extend_from_slice(&settings_of(&slash32()));
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&postcard::to_allocvec(&header).unwrap());
    out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
    for m in updates {
        out.extend_from_slice(&postcard::to_allocvec(m).unwrap());
    }
    let sig = NodeKey::from_secret(secret).sign(&out);
    out.extend_from_slice(&sig);
    out
}

#[test]
fn a_lying_member_adds_no_fake_member_and_keeps_no_live_node_out() {
    for seed in 0..5 {
        let mut net = Net::joined(5, seed);
        net.run_for(Duration::from_secs(2), |_| {});
        let rings: Vec<Ring> = net.live().map(|g| g.ring().clone()).collect();
        // Node 4 lies: 100 members that do not exist (their endpoints are
        // nobody's), node 1 down and node 2 suspect at the largest
        // incarnation; to every other node, every 100 ms for 10 s.
        let liar = net.nodes[4].gossip.identity();
        let fakes: Vec<NodeId> = (0..100u16)
            .map(|k| {
                let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (k % 250) as u8));
                NodeId::new(
                    SocketAddr::new(ip, 9000 + k),
                    SocketAddr::new(ip, 8000 + k),
                    1,
                )
                .with_key(public_key_of([200 + (k % 50) as u8; 32]))
            })
            .collect();
        let mut lies: Vec<foca::Member<NodeId>> =
            fakes.iter().map(|f| foca::Member::alive(*f)).collect();
        lies.push(foca::Member::new(node_id(1, 1), u16::MAX, State::Down));
        lies.push(foca::Member::new(node_id(2, 1), u16::MAX, State::Suspect));
        let before = net.to_nowhere;
        let mut worst_down = 0;
        for round in 0..100 {
            for j in 0..4 {
                let dst = net.nodes[j].gossip.identity();
                for chunk in lies.chunks(10) {
                    let bytes = forge(liar, secret(4), dst, chunk);
                    let now = net.now;
                    let _ = net.nodes[j]
                        .gossip
                        .handle_datagram(now, liar.gossip, &bytes);
                }
            }
            net.run_for(Duration::from_millis(100), |net| {
                for g in net.live() {
                    worst_down = worst_down.max(g.member_counts().down);
                    assert!(
                        g.ring().len() == 5,
                        "seed {seed} round {round}: a ring changed"
                    );
                }
            });
        }
        assert_eq!(worst_down, 0, "seed {seed}: a live node was declared down");
        for (g, ring) in net.live().zip(&rings) {
            assert_eq!(g.ring(), ring, "seed {seed}: the ring is as it was");
            assert!(
                g.members().all(|(id, _)| !fakes.contains(&id)),
                "seed {seed}"
            );
            assert_eq!(g.members().count(), 4);
        }
        // Each honest node tried to prove each fake: an announce and a
        // ping, a few times over 15 s, then gave up.
        let nowhere = net.to_nowhere - before;
        assert!(
            nowhere <= 4 * fakes.len() * 2 * 5,
            "seed {seed}: {nowhere} datagrams to fakes"
        );
    }
}

#[test]
fn a_closed_sky_admits_only_its_keys() {
    let closed = GossipConfig {
        closed_sky: Some([public_key_of(secret(0)), public_key_of(secret(1))].into()),
        ..GossipConfig::default()
    };
    let mut a = node(0, 1, 1, closed.clone());
    let mut b = node(1, 1, 2, closed.clone());
    b.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
    shuttle(&mut a, &mut b, 50);
    assert_eq!(a.ring().len(), 2, "a listed key joins");
    let mut a = node(0, 1, 1, closed);
    let mut c = Gossip::new(
        node_id(1, 1),
        secret(7),
        slash32(),
        2,
        GossipConfig::default(),
    );
    c.join(&[node_id(0, 1).gossip], MonoTime::ZERO);
    let sent = shuttle(&mut a, &mut c, 50);
    assert_eq!(a.ring().len(), 1, "an unlisted key never joins");
    assert_eq!(sent[0], (0, 0), "and is never answered");
    assert!(a.take_refusals().unproven > 0);
}
