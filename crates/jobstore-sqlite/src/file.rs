//! The job file itself: the one-process-per-file lock (`path.lock`) and the check that the
//! path still names the file the store opened (a removed or replaced file is a lost store).

use std::fs;
use std::path::Path;
use std::sync::PoisonError;
use std::time::Duration;

use ports::JobStoreError;

use crate::{Inner, SCHEMA_VERSION, companion};

/// The exclusive claim of one process on a job file: an OS lock (`flock`) on `path.lock`,
/// which holds the owner's process id. Released when dropped, or when the process dies.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _file: fs::File,
}

impl OwnerLock {
    pub(crate) fn take(db: &Path) -> Result<OwnerLock, JobStoreError> {
        use std::io::{Seek, Write};
        let path = companion(db, ".lock");
        let unavailable =
            |what: String| JobStoreError::Unavailable(format!("{}: {what}", db.display()));
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                unavailable(format!("cannot open the lock file {}: {e}", path.display()))
            })?;
        // A store of this same process that is closing (its last tasks finishing) lets go
        // within moments: wait for that, never for another process.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let locked = loop {
            match file.try_lock() {
                Err(fs::TryLockError::WouldBlock)
                    if std::time::Instant::now() < deadline
                        && holder_of(&mut file) == std::process::id().to_string() =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other,
            }
        };
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = holder_of(&mut file);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("process {holder}")
                };
                return Err(JobStoreError::Unavailable(format!(
                    "{} is in use by {who} (lock file {}): one instance per job file; stop it, \
                     or give this one its own JOB_STORE_PATH",
                    db.display(),
                    path.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(unavailable(format!("cannot lock {}: {e}", path.display())));
            }
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| unavailable(format!("cannot write {}: {e}", path.display())))?;
        Ok(OwnerLock { _file: file })
    }
}

/// What the lock file says: the holder's process id, or nothing.
pub(crate) fn holder_of(file: &mut fs::File) -> String {
    use std::io::{Read, Seek};
    let mut holder = String::new();
    let _ = file
        .rewind()
        .and_then(|()| file.read_to_string(&mut holder));
    holder.trim().to_owned()
}

/// Which file a path names: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    pub(crate) fn of(path: &Path) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).ok().map(|m| FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Elsewhere only the file's existence is checked.
    #[cfg(not(unix))]
    pub(crate) fn of(path: &Path) -> Option<FileIdentity> {
        fs::metadata(path)
            .ok()
            .map(|_| FileIdentity { dev: 0, ino: 0 })
    }
}

impl Inner {
    /// Fails once the path no longer names the file this store opened: removed, renamed
    /// away, or replaced by another file. Logged once, at error level; every call fails
    /// from then on (reopening is a restart's job: the process holding the old file must
    /// not write on as if nothing happened).
    pub(crate) fn lost(&self) -> Result<(), JobStoreError> {
        let mut broken = self.broken.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = broken.as_ref() {
            return Err(JobStoreError::Unavailable(reason.clone()));
        }
        let now = FileIdentity::of(&self.path);
        if now == Some(self.identity) {
            return Ok(());
        }
        let reason = format!(
            "{}: the job file was {} while the service ran; nothing more is written (restart \
             to open the file at that path)",
            self.path.display(),
            if now.is_none() {
                "removed"
            } else {
                "replaced by another file"
            }
        );
        tracing::error!(path = %self.path.display(), "{reason}");
        *broken = Some(reason.clone());
        Err(JobStoreError::Unavailable(reason))
    }

    /// Whether the store can take a write now: the path still names its file, the file and
    /// its WAL can be opened for writing, and a write (of the schema version, one page)
    /// commits.
    pub(crate) fn check(&self) -> Result<(), JobStoreError> {
        self.lost()?;
        // The file itself, which the WAL's checkpoints write (an immutable or read-only file
        // takes WAL commits, but no checkpoint: the WAL would grow without end).
        for path in [&self.path, &self.wal_path] {
            if let Err(e) = fs::OpenOptions::new().write(true).open(path)
                && !(path == &self.wal_path && e.kind() == std::io::ErrorKind::NotFound)
            {
                return Err(JobStoreError::Unavailable(format!(
                    "{} cannot be written: {e}",
                    path.display()
                )));
            }
        }
        self.write(|tx| {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| self.err(e))
        })
    }
}
