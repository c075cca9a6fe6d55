//! The state directory's one owner: whoever opens a [`StateDir`] holds an
//! exclusive lock on it until it drops the value, so no process ever writes
//! a stale copy of the state over a newer one.
//!
//! A long-running client (`sky earth online`, an app in the background)
//! opens the directory once and keeps it; a one-shot edit (`add-friend`
//! with no client running) opens it for the edit. A second opener is told
//! which process holds the directory ([`StoreError::Busy`]) and can then
//! ask that process to make the change (the `sky` CLI does, through a
//! control socket in the directory).
//!
//! The lock is the operating system's advisory file lock (`flock` on Unix,
//! `LockFileEx` on Windows) on `DIR/lock`, which also holds the holder's
//! process id; the kernel drops it when the process dies, however it dies.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::state::{State, StateError};

const LOCK: &str = "lock";

/// Why a state directory could not be opened.
#[derive(Debug)]
pub enum StoreError {
    /// Another process holds the directory (its id, when it wrote one).
    Busy {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id.
        pid: Option<u32>,
    },
    /// The directory or its lock file could not be created or opened.
    Io(PathBuf, io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Busy {
                dir,
                pid: Some(pid),
            } => write!(
                f,
                "{} is in use by process {pid} (a running `sky earth online`?)",
                dir.display()
            ),
            StoreError::Busy { dir, pid: None } => {
                write!(f, "{} is in use by another process", dir.display())
            }
            StoreError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for StoreError {}

/// An open, locked state directory (see the module documentation).
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Held open: the lock lives as long as this handle.
    _lock: File,
}

impl StateDir {
    /// Opens `dir` (created owner-only if missing) and takes its lock, or
    /// says who holds it.
    pub fn open(dir: &Path) -> Result<StateDir, StoreError> {
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |e| StoreError::Io(p, e)
        };
        crate::state::create_owner_only_dir(dir).map_err(io_err(dir))?;
        let path = dir.join(LOCK);
        let mut lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Busy {
                    dir: dir.to_path_buf(),
                    pid: holder(&mut lock),
                });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::Io(path, e)),
        }
        // Ours now: say who we are, for the next opener's message.
        lock.set_len(0).map_err(io_err(&path))?;
        lock.rewind().map_err(io_err(&path))?;
        write!(lock, "{}", std::process::id()).map_err(io_err(&path))?;
        lock.flush().map_err(io_err(&path))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the state.
    pub fn load(&self) -> Result<State, StateError> {
        State::load(&self.dir)
    }

    /// Replaces the state atomically.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        state.save(&self.dir)
    }
}

/// The process id the holder wrote into the lock file.
fn holder(lock: &mut File) -> Option<u32> {
    let mut text = String::new();
    lock.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
#[path = "tests/store.rs"]
mod tests;
