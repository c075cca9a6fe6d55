//! The earth SDK as an app developer first meets it: its example runs as
//! documented (`cargo run -p sky-earth --example two_friends -- ADDR`
//! against a running node), and the crate builds and tests on its own.

use std::process::Command;

use crate::cli::NodeProcess;

/// `cargo ARGS` in the workspace, as a developer would type it.
fn cargo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs")
}

#[test]
fn the_two_friends_example_delivers_a_message_through_a_running_node() {
    let node = NodeProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--gossip",
            "127.0.0.1:0",
            "--check",
            "0",
            "--metrics",
            "off",
        ],
        &[],
    );
    let addr = node.listen_addr();
    let out = cargo(&[
        "run",
        "--locked",
        "-q",
        "-p",
        "sky-earth",
        "--example",
        "two_friends",
        "--",
        &addr,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("alice: message from bob: hello alice"),
        "{stdout}"
    );
    assert!(stdout.contains("bob: delivered to alice"), "{stdout}");
}
