//! The earth client while it runs (`sky earth online` as an app runs in
//! the background): friends added or removed take effect at once and are
//! never undone on disk; one process owns the state; several devices.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cli::{EPHEMERAL, NodeProcess, SKY, earth, earth_users, stdout};

/// A node with a 2-second keepalive interval (so "within one keepalive
/// interval" is quick to wait for), on an ephemeral loopback port.
fn fast_node() -> (NodeProcess, String) {
    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "off",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
            "--keepalive-secs",
            "2",
        ],
        &[],
    );
    let addr = node.listen_addr();
    (node, addr)
}

/// A running `sky earth online`, its stdout read line by line.
struct Online {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Online {
    fn start(dir: &Path, sky: &str, extra: &[&str]) -> Online {
        let mut child = Command::new(SKY)
            .args(["earth", "--state", dir.to_str().unwrap(), "online"])
            .args(["--sky", sky, "--hold", "120", "--reset-retry", "1"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Online {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 10 s) for a line that `wanted` accepts.
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        if let Some(l) = self.seen.iter().find(|l| wanted(l)) {
            return l.clone();
        }
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "never printed the line wanted; printed:\n{}",
            self.seen.join("\n")
        );
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sky-live-{name}-{}", std::process::id()))
}

fn state_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("state.toml")).unwrap()
}

/// The user's own chain key as saved (in the `[identity]` table).
fn own_chain(dir: &Path) -> String {
    let state = state_of(dir);
    let identity = state.split("[identity]").nth(1).expect("an identity table");
    identity
        .lines()
        .find(|l| l.starts_with("chain_key = "))
        .expect("a chain key")
        .to_string()
}

/// Repeats `lookup` until `wanted` exit code or the limit; the elapsed time.
fn lookup_until(dir: &Path, friend: &str, sky: &str, wanted: i32, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let o = earth(dir, &["lookup", friend, "--sky", sky]);
        if o.status.code() == Some(wanted) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "lookup of {friend} never exited {wanted}: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The failure found by trying the product: with `online` running,
/// `remove-friend carol` printed "removed carol" yet carol kept finding
/// the user, and the running process later wrote its old copy of the
/// state over the file (carol back, the old chain key restored, the
/// pending reset gone).
#[test]
fn remove_friend_while_online_takes_effect_at_once_and_is_never_undone() {
    let root = root("remove");
    earth_users(
        &root,
        &["alice", "bob", "carol"],
        &[
            ("bob", "alice"),
            ("carol", "alice"),
            ("alice", "bob"),
            ("alice", "carol"),
        ],
    );
    let (alice, bob, carol) = (root.join("alice"), root.join("bob"), root.join("carol"));
    let (node, sky) = fast_node();
    let old_chain = own_chain(&alice);

    let mut online = Online::start(&alice, &sky, &[]);
    online.wait_for(|l| l.starts_with("registered "));
    let found = earth(&carol, &["lookup", "alice", "--sky", &sky]);
    assert_eq!(found.status.code(), Some(0), "{found:?}");

    let removed = earth(&alice, &["remove-friend", "carol"]);
    assert!(removed.status.success(), "{removed:?}");
    // Carol's lookup says offline, and her send fails, within one
    // keepalive interval (2 s here; 3 s of slack for the processes).
    let took = lookup_until(&carol, "alice", &sky, 1, Duration::from_secs(5));
    assert!(took <= Duration::from_secs(5), "{took:?}");
    let send = earth(&carol, &["send", "alice", "still here?", "--sky", &sky]);
    assert_ne!(send.status.code(), Some(0), "carol delivered: {send:?}");
    // On disk at once: no carol, a new chain key, bob pending.
    let state = state_of(&alice);
    assert!(!state.contains("[friends.carol]"), "{state}");
    assert_ne!(own_chain(&alice), old_chain, "the chain key was not reset");
    assert!(state.contains("pending_resets = [\"bob\"]"), "{state}");

    // Bob was offline during the reset; he comes online, gets it, and
    // finds alice.
    let mut bob_online = Online::start(&bob, &sky, &[]);
    bob_online.wait_for(|l| l == "reset alice");
    online.wait_for(|l| l == "reset acknowledged by bob");
    lookup_until(&bob, "alice", &sky, 0, Duration::from_secs(5));
    // That acknowledgement was saved by the running client: its copy of
    // the state holds no carol and the new chain key.
    let state = state_of(&alice);
    assert!(!state.contains("[friends.carol]"), "{state}");
    assert_ne!(own_chain(&alice), old_chain, "an old copy was written back");
    assert!(state.contains("pending_resets = []"), "{state}");
    drop(bob_online);
    online.kill9();
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn add_friend_while_online_delivers_at_once_and_survives_every_later_save() {
    let root = root("add");
    earth_users(
        &root,
        &["alice", "bob", "dave", "eve"],
        &[
            ("bob", "alice"),
            ("alice", "bob"),
            ("dave", "alice"),
            ("bob", "eve"),
        ],
    );
    let (alice, bob, dave, eve) = (
        root.join("alice"),
        root.join("bob"),
        root.join("dave"),
        root.join("eve"),
    );
    let (node, sky) = fast_node();
    let mut online = Online::start(&alice, &sky, &[]);
    online.wait_for(|l| l.starts_with("registered "));

    let invite = stdout(&earth(&dave, &["invite"])).trim().to_string();
    let added = earth(&alice, &["add-friend", "dave", &invite]);
    assert!(added.status.success(), "{added:?}");
    assert_eq!(stdout(&added).trim(), "added dave");
    let sent = earth(&dave, &["send", "alice", "hi from dave", "--sky", &sky]);
    assert_eq!(sent.status.code(), Some(0), "{sent:?}");
    online.wait_for(|l| l == "message dave hi from dave");

    // A later save of the running client (it adopts bob's address reset)
    // keeps dave.
    assert!(earth(&bob, &["remove-friend", "eve"]).status.success());
    let _bob_online = Online::start(&bob, &sky, &[]);
    online.wait_for(|l| l == "reset bob");
    assert!(
        state_of(&alice).contains("[friends.dave]"),
        "{}",
        state_of(&alice)
    );
    // And a kill -9 loses nothing either.
    online.kill9();
    assert!(state_of(&alice).contains("[friends.dave]"));
    let status = stdout(&earth(&alice, &["status"]));
    assert!(status.contains("friend dave address "), "{status}");
    let _ = eve;
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_kill_in_the_middle_of_a_reset_loses_nothing() {
    let root = root("kill");
    earth_users(
        &root,
        &["alice", "bob", "carol"],
        &[("alice", "bob"), ("alice", "carol"), ("bob", "alice")],
    );
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    let (node, sky) = fast_node();
    let mut online = Online::start(&alice, &sky, &[]);
    online.wait_for(|l| l.starts_with("registered "));
    let old_chain = own_chain(&alice);
    assert!(earth(&alice, &["remove-friend", "carol"]).status.success());
    // The answer came after the save: kill at once.
    online.kill9();
    let state = state_of(&alice);
    assert_ne!(own_chain(&alice), old_chain);
    assert!(!state.contains("[friends.carol]"), "{state}");
    assert!(state.contains("pending_resets = [\"bob\"]"), "{state}");
    // Back online, the reset goes on: bob gets it and finds alice.
    let _online = Online::start(&alice, &sky, &[]);
    let mut bob_online = Online::start(&bob, &sky, &[]);
    bob_online.wait_for(|l| l == "reset alice");
    lookup_until(&bob, "alice", &sky, 0, Duration::from_secs(5));
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_second_online_on_the_same_state_is_refused_naming_the_first() {
    let root = root("second");
    earth_users(&root, &["alice"], &[]);
    let alice = root.join("alice");
    let (node, sky) = fast_node();
    let mut first = Online::start(&alice, &sky, &[]);
    first.wait_for(|l| l.starts_with("registered "));
    let second = Command::new(SKY)
        .args([
            "earth",
            "--state",
            alice.to_str().unwrap(),
            "online",
            "--sky",
            &sky,
        ])
        .args(["--hold", "5"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    let pid = first.child.id().to_string();
    assert!(
        err.contains("in use by process") && err.contains(&pid),
        "{err}"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn own_and_duplicate_invites_are_refused_with_a_clear_message() {
    let root = root("dup");
    earth_users(&root, &["alice", "bob"], &[("alice", "bob")]);
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    let own = stdout(&earth(&alice, &["invite"])).trim().to_string();
    let refused = earth(&alice, &["add-friend", "me", &own]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("your own invite"));
    let bobs = stdout(&earth(&bob, &["invite"])).trim().to_string();
    let again = earth(&alice, &["add-friend", "robert", &bobs]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already your friend `bob`"),
        "{again:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_bootstrap_list_is_remembered_and_status_tells_the_next_rotation() {
    let root = root("remember");
    earth_users(
        &root,
        &["alice", "bob"],
        &[("alice", "bob"), ("bob", "alice")],
    );
    let (alice, bob) = (root.join("alice"), root.join("bob"));
    let (node, sky) = fast_node();
    let mut online = Online::start(&alice, &sky, &[]);
    online.wait_for(|l| l.starts_with("registered "));
    // Bob gave the list once (to his own `online`); later, no --sky.
    let mut bob_online = Online::start(&bob, &sky, &[]);
    bob_online.wait_for(|l| l.starts_with("registered "));
    bob_online.kill9();
    let found = earth(&bob, &["lookup", "alice"]);
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    // Through the running client: status says it is online and when the
    // address changes next.
    let status = stdout(&earth(&alice, &["status"]));
    assert!(
        status.lines().any(|l| l.starts_with("online (sky ")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("next rotation in ") && l.ends_with(" UTC)")),
        "{status}"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn online_exits_non_zero_when_it_never_registered() {
    let root = root("never");
    earth_users(&root, &["alice"], &[]);
    let alice = root.join("alice");
    // Nothing listens on this port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    drop(silent);
    let out = Command::new(SKY)
        .args([
            "earth",
            "--state",
            alice.to_str().unwrap(),
            "online",
            "--sky",
            &addr,
        ])
        .args(["--hold", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never registered"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn two_devices_of_one_user_are_both_reachable_and_neither_knocks_the_other_off() {
    let root = root("devices");
    earth_users(
        &root,
        &["alice", "bob"],
        &[("alice", "bob"), ("bob", "alice")],
    );
    let (alice, alice2, bob) = (root.join("alice"), root.join("alice2"), root.join("bob"));
    let (node, sky) = fast_node();
    let mut a0 = Online::start(&alice, &sky, &[]);
    a0.wait_for(|l| l.starts_with("registered "));
    let mut b = Online::start(&bob, &sky, &[]);
    b.wait_for(|l| l.starts_with("registered "));

    // Through the running client: a second device, announced to bob.
    let file = root.join("alice-device-1.toml");
    let added = earth(&alice, &["add-device", file.to_str().unwrap()]);
    assert!(added.status.success(), "{added:?}");
    let imported = earth(&alice2, &["import-device", file.to_str().unwrap()]);
    assert!(imported.status.success(), "{imported:?}");
    assert!(
        stdout(&imported).starts_with("imported device 1 of 2"),
        "{imported:?}"
    );
    std::fs::remove_file(&file).unwrap();
    b.wait_for(|l| l == "reset alice");
    let mut a1 = Online::start(&alice2, &sky, &[]);
    let r1 = a1.wait_for(|l| l.starts_with("registered "));

    // Bob reaches each device; both stay registered.
    let at = |device: &str| {
        let o = earth(&bob, &["lookup", "alice", "--device", device]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        stdout(&o).trim().to_string()
    };
    let (d0, d1) = (at("0"), at("1"));
    assert_ne!(d0, d1, "two devices, two endpoints");
    assert_eq!(
        d1,
        format!("online {}", r1.trim_start_matches("registered "))
    );
    for (device, online) in [("0", &mut a0), ("1", &mut a1)] {
        let text = format!("hello device {device}");
        let o = earth(&bob, &["send", "alice", &text, "--device", device]);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        online.wait_for(|l| l == format!("message bob {text}"));
    }
    assert_eq!(at("0"), d0);
    assert_eq!(at("1"), d1);
    drop(node);
    let _ = std::fs::remove_dir_all(&root);
}
