//! Helpers shared by the integration tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sky_node::config::{Config, EngineChoice};
use sky_node::engine::Node;
use sky_node::probe::AddrSecret;
use sky_proto::wire::{Cookie, MAX_MESSAGE_LEN, Message, Tag};

/// How long a test waits to be sure that no datagram is coming.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

/// The engines every behaviour is checked on. io_uring must be available in
/// CI; elsewhere its absence is reported loudly and only the fallback runs.
pub(crate) fn engines() -> Vec<EngineChoice> {
    match sky_node::engine::uring_available() {
        Ok(()) => vec![EngineChoice::Uring, EngineChoice::Mmsg],
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("io_uring is unavailable in CI ({e}): the io_uring engine would go untested")
        }
        Err(e) => {
            eprintln!("WARNING: io_uring unavailable here ({e}); testing only the mmsg engine");
            vec![EngineChoice::Mmsg]
        }
    }
}

/// A node's configuration on `listen`, its gossip socket on an ephemeral
/// port of the same IP (tests run at once; none may take 7701).
pub(crate) fn config(engine: EngineChoice, listen: &str) -> Config {
    let listen: SocketAddr = listen.parse().unwrap();
    Config {
        listen,
        gossip: SocketAddr::new(listen.ip(), 0),
        check: Some(0),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        shards: Some(2),
        engine,
        pin_cores: false,
        keepalive: Duration::from_secs(1),
        ..Config::default()
    }
}

/// A node on an ephemeral loopback port.
pub(crate) fn start(engine: EngineChoice) -> Node {
    Node::start(&config(engine, "127.0.0.1:0")).expect("node starts")
}

/// A raw client socket on loopback, matching the node's family.
pub(crate) fn socket_for(node: SocketAddr) -> UdpSocket {
    let local = if node.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(local).unwrap();
    s.set_read_timeout(Some(QUIET)).unwrap();
    s
}

/// One datagram within the socket's timeout; `None` on timeout. Retries
/// a receive interrupted by a signal.
pub(crate) fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Every datagram that arrives within `QUIET`, with its source.
pub(crate) fn drain(socket: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let end = Instant::now() + QUIET;
    while Instant::now() < end {
        match recv(socket) {
            Some(d) => out.push(d),
            None => break,
        }
    }
    out
}

/// Sends `bytes` and returns the first datagram back (within `QUIET`).
/// A socket on `ip` (another loopback address: another source), waiting
/// at most 300 ms for an answer.
pub(crate) fn socket_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// A node with two shards started from `config`.
pub(crate) fn two_shard_node(config: Config) -> Node {
    Node::start(&Config {
        shards: Some(2),
        ..config
    })
    .expect("node starts")
}

pub(crate) fn exchange(socket: &UdpSocket, node: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(bytes, node).unwrap();
    recv(socket).map(|(d, _)| d)
}

/// The address key pair of seed `[b; 32]`: tests name their addresses by
/// a byte (deriving one costs about 15 µs).
pub(crate) fn secret(b: u8) -> AddrSecret {
    AddrSecret::from_seed([b; 32])
}

pub(crate) fn emit(msg: Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let n = msg.emit(&mut buf);
    buf[..n].to_vec()
}

/// Gets a cookie for `socket` by sending a ping-sized request without one.
pub(crate) fn cookie(socket: &UdpSocket, node: SocketAddr) -> Cookie {
    let req = emit(Message::Keepalive {
        ring: 0,
        tag: Tag([9; 4]),
        cookie: Cookie::default(),
        address: Default::default(),
    });
    match exchange(socket, node, &req).map(|r| Message::decode(&r)) {
        Some(Ok(Message::CookieReply { cookie, .. })) => cookie,
        other => panic!("expected a cookie, got {other:?}"),
    }
}

/// GET /metrics from the node (a test-side client; the node's HTTP server
/// is hyper).
pub(crate) fn scrape(node: &Node) -> String {
    let addr = node.metrics_addr().expect("metrics enabled");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

/// The value of one sample, e.g. `sky_dropped_datagrams_total{reason="truncated"}`.
pub(crate) fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Scrapes until `series` reaches `at_least` (shards publish every 100 ms).
pub(crate) fn wait_for_sample(node: &Node, series: &str, at_least: f64) -> String {
    wait_until(node, |m| sample(m, series) >= at_least)
}

/// Scrapes until `ready` holds for the metrics text, for up to 10 s (a
/// loaded machine may delay a shard's publish); returns the last scrape.
pub(crate) fn wait_until(node: &Node, ready: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(node);
        if ready(&m) || Instant::now() > end {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Held by the tests that load the CPUs (the load generator's smoke runs)
/// and by those whose failure detectors must not starve (the DHT fault
/// tests): they run one at a time; everything else runs beside them.
pub(crate) static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`HEAVY`], whether or not a previous holder panicked.
pub(crate) fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Root where asked, and the programs, or a loud skip; in CI (`CI` set)
/// their absence fails the test. `what` names the check for the message.
pub(crate) fn can_run(what: &str, root: bool, programs: &[&str]) -> bool {
    let has = |p: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut lacks = Vec::new();
    if root
        && Command::new("id")
            .arg("-u")
            .output()
            .map_or(true, |o| o.stdout != b"0\n")
    {
        lacks.push("root".to_string());
    }
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !has(p)).collect();
    if !missing.is_empty() {
        lacks.push(format!("{} (.ci/test installs them)", missing.join(", ")));
    }
    let lacks = lacks.join(" and ");
    match (lacks.is_empty(), std::env::var_os("CI").is_some()) {
        (true, _) => true,
        (false, true) => panic!("{what} cannot run in CI: it lacks {lacks}"),
        (false, false) => {
            eprintln!("WARNING: {what} skipped: it lacks {lacks}");
            false
        }
    }
}

/// A directory of the test's own, removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sky-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
