//! Every path an installed update owns against what was installed there (`upkeep
//! verify`, as `dpkg --verify` and `fwupdmgr verify` do): the kind, a file's size,
//! content (SHA-256) and mode, a symlink's target. The same check decides what uninstall
//! and upgrade may replace: a path changed since it was installed is a *local change*,
//! never destroyed silently (see [`crate::engine`]).

use std::io::Read;

use sha2::{Digest, Sha256};
use upkeep_store::{OwnedKind, OwnedPath};

use crate::root::RootDir;
use crate::Result;

/// How a path compares with what was installed there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathState {
    /// As installed.
    Intact,
    /// Gone.
    Missing,
    /// Its content, kind or symlink target differs: a local change.
    Changed {
        /// What differs.
        what: String,
    },
    /// Only its permission bits differ.
    ModeChanged {
        /// The bits installed.
        installed: u32,
        /// The bits now.
        now: u32,
    },
}

impl PathState {
    /// Whether the path holds something other than what was installed (content, kind or
    /// target): uninstall and upgrade keep it.
    pub fn is_local_change(&self) -> bool {
        matches!(self, PathState::Changed { .. })
    }
}

fn kind_name(kind: u32) -> &'static str {
    match kind & libc::S_IFMT {
        libc::S_IFREG => "a file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        _ => "a device",
    }
}

/// Compares the path `o` names with its record, hashing a file's content. A record
/// without a digest (an agent older than schema 2) is compared by kind and size only.
pub fn check(root: &RootDir, o: &OwnedPath) -> Result<PathState> {
    check_with(root, o, false)
}

/// [`check`], but a file whose inode and change time are still those recorded at install
/// ([`OwnedPath::stamp`]) is taken as unchanged without hashing it: nothing wrote,
/// renamed, linked or chmod-ed it since (each changes the change time, which no user can
/// set). What uninstall and upgrade use: they check every path they take back.
pub fn check_quick(root: &RootDir, o: &OwnedPath) -> Result<PathState> {
    check_with(root, o, true)
}

fn check_with(root: &RootDir, o: &OwnedPath, trust_stamp: bool) -> Result<PathState> {
    let Some(st) = root.stat(&o.path)? else {
        return Ok(PathState::Missing);
    };
    let want = match o.kind {
        OwnedKind::File => libc::S_IFREG,
        OwnedKind::Dir => libc::S_IFDIR,
        OwnedKind::Symlink => libc::S_IFLNK,
    };
    if st.kind & libc::S_IFMT != want {
        return Ok(PathState::Changed {
            what: format!("is {} now", kind_name(st.kind)),
        });
    }
    match o.kind {
        OwnedKind::Dir => {}
        OwnedKind::Symlink => {
            let target = root.read_link(&o.path)?.unwrap_or_default();
            // A symlink's record holds its target.
            if o.digest.as_ref().is_some_and(|d| *d != target) {
                return Ok(PathState::Changed {
                    what: format!("points to {} now", crate::escape_controls(&target)),
                });
            }
            return Ok(PathState::Intact);
        }
        OwnedKind::File => {
            if st.size != o.size {
                return Ok(PathState::Changed {
                    what: format!("{} bytes now, {} installed", st.size, o.size),
                });
            }
            let untouched = trust_stamp && o.stamp.as_deref() == Some(st.stamp().as_str());
            if let (Some(d), false) = (&o.digest, untouched) {
                let mut f = root.open_file(&o.path)?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(|e| crate::InstallError::io(&root.display(&o.path), e))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                if hex::encode(h.finalize()) != *d {
                    return Ok(PathState::Changed {
                        what: "its content differs".into(),
                    });
                }
            }
        }
    }
    let now = st.mode & 0o7777;
    if now != o.mode & 0o7777 {
        return Ok(PathState::ModeChanged {
            installed: o.mode & 0o7777,
            now,
        });
    }
    Ok(PathState::Intact)
}
