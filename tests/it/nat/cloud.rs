//! A sky on cloud instances: each node listens on its private interface
//! address and the cloud maps a public address 1:1 onto it, so the address
//! a node listens on is not the one anyone can reach it at. With
//! `--advertise` the public address goes on the ring, into members pages
//! and into gossip; clients on the public side find each other through it.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::bed::{Bed, Nat, Upstream, can_run};
use super::layouts::{Friends, earth};

/// Three nodes behind one 1:1 NAT gateway: node `i` listens on
/// 198.51.100.(2+i) and is reached at 203.0.113.(11+i). Returns the bed
/// and the public endpoints.
fn cloud(tag: &str, advertise: bool) -> (Bed, Vec<String>) {
    let mut bed = Bed::new(tag);
    let gw = bed.router("gw", Nat::Home, Upstream::Public, false);
    let mut rules = String::from(
        "table ip nat {\n  chain pre {\n    type nat hook prerouting priority -100;\n",
    );
    let mut post = String::from("  chain post {\n    type nat hook postrouting priority 100;\n");
    let mut public = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..3u8 {
        let host = bed.host(&format!("n{i}"), &gw);
        let outside = Ipv4Addr::new(203, 0, 113, 11 + i);
        bed.exec(
            "gw",
            &["ip", "addr", "add", &format!("{outside}/24"), "dev", "out"],
        );
        rules += &format!("    ip daddr {outside} dnat to {}\n", host.ip);
        post += &format!("    ip saddr {} snat to {outside}\n", host.ip);
        public.push(format!("{outside}:7700"));
        nodes.push((host, outside));
    }
    rules += "  }\n";
    rules += &post;
    rules += "  }\n}\n";
    bed.exec("gw", &["nft", "flush", "ruleset"]);
    bed.nft("gw", &rules);
    for (i, (host, outside)) in nodes.iter().enumerate() {
        let listen = format!("{}:7700", host.ip);
        let gossip = format!("{}:7701", host.ip);
        let seed = "203.0.113.11:7701".to_string();
        let mut args = vec![
            "node",
            "--listen",
            &listen,
            "--gossip",
            &gossip,
            "--seed",
            &seed,
            "--metrics",
            "off",
            "--prefix-v4",
            "32",
            "--shards",
            "1",
        ];
        let adv = outside.to_string();
        if advertise {
            args.extend(["--advertise", &adv]);
        }
        bed.spawn_sky(&host.name, &format!("node{i}"), &args);
    }
    (bed, public)
}

/// `sky probe members` through node 0's public address until it lists
/// three members (or the time is up): the members, one per line.
fn members(bed: &Bed, client: &str, node: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = bed.sky(
            client,
            &["probe", "members", "--sky", node, "--timeout", "0.5"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let members: Vec<String> = text
            .lines()
            .filter(|l| l.contains(":7700"))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_string())
            .collect();
        if members.len() >= 3 || Instant::now() > deadline {
            return members;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Without `--advertise` the ring holds the private addresses, which no
/// client outside can reach (the reproduction); with it, clients on the
/// public side register with and look each other up through the public
/// addresses, and a message goes through.
#[test]
fn a_sky_behind_one_to_one_nat_forms_with_advertised_addresses() {
    if !can_run(&[]) {
        return;
    }
    let (mut bed, _) = cloud("c0", false);
    bed.public_host("cli");
    let private = members(&bed, "cli", "203.0.113.11:7700");
    eprintln!("without --advertise: {private:?}");
    assert!(
        private.iter().all(|m| m.starts_with("198.51.100.")),
        "the ring holds what the nodes listen on: {private:?}"
    );
    drop(bed);

    let (mut bed, public) = cloud("c1", true);
    bed.public_host("a");
    bed.public_host("b");
    let listed = members(&bed, "a", "203.0.113.11:7700");
    eprintln!("with --advertise: {listed:?}");
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, public, "every node by its public address");
    // Alice online, bob sends: registrations with the owners and the
    // lookup all go to advertised addresses.
    let friends = Friends::new("cloud");
    let sky = public.join(",");
    let mut online = earth(&friends.dir.join("alice"), &["online", "--hold", "10"]);
    for p in &public {
        online.extend(["--sky".to_string(), p.clone()]);
    }
    let online: Vec<&str> = online.iter().map(String::as_str).collect();
    bed.spawn_sky("a", "alice", &online);
    bed.wait_for_log("alice", "registered ", Duration::from_secs(10));
    let mut send = earth(
        &friends.dir.join("bob"),
        &["send", "alice", "over the cloud"],
    );
    for p in &public {
        send.extend(["--sky".to_string(), p.clone()]);
    }
    let send: Vec<&str> = send.iter().map(String::as_str).collect();
    let out = bed.sky("b", &send);
    eprintln!("{sky}: {out:?}");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered to alice at 203.0.113."));
}
