//! `sky earth`: the earth client from the shell — identity, invites,
//! friends, staying online, lookups, sending, address reset.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use sky_earth::client::{Config as EarthConfig, Event as EarthEvent, Overlap};
use sky_earth::driver::Driver;
use sky_node::probe;
use sky_proto::wire;

#[derive(Args)]
pub(crate) struct EarthArgs {
    /// State directory (default: $XDG_DATA_HOME/sky or ~/.local/share/sky),
    /// created owner-only.
    #[arg(long, global = true, value_name = "DIR", env = "SKY_EARTH_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: EarthCommand,
}

#[derive(Subcommand)]
pub(crate) enum EarthCommand {
    /// Create a new identity (refuses to overwrite one).
    Init {
        /// Epoch length R, in hours.
        #[arg(long, default_value_t = 24)]
        epoch_hours: u64,
    },
    /// Print an invite for a friend (it carries this epoch's chain key).
    Invite,
    /// Add a friend from the invite they gave you.
    AddFriend { name: String, invite: String },
    /// Show the identity, the current address and epoch, and the friends.
    Status,
    /// Stay registered under the current address (moving to the next at
    /// each epoch), print the observed endpoint and every introduction.
    Online {
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers.
        #[arg(long, value_name = "HOST:PORT", required = true)]
        sky: Vec<String>,
        /// Flag the registration as metered.
        #[arg(long)]
        metered: bool,
        /// Stop after this many seconds (default: on SIGINT/SIGTERM).
        #[arg(long)]
        hold: Option<u64>,
        /// Seconds between attempts to send a pending address reset.
        #[arg(long, default_value_t = 60)]
        reset_retry: u64,
        /// Also keep the previous epoch's address registered during the
        /// first hour of an epoch (linkable by the sky: docs/PRIVACY.md).
        #[arg(long)]
        dual: bool,
        /// Cover traffic: random registrations, on average every this many
        /// minutes.
        #[arg(long, value_name = "MINUTES")]
        cover: Option<u64>,
    },
    /// Remove a friend and reset the address: a fresh chain key, sent to
    /// every remaining friend (by `online`) until each acknowledges it.
    RemoveFriend { name: String },
    /// Connect to a friend (lookup, hole punching, handshake) and deliver
    /// one message; prints the round trip. The friend must be `online`.
    Send {
        name: String,
        text: String,
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers.
        #[arg(long, value_name = "HOST:PORT", required = true)]
        sky: Vec<String>,
    },
    /// Look a friend up: `online <ip:port>` (exit 0) or `offline` (exit 1).
    Lookup {
        name: String,
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers.
        #[arg(long, value_name = "HOST:PORT", required = true)]
        sky: Vec<String>,
    },
}

fn earth_fail(msg: String) -> ExitCode {
    eprintln!("sky earth: {msg}");
    ExitCode::from(2)
}

/// An earth core on its own socket, bootstrapping from the sky nodes at
/// `sky_addrs` (in order).
fn earth_driver(
    sky_addrs: &[String],
    state: sky_earth::state::State,
    configure: impl FnOnce(&mut EarthConfig),
) -> Result<Driver, ExitCode> {
    let mut bootstrap = Vec::with_capacity(sky_addrs.len());
    for addr in sky_addrs {
        let node =
            probe::resolve(addr).map_err(|e| earth_fail(format!("cannot resolve {addr}: {e}")))?;
        bootstrap.push(node);
    }
    let mut config = EarthConfig::new(bootstrap);
    configure(&mut config);
    Driver::bind(config, state).map_err(|e| earth_fail(format!("cannot open a socket: {e}")))
}

/// `sky earth online`: stays registered (moving to each new epoch's
/// address), prints the observed endpoint, introductions and messages,
/// answers handshakes and reset notices, and sends pending resets.
fn earth_online(
    state: sky_earth::state::State,
    dir: &std::path::Path,
    sky_addrs: &[String],
    configure: impl FnOnce(&mut EarthConfig),
    hold: Option<Duration>,
) -> ExitCode {
    let sky_list = sky_addrs.join(", ");
    let mut driver = match earth_driver(sky_addrs, state, configure) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let stop = super::stop_on_signals();
    driver.earth.go_online(earth_now());
    // Lines printed once the state they report is on disk.
    let mut after_save: Vec<String> = Vec::new();
    let result = driver.run(hold.map(|h| Instant::now() + h), &stop, |earth, event| {
        match event {
            EarthEvent::Registered { address, observed } => {
                println!("address {}", address.to_hex());
                println!("registered {observed}");
            }
            EarthEvent::SkySilent => eprintln!("sky earth: no answer from {sky_list}; retrying"),
            EarthEvent::Sky { version, nodes } => {
                eprintln!("sky earth: the sky has {nodes} nodes (ring version {version:08x})")
            }
            EarthEvent::Introduced {
                friend,
                caller,
                endpoint,
            } => println!(
                "introduced {} {endpoint}",
                friend.unwrap_or_else(|| caller.to_hex())
            ),
            EarthEvent::ForgedIntroduction => {
                eprintln!("sky earth: rejected a forged introduction")
            }
            EarthEvent::HandshakeRefused { from, error } => {
                eprintln!("sky earth: refused a handshake from {from}: {error}")
            }
            EarthEvent::Message { friend, payload } => {
                println!("message {friend} {}", String::from_utf8_lossy(&payload))
            }
            EarthEvent::ResetAdopted { friend } => after_save.push(format!("reset {friend}")),
            EarthEvent::ResetAcknowledged { friend } => {
                after_save.push(format!("reset acknowledged by {friend}"))
            }
            EarthEvent::SaveState => match earth.state().save(dir) {
                Ok(()) => {
                    earth.saved();
                    for line in after_save.drain(..) {
                        println!("{line}");
                    }
                }
                // Not acknowledged: the friend sends it again.
                Err(e) => eprintln!("sky earth: cannot save the state: {e}"),
            },
            EarthEvent::Failed { friend, why, .. } => {
                eprintln!("sky earth: cannot reach {friend}: {why}")
            }
            EarthEvent::Connected { .. }
            | EarthEvent::Delivered { .. }
            | EarthEvent::Lookup { .. } => {}
        }
        let _ = std::io::stdout().flush();
        std::ops::ControlFlow::Continue(())
    });
    driver.earth.go_offline();
    driver.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => earth_fail(e.to_string()),
    }
}

fn earth_now() -> sky_proto::time::UnixTime {
    sky_earth::driver::unix_now()
}

/// `sky earth send`: connects (lookup, punching, handshake) and delivers
/// one message; bounded by the core's time limit.
fn earth_send(
    state: sky_earth::state::State,
    name: &str,
    text: &str,
    sky_addrs: &[String],
) -> ExitCode {
    if text.len() > 1000 {
        return earth_fail("a message is at most 1000 bytes".into());
    }
    if !state.friends.0.contains_key(name) {
        return earth_fail(format!("no friend named `{name}`"));
    }
    let mut driver = match earth_driver(sky_addrs, state, |_| {}) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let id = driver.earth.send(earth_now(), name, text.as_bytes());
    let mut outcome = None;
    let stop = super::stop_on_signals();
    let result = driver.run(None, &stop, |_, event| match event {
        EarthEvent::Delivered {
            id: i,
            peer,
            elapsed,
            sent,
            ..
        } if i == id => {
            println!(
                "delivered to {name} at {peer} in {:.1} ms ({sent} datagrams sent)",
                elapsed.as_secs_f64() * 1e3
            );
            outcome = Some(ExitCode::SUCCESS);
            std::ops::ControlFlow::Break(())
        }
        EarthEvent::Failed { id: i, why, .. } if i == id => {
            outcome = Some(match why {
                sky_earth::client::Failure::Offline => {
                    println!("offline");
                    ExitCode::from(1)
                }
                why => earth_fail(format!("cannot reach {name}: {why}")),
            });
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    });
    earth_outcome(result, outcome)
}

/// The exit of a one-shot earth command: its outcome, or why the driver
/// stopped without one.
fn earth_outcome(result: std::io::Result<()>, outcome: Option<ExitCode>) -> ExitCode {
    match (result, outcome) {
        (Err(e), _) => earth_fail(e.to_string()),
        (Ok(()), Some(code)) => code,
        (Ok(()), None) => earth_fail("interrupted".into()),
    }
}

/// `sky earth lookup`: under each address the friend may have now (SPEC §2:
/// the neighbouring epoch too, within H of a boundary).
fn earth_lookup(state: sky_earth::state::State, name: &str, sky_addrs: &[String]) -> ExitCode {
    if !state.friends.0.contains_key(name) {
        return earth_fail(format!("no friend named `{name}`"));
    }
    let mut driver = match earth_driver(sky_addrs, state, |_| {}) {
        Ok(d) => d,
        Err(code) => return code,
    };
    driver.earth.lookup(earth_now(), name);
    let mut outcome = None;
    let stop = super::stop_on_signals();
    let result = driver.run(None, &stop, |_, event| match event {
        EarthEvent::Lookup { result, .. } => {
            outcome = Some(match result {
                Ok((endpoint, flags)) => {
                    let metered = if flags.metered() { " metered" } else { "" };
                    println!("online {endpoint}{metered}");
                    ExitCode::SUCCESS
                }
                Err(sky_earth::client::Failure::Offline) => {
                    println!("offline");
                    ExitCode::from(1)
                }
                Err(why) => earth_fail(format!("{}: {why}", sky_addrs.join(", "))),
            });
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    });
    earth_outcome(result, outcome)
}

pub(crate) fn main(args: EarthArgs) -> ExitCode {
    use sky_earth::{identity::Friends, identity::Identity, invite::Invite, state::State};
    let fail = |msg: String| {
        eprintln!("sky earth: {msg}");
        ExitCode::from(2)
    };
    let dir = match args.state.or_else(|| {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .map(|d| d.join("sky"))
    }) {
        Some(d) => d,
        None => return fail("no --state DIR and no HOME to put the state in".into()),
    };
    let now = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(t) => sky_proto::time::UnixTime::from_duration(t),
        Err(_) => return fail("the system clock is before 1970".into()),
    };
    if let EarthCommand::Init { epoch_hours } = args.command {
        if !(1..=24 * 365).contains(&epoch_hours) {
            return fail("--epoch-hours must be between 1 and 8760".into());
        }
        match State::load(&dir) {
            Err(sky_earth::state::StateError::Missing(_)) => {}
            Ok(_) => return fail(format!("{} already holds an identity", dir.display())),
            Err(e) => return fail(e.to_string()),
        }
        let mut random = [0u8; 64];
        for half in random.chunks_mut(32) {
            match sky_earth::driver::random_seed() {
                Ok(r) => half.copy_from_slice(&r),
                Err(e) => return fail(format!("no randomness: {e}")),
            }
        }
        let length = Duration::from_secs(epoch_hours * 3600);
        let state = State {
            identity: Identity::generate(random, length, now),
            friends: Friends::default(),
            pending_resets: Default::default(),
        };
        if let Err(e) = state.save(&dir) {
            return fail(e.to_string());
        }
        println!("initialized {}", dir.display());
        return ExitCode::SUCCESS;
    }
    let mut state = match State::load(&dir) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    match args.command {
        EarthCommand::Init { .. } => unreachable!("handled above"),
        EarthCommand::Invite => println!("{}", state.identity.invite(now).encode()),
        EarthCommand::AddFriend { name, invite } => {
            let invite = match Invite::decode(&invite) {
                Ok(i) => i,
                Err(e) => return fail(e.to_string()),
            };
            if let Err(e) = state.friends.add(&name, invite.into()) {
                return fail(e.to_string());
            }
            if let Err(e) = state.save(&dir) {
                return fail(e.to_string());
            }
            println!("added {name}");
        }
        EarthCommand::Online {
            sky,
            metered,
            hold,
            reset_retry,
            dual,
            cover,
        } => {
            let hold = hold.map(Duration::from_secs);
            let configure = |c: &mut EarthConfig| {
                c.metered = metered;
                c.reset_retry = Duration::from_secs(reset_retry.max(1));
                c.overlap = if dual {
                    Overlap::Dual
                } else {
                    Overlap::LookupSide
                };
                c.cover = cover.map(|m| Duration::from_secs(m.max(1) * 60));
            };
            return earth_online(state, &dir, &sky, configure, hold);
        }
        EarthCommand::RemoveFriend { name } => {
            let key = match sky_earth::driver::random_seed() {
                Ok(k) => sky_earth::ratchet::ChainKey::from_bytes(k),
                Err(e) => return fail(format!("no randomness: {e}")),
            };
            if let Err(e) = state.reset_address(&name, key, now) {
                return fail(e.to_string());
            }
            if let Err(e) = state.save(&dir) {
                return fail(e.to_string());
            }
            println!(
                "removed {name}; new address pending for {} friends (sent by `sky earth online`)",
                state.pending_resets.len()
            );
        }
        EarthCommand::Lookup { name, sky } => return earth_lookup(state, &name, &sky),
        EarthCommand::Send { name, text, sky } => {
            return earth_send(state, &name, &text, &sky);
        }
        EarthCommand::Status => {
            let id = &mut state.identity;
            let epoch = id.schedule.epoch_at(now);
            let address = id
                .chain
                .address_at(epoch)
                .map_or("-".into(), |a| a.to_hex());
            println!(
                "epoch {} (every {} h)",
                epoch.0,
                id.schedule.length.as_secs() / 3600
            );
            println!("address {address}");
            println!("public key {}", wire::to_hex(&id.public_key()));
            for (name, friend) in &mut state.friends.0 {
                let e = friend.schedule.epoch_at(now);
                let a = friend
                    .chain
                    .address_at(e)
                    .map_or("-".into(), |a| a.to_hex());
                println!("friend {name} address {a}");
            }
            for name in &state.pending_resets {
                println!("reset pending {name}");
            }
        }
    }
    ExitCode::SUCCESS
}
