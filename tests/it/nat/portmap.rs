//! The earth client's port mapping (`sky_earth::portmap`) against a real
//! miniupnpd: each protocol gives a mapping that forwards datagrams from
//! the public side to the host, and dropping the mapper deletes it.
//!
//! `PortMapper` finds its gateway from the default route of the network
//! namespace of its *process* (`/proc/net/route`), so it runs in a process
//! of its own inside the host's namespace: this test binary again, running
//! only [`portmap_helper`], driven line by line over stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::process::ChildStdin;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use sky_earth::portmap::{PortMapper, Protocols};

use super::bed::{Bed, Nat, can_run};
use super::layouts;

/// Set (to "PORT PROTOCOLS") in the helper process's environment.
const HELPER: &str = "SKY_BED_PORTMAP";

/// What the helper prints starts with this (libtest prints its own lines
/// around them).
const SAYS: &str = "PORTMAP ";

/// How long a test waits to be sure that no datagram is coming.
const QUIET: Duration = Duration::from_secs(1);

/// The helper process: binds UDP `PORT` on all addresses, maps it with
/// `PortMapper` (PROTOCOLS: `all`, `upnp`, `nat-pmp` or `pcp`) and says
/// `mapped ENDPOINT PROTOCOL` (or `none` after 5 s); then says `received
/// PAYLOAD` for every datagram, and obeys `drop` (drops the mapper, says
/// `dropped`) and `quit` on stdin. Does nothing unless run by the tests
/// below, which set `SKY_BED_PORTMAP`.
#[test]
#[ignore = "the port-mapping tests' helper process (they run it in a namespace)"]
fn portmap_helper() {
    let Ok(spec) = std::env::var(HELPER) else {
        return;
    };
    let (port, protocols) = spec.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let protocols = match protocols {
        "all" => Protocols::ALL,
        "upnp" => Protocols {
            upnp: true,
            nat_pmp: false,
            pcp: false,
        },
        "nat-pmp" => Protocols {
            upnp: false,
            nat_pmp: true,
            pcp: false,
        },
        "pcp" => Protocols {
            upnp: false,
            nat_pmp: false,
            pcp: true,
        },
        other => panic!("protocols {other}"),
    };
    let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            println!("{SAYS}received {}", String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut mapper = Some(PortMapper::start_with(port, protocols).unwrap());
    let m = mapper.as_ref().unwrap();
    match m.wait_mapped(Duration::from_secs(5)) {
        Some(at) => println!("{SAYS}mapped {at} {}", m.protocol().unwrap_or("?")),
        None => println!("{SAYS}none"),
    }
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().as_str() {
            "drop" => {
                drop(mapper.take());
                println!("{SAYS}dropped");
            }
            _ => break,
        }
    }
}

/// A helper process in a namespace of the bed.
struct Helper {
    stdin: ChildStdin,
    says: Receiver<String>,
}

impl Helper {
    fn start(bed: &mut Bed, ns: &str, port: u16, protocols: &str) -> Helper {
        let exe = std::env::current_exe().unwrap();
        let spec = format!("{port} {protocols}");
        let child = bed.spawn_piped(
            ns,
            &[
                exe.to_str().unwrap(),
                "nat::portmap::portmap_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
            &[(HELPER, &spec)],
        );
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, says) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may have begun the line ("test … ... ").
                if let Some(at) = line.find(SAYS)
                    && tx.send(line[at + SAYS.len()..].to_string()).is_err()
                {
                    break;
                }
            }
        });
        Helper { stdin, says }
    }

    /// The next thing the helper says (panics after 20 s).
    fn next(&self) -> String {
        self.says
            .recv_timeout(Duration::from_secs(20))
            .expect("the port-mapping helper answers")
    }

    /// Everything it says within `QUIET`.
    fn quiet(&self) -> Vec<String> {
        let until = Instant::now() + QUIET;
        let mut said = Vec::new();
        loop {
            match self
                .says
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(s) => said.push(s),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return said;
                }
            }
        }
    }

    fn tell(&mut self, what: &str) {
        writeln!(self.stdin, "{what}").unwrap();
    }
}

/// Sends `payload` to `to` from the public side, from a fresh socket
/// (another source port each time: a new flow, which only the mapping can
/// forward, not a conntrack entry of an earlier datagram).
fn send_from_public(bed: &Bed, to: SocketAddrV4, payload: &str) {
    bed.exec(
        "pub",
        &[
            "bash",
            "-c",
            &format!("printf %s '{payload}' > /dev/udp/{}/{}", to.ip(), to.port()),
        ],
    );
}

#[test]
fn port_mapper_maps_through_a_real_miniupnpd_with_each_protocol_and_deletes_on_drop() {
    if !can_run(&["miniupnpd", "turnserver", "bash"]) {
        return;
    }
    let mut layout = layouts::upnp_home("pm");
    let na = layout.router("na").clone();
    let host = layout.host("a").ip;
    let bed = &mut layout.bed;
    // With all three enabled PortMapper prefers PCP (portmapper's order).
    for (port, protocols, expect) in [
        (40001, "upnp", "upnp"),
        (40002, "nat-pmp", "nat-pmp"),
        (40003, "pcp", "pcp"),
        (40004, "all", "pcp"),
    ] {
        let started = Instant::now();
        let mut helper = Helper::start(bed, "a", port, protocols);
        let said = helper.next();
        eprintln!(
            "portmap {protocols}: {said} ({:.2} s)",
            started.elapsed().as_secs_f64()
        );
        let mapped = said
            .strip_prefix("mapped ")
            .unwrap_or_else(|| panic!("{protocols}: no mapping: {said}"));
        let (at, protocol) = mapped.split_once(' ').unwrap();
        let at: SocketAddrV4 = at.parse().unwrap();
        assert_eq!(protocol, expect, "{protocols}");
        assert_eq!(*at.ip(), na.outer, "{protocols}: the router's address");
        let rules = bed.upnp_rules(&na);
        assert!(
            rules.contains(&format!("dnat ip to {host}:{port}")),
            "{protocols}: miniupnpd forwards the port:\n{rules}"
        );

        send_from_public(bed, at, &format!("via-{protocols}"));
        assert_eq!(helper.next(), format!("received via-{protocols}"));

        helper.tell("drop");
        assert_eq!(helper.next(), "dropped");
        let rules = bed.upnp_rules(&na);
        assert!(
            !rules.contains(&format!("{host}:{port}")),
            "{protocols}: the mapping is deleted:\n{rules}"
        );
        send_from_public(bed, at, &format!("after-drop-{protocols}"));
        let after = helper.quiet();
        assert!(
            after.is_empty(),
            "{protocols}: nothing reaches the host after drop: {after:?}"
        );
        helper.tell("quit");
    }
}

/// Behind a carrier-grade NAT, miniupnpd's STUN check finds the CGN
/// restrictive (it filters the answers from the STUN server's other
/// address), disables port forwarding and reports the CGN's public address
/// as its own: `PortMapper` gets no mapping — rightly, as a mapping of the
/// home router's 100.64.x address would not be reachable from the public
/// side anyway.
#[test]
fn behind_a_cgn_miniupnpd_maps_nothing_and_port_mapper_reports_none() {
    if !can_run(&["miniupnpd", "turnserver", "natpmpc"]) {
        return;
    }
    let (mut layout, verdicts) = layouts::upnp_homes_behind_cgn("pc");
    assert_eq!(
        verdicts,
        [false, false],
        "miniupnpd behind a CGN disables port forwarding:\n{}",
        layout.bed.log("miniupnpd-na")
    );
    let cg = layout.router("cg").clone();
    let na = layout.router("na").clone();
    assert!(na.outer.octets()[..2] == [100, 64], "{na:?}");
    let log = layout.bed.log("miniupnpd-na");
    assert!(
        log.contains(&format!(
            "ext interface out with private IP address {} is now behind restrictive or symmetric NAT with public IP address {}",
            na.outer, cg.outer
        )),
        "{log}"
    );
    // NAT-PMP, asked by hand: the public address is the CGN's, a mapping
    // is refused.
    let natpmpc = layout
        .bed
        .output("a", &["natpmpc", "-a", "40010", "40010", "udp", "60"]);
    let said = String::from_utf8_lossy(&natpmpc.stdout);
    eprintln!("natpmpc behind the CGN:\n{said}");
    assert!(
        said.contains(&format!("Public IP address : {}", cg.outer)),
        "{said}"
    );
    assert!(!natpmpc.status.success(), "the mapping is refused: {said}");

    let helper = Helper::start(&mut layout.bed, "a", 40011, "all");
    let said = helper.next();
    eprintln!("portmap behind the CGN: {said}");
    assert_eq!(said, "none");
}

/// Behind a plain home router (no port-mapping service): no mapping, no
/// panic, and the wait ends.
#[test]
fn port_mapper_behind_a_router_without_port_mapping_reports_none() {
    if !can_run(&["bash"]) {
        return;
    }
    let mut layout = layouts::two_nats("pn", Nat::Home, Nat::Home);
    let helper = Helper::start(&mut layout.bed, "a", 40020, "all");
    let said = helper.next();
    eprintln!("portmap behind a plain home router: {said}");
    assert_eq!(said, "none");
}
