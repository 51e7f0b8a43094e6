//! upkeep's install engine.
//!
//! - [`Layout`]: the install root and a work directory on the same filesystem (staged files
//!   and backups must reach the root by `rename`/`link`).
//! - [`files`]: the `files` handler — a tar, tar.zst or tar.gz payload is read once, every
//!   entry checked (no absolute paths, no `..`, nothing written through a symlink, symlinks
//!   only to targets inside the root, no devices, FIFOs or hard links) and staged into the
//!   work directory, and the payload's SHA-256 re-verified, before anything in the root
//!   changes; then applied as a journalled transaction.
//! - [`tx`]: the transaction: each batch of journal entries is durable in the state
//!   database before the changes it describes; a replaced file is hard-linked aside before
//!   the new one is renamed over it; one `syncfs` precedes the commit; recovery at session
//!   open rolls an uncommitted transaction back and finishes a committed one. Uninstall is a
//!   transaction too and restores the previous files byte for byte.
//! - [`command`]: the `command` handler — the payload is an executable run with declared
//!   arguments, a timeout, and a line protocol for progress.
//! - [`checkpoint`]: named crash points for the crash harness.

pub mod command;
pub mod files;
pub mod tx;

use std::path::{Path, PathBuf};

use upkeep_types::HResult;

/// An install failure with its WUA code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InstallError {
    /// The WUA code.
    pub hresult: HResult,
    /// What went wrong, naming the file or entry.
    pub message: String,
    /// A handler's raw result (a command's exit code), 0 when there is none.
    pub unmapped: i64,
}

impl InstallError {
    /// An error with a code.
    pub fn new(hresult: HResult, message: impl Into<String>) -> InstallError {
        InstallError {
            hresult,
            message: message.into(),
            unmapped: 0,
        }
    }

    pub(crate) fn io(path: &Path, e: std::io::Error) -> InstallError {
        InstallError::new(
            HResult::WU_E_UH_UNEXPECTED,
            format!("{}: {e}", path.display()),
        )
    }
}

impl From<upkeep_store::StoreError> for InstallError {
    fn from(e: upkeep_store::StoreError) -> Self {
        InstallError::new(e.hresult(), e.to_string())
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, InstallError>;

/// The install root and the work directory for staged files and backups.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Where updates are installed.
    pub root: PathBuf,
    /// `stage/<tx>/` and `backups/<tx>/` live here, on the root's filesystem.
    pub work: PathBuf,
}

impl Layout {
    /// The layout for `root` with state in `state_dir`: the work directory is
    /// `<state_dir>/tree` when that is on the root's filesystem, else `<root>/.upkeep`.
    pub fn new(root: &Path, state_dir: &Path) -> Result<Layout> {
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(root).map_err(|e| InstallError::io(root, e))?;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        let work = if dev(root).is_some() && dev(root) == dev(state_dir) {
            state_dir.join("tree")
        } else {
            root.join(".upkeep")
        };
        std::fs::create_dir_all(&work).map_err(|e| InstallError::io(&work, e))?;
        Ok(Layout {
            root: root.to_path_buf(),
            work,
        })
    }
}

/// A named crash point: when `UPKEEP_CRASH_AT` is `NAME` (or `NAME#N` for its N-th pass),
/// the process kills itself with SIGKILL here. Used by the crash harness only; costs one
/// environment lookup otherwise.
pub fn checkpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let Some(want) = std::env::var_os("UPKEEP_CRASH_AT") else {
        return;
    };
    let want = want.to_string_lossy();
    let (point, nth) = match want.split_once('#') {
        Some((p, n)) => (p, n.parse::<u64>().unwrap_or(1)),
        None => (&*want, 1),
    };
    if point == name && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        tracing::warn!("crash checkpoint {name}: killing this process");
        // SAFETY: kill(2) on our own PID; SIGKILL cannot be caught, the process ends here.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Flushes the filesystem holding `dir` (one `syncfs`).
pub fn syncfs(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| InstallError::io(dir, e))?;
    // SAFETY: syncfs takes a valid open file descriptor and has no memory effects.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if rc != 0 {
        return Err(InstallError::io(dir, std::io::Error::last_os_error()));
    }
    Ok(())
}
