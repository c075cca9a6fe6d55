//! `sky earth online`: the running client, and the one owner of the state
//! while it runs. It holds the state directory's lock, serves the control
//! socket, applies friends added or removed at once to the live core, and
//! saves every change itself — so no other process ever writes over it.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use sky_earth::client::{Config as EarthConfig, Earth, Event as EarthEvent, Overlap};
use sky_earth::driver::{App, unix_now};
use sky_earth::store::{StateDir, StoreError};

use super::commands::{self, MAX_TEXT, fail};
use super::control::{Job, Line, Out, Reply, Request, Server, Terminal};

/// How `online` runs (its flags).
pub(super) struct Options {
    pub(super) sky: Vec<String>,
    pub(super) metered: bool,
    pub(super) hold: Option<Duration>,
    pub(super) reset_retry: Duration,
    pub(super) dual: bool,
    pub(super) cover: Option<Duration>,
    pub(super) port_mapping: bool,
}

/// How often a failed save is tried again.
const SAVE_RETRY: Duration = Duration::from_secs(1);

pub(super) fn run(dir: &Path, options: Options) -> u8 {
    let out = &mut Terminal;
    let store = match StateDir::open(dir) {
        Ok(s) => s,
        Err(StoreError::Busy { pid, .. }) => {
            let who = pid.map_or("another process".into(), |p| format!("process {p}"));
            return fail(
                out,
                format!(
                    "{} is in use by {who} (another `sky earth online` on the same state?); \
                     stop it first",
                    dir.display()
                ),
            );
        }
        Err(e) => return fail(out, e.to_string()),
    };
    let mut state = match store.load() {
        Ok(s) => s,
        Err(e) => return fail(out, e.to_string()),
    };
    let sky = if options.sky.is_empty() {
        state.sky.clone()
    } else {
        options.sky.clone()
    };
    if sky.is_empty() {
        return fail(
            out,
            "no sky node to bootstrap from: give --sky HOST:PORT once (it is remembered)",
        );
    }
    if state.sky != sky {
        state.sky = sky.clone();
        if let Err(e) = store.save(&state) {
            return fail(out, e.to_string());
        }
    }
    let configure = |c: &mut EarthConfig| {
        c.metered = options.metered;
        c.reset_retry = options.reset_retry;
        c.overlap = if options.dual {
            Overlap::Dual
        } else {
            Overlap::LookupSide
        };
        c.cover = options.cover;
    };
    let mut driver = match commands::driver(&sky, state, configure) {
        Ok(d) => d,
        Err(e) => return fail(out, e),
    };
    if options.port_mapping
        && let Err(e) = driver.map_port()
    {
        eprintln!("sky earth: no port mapping: {e}");
    }
    let server = match Server::bind(dir) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                out,
                format!("cannot listen on {}/control.sock: {e}", dir.display()),
            );
        }
    };
    let stop = crate::cmd::stop_on_signals();
    let mut app = Online {
        store,
        server,
        sky: sky.join(", "),
        registered: false,
        observed: None,
        after_save: Vec::new(),
        next_save_try: None,
        lookups: HashMap::new(),
        sends: HashMap::new(),
    };
    driver.earth.go_online(unix_now());
    let result = driver.run_app(options.hold.map(|h| Instant::now() + h), &stop, &mut app);
    driver.earth.go_offline();
    driver.flush();
    if let Err(e) = result {
        return fail(out, e.to_string());
    }
    if !app.registered {
        return fail(
            out,
            format!(
                "never registered: no sky node held our address ({})",
                app.sky
            ),
        );
    }
    0
}

/// The running client's side of the driver loop.
struct Online {
    store: StateDir,
    server: Server,
    sky: String,
    /// Some owner held our address at least once.
    registered: bool,
    observed: Option<std::net::SocketAddr>,
    /// Lines printed once the state they report is on disk.
    after_save: Vec<String>,
    /// A save failed: when to try again.
    next_save_try: Option<Instant>,
    /// Control connections waiting for a lookup of a friend.
    lookups: HashMap<String, Vec<Reply>>,
    /// Control connections waiting for a delivery, by payload id.
    sends: HashMap<u64, (String, Reply)>,
}

impl Online {
    /// Saves the live state; `true` on success.
    fn save(&mut self, earth: &mut Earth) -> bool {
        match self.store.save(earth.state()) {
            Ok(()) => {
                earth.saved();
                self.next_save_try = None;
                for line in self.after_save.drain(..) {
                    super::print_line(&line);
                }
                true
            }
            Err(e) => {
                // Not acknowledged: a friend sends it again. After a reset
                // of our own nothing leaves until a save succeeds.
                earth.save_failed();
                self.next_save_try = Some(Instant::now() + SAVE_RETRY);
                eprintln!("sky earth: cannot save the state: {e}");
                false
            }
        }
    }

    /// A request from the control socket, on the live core.
    fn handle(&mut self, earth: &mut Earth, request: Request, mut reply: Reply) {
        let now = unix_now();
        let code = match request {
            Request::Status => {
                let mut live = vec![format!("online (sky {})", self.sky)];
                if let Some(o) = self.observed {
                    live.push(format!("registered {o}"));
                }
                commands::status(earth.state(), now, &live, &mut reply);
                0
            }
            Request::Invite => {
                let invite = earth.state().identity.clone().invite(now).encode();
                reply.out(invite);
                0
            }
            Request::AddFriend { name, invite } => {
                let decoded = sky_earth::invite::Invite::decode(&invite)
                    .and_then(|i| i.check_at(now).map(|()| i));
                let invite = match decoded {
                    Ok(i) => i,
                    Err(e) => {
                        let code = fail(&mut reply, e.to_string());
                        return finish(&mut reply, code);
                    }
                };
                match earth.add_friend(&name, invite) {
                    Ok(()) => self.saved_then(earth, &mut reply, format!("added {name}")),
                    Err(e) => fail(&mut reply, e.to_string()),
                }
            }
            Request::RenameFriend { from, to } => match earth.rename_friend(&from, &to) {
                Ok(()) => self.saved_then(earth, &mut reply, format!("renamed {from} to {to}")),
                Err(e) => fail(&mut reply, e.to_string()),
            },
            Request::RemoveFriend { name } => {
                let key = match commands::fresh_key() {
                    Ok(k) => k,
                    Err(e) => {
                        let code = fail(&mut reply, e);
                        return finish(&mut reply, code);
                    }
                };
                match earth.remove_friend(now, &name, key) {
                    Ok(()) => {
                        let pending = earth.state().pending_resets.len();
                        let line = commands::removed(&name, pending, true);
                        self.saved_then(earth, &mut reply, line)
                    }
                    Err(e) => fail(&mut reply, e.to_string()),
                }
            }
            Request::AddDevice { file } if std::path::Path::new(&file).exists() => fail(
                &mut reply,
                format!("{file} exists: give a new file for the device"),
            ),
            Request::AddDevice { file } => {
                let secret = match commands::fresh_secret() {
                    Ok(s) => s,
                    Err(e) => {
                        let code = fail(&mut reply, e);
                        return finish(&mut reply, code);
                    }
                };
                match earth.add_device(now, secret) {
                    Ok(device) => match commands::write_device(&device, &file) {
                        Ok(line) => self.saved_then(earth, &mut reply, line),
                        Err(e) => fail(&mut reply, e),
                    },
                    Err(e) => fail(&mut reply, e.to_string()),
                }
            }
            Request::Lookup { name, device, .. } => {
                if !earth.state().friends.0.contains_key(&name) {
                    fail(&mut reply, format!("no friend named `{name}`"))
                } else {
                    match device {
                        Some(d) => earth.lookup_device(now, &name, d),
                        None => earth.lookup(now, &name),
                    }
                    self.lookups.entry(name).or_default().push(reply);
                    return;
                }
            }
            Request::Send {
                name, text, device, ..
            } => {
                if text.len() > MAX_TEXT {
                    fail(&mut reply, format!("a message is at most {MAX_TEXT} bytes"))
                } else if !earth.state().friends.0.contains_key(&name) {
                    fail(&mut reply, format!("no friend named `{name}`"))
                } else {
                    let id = match device {
                        Some(d) => earth.send_to_device(now, &name, d, text.as_bytes()),
                        None => earth.send(now, &name, text.as_bytes()),
                    };
                    self.sends.insert(id, (name, reply));
                    return;
                }
            }
        };
        finish(&mut reply, code);
    }

    /// Saves the change just made to the live core, then says `line`.
    fn saved_then(&mut self, earth: &mut Earth, reply: &mut Reply, line: String) -> u8 {
        if self.save(earth) {
            reply.out(line);
            0
        } else {
            fail(
                reply,
                "the change is made but could not be saved yet; retrying",
            )
        }
    }
}

fn finish(reply: &mut Reply, code: u8) {
    reply.line(Line::Exit(code));
}

impl App for Online {
    fn tick(&mut self, earth: &mut Earth) -> ControlFlow<()> {
        while let Ok(Job { request, reply }) = self.server.jobs.try_recv() {
            self.handle(earth, request, reply);
        }
        if earth.unsaved() && self.next_save_try.is_some_and(|t| Instant::now() >= t) {
            self.save(earth);
        }
        ControlFlow::Continue(())
    }

    fn event(&mut self, earth: &mut Earth, event: EarthEvent) -> ControlFlow<()> {
        match event {
            EarthEvent::Registered { address, observed } => {
                self.registered = true;
                self.observed = Some(observed);
                super::print_line(&format!("address {}", address.to_hex()));
                super::print_line(&format!("registered {observed}"));
            }
            EarthEvent::SkySilent => eprintln!("sky earth: no answer from {}; retrying", self.sky),
            EarthEvent::Sky { version, nodes } => {
                eprintln!("sky earth: the sky has {nodes} nodes (ring version {version:08x})")
            }
            EarthEvent::Introduced {
                friend,
                caller,
                endpoint,
            } => super::print_line(&format!(
                "introduced {} {endpoint}",
                friend.unwrap_or_else(|| caller.to_hex())
            )),
            EarthEvent::ForgedIntroduction => {
                eprintln!("sky earth: rejected a forged introduction")
            }
            EarthEvent::HandshakeRefused { from, error } => {
                eprintln!("sky earth: refused a handshake from {from}: {error}")
            }
            EarthEvent::Message { friend, payload } => super::print_line(&format!(
                "message {friend} {}",
                String::from_utf8_lossy(&payload)
            )),
            EarthEvent::ResetAdopted { friend } => self.after_save.push(format!("reset {friend}")),
            EarthEvent::ResetAcknowledged { friend } => self
                .after_save
                .push(format!("reset acknowledged by {friend}")),
            EarthEvent::SaveState => {
                if earth.unsaved() {
                    self.save(earth);
                }
            }
            EarthEvent::Lookup { friend, result } => {
                for mut reply in self.lookups.remove(&friend).unwrap_or_default() {
                    let code = commands::lookup_outcome(result.clone(), &self.sky, &mut reply);
                    finish(&mut reply, code);
                }
            }
            ref e @ (EarthEvent::Delivered { id, .. } | EarthEvent::Failed { id, .. }) => {
                if let Some((name, mut reply)) = self.sends.remove(&id) {
                    if let Some(code) = commands::send_outcome(&name, e, &mut reply) {
                        finish(&mut reply, code);
                    }
                } else if let EarthEvent::Failed { friend, why, .. } = e {
                    eprintln!("sky earth: cannot reach {friend}: {why}");
                }
            }
            EarthEvent::RegistrationRefused { reason } => eprintln!(
                "sky earth: a sky node refused to hold our address: {}; trying again",
                match reason {
                    1 => "its table is full",
                    2 => "this IP address holds its share of the table",
                    3 => "this network holds its share of the table",
                    4 => "this IP address has spent its signature checks for now",
                    5 => "our signature did not verify",
                    _ => "no reason given",
                }
            ),
            EarthEvent::KeepaliveShortened { interval } => eprintln!(
                "sky earth: the NAT forgets idle mappings sooner than the keepalive interval; \
                 keepalives every {} s from now on",
                interval.as_secs()
            ),
            EarthEvent::Nat(report) => {
                eprintln!("sky earth: {}", super::commands::nat_line(&report));
            }
            EarthEvent::Connected { .. } => {}
        }
        ControlFlow::Continue(())
    }
}
