//! `sky earth`: the earth client from the shell — identity, invites,
//! friends, staying online, lookups, sending, address reset.
//!
//! One process owns a user's state at a time. While `sky earth online`
//! runs it is that process: the other commands hand it their request
//! through its control socket (`control.rs`) and it applies them to the
//! live client (`online.rs`). When none runs, edits take the state's lock
//! and change the file themselves, and lookups and sends run a client of
//! their own on the state as saved (`commands.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use sky_earth::driver::{random_seed, unix_now};
use sky_earth::identity::{Friends, Identity};
use sky_earth::state::{State, StateError};
use sky_earth::store::{StateDir, StoreError};

mod commands;
mod control;
mod netcheck;
mod online;

use control::{CallError, Out, Request, Terminal};

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
    /// Add a friend from the invite they gave you (at once, when `online`
    /// runs).
    AddFriend { name: String, invite: String },
    /// Give a friend another name.
    RenameFriend { name: String, new_name: String },
    /// Show the identity, the current address and epoch, when it changes
    /// next, and the friends.
    Status,
    /// Stay registered under the current address (moving to the next at
    /// each epoch), print the observed endpoint and every introduction.
    /// While it runs, it owns the state: the other commands go through it.
    Online {
        /// A sky node to bootstrap from, HOST:PORT; repeat it to give
        /// more, tried in order until one answers. Remembered in the
        /// state: later commands need not repeat it.
        #[arg(long, value_name = "HOST:PORT")]
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
        /// Do not ask the router for a port mapping (UPnP-IGD, NAT-PMP,
        /// PCP); by default one is asked for, renewed, and deleted on exit.
        #[arg(long)]
        no_port_mapping: bool,
    },
    /// Remove a friend and reset the address: a fresh chain key, sent to
    /// every remaining friend until each acknowledges it (at once when
    /// `online` runs; by the next `online` otherwise).
    RemoveFriend { name: String },
    /// Add a device: the new device's state goes to FILE (owner-only; it
    /// holds the chain key — move it to the device, then delete it), and
    /// every friend is sent the new list of devices.
    AddDevice { file: PathBuf },
    /// Start this device from the FILE another device's `add-device` wrote.
    ImportDevice { file: PathBuf },
    /// Connect to a friend (lookup, hole punching, handshake) and deliver
    /// one message; prints the round trip. The friend must be `online`.
    Send {
        name: String,
        text: String,
        /// Their device to reach (0 is their first; default: any).
        #[arg(long)]
        device: Option<u8>,
        /// A sky node to bootstrap from, HOST:PORT (default: the list
        /// `online` was last given); repeat it to give more.
        #[arg(long, value_name = "HOST:PORT")]
        sky: Vec<String>,
    },
    /// Measure the NAT in front of this machine — how it maps and filters,
    /// whether the router gives a port mapping — and say which friends can
    /// reach it directly. Uses no identity and registers nothing.
    Netcheck {
        /// A sky node to check against, HOST:PORT (default: the list
        /// `online` was last given).
        #[arg(long, value_name = "HOST:PORT")]
        sky: Vec<String>,
        /// Do not ask the router for a port mapping.
        #[arg(long)]
        no_port_mapping: bool,
    },
    /// Look a friend up: `online <ip:port>` (exit 0) or `offline` (exit 1).
    Lookup {
        name: String,
        /// Their device to look up (0 is their first; default: any).
        #[arg(long)]
        device: Option<u8>,
        /// A sky node to bootstrap from, HOST:PORT (default: the list
        /// `online` was last given); repeat it to give more.
        #[arg(long, value_name = "HOST:PORT")]
        sky: Vec<String>,
    },
}

/// How long a command waits for the state's owner (a client starting or
/// stopping, or another edit) before it gives up.
const OWNER_WAIT: Duration = Duration::from_secs(5);

/// Prints a line on stdout; a closed stdout (`| head`) is not an error.
pub(super) fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) fn main(args: EarthArgs) -> ExitCode {
    let dir = match args.state.or_else(|| {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .map(|d| d.join("sky"))
    }) {
        Some(d) => d,
        None => return fail("no --state DIR and no HOME to put the state in"),
    };
    let request = match args.command {
        EarthCommand::Init { epoch_hours } => return init(&dir, epoch_hours),
        EarthCommand::Online {
            sky,
            metered,
            hold,
            reset_retry,
            dual,
            cover,
            no_port_mapping,
        } => {
            let options = online::Options {
                port_mapping: !no_port_mapping,
                sky,
                metered,
                hold: hold.map(Duration::from_secs),
                reset_retry: Duration::from_secs(reset_retry.max(1)),
                dual,
                cover: cover.map(|m| Duration::from_secs(m.max(1) * 60)),
            };
            return commands::exit(online::run(&dir, options));
        }
        EarthCommand::Netcheck {
            sky,
            no_port_mapping,
        } => {
            return commands::exit(netcheck::run(&dir, &sky, !no_port_mapping, &mut Terminal));
        }
        EarthCommand::Invite => Request::Invite,
        EarthCommand::Status => Request::Status,
        EarthCommand::AddFriend { name, invite } => Request::AddFriend { name, invite },
        EarthCommand::RenameFriend { name, new_name } => Request::RenameFriend {
            from: name,
            to: new_name,
        },
        EarthCommand::RemoveFriend { name } => Request::RemoveFriend { name },
        EarthCommand::ImportDevice { file } => return import_device(&dir, &file),
        EarthCommand::AddDevice { file } => match std::path::absolute(&file) {
            Ok(file) => Request::AddDevice {
                file: file.to_string_lossy().into_owned(),
            },
            Err(e) => return fail(format!("{}: {e}", file.display())),
        },
        EarthCommand::Lookup { name, device, sky } => Request::Lookup { name, device, sky },
        EarthCommand::Send {
            name,
            text,
            device,
            sky,
        } => Request::Send {
            name,
            text,
            device,
            sky,
        },
    };
    commands::exit(route(&dir, &request, &mut Terminal))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("sky earth: {msg}");
    ExitCode::from(2)
}

/// Runs `request` where the state is: in the running client if there is
/// one, else here (edits under the state's lock).
fn route(dir: &Path, request: &Request, out: &mut impl Out) -> u8 {
    let deadline = Instant::now() + OWNER_WAIT;
    loop {
        match control::call(dir, request, out) {
            Ok(code) => return code,
            Err(CallError::NoServer) => {}
            Err(CallError::Io(e)) => {
                return commands::fail(out, format!("the running client: {e}"));
            }
        }
        if !request.edits() {
            return read_only(dir, request, out);
        }
        match StateDir::open(dir) {
            Ok(store) => return commands::edit(&store, request, out),
            // Another edit, or a client starting or stopping: wait for it.
            Err(StoreError::Busy { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return commands::fail(out, e.to_string()),
        }
    }
}

/// Requests that only read the state, with no client running.
fn read_only(dir: &Path, request: &Request, out: &mut impl Out) -> u8 {
    let state = match State::load(dir) {
        Ok(s) => s,
        Err(e) => return commands::fail(out, e.to_string()),
    };
    let now = unix_now();
    match request {
        Request::Invite => {
            out.out(state.identity.clone().invite(now).encode());
            0
        }
        Request::Status => {
            commands::status(&state, now, &[], out);
            0
        }
        Request::Lookup { sky, .. } | Request::Send { sky, .. } => {
            let sky = if sky.is_empty() {
                state.sky.clone()
            } else {
                sky.clone()
            };
            if sky.is_empty() {
                return commands::fail(
                    out,
                    "no sky node to bootstrap from: give --sky HOST:PORT (once `online` has been given one, it is remembered)",
                );
            }
            commands::one_shot(state, request, &sky, out)
        }
        _ => unreachable!("edits are routed elsewhere"),
    }
}

/// `import-device`: this device starts from the state another device's
/// `add-device` wrote; never over an identity.
fn import_device(dir: &Path, file: &Path) -> ExitCode {
    let state = match State::read_file(file) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let store = match StateDir::open(dir) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match store.load() {
        Err(StateError::Missing(_)) => {}
        Ok(_) => return fail(format!("{} already holds an identity", dir.display())),
        Err(e) => return fail(e),
    }
    if let Err(e) = store.save(&state) {
        return fail(e);
    }
    print_line(&format!(
        "imported device {} of {} into {}",
        state.identity.device(),
        state.identity.devices().len(),
        dir.display()
    ));
    ExitCode::SUCCESS
}

/// `init`: a new identity, under the state's lock; never over another.
fn init(dir: &Path, epoch_hours: u64) -> ExitCode {
    if !(1..=24 * 365).contains(&epoch_hours) {
        return fail("--epoch-hours must be between 1 and 8760");
    }
    let store = match StateDir::open(dir) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match store.load() {
        Err(StateError::Missing(_)) => {}
        Ok(_) => return fail(format!("{} already holds an identity", dir.display())),
        Err(e) => return fail(e),
    }
    let mut random = [0u8; 64];
    for half in random.chunks_mut(32) {
        match random_seed() {
            Ok(r) => half.copy_from_slice(&r),
            Err(e) => return fail(format!("no randomness: {e}")),
        }
    }
    let length = Duration::from_secs(epoch_hours * 3600);
    let state = State::new(
        Identity::generate(random, length, unix_now()),
        Friends::default(),
    );
    if let Err(e) = store.save(&state) {
        return fail(e);
    }
    print_line(&format!("initialized {}", dir.display()));
    ExitCode::SUCCESS
}
