//! A real port-mapping gateway in the bed: Debian's `miniupnpd-nftables`
//! (UPnP-IGD, NAT-PMP and PCP) on a home router, and the RFC 5780 STUN
//! server (coturn) that miniupnpd needs to accept a reserved external
//! address such as 203.0.113.x.
//!
//! What miniupnpd 2.3.1 needs:
//! - its nftables chains, made by us (Debian's package lacks the
//!   `miniupnpd_functions.sh` its `nft_init.sh` sources): in `table inet
//!   filter` (its defaults for `upnp_table_name` and `upnp_nat_table_name`),
//!   the chains `miniupnpd` (jumped to from the forward hook),
//!   `prerouting_miniupnpd` and `postrouting_miniupnpd` (from the NAT
//!   prerouting and postrouting hooks); the router's masquerade follows the
//!   jump in the same postrouting chain;
//! - with an external address in a reserved range it disables port
//!   forwarding unless `ext_perform_stun=yes` finds the router unrestricted:
//!   four Binding requests to `ext_stun_host`, with change-IP / change-port
//!   (RFC 5780), must all be answered. Its own "stun test" rules go to the
//!   forward chain, not input, so the router's input firewall must let the
//!   STUN server's answers in (one rule, for the STUN server's two
//!   addresses and ports only);
//! - behind a carrier-grade NAT the answers from the other address are
//!   filtered by the CGN, so miniupnpd (rightly) reports "restrictive NAT"
//!   and refuses every mapping; without STUN it refuses the 100.64.x
//!   address outright ("Reserved / private IP address ... Port forwarding
//!   is impossible").

use std::time::Duration;

use super::bed::{Bed, Nat, Router};

/// The STUN server's two addresses on the public side, and its port (the
/// alternate port is the next one).
pub(crate) const STUN: [&str; 2] = ["203.0.113.250", "203.0.113.251"];
pub(crate) const STUN_PORT: u16 = 3478;

impl Bed {
    /// Starts coturn as an RFC 5780 STUN server on the public side, once
    /// per bed.
    pub(crate) fn stun_server(&mut self) {
        if !self.log("stun").is_empty() {
            return;
        }
        for ip in STUN {
            self.public_address(ip);
        }
        let pid = self.dir.join("turnserver.pid");
        let port = STUN_PORT.to_string();
        self.spawn(
            "pub",
            "stun",
            &[
                "turnserver",
                "-n",
                "--stun-only",
                "--listening-ip",
                STUN[0],
                "--listening-ip",
                STUN[1],
                "--listening-port",
                &port,
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--log-file",
                "stdout",
                "--simple-log",
                "--relay-threads",
                "1",
                "--pidfile",
                pid.to_str().unwrap(),
            ],
        );
        self.wait_for_log("stun", "Total General servers", Duration::from_secs(10));
    }

    /// Runs miniupnpd on each of these home routers (their rulesets
    /// replaced by ones with miniupnpd's chains) and waits until they serve:
    /// UPnP-IGD on the LAN, NAT-PMP and PCP on port 5351. Returns each one's
    /// verdict on port forwarding: `true` when its STUN check found the
    /// router unrestricted (miniupnpd maps ports only then).
    pub(crate) fn miniupnpd(&mut self, routers: &[&Router]) -> Vec<bool> {
        for router in routers {
            self.start_miniupnpd(router);
        }
        routers
            .iter()
            .map(|router| {
                let log = format!("miniupnpd-{}", router.name);
                // STUN takes up to 3 rounds of 3 s when answers are missing.
                self.wait_for_log(
                    &log,
                    "Listening for NAT-PMP/PCP traffic",
                    Duration::from_secs(30),
                );
                self.log(&log).contains("Port forwarding is now enabled")
            })
            .collect()
    }

    fn start_miniupnpd(&mut self, router: &Router) {
        let masquerade = match router.nat {
            Nat::Home => "masquerade",
            Nat::Symmetric => "masquerade random",
            Nat::Cone => panic!("a cone router forwards every port already"),
        };
        self.stun_server();
        let [s0, s1] = STUN;
        let (p0, p1) = (STUN_PORT, STUN_PORT + 1);
        // Only the LAN is masqueraded: the router's own traffic (miniupnpd's
        // STUN check) leaves from its own address and ports, as a real
        // router's does.
        let (lan, len) = router.lan;
        self.exec(&router.name, &["nft", "flush", "ruleset"]);
        self.nft(
            &router.name,
            &format!(
                "table inet filter {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }}
  chain miniupnpd {{
  }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
    oifname \"out\" ip saddr {lan}/{len} {masquerade}
  }}
  chain prerouting_miniupnpd {{
  }}
  chain postrouting_miniupnpd {{
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname \"out\" ip saddr {{ {s0}, {s1} }} udp sport {{ {p0}, {p1} }} accept
    iifname \"out\" ct state new drop
  }}
}}
"
            ),
        );
        let conf = format!(
            "ext_ifname=out
listening_ip=lan
http_port=0
enable_natpmp=yes
enable_upnp=yes
ext_perform_stun=yes
ext_stun_host={s0}
ext_stun_port={p0}
upnp_table_name=filter
upnp_nat_table_name=filter
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
secure_mode=yes
system_uptime=yes
notify_interval=60
clean_ruleset_interval=600
uuid=3a1f7c2e-5b1d-4c7e-9f00-0000000000{n:02x}
allow 1024-65535 {lan}/{len} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
            n = router.outer.octets()[3],
        );
        let path = self.dir.join(format!("miniupnpd-{}.conf", router.name));
        std::fs::write(&path, conf).unwrap();
        let pid = self.dir.join(format!("miniupnpd-{}.pid", router.name));
        let log = format!("miniupnpd-{}", router.name);
        self.spawn(
            &router.name,
            &log,
            &[
                "miniupnpd",
                "-d",
                "-f",
                path.to_str().unwrap(),
                "-P",
                pid.to_str().unwrap(),
            ],
        );
    }

    /// The rules miniupnpd has added on `router` (its three chains).
    pub(crate) fn upnp_rules(&self, router: &Router) -> String {
        ["miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"]
            .iter()
            .map(|chain| {
                let o = self.exec(
                    &router.name,
                    &["nft", "list", "chain", "inet", "filter", chain],
                );
                String::from_utf8_lossy(&o.stdout).into_owned()
            })
            .collect()
    }
}
