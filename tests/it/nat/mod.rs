//! The NAT test bed (needs root: network namespaces and nftables). Two
//! `sky earth` users, each behind emulated NATs, find each other through a
//! sky node on the "public" side and exchange a message, for the NAT
//! behaviours of the matrix in docs/NAT.md and the layouts beside it:
//!
//! - `home`: endpoint-independent mapping, address-and-port-dependent
//!   filtering (`masquerade`: the common home router);
//! - `cone`: endpoint-independent mapping and filtering (masquerade plus a
//!   DNAT of every inbound port to the host);
//! - `symmetric`: address-and-port-dependent mapping (`masquerade random`);
//! - a carrier-grade NAT: `home` with 100.64.0.0/10 inside;
//! - a home router running a real miniupnpd (UPnP-IGD, NAT-PMP, PCP), for
//!   the earth client's port mapping (`portmap`).
//!
//! `bed` is the machinery (namespaces, routers, processes, captures),
//! `upnp` the miniupnpd and STUN server, `layouts` one function per layout.
//! Addresses are documentation ranges (and 100.64.0.0/10 inside a CGN),
//! only inside the namespaces these tests create and delete, whatever
//! happens. Without root the tests skip with a WARNING; in CI they fail.
//!
//! ```text
//! let mut layout = layouts::two_homes_behind_cgn("t1");   // or build one:
//! let mut bed = Bed::new("t2");
//! let cg = bed.router("cg", Nat::Home, Upstream::Public, true);
//! let na = bed.router("na", Nat::Home, Upstream::Behind(&cg), false);
//! let a = bed.host("a", &na);
//! bed.miniupnpd(&[&na]);                  // a real UPnP/NAT-PMP/PCP gateway
//! bed.sky_node();                         // 203.0.113.1:7700
//! bed.spawn_sky("a", "alice", &["earth", …]);  // killed on drop
//! let out = bed.sky("b", &["earth", …]);      // runs, returns its Output
//! let capture = bed.capture("pub", "br0", "udp port 7700");
//! let lines = capture.stop();
//! ```

mod bed;
mod layouts;
mod portmap;
mod upnp;

use std::time::Instant;

use bed::{Nat, can_run};
use layouts::{Friends, deliver};

#[test]
fn friends_behind_emulated_nats_exchange_a_message_where_the_matrix_says_they_can() {
    if !can_run(&[]) {
        return;
    }
    let friends = Friends::new("matrix");
    // (alice's NAT, bob's NAT, connects?)
    let matrix = [
        (Nat::Home, Nat::Home, true),
        (Nat::Cone, Nat::Home, true),
        (Nat::Home, Nat::Cone, true),
        (Nat::Cone, Nat::Symmetric, true),
        (Nat::Home, Nat::Symmetric, false),
        (Nat::Symmetric, Nat::Home, false),
        (Nat::Cone, Nat::Cone, true),
        (Nat::Symmetric, Nat::Cone, false),
        (Nat::Symmetric, Nat::Symmetric, false),
    ];
    for (i, (a, b, connects)) in matrix.into_iter().enumerate() {
        let started = Instant::now();
        let mut layout = layouts::two_nats(&format!("x{i}"), a, b);
        let got = deliver(&mut layout, &friends);
        eprintln!(
            "NAT {} <- {}: {got:?} ({:.1} s)",
            a.name(),
            b.name(),
            started.elapsed().as_secs_f64()
        );
        match (connects, &got) {
            (true, Ok(line)) => assert!(
                line.starts_with("delivered to alice at 203.0.113."),
                "{line}"
            ),
            (false, Err(e)) => assert!(e.contains("cannot reach alice"), "{e}"),
            _ => panic!(
                "alice behind {a:?}, bob behind {b:?}: expected connects={connects}, got {got:?}"
            ),
        }
    }
}

/// Alice behind a home router behind a carrier-grade NAT, bob behind an
/// ordinary home router: both mappings are endpoint-independent, so
/// punching works through the double NAT.
#[test]
fn a_home_behind_a_cgn_reaches_a_home() {
    if !can_run(&[]) {
        return;
    }
    let friends = Friends::new("cgn-home");
    let mut layout = layouts::home_behind_cgn_vs_home("ch");
    let (cg, nb) = (layout.router("cg").outer, layout.router("nb").outer);
    // Everything on the public side but the sky node's own traffic.
    let capture = layout
        .bed
        .capture("pub", "br0", "udp and not port 7700 and not port 7701");
    let got = deliver(&mut layout, &friends);
    let direct = capture.stop();
    eprintln!("NAT home behind CGN <- home: {got:?}");
    let line = got.expect("delivered");
    assert!(
        line.starts_with(&format!("delivered to alice at {cg}:")),
        "alice is reached at the CGN's address: {line}"
    );
    // The path is direct: bob's router to the CGN and back.
    let there = format!("IP {nb}.");
    let back = format!("IP {cg}.");
    assert!(
        direct
            .iter()
            .any(|l| l.contains(&there) && l.contains(&format!("> {cg}.")))
            && direct
                .iter()
                .any(|l| l.contains(&back) && l.contains(&format!("> {nb}."))),
        "datagrams between {nb} and {cg}: {direct:#?}"
    );
}

/// Alice and bob on one LAN behind a router that does not hairpin: the
/// endpoints the sky saw (the router's public address) are unreachable from
/// inside; only the LAN addresses connect them.
#[test]
#[ignore = "connects once issue 12's client lands"]
fn friends_on_one_lan_exchange_a_message() {
    if !can_run(&[]) {
        return;
    }
    let friends = Friends::new("lan");
    let mut layout = layouts::same_lan("ln");
    let got = deliver(&mut layout, &friends);
    eprintln!("same LAN: {got:?}");
    let line = got.expect("delivered on the LAN");
    assert!(line.starts_with("delivered to alice at "), "{line}");
}

/// Two homes behind one CGN, which does not hairpin: both friends' public
/// endpoints are the CGN's, unreachable from its inside.
#[test]
#[ignore = "connects once issue 12's client lands"]
fn friends_in_two_homes_behind_one_cgn_exchange_a_message() {
    if !can_run(&[]) {
        return;
    }
    let friends = Friends::new("cgn2");
    let mut layout = layouts::two_homes_behind_cgn("c2");
    let got = deliver(&mut layout, &friends);
    eprintln!("two homes behind one CGN: {got:?}");
    let line = got.expect("delivered through the CGN");
    assert!(line.starts_with("delivered to alice at "), "{line}");
}
