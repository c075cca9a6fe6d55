//! The earth client's state on disk: identity and friends, in one TOML file
//! in an owner-only directory, replaced atomically (write a temporary file,
//! sync it, rename it over the old one, sync the directory), so a crash at
//! any moment leaves either the old state or the new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sky_proto::time::UnixTime;

use serde::{Deserialize, Serialize};

use crate::identity::{Friend, FriendError, Friends, Identity};
use crate::ratchet::{Chain, ChainKey, Epoch, Schedule};
use sky_proto::wire;

const FILE: &str = "state.toml";

/// Everything the client keeps.
#[derive(Clone, Debug)]
pub struct State {
    /// The user's chain and key pair.
    pub identity: Identity,
    /// The friends, by name.
    pub friends: Friends,
    /// Friends who have not yet acknowledged the last address reset: they
    /// are sent the new chain key until they do, across restarts.
    pub pending_resets: BTreeSet<String>,
    /// The bootstrap list last given (`HOST:PORT`, tried in order), so that
    /// later commands need not repeat it.
    pub sky: Vec<String>,
}

/// Why state could not be read or written.
#[derive(Debug)]
pub enum StateError {
    /// No state in that directory yet (`sky earth init`).
    Missing(PathBuf),
    /// Reading or writing a file failed.
    Io(PathBuf, io::Error),
    /// The file is there but not valid state.
    Corrupt(PathBuf, String),
    /// Others than its owner may read the file (it holds the chain key and
    /// the secret key): the Unix mode it has.
    Exposed(PathBuf, u32),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Missing(p) => write!(
                f,
                "no earth state in {} (run `sky earth init`)",
                p.display()
            ),
            StateError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            StateError::Corrupt(p, e) => write!(f, "{} is not valid earth state: {e}", p.display()),
            StateError::Exposed(p, mode) => write!(
                f,
                "{} is readable by others (mode {mode:03o}) and holds your keys: refusing it; \
                 run `chmod 600 {}` if nobody else could have read it, else start over",
                p.display(),
                p.display()
            ),
        }
    }
}

impl std::error::Error for StateError {}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    origin_epoch: u64,
    chain_key: String,
    epoch_secs: u64,
    phase_secs: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(flatten)]
    chain: ChainFile,
    secret_key: String,
    /// Which of the user's devices this is (absent: the only one).
    #[serde(default, skip_serializing_if = "is_zero")]
    device: u8,
    /// The public keys of all the user's devices (absent: this one only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    devices: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FriendFile {
    #[serde(flatten)]
    chain: ChainFile,
    /// Their device 0's key.
    public_key: String,
    /// Their other devices' keys, device 1 first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more_keys: Vec<String>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    identity: IdentityFile,
    #[serde(default)]
    friends: BTreeMap<String, FriendFile>,
    #[serde(default)]
    pending_resets: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sky: Vec<String>,
}

fn chain_file(chain: &Chain, schedule: &Schedule) -> ChainFile {
    ChainFile {
        origin_epoch: chain.origin().0,
        chain_key: wire::to_hex(chain.origin_key().as_bytes()),
        epoch_secs: schedule.length.as_secs(),
        phase_secs: schedule.phase.as_secs(),
    }
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32], String> {
    wire::from_hex::<32>(s).ok_or_else(|| format!("{what} is not 64 hex digits"))
}

fn chain_of(c: &ChainFile) -> Result<(Chain, Schedule), String> {
    if c.epoch_secs == 0 || c.phase_secs >= c.epoch_secs {
        return Err("invalid epoch schedule".into());
    }
    let key = ChainKey::from_bytes(hex32(&c.chain_key, "chain_key")?);
    let schedule = Schedule {
        length: Duration::from_secs(c.epoch_secs),
        phase: Duration::from_secs(c.phase_secs),
    };
    Ok((Chain::new(Epoch(c.origin_epoch), key), schedule))
}

impl State {
    /// A user's state: their identity and friends, no reset pending, no
    /// bootstrap list yet.
    pub fn new(identity: Identity, friends: Friends) -> State {
        State {
            identity,
            friends,
            pending_resets: BTreeSet::new(),
            sky: Vec::new(),
        }
    }

    /// Address reset (SPEC §2): removes `friend`, moves the user to a fresh
    /// chain from `key` starting at the epoch of `now`, and marks every
    /// remaining friend pending until they acknowledge the new chain.
    pub fn reset_address(
        &mut self,
        friend: &str,
        key: crate::ratchet::ChainKey,
        now: UnixTime,
    ) -> Result<(), FriendError> {
        self.friends.remove(friend)?;
        self.identity.reset(key, now);
        self.mark_all_pending();
        Ok(())
    }

    /// Every device of every friend is to be sent the user's current invite
    /// (after a reset, or a new device of the user's).
    pub fn mark_all_pending(&mut self) {
        self.pending_resets = self
            .friends
            .0
            .iter()
            .flat_map(|(name, f)| (0..f.keys.len()).map(move |d| pending_entry(name, d as u8)))
            .collect();
    }

    /// Adds a device to this user (its long-term secret is `secret`): every
    /// friend is sent the new list of device keys until they acknowledge
    /// it. Returns the state the new device starts from — the same chain
    /// (from the current epoch: nothing earlier), its own key, the friends
    /// and the bootstrap list — to carry to it (it holds the chain key:
    /// keep it as secret as the state itself).
    pub fn add_device(&mut self, secret: [u8; 32], now: UnixTime) -> Result<State, FriendError> {
        let device = self
            .identity
            .add_device(secret)
            .ok_or(FriendError::TooManyDevices)?;
        self.mark_all_pending();
        let mut identity = self.identity.for_device(secret, device);
        let epoch = identity.schedule.epoch_at(now).max(identity.chain.origin());
        let key = identity
            .chain
            .key_at(epoch)
            .expect("at or after the origin");
        identity.chain = Chain::new(epoch, key);
        Ok(State {
            identity,
            friends: self.friends.clone(),
            pending_resets: BTreeSet::new(),
            sky: self.sky.clone(),
        })
    }

    /// Adds the friend whose invite this is, as `name`: refused when it is
    /// the user's own invite, or a key, chain or name already a friend's.
    pub fn add_friend(
        &mut self,
        name: &str,
        invite: crate::invite::Invite,
    ) -> Result<(), FriendError> {
        let friend = Friend::from(invite);
        if friend
            .keys
            .iter()
            .any(|k| self.identity.devices().contains(k))
            || crate::identity::same_chain(&friend.chain, &self.identity.chain)
        {
            return Err(FriendError::OwnInvite);
        }
        self.friends.add(name, friend)
    }

    /// Renames a friend (a pending reset follows the name).
    pub fn rename_friend(&mut self, from: &str, to: &str) -> Result<(), FriendError> {
        self.friends.rename(from, to)?;
        let renamed: Vec<String> = self
            .pending_resets
            .iter()
            .filter(|e| parse_pending_entry(e).0 == from)
            .cloned()
            .collect();
        for entry in renamed {
            self.pending_resets.remove(&entry);
            let (_, device) = parse_pending_entry(&entry);
            self.pending_resets.insert(pending_entry(to, device));
        }
        Ok(())
    }

    /// Reads the state in `dir`.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        match State::read_file(&dir.join(FILE)) {
            Err(StateError::Missing(_)) => Err(StateError::Missing(dir.into())),
            other => other,
        }
    }

    /// Reads a state file (a state directory's, or one `add-device` wrote
    /// for a new device).
    pub fn read_file(path: &Path) -> Result<State, StateError> {
        let path = path.to_path_buf();
        if let Some(mode) = owner_only::exposed(&path) {
            return Err(StateError::Exposed(path, mode));
        }
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::Missing(path));
            }
            Err(e) => return Err(StateError::Io(path, e)),
        };
        let corrupt = |e: String| StateError::Corrupt(path.clone(), e);
        let file: StateFile = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.version != 1 {
            return Err(corrupt(format!("unknown version {}", file.version)));
        }
        let (chain, schedule) = chain_of(&file.identity.chain).map_err(corrupt)?;
        let secret = hex32(&file.identity.secret_key, "secret_key").map_err(corrupt)?;
        let devices = file
            .identity
            .devices
            .iter()
            .map(|k| hex32(k, "devices"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let identity = Identity::restore(
            chain.origin(),
            chain.origin_key().clone(),
            schedule,
            secret,
            file.identity.device,
            devices,
        );
        let mut friends = Friends::default();
        for (name, f) in &file.friends {
            let (chain, schedule) =
                chain_of(&f.chain).map_err(|e| corrupt(format!("friend {name}: {e}")))?;
            let keys = std::iter::once(&f.public_key)
                .chain(&f.more_keys)
                .map(|k| hex32(k, "public_key"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?;
            // As saved: a state that already holds one friend under two
            // names still loads (`add` refuses new ones).
            friends.0.insert(
                name.clone(),
                Friend {
                    chain,
                    schedule,
                    keys,
                },
            );
        }
        Ok(State {
            identity,
            friends,
            pending_resets: file.pending_resets,
            sky: file.sky,
        })
    }

    /// Replaces the state in `dir` atomically, creating `dir` owner-only
    /// (0700) and the file owner-only (0600).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        owner_only::create_dir(dir).map_err(|e| StateError::Io(dir.into(), e))?;
        self.write_file(&dir.join(FILE))
    }

    /// Writes the state to `path` atomically, owner-only (the directory it
    /// is in must exist).
    pub fn write_file(&self, path: &Path) -> Result<(), StateError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |e| StateError::Io(p, e)
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let file = StateFile {
            version: 1,
            identity: IdentityFile {
                chain: chain_file(&self.identity.chain, &self.identity.schedule),
                secret_key: wire::to_hex(&self.identity.secret_bytes()),
                device: self.identity.device(),
                devices: match self.identity.devices() {
                    [_] => Vec::new(),
                    keys => keys.iter().map(|k| wire::to_hex(k)).collect(),
                },
            },
            friends: self
                .friends
                .0
                .iter()
                .map(|(name, f)| {
                    let entry = FriendFile {
                        chain: chain_file(&f.chain, &f.schedule),
                        public_key: wire::to_hex(&f.keys[0]),
                        more_keys: f.keys[1..].iter().map(|k| wire::to_hex(k)).collect(),
                    };
                    (name.clone(), entry)
                })
                .collect(),
            pending_resets: self.pending_resets.clone(),
            sky: self.sky.clone(),
        };
        let text = toml::to_string(&file).expect("state serializes");
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let _ = fs::remove_file(&temp); // a crash may have left one
        let mut out = owner_only::create_file(&temp).map_err(io_err(&temp))?;
        out.write_all(text.as_bytes()).map_err(io_err(&temp))?;
        out.sync_all().map_err(io_err(&temp))?;
        drop(out);
        fs::rename(&temp, path).map_err(io_err(path))?;
        owner_only::sync_dir(dir).map_err(io_err(dir))?;
        Ok(())
    }
}

/// Creates `dir` (and its parents) owner-only, or makes it so.
pub(crate) fn create_owner_only_dir(dir: &Path) -> io::Result<()> {
    owner_only::create_dir(dir)
}

/// A friend's device in the pending-reset set: the friend's name for
/// device 0 (as single-device users always had it), `name#d` for device `d`.
pub fn pending_entry(friend: &str, device: u8) -> String {
    match device {
        0 => friend.to_string(),
        d => format!("{friend}#{d}"),
    }
}

/// The friend and device of a pending-reset entry.
pub fn parse_pending_entry(entry: &str) -> (&str, u8) {
    match entry.rsplit_once('#') {
        Some((name, d)) => (name, d.parse().unwrap_or(0)),
        None => (entry, 0),
    }
}

/// Owner-only files and directories: Unix modes where there are any; on
/// other systems the platform's per-user defaults (a user's profile
/// directory) are what protects the state.
mod owner_only {
    use std::fs;
    use std::io;
    use std::path::Path;

    #[cfg(unix)]
    pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
    }

    #[cfg(not(unix))]
    pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    /// The mode of `path` when its group or others may read or write it.
    #[cfg(unix)]
    pub(super) fn exposed(path: &Path) -> Option<u32> {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }

    #[cfg(not(unix))]
    pub(super) fn exposed(_path: &Path) -> Option<u32> {
        None
    }

    #[cfg(unix)]
    pub(super) fn create_file(path: &Path) -> io::Result<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }

    #[cfg(not(unix))]
    pub(super) fn create_file(path: &Path) -> io::Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    }

    /// Makes a rename in `dir` durable (a no-op where directories cannot
    /// be opened, as on Windows, whose renames are journaled).
    pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        fs::File::open(dir)?.sync_all()?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests/state.rs"]
mod tests;
