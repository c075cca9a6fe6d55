//! The bed's layouts, one function each, and what the earth tests do in
//! them: two friends' state, alice online, bob sending her a message.
//!
//! Names: routers `na` (alice's) and `nb` (bob's), or `nh` for one router
//! both are behind; the carrier-grade NAT `cg`; hosts `a` (alice) and `b`
//! (bob). Public addresses are handed out in creation order from
//! 203.0.113.2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::bed::{Bed, Host, Nat, Router, SKY, SKY_NODE, Upstream};

/// A built layout: its bed and the routers and hosts in it.
pub(crate) struct Layout {
    pub(crate) bed: Bed,
    pub(crate) routers: Vec<Router>,
    pub(crate) hosts: Vec<Host>,
}

impl Layout {
    pub(crate) fn router(&self, name: &str) -> &Router {
        self.routers.iter().find(|r| r.name == name).unwrap()
    }

    pub(crate) fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }

    fn done(self, layout: &str) -> Layout {
        self.bed.built(layout);
        self
    }
}

/// The matrix's layout: alice behind `a` (203.0.113.2 over 198.51.100.2),
/// bob behind `b` (203.0.113.3 over 192.0.2.2).
pub(crate) fn two_nats(tag: &str, a: Nat, b: Nat) -> Layout {
    let mut bed = Bed::new(tag);
    let na = bed.router("na", a, Upstream::Public, false);
    let nb = bed.router("nb", b, Upstream::Public, false);
    let alice = bed.host("a", &na);
    let bob = bed.host("b", &nb);
    Layout {
        bed,
        routers: vec![na, nb],
        hosts: vec![alice, bob],
    }
    .done(&format!("{}-{}", a.name(), b.name()))
}

/// Same LAN: alice (198.51.100.2) and bob (198.51.100.3) behind one home
/// router (203.0.113.2), which does not hairpin.
pub(crate) fn same_lan(tag: &str) -> Layout {
    let mut bed = Bed::new(tag);
    let nh = bed.router("nh", Nat::Home, Upstream::Public, false);
    let alice = bed.host("a", &nh);
    let bob = bed.host("b", &nh);
    Layout {
        bed,
        routers: vec![nh],
        hosts: vec![alice, bob],
    }
    .done("same-lan")
}

/// Two homes behind one carrier-grade NAT: the CGN `cg` on the public side
/// (203.0.113.2, inside 100.64.0.1/10), home routers `na` (100.64.0.2, LAN
/// 198.51.100.0/24) and `nb` (100.64.0.3, LAN 192.0.2.0/24) behind it,
/// alice and bob behind those.
pub(crate) fn two_homes_behind_cgn(tag: &str) -> Layout {
    let mut bed = Bed::new(tag);
    let cg = bed.router("cg", Nat::Home, Upstream::Public, true);
    let na = bed.router("na", Nat::Home, Upstream::Behind(&cg), false);
    let nb = bed.router("nb", Nat::Home, Upstream::Behind(&cg), false);
    let alice = bed.host("a", &na);
    let bob = bed.host("b", &nb);
    Layout {
        bed,
        routers: vec![cg, na, nb],
        hosts: vec![alice, bob],
    }
    .done("two-homes-behind-cgn")
}

/// Alice behind a home router (`na`, 100.64.0.2) behind a CGN (`cg`,
/// 203.0.113.2); bob behind an ordinary home router (`nb`, 203.0.113.3).
pub(crate) fn home_behind_cgn_vs_home(tag: &str) -> Layout {
    let mut bed = Bed::new(tag);
    let cg = bed.router("cg", Nat::Home, Upstream::Public, true);
    let nb = bed.router("nb", Nat::Home, Upstream::Public, false);
    let na = bed.router("na", Nat::Home, Upstream::Behind(&cg), false);
    let alice = bed.host("a", &na);
    let bob = bed.host("b", &nb);
    Layout {
        bed,
        routers: vec![cg, na, nb],
        hosts: vec![alice, bob],
    }
    .done("home-behind-cgn-vs-home")
}

/// One home router `na` (203.0.113.2) running miniupnpd, alice behind it
/// (198.51.100.2); the STUN server on 203.0.113.250/.251. Panics unless
/// miniupnpd enabled port forwarding.
pub(crate) fn upnp_home(tag: &str) -> Layout {
    let mut bed = Bed::new(tag);
    let na = bed.router("na", Nat::Home, Upstream::Public, false);
    let alice = bed.host("a", &na);
    let verdict = bed.miniupnpd(&[&na]);
    assert_eq!(
        verdict,
        [true],
        "miniupnpd did not enable port forwarding:\n{}",
        bed.log("miniupnpd-na")
    );
    Layout {
        bed,
        routers: vec![na],
        hosts: vec![alice],
    }
    .done("upnp-home")
}

/// Alice behind a port-randomising router running miniupnpd, bob behind a
/// port-randomising router: without the port mapping nothing connects
/// them (the matrix's symmetric ↔ symmetric row). Panics unless miniupnpd
/// enabled port forwarding.
pub(crate) fn upnp_symmetric_vs_symmetric(tag: &str) -> Layout {
    let mut bed = Bed::new(tag);
    let na = bed.router("na", Nat::Symmetric, Upstream::Public, false);
    let nb = bed.router("nb", Nat::Symmetric, Upstream::Public, false);
    let alice = bed.host("a", &na);
    let bob = bed.host("b", &nb);
    let verdict = bed.miniupnpd(&[&na]);
    assert_eq!(
        verdict,
        [true],
        "miniupnpd did not enable port forwarding:\n{}",
        bed.log("miniupnpd-na")
    );
    Layout {
        bed,
        routers: vec![na, nb],
        hosts: vec![alice, bob],
    }
    .done("upnp-symmetric-vs-symmetric")
}

/// [`two_homes_behind_cgn`] with miniupnpd on both home routers. Returns
/// their verdicts too (`false`: miniupnpd found the CGN restrictive and
/// maps nothing).
pub(crate) fn upnp_homes_behind_cgn(tag: &str) -> (Layout, Vec<bool>) {
    let mut bed = Bed::new(tag);
    let cg = bed.router("cg", Nat::Home, Upstream::Public, true);
    let na = bed.router("na", Nat::Home, Upstream::Behind(&cg), false);
    let nb = bed.router("nb", Nat::Home, Upstream::Behind(&cg), false);
    let alice = bed.host("a", &na);
    let bob = bed.host("b", &nb);
    let verdicts = bed.miniupnpd(&[&na, &nb]);
    let layout = Layout {
        bed,
        routers: vec![cg, na, nb],
        hosts: vec![alice, bob],
    }
    .done("upnp-homes-behind-cgn");
    (layout, verdicts)
}

/// Alice's and bob's `sky earth` state, friends with each other; removed
/// on drop.
pub(crate) struct Friends {
    pub(crate) dir: PathBuf,
}

impl Drop for Friends {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Friends {
    pub(crate) fn new(tag: &str) -> Friends {
        let dir = std::env::temp_dir().join(format!("sky-nat-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let friends = Friends { dir };
        let earth_cli = |who: &str, args: &[&str]| {
            let a = earth(&friends.dir.join(who), args);
            let o = Command::new(SKY).args(&a).output().unwrap();
            assert!(o.status.success(), "{o:?}");
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        earth_cli("alice", &["init"]);
        earth_cli("bob", &["init"]);
        let (ai, bi) = (
            earth_cli("alice", &["invite"]),
            earth_cli("bob", &["invite"]),
        );
        earth_cli("bob", &["add-friend", "alice", &ai]);
        earth_cli("alice", &["add-friend", "bob", &bi]);
        friends
    }
}

/// `sky earth --state dir args…`.
pub(crate) fn earth(dir: &Path, args: &[&str]) -> Vec<String> {
    let mut a = vec![
        "earth".to_string(),
        "--state".into(),
        dir.display().to_string(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    a
}

/// In `layout` (its sky node started here): alice on host `a` stays
/// online, bob on host `b` sends her a message. Returns bob's output line,
/// or his error.
pub(crate) fn deliver(layout: &mut Layout, friends: &Friends) -> Result<String, String> {
    let bed = &mut layout.bed;
    bed.sky_node();
    let online = earth(
        &friends.dir.join("alice"),
        &["online", "--sky", SKY_NODE, "--hold", "8"],
    );
    let online: Vec<&str> = online.iter().map(String::as_str).collect();
    bed.spawn_sky("a", "alice", &online);
    let send = earth(
        &friends.dir.join("bob"),
        &["send", "alice", "through the NATs", "--sky", SKY_NODE],
    );
    let send: Vec<&str> = send.iter().map(String::as_str).collect();
    // Until alice has registered, bob's send says offline (exit 1).
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = bed.sky("b", &send);
        if out.status.code() != Some(1) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        assert_eq!(
            out.status.code(),
            Some(2),
            "a failure ends with exit 2: {out:?}"
        );
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
