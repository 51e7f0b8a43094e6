//! upkeep's install engine: every change to the install root goes through it.
//!
//! - [`engine`]: [`Engine::install`](engine::Engine::install) and
//!   [`Engine::uninstall`](engine::Engine::uninstall), shaped as plan → check → apply →
//!   commit. Every check (license, cached content and its hashes, the installed revision's
//!   own removal rules, file ownership, free space) runs before the root changes; an
//!   upgrade (a new revision, or an update superseding installed ones) is one transaction
//!   that leaves unchanged files untouched; the installed record it commits is enough to
//!   show and uninstall the update without the repository.
//! - [`Layout`]: the install root and a work directory on the same filesystem (staged files
//!   and backups must reach the root by `rename`/`link`).
//! - [`files`]: the `files` handler's staging — tar, tar.zst or tar.gz payloads read once,
//!   every entry checked (no absolute paths, no `..`, nothing written through a symlink,
//!   symlinks only to targets inside the root, no devices, FIFOs or hard links), hashed, and
//!   staged into the work directory unless unchanged; each payload's SHA-256 re-verified.
//! - [`tx`]: the transaction: each batch of journal entries is durable in the state
//!   database before the changes it describes; a replaced file is hard-linked aside before
//!   the new one is renamed over it; one `syncfs` precedes the commit; recovery at session
//!   open rolls an uncommitted transaction back and finishes a committed one; dropping an
//!   uncommitted transaction rolls it back.
//! - [`command`]: the `command` handler — the payload is an executable run in its own
//!   process group with declared arguments, a timeout, the update's exit-code table, and a
//!   line protocol for progress.
//! - [`Reporter`]: progress and cancellation, one small object through every step.
//! - [`checkpoint`]: named crash points for the crash harness.

pub mod command;
pub mod engine;
pub mod files;
pub mod root;
pub mod tx;
pub mod verify;

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

    /// An I/O failure on `path`; a full disk is `E_DISK_FULL`.
    pub fn io(path: &Path, e: std::io::Error) -> InstallError {
        InstallError::from(upkeep_fs::at(path)(e))
    }

    /// The operation was cancelled (`WU_E_CALL_CANCELLED`).
    pub fn cancelled() -> InstallError {
        InstallError::new(HResult::WU_E_CALL_CANCELLED, "aborted")
    }
}

/// An I/O failure that names its path; a full disk is `E_DISK_FULL`.
impl From<upkeep_fs::PathError> for InstallError {
    fn from(e: upkeep_fs::PathError) -> InstallError {
        let code = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => HResult::E_DISK_FULL,
            _ => HResult::WU_E_UH_UNEXPECTED,
        };
        InstallError::new(code, e.to_string())
    }
}

/// `s` with control characters (newlines, escape sequences) written as escapes, for
/// messages that name what an archive or a command supplied: a name cannot forge log lines
/// or drive a terminal. One rule for every crate: [`upkeep_types::text::escape_controls`].
pub fn escape_controls(s: &str) -> String {
    upkeep_types::text::escape_controls(s).into_owned()
}

/// Progress and cancellation for one operation: what the install engine reports to and
/// asks of its caller (the installer job) at each step.
pub trait Reporter {
    /// The fraction of the current step done, from 0 to 1.
    fn on_progress(&self, fraction: f64);
    /// Whether the caller asked to stop; polled at safe points.
    fn is_cancelled(&self) -> bool;
}

/// A reporter that reports nothing and never cancels.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn on_progress(&self, _: f64) {}
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// One step of a larger operation: maps the step's 0–1 onto `from..from + width` of the
/// parent's.
pub(crate) struct Step<'a> {
    pub parent: &'a dyn Reporter,
    pub from: f64,
    pub width: f64,
}

impl Reporter for Step<'_> {
    fn on_progress(&self, f: f64) {
        self.parent
            .on_progress(self.from + f.clamp(0.0, 1.0) * self.width)
    }
    fn is_cancelled(&self) -> bool {
        self.parent.is_cancelled()
    }
}

/// Creates a directory (and its parents) readable by its owner only.
pub(crate) fn create_private_dir(d: &Path) -> Result<()> {
    Ok(upkeep_fs::create_dir_all_mode(d, 0o700)?)
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
    /// The root, opened: every read and change under it goes through this handle, which
    /// resolves every path inside the root.
    pub dir: std::sync::Arc<root::RootDir>,
    /// `stage/<tx>/` and `backups/<tx>/` live here, on the root's filesystem.
    pub work: PathBuf,
    /// The agent's own directories inside the root (the state directory, the work
    /// directory), relative to it: no payload may write there.
    pub protected: Vec<String>,
}

impl Layout {
    /// The layout for `root` with state in `state_dir`: the work directory is
    /// `<state_dir>/tree` when that is on the root's mount, else `<root>/.upkeep`. Paths
    /// on other mounts inside the root are staged and backed up in `.upkeep` at the top of
    /// their mount (see [`tx`]).
    /// Both paths should be absolute (the session resolves them).
    pub fn new(root: &Path, state_dir: &Path) -> Result<Layout> {
        upkeep_fs::create_dir_all(root).map_err(InstallError::from)?;
        // One mount, not just one filesystem: a rename between two mounts of the same
        // filesystem (a bind-mounted root) fails too.
        let mnt = root::mount_of;
        let work = if mnt(root).is_some() && mnt(root) == mnt(state_dir) {
            state_dir.join("tree")
        } else {
            root.join(".upkeep")
        };
        create_private_dir(&work)?;
        // One made by an older agent may be readable by others: it holds backups.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = upkeep_fs::metadata(&work)
                .map_err(InstallError::from)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                upkeep_fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
                    .map_err(InstallError::from)?;
            }
        }
        // Compared with canonical paths inside the root: resolve symlinks on both sides.
        let real = |p: &Path| upkeep_fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let real_root = real(root);
        let protected = [real(state_dir), real(&work)]
            .iter()
            .filter_map(|d| d.strip_prefix(&real_root).ok())
            .filter_map(|p| p.to_str())
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Layout {
            dir: std::sync::Arc::new(root::RootDir::open(root)?),
            root: root.to_path_buf(),
            work,
            protected,
        })
    }
}

/// A named crash point: when `UPKEEP_CRASH_AT` is `NAME` (or `NAME#N` for its N-th pass),
/// the process kills itself with SIGKILL here; when `UPKEEP_PANIC_AT` is `NAME`, it
/// panics. Used by the crash tests only; costs two environment lookups otherwise.
pub fn checkpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    // `UPKEEP_PANIC_AT=NAME` panics here instead: the job must complete anyway, and the
    // transaction roll back as the stack unwinds.
    if std::env::var_os("UPKEEP_PANIC_AT").is_some_and(|v| v == name) {
        panic!("UPKEEP_PANIC_AT={name}");
    }
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
    upkeep_fs::syncfs(dir).map_err(InstallError::from)
}

/// A verifier of `hashes` (every one is checked) for the content file `what`; `None` when
/// there is nothing signed to check against. No hash, or an unknown algorithm, is
/// `WU_E_DM_UNKNOWNALGORITHM`: never a skip.
pub(crate) fn verifier(
    hashes: Option<&[(String, String)]>,
    what: &Path,
) -> Result<Option<upkeep_fs::Verifier>> {
    let Some(h) = hashes else { return Ok(None) };
    upkeep_fs::Verifier::new(h.iter().map(|(a, x)| (a.as_str(), x.as_str())))
        .map(Some)
        .map_err(|e| {
            InstallError::new(
                HResult::WU_E_DM_UNKNOWNALGORITHM,
                format!("{}: {e}", what.display()),
            )
        })
}
