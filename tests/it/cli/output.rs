//! What the `sky` binary prints: its logs (into a pipe, a file, a
//! terminal, as JSON) and the simulator's tables.

use std::process::{Command, Stdio};

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use super::{EPHEMERAL, SKY, assert_handles_sigterm, sky, stdout};

/// `sky sim privacy` prints its table (small, fast parameters) and refuses
/// a bad argument with exit 2 and the flag's name.
#[test]
fn sim_privacy_prints_a_row_per_mode_and_adversary() {
    let out = sky(&[
        "sim", "privacy", "--users", "200", "--days", "2", "--nodes", "20",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    for mode in ["lookup-side", "lookup-side-fresh-port", "dual", "cover"] {
        let rows = text
            .lines()
            .filter(|l| l.starts_with(&format!("| {mode} |")))
            .count();
        assert_eq!(rows, 2, "{mode}: {text}");
    }
    let bad = sky(&["sim", "privacy", "--owners", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--owners"));
}

/// `sky sim ring` reproduces the rows docs/DHT.md shows for the small sky
/// sizes (same seeds: each size's rings do not depend on the other sizes).
#[test]
fn sim_ring_reproduces_the_documented_rows() {
    let out = sky(&["sim", "ring", "--nodes", "10", "--nodes", "100"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DHT.md"))
        .expect("docs/DHT.md");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| 1") && l.contains('%'))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in rows {
        assert!(doc.contains(row), "docs/DHT.md lacks the row {row}");
    }
    let bad = sky(&["sim", "ring", "--replicas", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("replicas"));
}

/// Logs into a pipe or a file carry no colour codes (the tests' other
/// processes set NO_COLOR; this one does not).
#[test]
fn logs_into_a_pipe_carry_no_escape_codes() {
    let mut child = Command::new(SKY)
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--gossip",
            EPHEMERAL,
            "--check",
            "0",
        ])
        .args(["--metrics", "off", "--shards", "1"])
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("sky node ready")))
        .expect("a ready line")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!ready.contains('\u{1b}'), "{ready:?}");
    assert!(ready.contains(" INFO "), "{ready:?}");
}

/// docs/PRIVACY.md's table is the simulator's output as the code now runs
/// (its modes are what the client does: see the doc).
#[test]
fn the_privacy_table_is_what_the_simulator_prints() {
    let out = sky(&["sim", "privacy"]);
    assert!(out.status.success(), "{out:?}");
    let printed = stdout(&out);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PRIVACY.md"))
        .expect("docs/PRIVACY.md");
    let rows: Vec<&str> = printed.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(rows.len() >= 10, "{printed}");
    for row in rows {
        assert!(doc.contains(row), "docs/PRIVACY.md lacks the row {row}");
    }
}

/// Runs `sky node ARGS` (loopback, ephemeral ports, one shard, no
/// metrics) with stderr into a file until it is ready, stops it with
/// SIGTERM, and returns everything it logged.
fn node_log(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = std::env::temp_dir().join(format!("sky-log-{}-{name}.log", std::process::id()));
    let mut child = Command::new(SKY)
        .args(["node", "--listen", "127.0.0.1:0", "--gossip", EPHEMERAL])
        .args(["--check", "0", "--metrics", "off", "--shards", "1"])
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("SKY_LOG")
        .env_remove("SKY_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&path).unwrap())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&path)
        .unwrap()
        .contains("sky node ready")
    {
        if std::time::Instant::now() > end || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name}: never ready:\n{}",
                std::fs::read_to_string(&path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_handles_sigterm(child.id());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "{name}");
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    log
}

/// `--log-format json`, `SKY_LOG_FORMAT=json` and `log_format = "json"`
/// write one JSON object per line; text is the default and a flag beats
/// the environment; no escape code reaches a file in either format (this
/// process's NO_COLOR is removed: the file alone must keep them out).
#[test]
fn log_format_json_writes_one_object_per_line_and_files_get_no_escape_codes() {
    let dir = std::env::temp_dir().join(format!("sky-logfmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("json.toml");
    std::fs::write(&file, "log_format = \"json\"\n").unwrap();
    let file = file.to_str().unwrap();
    /// A name, flags, environment, and whether the log is JSON.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 5] = [
        ("default", &[], &[], false),
        ("flag", &["--log-format", "json"], &[], true),
        ("env", &[], &[("SKY_LOG_FORMAT", "json")], true),
        ("file", &["--config", file], &[], true),
        (
            "flag-over-env",
            &["--log-format", "text"],
            &[("SKY_LOG_FORMAT", "json")],
            false,
        ),
    ];
    for (name, args, env, json) in cases {
        let log = node_log(name, args, env);
        assert!(!log.contains('\u{1b}'), "{name}: an escape code:\n{log:?}");
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{name}:\n{log}");
        if !json {
            assert!(lines.iter().all(|l| !l.starts_with('{')), "{name}:\n{log}");
            assert!(
                log.contains(" INFO ") && log.contains("sky node stopped"),
                "{name}:\n{log}"
            );
            continue;
        }
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}"));
                assert!(v.is_object(), "{name}: not an object: {l}");
                v
            })
            .collect();
        let ready = events
            .iter()
            .find(|e| e["message"] == "sky node ready")
            .unwrap_or_else(|| panic!("{name}: no ready event:\n{log}"));
        assert_eq!(ready["level"], "INFO", "{ready}");
        assert!(
            ready["listen"]
                .as_str()
                .is_some_and(|l| l.starts_with("127.0.0.1:")),
            "{ready}"
        );
        assert!(ready["timestamp"].is_string(), "{ready}");
        assert!(
            events.iter().any(|e| e["message"] == "sky node stopped"),
            "{name}:\n{log}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A socket buffer larger than the kernel allows is not silently capped:
/// the node logs what it asked for and what it got.
#[test]
fn the_node_says_when_the_kernel_grants_smaller_socket_buffers() {
    let max = |key: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{key}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let limit = max("rmem_max").min(max("wmem_max"));
    let asked = 1usize << 30;
    if limit >= asked {
        eprintln!("WARNING: net.core.[rw]mem_max allow 1 GiB here; nothing to warn about");
        return;
    }
    let log = node_log("buffers", &["--socket-buffer", &asked.to_string()], &[]);
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("socket buffers"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warning.contains(&format!("asked={asked}")), "{warning}");
    assert!(warning.contains(&format!("granted={limit}")), "{warning}");
    assert!(warning.contains("60-sky.conf"), "{warning}");
    // Asked for no more than the kernel allows: no warning.
    let log = node_log("fits", &["--socket-buffer", &limit.to_string()], &[]);
    assert!(!log.contains("socket buffers"), "{log}");
}

/// On a terminal (a pseudo-terminal from util-linux `script`), text logs
/// are coloured unless NO_COLOR is set, and JSON logs never are.
#[test]
fn on_a_terminal_colour_only_without_no_color_and_never_in_json() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("WARNING: util-linux `script` not found; terminal colours untested");
        return;
    }
    let cases = [
        ("text", None, true),
        ("text", Some("1"), false),
        ("json", None, false),
    ];
    for (format, no_color, coloured) in cases {
        let node = format!(
            "'{SKY}' node --listen 127.0.0.1:0 --gossip {EPHEMERAL} --check 0 --metrics off \
             --shards 1 --log-format {format}"
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", &node, "/dev/null"])
            .env_remove("NO_COLOR")
            .env_remove("SKY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let mut script = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = script.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l.contains("sky node ready")) {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("{format} {no_color:?}: never ready: {seen:?}"),
            }
        }
        // Closing the terminal hangs the node up.
        let _ = script.kill();
        let _ = script.wait();
        let escapes = seen.iter().any(|l| l.contains('\u{1b}'));
        assert_eq!(
            escapes, coloured,
            "{format}, NO_COLOR {no_color:?}: {seen:?}"
        );
        if format == "json" {
            for line in &seen {
                let v: serde_json::Value = serde_json::from_str(line.trim_end_matches('\r'))
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
                assert!(v.is_object());
            }
        }
    }
}
