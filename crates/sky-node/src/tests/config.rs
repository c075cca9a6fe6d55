//! Tests of `config`.

use super::*;

#[test]
fn the_example_config_is_valid_and_matches_the_defaults() {
    let text = include_str!("../../../../deploy/sky.toml");
    let file: FileConfig = toml::from_str(text).expect("deploy/sky.toml parses");
    assert_eq!(file.resolve().unwrap(), Config::default());
}

#[test]
fn later_layers_win() {
    let file = FileConfig {
        listen: Some("0.0.0.0:1".into()),
        capacity: Some(5),
        ..Default::default()
    };
    let env = FileConfig {
        listen: Some("0.0.0.0:2".into()),
        ..Default::default()
    };
    let c = file.overlay(env).resolve().unwrap();
    assert_eq!(c.listen, "0.0.0.0:2".parse().unwrap());
    assert_eq!(c.capacity, 5);
}

#[test]
fn bad_values_say_which_field() {
    for (toml, field) in [
        ("listen = \"nope\"", "listen"),
        ("keepalive_secs = 0", "keepalive_secs"),
        ("capacity = 0", "capacity"),
        ("engine = \"fast\"", "engine"),
        ("typo = 1", "typo"),
        ("gossip = \"nope\"", "gossip"),
        ("seeds = [\"127.0.0.1:7701\", \"x\"]", "seeds"),
        ("replicas = 0", "replicas"),
        ("prefix_v4 = 33", "prefix_v4"),
        ("prefix_v6 = 129", "prefix_v6"),
        ("positions = 0", "positions"),
        ("handoff_grace_secs = 100000", "handoff_grace_secs"),
        ("socket_buffer = 1024", "socket_buffer"),
        ("socket_buffer = 2147483648", "socket_buffer"),
        ("log_format = \"xml\"", "log_format"),
        ("closed_sky = [\"abc\"]", "closed_sky"),
        (
            "listen = \"127.0.0.1:7700\"\ngossip = \"127.0.0.1:7700\"",
            "gossip",
        ),
    ] {
        let err = toml::from_str::<FileConfig>(toml)
            .map_err(|e| e.to_string())
            .and_then(|f| f.resolve().map_err(|e| e.0))
            .unwrap_err();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn gossip_defaults_to_the_listen_ip_on_7701_or_ephemeral() {
    let resolve = |toml: &str| {
        toml::from_str::<FileConfig>(toml)
            .unwrap()
            .resolve()
            .unwrap()
    };
    let c = resolve("listen = \"0.0.0.0:7700\"");
    assert_eq!(c.gossip, "0.0.0.0:7701".parse().unwrap());
    let c = resolve("listen = \"[::1]:0\"");
    assert_eq!(c.gossip, "[::1]:0".parse().unwrap(), "tests: ephemeral");
    let c = resolve("gossip = \"10.0.0.1:9000\"\nseeds = [\"10.0.0.2:7701\"]");
    assert_eq!(c.gossip, "10.0.0.1:9000".parse().unwrap());
    assert_eq!(c.seeds, vec!["10.0.0.2:7701".parse().unwrap()]);
}

#[test]
fn handoff_grace_defaults_to_two_keepalives() {
    let file = FileConfig {
        keepalive_secs: Some(10),
        ..Default::default()
    };
    assert_eq!(
        file.resolve().unwrap().handoff_grace,
        Duration::from_secs(20)
    );
    let file = FileConfig {
        keepalive_secs: Some(10),
        handoff_grace_secs: Some(3),
        ..Default::default()
    };
    assert_eq!(
        file.resolve().unwrap().handoff_grace,
        Duration::from_secs(3)
    );
}

#[test]
fn shards_default_to_cores_minus_one() {
    let c = Config::default();
    assert_eq!(c.shard_count(1), 1);
    assert_eq!(c.shard_count(2), 1);
    assert_eq!(c.shard_count(16), 15);
}

#[test]
fn advertise_takes_an_ip_or_an_ip_and_port_and_refuses_what_cannot_be_reached() {
    let with = |a: &str| {
        FileConfig {
            listen: Some("10.0.0.5:7800".into()),
            advertise: Some(a.into()),
            ..Default::default()
        }
        .resolve()
    };
    assert_eq!(
        with("203.0.113.9").unwrap().advertise,
        Some("203.0.113.9:7800".parse().unwrap()),
        "the listen port by default"
    );
    assert_eq!(
        with("203.0.113.9:9000").unwrap().advertise,
        Some("203.0.113.9:9000".parse().unwrap())
    );
    assert_eq!(
        with("2001:db8::9").unwrap().advertise,
        Some("[2001:db8::9]:7800".parse().unwrap())
    );
    assert_eq!(
        with("[2001:db8::9]:9000").unwrap().advertise,
        Some("[2001:db8::9]:9000".parse().unwrap())
    );
    for bad in ["0.0.0.0", "203.0.113.9:0", "example", "[::]"] {
        let e = with(bad).unwrap_err().to_string();
        assert!(e.starts_with("advertise:"), "{bad}: {e}");
    }
    let c = with("203.0.113.9").unwrap();
    let bound = "10.0.0.5:7800".parse().unwrap();
    assert_eq!(c.service(bound), "203.0.113.9:7800".parse().unwrap());
    assert_eq!(
        c.gossip_advertised("10.0.0.5:7701".parse().unwrap()),
        "203.0.113.9:7701".parse().unwrap()
    );
    assert_eq!(Config::default().service(bound), bound);
}

#[test]
fn gossip_and_check_ports_follow_the_listen_port() {
    let at = |listen: &str| {
        FileConfig {
            listen: Some(listen.into()),
            ..Default::default()
        }
        .resolve()
        .unwrap()
    };
    let c = at("127.0.0.1:7700");
    assert_eq!(c.gossip, "127.0.0.1:7701".parse().unwrap());
    assert_eq!(c.check, Some(7702));
    let c = at("127.0.0.1:7800");
    assert_eq!(c.gossip, "127.0.0.1:7801".parse().unwrap());
    assert_eq!(c.check, Some(7802));
    let c = at("127.0.0.1:0");
    assert_eq!((c.gossip.port(), c.check), (0, Some(0)));
    // No room above: ephemeral rather than a wrapped port.
    let c = at("127.0.0.1:65534");
    assert_eq!((c.gossip.port(), c.check), (65535, Some(0)));
}

#[test]
fn log_format_is_text_unless_json_is_asked_for() {
    let resolve = |toml: &str| {
        toml::from_str::<FileConfig>(toml)
            .unwrap()
            .resolve()
            .unwrap()
    };
    assert_eq!(resolve("").log_format, LogFormat::Text);
    assert_eq!(resolve("log_format = \"json\"").log_format, LogFormat::Json);
    assert_eq!("json".parse(), Ok(LogFormat::Json));
    assert_eq!("text".parse(), Ok(LogFormat::Text));
    assert!(
        "JSON"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json")
    );
}

/// The node asks for the socket buffer the shipped sysctl file allows, no
/// more (the kernel would cap it) and no less (the sysctl would be wasted).
#[test]
fn the_default_socket_buffer_is_what_the_sysctl_file_allows() {
    let sysctl = include_str!("../../../../deploy/sysctl.d/60-sky.conf");
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        let value: usize = sysctl
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} in 60-sky.conf"))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(value, DEFAULT_SOCKET_BUFFER, "{key}");
    }
    assert_eq!(Config::default().socket_buffer, DEFAULT_SOCKET_BUFFER);
    let file = FileConfig {
        socket_buffer: Some(1 << 20),
        ..Default::default()
    };
    assert_eq!(file.resolve().unwrap().socket_buffer, 1 << 20);
}

#[test]
fn a_closed_sky_is_a_list_of_hex_keys() {
    let key = "a8e4daf0b4a690eb98ad96e85fdd519fc6fe51edae904c5f385cb1b96e3faaaf";
    let c = toml::from_str::<FileConfig>(&format!("closed_sky = [\"{key}\"]"))
        .unwrap()
        .resolve()
        .unwrap();
    let keys = c.closed_sky.expect("a closed sky");
    assert_eq!(keys.len(), 1);
    assert!(keys.contains(&sky_proto::wire::from_hex::<32>(key).unwrap()));
    assert_eq!(Config::default().closed_sky, None, "open by default");
}
