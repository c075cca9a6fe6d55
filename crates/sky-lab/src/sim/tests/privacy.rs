//! Tests of `privacy`.

use super::*;

/// Small enough for a debug build: 300 users for a week.
fn small() -> PrivacyArgs {
    PrivacyArgs {
        users: 300,
        ..PrivacyArgs::default()
    }
}

fn row(report: &Report, mode: Mode, adversary_nodes: u32) -> &Row {
    report
        .rows
        .iter()
        .find(|r| r.mode == mode && r.adversary_nodes == adversary_nodes)
        .expect("row present")
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let a = simulate(&small()).unwrap();
    assert_eq!(a, simulate(&small()).unwrap());
    assert_eq!(run(&small()).unwrap(), a.to_string());
    let other = simulate(&PrivacyArgs { seed: 2, ..small() }).unwrap();
    assert_ne!(a.rows, other.rows);
}

#[test]
fn dual_links_at_least_lookup_side_and_fresh_port_at_most() {
    let args = PrivacyArgs {
        users_per_ip: 1,
        adversary: 1.0,
        ..small()
    };
    let report = simulate(&args).unwrap();
    let nodes = args.nodes;
    let lookup = row(&report, Mode::LookupSide, nodes).linked;
    let dual = row(&report, Mode::Dual, nodes).linked;
    let fresh = row(&report, Mode::LookupSideFreshPort, nodes).linked;
    assert!(lookup > 0.0);
    assert!(dual >= lookup, "dual {dual} < lookup-side {lookup}");
    assert!(fresh <= lookup, "fresh port {fresh} > lookup-side {lookup}");
    // The overlap is what dual costs: users who come online during it.
    assert!(dual > lookup + 0.05, "dual {dual} vs lookup-side {lookup}");
}

#[test]
fn lookup_side_links_about_the_users_online_at_their_boundary() {
    let args = PrivacyArgs {
        users_per_ip: 1,
        adversary: 1.0,
        ..small()
    };
    let report = simulate(&args).unwrap();
    let lookup = row(&report, Mode::LookupSide, args.nodes);
    assert!(
        (lookup.linked - args.online).abs() < 0.08,
        "linked {} vs online {}",
        lookup.linked,
        args.online
    );
    assert!(lookup.mean_chain.unwrap() >= 2.0);
}

#[test]
fn no_adversary_links_nothing() {
    let report = simulate(&PrivacyArgs {
        adversary: 0.0,
        ..small()
    })
    .unwrap();
    for r in report.rows.iter().filter(|r| r.adversary_nodes == 0) {
        assert_eq!((r.seen_both, r.linked, r.certain), (0.0, 0.0, 0.0));
        assert_eq!(r.mean_chain, None);
    }
    assert_eq!(report.rows.len(), 2 * Mode::ALL.len());
}

#[test]
fn cover_traffic_never_raises_the_score() {
    for users_per_ip in [1, 4] {
        let args = PrivacyArgs {
            users_per_ip,
            ..small()
        };
        let report = simulate(&args).unwrap();
        for adversary in [10, args.nodes] {
            let fresh = row(&report, Mode::LookupSideFreshPort, adversary).linked;
            let cover = row(&report, Mode::Cover, adversary).linked;
            assert!(cover <= fresh, "cover {cover} > fresh port {fresh}");
        }
    }
}

#[test]
fn a_fresh_port_hides_among_the_household() {
    let report = simulate(&PrivacyArgs {
        adversary: 1.0,
        ..small()
    })
    .unwrap();
    let lookup = row(&report, Mode::LookupSide, 100).linked;
    let fresh = row(&report, Mode::LookupSideFreshPort, 100).linked;
    assert!(
        fresh < 0.9 * lookup,
        "fresh port {fresh} vs lookup-side {lookup}"
    );
}

#[test]
fn a_larger_adversary_sees_more() {
    let report = simulate(&small()).unwrap();
    for mode in Mode::ALL {
        let (some, all) = (row(&report, mode, 10), row(&report, mode, 100));
        assert!(some.seen_both < all.seen_both);
        assert!(some.linked <= all.linked);
    }
}

#[test]
fn owners_are_a_uniform_k_subset() {
    let p = Params::new(&small()).unwrap();
    let n = 100_000;
    let seen = (0..n).filter(|&a| p.observes(a, 10)).count() as f64 / n as f64;
    // 1 - C(90, 2) / C(100, 2) = 0.1909...
    assert!(
        (seen - (1.0 - 90.0 * 89.0 / (100.0 * 99.0))).abs() < 0.005,
        "{seen}"
    );
    assert!((0..1000).all(|a| p.observes(a, 100)));
    assert!((0..1000).all(|a| !p.observes(a, 0)));
}

#[test]
fn every_bad_argument_is_an_error_naming_its_flag() {
    let cases: [(&str, PrivacyArgs); 12] = [
        (
            "--users",
            PrivacyArgs {
                users: 0,
                ..small()
            },
        ),
        ("--days", PrivacyArgs { days: 0, ..small() }),
        (
            "--users-per-ip",
            PrivacyArgs {
                users_per_ip: 0,
                ..small()
            },
        ),
        (
            "--online",
            PrivacyArgs {
                online: 1.0,
                ..small()
            },
        ),
        (
            "--online",
            PrivacyArgs {
                online: f64::NAN,
                ..small()
            },
        ),
        (
            "--owners",
            PrivacyArgs {
                owners: 101,
                ..small()
            },
        ),
        (
            "--adversary",
            PrivacyArgs {
                adversary: 1.5,
                ..small()
            },
        ),
        (
            "--cover-interval",
            PrivacyArgs {
                cover_interval: 0.0,
                ..small()
            },
        ),
        (
            "--epoch-hours",
            PrivacyArgs {
                epoch_hours: 0.0,
                ..small()
            },
        ),
        (
            "--overlap-hours",
            PrivacyArgs {
                overlap_hours: 24.0,
                ..small()
            },
        ),
        (
            "--session-minutes",
            PrivacyArgs {
                session_minutes: -1.0,
                ..small()
            },
        ),
        (
            "--users",
            PrivacyArgs {
                users: 1_000_000,
                days: 3650,
                ..small()
            },
        ),
    ];
    for (flag, args) in cases {
        let err = simulate(&args).unwrap_err();
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

#[test]
fn command_line_defaults_are_the_default_args() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PrivacyArgs,
    }
    assert_eq!(Cli::parse_from(["sim"]).args, PrivacyArgs::default());
    let cli = Cli::parse_from(["sim", "--users", "5", "--overlap-hours", "0.5"]);
    assert_eq!((cli.args.users, cli.args.overlap_hours), (5, 0.5));
}

#[test]
fn the_report_is_a_markdown_table_with_a_row_per_mode_and_adversary() {
    let text = run(&small()).unwrap();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 2 + 2 * Mode::ALL.len(), "{text}"); // header, rule, rows
    assert!(
        rows.iter()
            .any(|l| l.contains("| dual | f = 1.00 (100/100) |"))
    );
    assert!(
        rows.iter()
            .any(|l| l.contains("| cover | f = 0.10 (10/100) |"))
    );
}

/// The table in docs/PRIVACY.md: `cargo test --release --lib sim --
/// --ignored --nocapture`.
#[test]
#[ignore = "the default run, for docs/PRIVACY.md (release build)"]
fn default_parameters_table() {
    println!("{}", run(&PrivacyArgs::default()).unwrap());
}

/// The variations docs/PRIVACY.md cites: one owner per address, and one
/// user per public IP.
#[test]
#[ignore = "variations of the default run, for docs/PRIVACY.md (release build)"]
fn variations_table() {
    for args in [
        PrivacyArgs {
            owners: 1,
            ..PrivacyArgs::default()
        },
        PrivacyArgs {
            users_per_ip: 1,
            ..PrivacyArgs::default()
        },
    ] {
        println!("{}", run(&args).unwrap());
    }
}
