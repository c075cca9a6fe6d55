//! The commands that read or change the state, run where the state is:
//! in this process when no client runs (edits under the state's lock), or
//! in the running client (see `online.rs`). Both print through an
//! [`Out`], so the answers read the same either way.

use std::process::ExitCode;
use std::time::Duration;

use sky_earth::client::{Config as EarthConfig, Event as EarthEvent, Failure};
use sky_earth::driver::{Driver, random_seed, unix_now};
use sky_earth::invite::Invite;
use sky_earth::ratchet::ChainKey;
use sky_earth::state::State;
use sky_earth::store::StateDir;
use sky_proto::time::UnixTime;
use sky_proto::wire::{self, Flags};

use super::control::{Out, Request};

/// A message `send` takes, at most.
pub(super) const MAX_TEXT: usize = 1000;

/// Runs an edit on the state in `store` (this process holds its lock).
pub(super) fn edit(store: &StateDir, request: &Request, out: &mut impl Out) -> u8 {
    let mut state = match store.load() {
        Ok(s) => s,
        Err(e) => return fail(out, e.to_string()),
    };
    let done = match request {
        Request::AddFriend { name, invite } => add_friend(&mut state, name, invite),
        Request::RenameFriend { from, to } => state
            .rename_friend(from, to)
            .map(|()| format!("renamed {from} to {to}"))
            .map_err(|e| e.to_string()),
        Request::RemoveFriend { name } => fresh_key().and_then(|key| {
            state
                .reset_address(name, key, unix_now())
                .map(|()| removed(name, state.pending_resets.len(), false))
                .map_err(|e| e.to_string())
        }),
        Request::AddDevice { file } => fresh_secret().and_then(|secret| {
            let device = state
                .add_device(secret, unix_now())
                .map_err(|e| e.to_string())?;
            write_device(&device, file)
        }),
        _ => unreachable!("only edits run here"),
    };
    match done {
        Ok(line) => match store.save(&state) {
            Ok(()) => {
                out.out(line);
                0
            }
            Err(e) => fail(out, e.to_string()),
        },
        Err(e) => fail(out, e),
    }
}

/// `add-friend`: decodes the invite and adds it to `state`.
pub(super) fn add_friend(state: &mut State, name: &str, invite: &str) -> Result<String, String> {
    let invite = Invite::decode(invite).map_err(|e| e.to_string())?;
    invite.check_at(unix_now()).map_err(|e| e.to_string())?;
    state
        .add_friend(name, invite)
        .map(|()| format!("added {name}"))
        .map_err(|e| e.to_string())
}

/// 32 fresh random bytes (a new device's long-term secret).
pub(super) fn fresh_secret() -> Result<[u8; 32], String> {
    random_seed().map_err(|e| format!("no randomness: {e}"))
}

/// Writes a new device's state to `file` (which must not exist); says
/// what to do with it.
pub(super) fn write_device(device: &State, file: &str) -> Result<String, String> {
    let path = std::path::Path::new(file);
    if path.exists() {
        return Err(format!("{file} exists: give a new file for the device"));
    }
    device.write_file(path).map_err(|e| e.to_string())?;
    Ok(format!(
        "added device {}: move {file} to it, run `sky earth import-device FILE` there, then delete it",
        device.identity.device()
    ))
}

/// A fresh chain key for an address reset.
pub(super) fn fresh_key() -> Result<ChainKey, String> {
    random_seed()
        .map(ChainKey::from_bytes)
        .map_err(|e| format!("no randomness: {e}"))
}

/// What `remove-friend` says.
pub(super) fn removed(name: &str, pending: usize, online: bool) -> String {
    let by = if online {
        "being sent now"
    } else {
        "sent by `sky earth online`"
    };
    format!("removed {name}; new address pending for {pending} friends ({by})")
}

/// Prints an error line and returns exit code 2.
pub(super) fn fail(out: &mut impl Out, msg: impl Into<String>) -> u8 {
    out.err(msg);
    2
}

/// `status`: the epoch, the own address, when it changes next, the
/// friends' current addresses, pending resets; `live` adds what a running
/// client knows.
pub(super) fn status(state: &State, now: UnixTime, live: &[String], out: &mut impl Out) {
    let mut id = state.identity.clone();
    let epoch = id.schedule.epoch_at(now);
    let address = id
        .chain
        .address_at(epoch)
        .map_or("-".into(), |a| a.to_hex());
    out.out(format!(
        "epoch {} (every {} h)",
        epoch.0,
        id.schedule.length.as_secs() / 3600
    ));
    out.out(format!("address {address}"));
    let next = id.schedule.start_of(sky_earth::ratchet::Epoch(epoch.0 + 1));
    out.out(format!(
        "next rotation in {} (at {})",
        human(next.saturating_duration_since(now)),
        utc(next)
    ));
    out.out(format!("public key {}", wire::to_hex(&id.public_key())));
    if !state.sky.is_empty() {
        out.out(format!("sky {}", state.sky.join(" ")));
    }
    for line in live {
        out.out(line.clone());
    }
    for (name, friend) in &state.friends.0 {
        let mut friend = friend.clone();
        let e = friend.schedule.epoch_at(now);
        let a = friend
            .chain
            .address_at(e)
            .map_or("-".into(), |a| a.to_hex());
        out.out(format!("friend {name} address {a}"));
    }
    for name in &state.pending_resets {
        out.out(format!("reset pending {name}"));
    }
}

/// "3 h 12 min", "45 min", "20 s".
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60) {
        (0, 0) => format!("{s} s"),
        (0, m) => format!("{m} min"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// `2026-11-30 01:33:20 UTC`.
fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        (rest % 3600) / 60,
        rest % 60
    )
}

/// What a lookup's answer prints, and its exit code.
pub(super) fn lookup_outcome(
    result: Result<(std::net::SocketAddr, Flags), Failure>,
    sky: &str,
    out: &mut impl Out,
) -> u8 {
    match result {
        Ok((endpoint, flags)) => {
            let metered = if flags.metered() { " metered" } else { "" };
            out.out(format!("online {endpoint}{metered}"));
            0
        }
        Err(Failure::Offline) => {
            out.out("offline");
            1
        }
        Err(why) => fail(out, format!("{sky}: {why}")),
    }
}

/// What a send's outcome prints, and its exit code.
pub(super) fn send_outcome(name: &str, event: &EarthEvent, out: &mut impl Out) -> Option<u8> {
    match event {
        EarthEvent::Delivered {
            peer,
            elapsed,
            sent,
            ..
        } => {
            out.out(format!(
                "delivered to {name} at {peer} in {:.1} ms ({sent} datagrams sent)",
                elapsed.as_secs_f64() * 1e3
            ));
            Some(0)
        }
        EarthEvent::Failed {
            why: Failure::Offline,
            ..
        } => {
            out.out("offline");
            Some(1)
        }
        EarthEvent::Failed {
            why: Failure::Refused,
            ..
        } => Some(fail(
            out,
            format!("{name} does not know you: they have not added your invite (or removed you)"),
        )),
        EarthEvent::Failed { why, .. } => Some(fail(out, format!("cannot reach {name}: {why}"))),
        _ => None,
    }
}

/// An earth core on its own socket for a one-shot command, bootstrapping
/// from `sky` (in order).
pub(super) fn driver(
    sky: &[String],
    state: State,
    configure: impl FnOnce(&mut EarthConfig),
) -> Result<Driver, String> {
    let mut bootstrap = Vec::with_capacity(sky.len());
    for addr in sky {
        let node =
            sky_node::probe::resolve(addr).map_err(|e| format!("cannot resolve {addr}: {e}"))?;
        bootstrap.push(node);
    }
    let mut config = EarthConfig::new(bootstrap);
    configure(&mut config);
    Driver::bind(config, state).map_err(|e| format!("cannot open a socket: {e}"))
}

/// How long a one-shot send waits to be registered before it calls.
const REGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `lookup` / `send` with no client running: a core of their own, on the
/// state as saved (read only).
pub(super) fn one_shot(state: State, request: &Request, sky: &[String], out: &mut impl Out) -> u8 {
    let (name, text, device) = match request {
        Request::Lookup { name, device, .. } => (name, None, *device),
        Request::Send {
            name, text, device, ..
        } => (name, Some(text), *device),
        _ => unreachable!("only lookups and sends run here"),
    };
    if !state.friends.0.contains_key(name) {
        return fail(out, format!("no friend named `{name}`"));
    }
    let mut driver = match driver(sky, state, |_| {}) {
        Ok(d) => d,
        Err(e) => return fail(out, e),
    };
    let sky_list = sky.join(", ");
    let now = unix_now();
    let stop = crate::cmd::stop_on_signals();
    if text.is_some() {
        // Registered while it runs, so that the friend can look back at us
        // with what its NAT needs (docs/NAT.md); unregistered at the end.
        // The send waits for the registration (at most a second or two).
        // A port mapping, if the router gives one, helps behind a NAT that
        // randomises ports.
        if let Err(e) = driver.map_port() {
            eprintln!("sky earth: no port mapping: {e}");
        }
        driver.earth.go_findable(now);
        let until = std::time::Instant::now() + REGISTER_WAIT;
        let waited = driver.run(Some(until), &stop, |_, event| match event {
            EarthEvent::Registered { .. } => std::ops::ControlFlow::Break(()),
            _ => std::ops::ControlFlow::Continue(()),
        });
        if let Err(e) = waited {
            return fail(out, e.to_string());
        }
    }
    let now = unix_now();
    let id = match (text, device) {
        (Some(text), None) => Some(driver.earth.send(now, name, text.as_bytes())),
        (Some(text), Some(d)) => Some(driver.earth.send_to_device(now, name, d, text.as_bytes())),
        (None, None) => {
            driver.earth.lookup(now, name);
            None
        }
        (None, Some(d)) => {
            driver.earth.lookup_device(now, name, d);
            None
        }
    };
    let mut outcome = None;
    let result = driver.run(None, &stop, |_, event| {
        let code = match (&event, id) {
            (EarthEvent::Lookup { result, .. }, None) => {
                Some(lookup_outcome(result.clone(), &sky_list, out))
            }
            (EarthEvent::Delivered { id: i, .. } | EarthEvent::Failed { id: i, .. }, Some(id))
                if *i == id =>
            {
                send_outcome(name, &event, out)
            }
            _ => None,
        };
        outcome = code;
        match code {
            Some(_) => std::ops::ControlFlow::Break(()),
            None => std::ops::ControlFlow::Continue(()),
        }
    });
    driver.earth.go_offline();
    driver.flush();
    match (result, outcome) {
        (Err(e), _) => fail(out, e.to_string()),
        (Ok(()), Some(code)) => code,
        (Ok(()), None) => fail(out, "interrupted"),
    }
}

/// One line on what the client knows of its NAT (never sent anywhere).
pub(super) fn nat_line(r: &sky_earth::client::NatReport) -> String {
    use sky_earth::client::{Filtering, Mapping};
    let mapping = match r.mapping {
        Mapping::Consistent => "consistent mapping",
        Mapping::Random => "port-randomising mapping",
        Mapping::Unknown => "mapping unknown",
    };
    let filtering = match r.filtering {
        Filtering::Open => "open filtering",
        Filtering::Restricted => "port-restricted filtering",
        Filtering::Unknown => "filtering unknown",
    };
    let mapped = match r.mapped {
        Some(m) => format!(", port mapping {m}"),
        None => String::new(),
    };
    format!("NAT: {mapping}, {filtering}{mapped}: {}", r.verdict())
}

/// An exit code of this module as the process's.
pub(super) fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}
