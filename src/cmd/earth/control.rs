//! The local control socket of a running `sky earth online`
//! (`DIR/control.sock`, in the owner-only state directory, itself
//! owner-only): how `add-friend`, `remove-friend`, `status`, `lookup`,
//! `send` … reach the process that owns the state instead of writing a
//! copy of it.
//!
//! One request per connection: a JSON array of strings (the command and
//! its arguments) on one line. The answer is a stream of JSON arrays, one
//! per line — `["out", text]`, `["err", text]` — ending with
//! `["exit", code]`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const SOCKET: &str = "control.sock";

/// A command for the state's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Request {
    Invite,
    Status,
    AddFriend {
        name: String,
        invite: String,
    },
    RenameFriend {
        from: String,
        to: String,
    },
    RemoveFriend {
        name: String,
    },
    /// Adds a device; the new device's state goes to `file` (absolute).
    AddDevice {
        file: String,
    },
    Lookup {
        name: String,
        device: Option<u8>,
        sky: Vec<String>,
    },
    Send {
        name: String,
        text: String,
        device: Option<u8>,
        sky: Vec<String>,
    },
}

impl Request {
    /// Whether it changes the state (and so needs the state's lock when no
    /// client runs).
    pub(super) fn edits(&self) -> bool {
        matches!(
            self,
            Request::AddFriend { .. }
                | Request::RenameFriend { .. }
                | Request::RemoveFriend { .. }
                | Request::AddDevice { .. }
        )
    }

    fn to_args(&self) -> Vec<String> {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Request::Invite => a(&["invite"]),
            Request::Status => a(&["status"]),
            Request::AddFriend { name, invite } => a(&["add-friend", name, invite]),
            Request::RenameFriend { from, to } => a(&["rename-friend", from, to]),
            Request::RemoveFriend { name } => a(&["remove-friend", name]),
            Request::AddDevice { file } => a(&["add-device", file]),
            // The running client has its own view of the sky: no list.
            Request::Lookup { name, device, .. } => {
                let d = device.map_or(String::new(), |d| d.to_string());
                a(&["lookup", name, &d])
            }
            Request::Send {
                name, text, device, ..
            } => {
                let d = device.map_or(String::new(), |d| d.to_string());
                a(&["send", name, text, &d])
            }
        }
    }

    fn from_args(args: &[String]) -> Option<Request> {
        let s = |i: usize| args.get(i).cloned();
        Some(match (args.first()?.as_str(), args.len()) {
            ("invite", 1) => Request::Invite,
            ("status", 1) => Request::Status,
            ("add-friend", 3) => Request::AddFriend {
                name: s(1)?,
                invite: s(2)?,
            },
            ("rename-friend", 3) => Request::RenameFriend {
                from: s(1)?,
                to: s(2)?,
            },
            ("remove-friend", 2) => Request::RemoveFriend { name: s(1)? },
            ("add-device", 2) => Request::AddDevice { file: s(1)? },
            ("lookup", 3) => Request::Lookup {
                name: s(1)?,
                device: device(&s(2)?)?,
                sky: Vec::new(),
            },
            ("send", 4) => Request::Send {
                name: s(1)?,
                text: s(2)?,
                device: device(&s(3)?)?,
                sky: Vec::new(),
            },
            _ => return None,
        })
    }
}

/// A device number as the wire carries it: empty for "any".
fn device(text: &str) -> Option<Option<u8>> {
    match text {
        "" => Some(None),
        d => d.parse().ok().map(Some),
    }
}

/// One line of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Line {
    Out(String),
    Err(String),
    Exit(u8),
}

/// Where a command's output goes: the terminal, or a control connection.
pub(super) trait Out {
    fn line(&mut self, line: Line);

    fn out(&mut self, text: impl Into<String>) {
        self.line(Line::Out(text.into()));
    }

    fn err(&mut self, text: impl Into<String>) {
        self.line(Line::Err(text.into()));
    }
}

/// The terminal: stdout and stderr (an error line gets the `sky earth:`
/// prefix, as every error of the CLI).
pub(super) struct Terminal;

impl Out for Terminal {
    fn line(&mut self, line: Line) {
        match line {
            Line::Out(t) => super::print_line(&t),
            Line::Err(t) => eprintln!("sky earth: {t}"),
            Line::Exit(_) => {}
        }
    }
}

/// A control connection's answer, through the client's loop.
pub(super) struct Reply(mpsc::Sender<Line>);

impl Out for Reply {
    fn line(&mut self, line: Line) {
        let _ = self.0.send(line);
    }
}

/// Why a request could not be handed to a running client.
pub(super) enum CallError {
    /// No client listens (none runs, or it is starting or stopping).
    NoServer,
    Io(io::Error),
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Hands `request` to the client running on `dir`, copies its answer to
/// `out`, and returns its exit code.
pub(super) fn call(dir: &Path, request: &Request, out: &mut impl Out) -> Result<u8, CallError> {
    let mut stream = match UnixStream::connect(socket_path(dir)) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(CallError::NoServer);
        }
        Err(e) => return Err(CallError::Io(e)),
    };
    let line = serde_json::to_string(&request.to_args()).map_err(|e| CallError::Io(e.into()))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(CallError::Io)?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(CallError::Io)?;
        match parse_line(&line) {
            Some(Line::Exit(code)) => return Ok(code),
            Some(l) => out.line(l),
            None => {
                return Err(CallError::Io(io::Error::other(format!(
                    "the running client answered `{line}`"
                ))));
            }
        }
    }
    Err(CallError::Io(io::Error::other(
        "the running client closed the connection without an answer",
    )))
}

fn parse_line(line: &str) -> Option<Line> {
    let v: Vec<serde_json::Value> = serde_json::from_str(line).ok()?;
    match (v.first()?.as_str()?, v.get(1)?) {
        ("out", t) => Some(Line::Out(t.as_str()?.to_string())),
        ("err", t) => Some(Line::Err(t.as_str()?.to_string())),
        ("exit", c) => Some(Line::Exit(u8::try_from(c.as_u64()?).ok()?)),
        _ => None,
    }
}

fn encode_line(line: &Line) -> String {
    let v = match line {
        Line::Out(t) => serde_json::json!(["out", t]),
        Line::Err(t) => serde_json::json!(["err", t]),
        Line::Exit(c) => serde_json::json!(["exit", c]),
    };
    format!("{v}\n")
}

/// A request from a control connection, and where its answer goes.
pub(super) struct Job {
    pub(super) request: Request,
    pub(super) reply: Reply,
}

/// The listening control socket; removed when dropped.
pub(super) struct Server {
    path: PathBuf,
    pub(super) jobs: mpsc::Receiver<Job>,
}

impl Server {
    /// Listens on `DIR/control.sock` (owner-only). The caller holds the
    /// state's lock, so a socket file already there is a dead client's.
    pub(super) fn bind(dir: &Path) -> io::Result<Server> {
        let path = socket_path(dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let (tx, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("sky-earth-control".into())
            .spawn(move || accept(listener, tx))?;
        Ok(Server { path, jobs })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts connections until the client's loop is gone; one thread each.
fn accept(listener: UnixListener, jobs: mpsc::Sender<Job>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let jobs = jobs.clone();
        let spawned = std::thread::Builder::new()
            .name("sky-earth-control-conn".into())
            .spawn(move || serve(stream, &jobs));
        if spawned.is_err() {
            continue;
        }
    }
}

/// One connection: its request goes to the loop; the answer comes back.
fn serve(stream: UnixStream, jobs: &mpsc::Sender<Job>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut writer = &stream;
    let args: Option<Vec<String>> = serde_json::from_str(line.trim()).ok();
    let Some(request) = args.as_deref().and_then(Request::from_args) else {
        let _ = writer.write_all(
            encode_line(&Line::Err(format!("bad request `{}`", line.trim()))).as_bytes(),
        );
        let _ = writer.write_all(encode_line(&Line::Exit(2)).as_bytes());
        return;
    };
    let (tx, rx) = mpsc::channel();
    if jobs
        .send(Job {
            request,
            reply: Reply(tx),
        })
        .is_err()
    {
        return; // the client is stopping
    }
    for line in rx {
        if writer.write_all(encode_line(&line).as_bytes()).is_err() {
            return;
        }
        if matches!(line, Line::Exit(_)) {
            return;
        }
    }
}
