//! Wire codec tests: round trips, arbitrary bytes, truncations, layouts.

mod basics {
    use crate::ring::RingConfig;
    use crate::wire::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, SocketAddr};

    fn arb_endpoint() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| canonical(SocketAddr::new(IpAddr::V6(ip.into()), port))),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let tag = any::<[u8; 4]>().prop_map(Tag);
        let cookie = any::<[u8; 8]>().prop_map(Cookie);
        let addr = any::<[u8; 16]>().prop_map(VirtualAddr);
        let key = any::<[u8; 32]>().prop_map(AddrKey);
        let sig = (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
            let mut s = [0u8; 64];
            s[..32].copy_from_slice(&a);
            s[32..].copy_from_slice(&b);
            Signature(s)
        });
        prop_oneof![
            (tag.clone(), cookie.clone()).prop_map(|(tag, cookie)| Message::Ping { tag, cookie }),
            (
                tag.clone(),
                cookie.clone(),
                any::<u8>(),
                key.clone(),
                sig.clone()
            )
                .prop_map(|(tag, cookie, f, key, sig)| Message::Register {
                    tag,
                    cookie,
                    flags: Flags(f),
                    key,
                    sig,
                }),
            (tag.clone(), cookie.clone(), addr.clone(), any::<u32>()).prop_map(
                |(tag, cookie, address, ring)| Message::Keepalive {
                    tag,
                    cookie,
                    address,
                    ring,
                }
            ),
            (tag.clone(), cookie.clone(), any::<u16>(), 18u16..=1232).prop_map(
                |(tag, cookie, start, len)| Message::Members {
                    tag,
                    cookie,
                    start,
                    len,
                }
            ),
            (
                tag.clone(),
                any::<u32>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(tag, version, c, total, start)| Message::MembersPage {
                    tag,
                    version,
                    config: RingConfig {
                        replicas: c[0],
                        prefix_v4: c[1],
                        prefix_v6: c[2],
                        positions: c[3],
                    },
                    total,
                    start,
                }),
            (tag.clone(), any::<u32>(), arb_endpoint())
                .prop_map(|(tag, version, hint)| { Message::NotOwner { tag, version, hint } }),
            (tag.clone(), any::<u32>())
                .prop_map(|(tag, version)| Message::RingChanged { tag, version }),
            (
                tag.clone(),
                cookie.clone(),
                addr.clone(),
                addr.clone(),
                any::<[u8; 16]>()
            )
                .prop_map(|(tag, cookie, target, caller, hint)| Message::Lookup {
                    tag,
                    cookie,
                    target,
                    caller,
                    hint,
                }),
            (tag.clone(), any::<u8>()).prop_map(|(tag, reason)| Message::Refused { tag, reason }),
            (tag.clone(), cookie.clone(), any::<u8>())
                .prop_map(|(tag, cookie, flags)| Message::Check { tag, cookie, flags }),
            (tag.clone(), any::<u16>(), arb_endpoint()).prop_map(|(tag, check_port, endpoint)| {
                Message::Checked {
                    tag,
                    check_port,
                    endpoint,
                }
            }),
            (tag.clone(), cookie.clone(), key, sig).prop_map(|(tag, cookie, key, sig)| {
                Message::Unregister {
                    tag,
                    cookie,
                    key,
                    sig,
                }
            }),
            tag.clone().prop_map(|tag| Message::Pong { tag }),
            (tag.clone(), cookie).prop_map(|(tag, cookie)| Message::CookieReply { tag, cookie }),
            (tag.clone(), any::<u16>(), any::<[u8; 32]>(), arb_endpoint()).prop_map(
                |(tag, keepalive_secs, k, observed)| Message::Registered {
                    tag,
                    keepalive_secs,
                    intro_key: IntroKey(k),
                    observed
                }
            ),
            tag.clone().prop_map(|tag| Message::NotRegistered { tag }),
            (tag.clone(), any::<u8>(), arb_endpoint()).prop_map(|(tag, f, endpoint)| {
                Message::Online {
                    tag,
                    flags: Flags(f),
                    endpoint,
                }
            }),
            tag.prop_map(|tag| Message::Offline { tag }),
            (addr, any::<[u8; 8]>(), any::<[u8; 16]>(), arb_endpoint()).prop_map(
                |(caller, m, hint, endpoint)| {
                    Message::Introduction {
                        caller,
                        mac: Mac(m),
                        hint,
                        endpoint,
                    }
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            let mut buf = [0u8; MAX_DATAGRAM_LEN];
            let n = msg.emit(&mut buf);
            prop_assert_eq!(n, msg.buffer_len());
            if !matches!(msg, Message::Members { .. }) {
                prop_assert!(n <= MAX_MESSAGE_LEN);
            }
            prop_assert_eq!(Message::decode(&buf[..n]), Ok(msg));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn arbitrary_bodies_with_a_valid_header_never_panic(
            kind in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut bytes = vec![VERSION, kind];
            bytes.extend_from_slice(&body);
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_rejected_as_truncated(msg in arb_message()) {
            let mut buf = [0u8; MAX_DATAGRAM_LEN];
            let n = msg.emit(&mut buf);
            for cut in 0..n {
                let got = Message::decode(&buf[..cut]);
                // A cut IPv6 endpoint may land on the IPv4 length: still not
                // the original message.
                prop_assert_ne!(got, Ok(msg));
                if cut < msg.kind().min_len() {
                    prop_assert_eq!(got, Err(Error::Truncated));
                }
            }
        }
    }

    #[test]
    fn address_is_the_documented_derive_key_of_the_key() {
        let key = AddrKey([7; 32]);
        let expected = blake3::derive_key("sky v1 virtual address", &key.0);
        assert_eq!(VirtualAddr::from_key(&key).0, expected[..16]);
    }

    #[test]
    fn statements_bind_the_domain_the_cookie_and_the_flags() {
        let c = Cookie([9; 8]);
        let r = register_statement(&c, Flags(1));
        assert_eq!(&r[..16], b"sky v1 register\0");
        assert_eq!(&r[16..24], &[9; 8]);
        assert_eq!(r[24], 1);
        let u = unregister_statement(&c);
        assert_eq!(&u[..17], b"sky v1 unregister");
        assert_eq!(&u[17..], &[9; 8]);
        assert_ne!(r, u);
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let n = Message::Pong { tag: Tag([1; 4]) }.emit(&mut buf);
        for v in [0u8, 2, 0xff] {
            buf[0] = v;
            assert_eq!(Message::decode(&buf[..n]), Err(Error::BadVersion));
        }
    }

    #[test]
    fn oversized_datagrams_are_rejected_before_anything_else() {
        assert_eq!(
            Message::decode(&[0u8; MAX_DATAGRAM_LEN + 1]),
            Err(Error::Oversized)
        );
    }

    #[test]
    fn unassigned_kinds_are_unknown() {
        for k in [0x08u8, 0x8d, 0x00, 0x80, 0xff] {
            assert_eq!(Message::decode(&[VERSION, k]), Err(Error::UnknownKind));
        }
    }

    #[test]
    fn mapped_ipv6_endpoints_are_sent_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        let msg = Message::Online {
            tag: Tag([0; 4]),
            flags: Flags(0),
            endpoint: mapped,
        };
        assert_eq!(msg.buffer_len(), 13);
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let n = msg.emit(&mut buf);
        match Message::decode(&buf[..n]) {
            Ok(Message::Online { endpoint, .. }) => {
                assert_eq!(endpoint, "192.0.2.7:4000".parse::<SocketAddr>().unwrap())
            }
            other => panic!("{other:?}"),
        }
    }

    /// Byte-literal fixture: a lookup, field by field.
    #[test]
    fn lookup_layout_matches_the_protocol_document() {
        let msg = Message::Lookup {
            tag: Tag([0xa0, 0xa1, 0xa2, 0xa3]),
            cookie: Cookie([0xc0; 8]),
            target: VirtualAddr([0x11; 16]),
            caller: VirtualAddr([0x22; 16]),
            hint: [0x33; 16],
        };
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let n = msg.emit(&mut buf);
        let mut expected = vec![0x01, 0x04, 0xa0, 0xa1, 0xa2, 0xa3];
        expected.extend([0xc0; 8]);
        expected.extend([0x11; 16]);
        expected.extend([0x22; 16]);
        expected.extend([0x33; 16]);
        assert_eq!(&buf[..n], &expected[..]);
    }

    /// The prefetch hint finds the address where the parser reads it, and
    /// nothing in any other kind, version or length.
    #[test]
    fn the_named_address_is_the_lookups_target_and_the_keepalives_address() {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let lookup = Message::Lookup {
            tag: Tag([1; 4]),
            cookie: Cookie([2; 8]),
            target: VirtualAddr([0x11; 16]),
            caller: VirtualAddr([0x22; 16]),
            hint: [0x33; 16],
        };
        let n = lookup.emit(&mut buf);
        assert_eq!(
            named_address(&buf[..n]),
            Some((Kind::Lookup, VirtualAddr([0x11; 16])))
        );
        let keepalive = Message::Keepalive {
            tag: Tag([1; 4]),
            cookie: Cookie([2; 8]),
            address: VirtualAddr([0x44; 16]),
            ring: 7,
        };
        let k = keepalive.emit(&mut buf);
        assert_eq!(
            named_address(&buf[..k]),
            Some((Kind::Keepalive, VirtualAddr([0x44; 16])))
        );
        assert_eq!(named_address(&buf[..20]), None, "cut short");
        assert_eq!(named_address(&buf[..k + 1]), None, "too long");
        let mut other_version = buf;
        other_version[0] = VERSION + 1;
        assert_eq!(named_address(&other_version[..k]), None, "another version");
        let ping = Message::Ping {
            tag: Tag([1; 4]),
            cookie: Cookie([0; 8]),
        };
        let p = ping.emit(&mut buf);
        assert_eq!(named_address(&buf[..p]), None);
        assert_eq!(named_address(&[]), None);
    }
}

mod members {
    use crate::ring::RingConfig;
    use crate::wire::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    fn page_header(total: u16, start: u16) -> Message {
        Message::MembersPage {
            tag: Tag([9; 4]),
            version: 0xdead_beef,
            config: RingConfig::default(),
            total,
            start,
        }
    }

    #[test]
    fn a_page_never_exceeds_its_limit_and_its_entries_round_trip() {
        let members: Vec<SocketAddr> = (0..300u16)
            .map(|i| {
                if i % 3 == 0 {
                    SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)),
                        i,
                    )
                } else {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8)), 7700)
                }
            })
            .collect();
        for limit in [16usize, 18, 24, 25, 100, 1232] {
            let mut buf = [0u8; MAX_DATAGRAM_LEN];
            let (len, count) =
                emit_members_page(&mut buf, limit, page_header(300, 0), members.clone());
            assert!(len <= limit.max(18), "limit {limit}: {len}");
            let p = Packet::new_checked(&buf[..len]).unwrap();
            assert_eq!(Message::parse(&p), page_header(300, 0));
            let got: Vec<SocketAddr> = p.page_entries().collect();
            assert_eq!(got.len(), count);
            assert_eq!(got, members[..count]);
        }
    }

    #[test]
    fn a_page_with_a_broken_entry_is_rejected() {
        let mut buf = [0u8; 64];
        let (len, _) = emit_members_page(
            &mut buf,
            64,
            page_header(1, 0),
            ["192.0.2.1:7700".parse().unwrap()],
        );
        assert_eq!(len, 18 + 7);
        buf[18] = 5; // unknown family
        assert_eq!(Message::decode(&buf[..len]), Err(Error::BadEntry));
        buf[18] = 6; // IPv6 family, IPv4 length
        assert_eq!(Message::decode(&buf[..len]), Err(Error::BadEntry));
        buf[18] = 4;
        assert!(Message::decode(&buf[..len - 1]).is_err());
    }

    #[test]
    fn members_request_layout() {
        let req = Message::Members {
            tag: Tag([1, 2, 3, 4]),
            cookie: Cookie([5; 8]),
            start: 0x0102,
            len: 100,
        };
        let mut buf = [0xffu8; 128];
        assert_eq!(req.emit(&mut buf), 100);
        assert_eq!(
            &buf[..16],
            &[1, 6, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5, 1, 2]
        );
        assert!(buf[16..100].iter().all(|&b| b == 0), "padding is zeros");
        assert_eq!(Message::decode(&buf[..100]), Ok(req));
    }
}
