//! Two friends on loopback find each other through a sky node and
//! exchange a message.
//!
//! ```text
//! cargo run --release -- node &                                   # a node on 127.0.0.1:7700
//! cargo run -p sky-earth --example two_friends -- 127.0.0.1:7700
//! ```
//!
//! Without an address it starts a node itself: the `sky` binary from
//! `$SKY_BIN`, or `sky` on the `PATH` (e.g. after `cargo build --release`,
//! `PATH=target/release:$PATH cargo run -p sky-earth --example two_friends`).
//!
//! Alice goes online (registers her current virtual address with the sky);
//! Bob, who holds her invite, sends "hello alice": his client looks her up,
//! the sky introduces them, both punch, they handshake, and the message is
//! delivered and acknowledged. Nothing here is stored on disk.

#![allow(clippy::disallowed_methods)] // an application: it owns its threads and clock

use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sky_earth::client::{Config, Event};
use sky_earth::driver::{Driver, random_seed, unix_now};
use sky_earth::identity::{Friends, Identity};
use sky_earth::ratchet::DEFAULT_EPOCH;
use sky_earth::state::State;

fn main() -> ExitCode {
    let (sky, mut node) = match std::env::args().nth(1) {
        Some(addr) => match addr.parse::<SocketAddr>() {
            Ok(a) => (a, None),
            Err(e) => return fail(&format!("`{addr}` is not HOST:PORT: {e}")),
        },
        None => match start_node() {
            Ok((a, child)) => (a, Some(child)),
            Err(e) => return fail(&e),
        },
    };
    let result = run(sky);
    if let Some(child) = node.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("two_friends: {msg}");
    ExitCode::from(2)
}

/// A new identity for someone, from the operating system's randomness.
fn identity() -> Result<Identity, String> {
    let mut random = [0u8; 64];
    for half in random.chunks_mut(32) {
        half.copy_from_slice(&random_seed().map_err(|e| e.to_string())?);
    }
    Ok(Identity::generate(random, DEFAULT_EPOCH, unix_now()))
}

fn run(sky: SocketAddr) -> Result<(), String> {
    let mut alice = identity()?;
    let mut bob = identity()?;
    // Each gives the other an invite (in an app: a QR code, a link).
    let mut alice_friends = Friends::default();
    alice_friends
        .add("bob", bob.invite(unix_now()).into())
        .map_err(|e| e.to_string())?;
    let mut bob_friends = Friends::default();
    bob_friends
        .add("alice", alice.invite(unix_now()).into())
        .map_err(|e| e.to_string())?;
    let state = State::new;

    // Alice stays online until she has a message.
    let mut alice = Driver::bind(Config::new(vec![sky]), state(alice, alice_friends))
        .map_err(|e| format!("alice cannot open a socket: {e}"))?;
    alice.earth.go_online(unix_now());
    let (registered_tx, registered_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let alice_thread = std::thread::spawn(move || {
        let mut got = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = alice.run(Some(deadline), &AtomicBool::new(false), |_, event| {
            match event {
                Event::Registered { observed, .. } => {
                    println!("alice: registered, the sky sees her at {observed}");
                    let _ = registered_tx.send(());
                }
                Event::Message { friend, payload } => {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    println!("alice: message from {friend}: {text}");
                    got = Some(text);
                    return ControlFlow::Break(());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        });
        alice.earth.go_offline();
        alice.flush();
        result.map_err(|e| e.to_string()).map(|()| got)
    });
    registered_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| format!("alice could not register with {sky}"))?;

    // Bob connects and delivers one message.
    let mut bob = Driver::bind(Config::new(vec![sky]), state(bob, bob_friends))
        .map_err(|e| format!("bob cannot open a socket: {e}"))?;
    let id = bob.earth.send(unix_now(), "alice", b"hello alice");
    let mut outcome = Err("bob gave up".to_string());
    bob.run(None, &stop, |_, event| match event {
        Event::Delivered {
            id: i,
            peer,
            elapsed,
            ..
        } if i == id => {
            println!(
                "bob: delivered to alice at {peer} in {:.1} ms",
                elapsed.as_secs_f64() * 1e3
            );
            outcome = Ok(());
            ControlFlow::Break(())
        }
        Event::Failed { id: i, why, .. } if i == id => {
            outcome = Err(format!("bob cannot reach alice: {why}"));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .map_err(|e| e.to_string())?;
    outcome?;
    match alice_thread.join() {
        Ok(Ok(Some(text))) if text == "hello alice" => Ok(()),
        Ok(Ok(other)) => Err(format!("alice got {other:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("alice's thread panicked".into()),
    }
}

/// Starts `sky node` on a free loopback port (metrics off, gossip on an
/// ephemeral port) and returns its address.
fn start_node() -> Result<(SocketAddr, Child), String> {
    let bin = std::env::var("SKY_BIN").unwrap_or_else(|_| "sky".into());
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(&bin)
        .args(["node", "--listen", &addr.to_string()])
        .args([
            "--metrics",
            "off",
            "--gossip",
            "127.0.0.1:0",
            "--shards",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start `{bin} node` ({e}): give a node's HOST:PORT, or set SKY_BIN")
        })?;
    // The node answers pings once its shards are up.
    let probe = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut ping = [0u8; sky_proto::wire::MAX_MESSAGE_LEN];
    let len = sky_proto::wire::Message::Ping {
        tag: sky_proto::wire::Tag([1; 4]),
        cookie: Default::default(),
    }
    .emit(&mut ping);
    for _ in 0..50 {
        let _ = probe.send_to(&ping[..len], addr);
        let mut buf = [0u8; 64];
        if probe.recv_from(&mut buf).is_ok() {
            return Ok((addr, child));
        }
    }
    Err(format!("`{bin} node` did not answer on {addr}"))
}
