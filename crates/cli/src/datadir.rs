//! The data directory: private to the user running invsync, and held by one process
//! at a time.
//!
//! Two processes on one data directory would each open `ledger.db` (and the consumers'
//! stores) and fight over them: the second used to start and then answer 500 to every
//! write. An exclusive OS lock (`flock` on `invsync.lock`) is released by the kernel
//! when its holder exits, however it exits, so a crash never leaves a stale lock.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::config::setting;

/// The lock file inside the data directory; holds the holder's pid, for the message.
pub const LOCK_FILE: &str = "invsync.lock";

/// Proof that this process holds the data directory. Keep it alive as long as the
/// process uses the directory: dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Makes `dir` private (0700; files invsync creates are 0600) and locks it for this
/// process. Errors start with `data-dir:` (exit code 2): a second process names the
/// holder's pid.
pub fn claim(dir: &Path) -> anyhow::Result<DataDirLock> {
    // Every file created from now on — the ledger, its WAL and shared-memory files, the
    // consumers' stores — is private, whoever creates it (SQLite included).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| setting("data-dir", format!("cannot create {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(|e| {
        setting(
            "data-dir",
            format!("cannot make {} private: {e}", dir.display()),
        )
    })?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false) // the holder's pid stays readable until we hold the lock
        .mode(0o600)
        .open(&path)
        .map_err(|e| setting("data-dir", format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("another invsync process (pid {pid})"),
            };
            return Err(setting(
                "data-dir",
                format!(
                    "{} is in use by {holder}; stop it first, or give this one its own --data-dir",
                    dir.display()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(setting(
                "data-dir",
                format!("cannot lock {}: {e}", path.display()),
            ))
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| setting("data-dir", format!("cannot write {}: {e}", path.display())))?;
    tighten(dir)?;
    Ok(DataDirLock { _file: file })
}

/// Files an earlier version left readable by others (created under the usual umask
/// 022) become 0600. Only regular files directly in the directory: that is where
/// invsync keeps its files.
fn tighten(dir: &Path) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| setting("data-dir", format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), Permissions::from_mode(0o600)).map_err(|e| {
                let path = entry.path();
                setting(
                    "data-dir",
                    format!("cannot make {} private: {e}", path.display()),
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_holder_and_the_first_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = claim(dir.path()).unwrap();
        let err = claim(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("data-dir:"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(claim(dir.path()).is_ok(), "the lock goes with its holder");
    }

    #[test]
    fn the_directory_and_old_files_become_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, Permissions::from_mode(0o755)).unwrap();
        let old = data.join("ledger.db");
        std::fs::write(&old, b"x").unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o644)).unwrap();
        let _held = claim(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&old), 0o600);
        assert_eq!(mode(&data.join(LOCK_FILE)), 0o600);
        std::fs::write(data.join("new"), b"y").unwrap();
        assert_eq!(mode(&data.join("new")), 0o600, "the umask covers new files");
    }
}
