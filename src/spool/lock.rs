//! The per-process lock on a spool directory: an exclusive `flock` on the directory itself, which the
//! kernel releases when the process dies however it dies.

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An exclusive lock on one spool directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    /// Holds the lock while open.
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on the directory at `path`: `Ok(None)` when another open file (this process's or
    /// another's) holds it, or when the directory is gone or was replaced while the lock was being taken
    /// (its owner removed it: there is nothing left to claim).
    pub fn try_take(path: &Path) -> io::Result<Option<DirLock>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // The owner removes its directory while holding the lock; a directory opened just before that and
        // locked just after is no longer the one at `path`.
        let held = file.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => Ok(Some(DirLock {
                _file: file,
                path: path.to_path_buf(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The locked directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a live process holds the lock on the spool directory at `path`. Takes and drops a shared lock
/// for an instant, so a batcher starting at that very instant may leave this spool for its next start.
pub fn is_held(path: &Path) -> io::Result<bool> {
    let file = File::open(path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Fsyncs the directory at `path`.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}
