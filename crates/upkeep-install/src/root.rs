//! The install root as a handle that cannot be escaped: the one file-system layer through
//! which the engine reads and changes anything under the root.
//!
//! [`RootDir`] holds a descriptor of the root directory. Every path is resolved by the
//! kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: the root acts as `/` for
//! that lookup, so a symlink — one an archive created, one already on disk, or one swapped
//! in by someone else between a check and a change — resolves *inside* the root, and `..`
//! stops at it. Only a path's parent directory is resolved that way; the last component is
//! then used with the `*at` calls, which never follow it (a symlink there is itself
//! renamed over, linked or removed). Mount points inside the root are crossed as any
//! lookup crosses them.
//!
//! [`RootDir::canonical`] computes, in user space and with the same rules, the path a
//! lookup reaches: the engine records and compares paths in that form, so `lib/x.so` and
//! `usr/lib/x.so` on a merged-/usr system are one path for ownership and the journal.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use upkeep_types::HResult;

use crate::{InstallError, Result};

/// Symlinks followed in one resolution before it is refused as a loop (the kernel's
/// `MAXSYMLINKS`).
pub const MAX_LINKS: usize = 40;

/// What is at a path (never following a symlink there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `S_IFMT` bits of the mode.
    pub kind: u32,
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device of the filesystem holding it.
    pub dev: u64,
    /// The mount it is on (`statx`'s mount id; the device where the kernel does not say):
    /// a rename or hard link works only within one mount.
    pub mnt: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Inode number.
    pub ino: u64,
    /// Change time, nanoseconds since the epoch (any write, chmod, rename or link changes it).
    pub ctime_ns: i128,
}

impl Stat {
    /// `INO:CTIME_NS`: the same stamp later means nothing changed the entry since.
    pub fn stamp(&self) -> String {
        format!("{}:{}", self.ino, self.ctime_ns)
    }
    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
    /// A regular file.
    pub fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }
    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind == libc::S_IFLNK
    }
}

/// `struct open_how` of openat2(2) (version 0, 24 bytes).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// What a resolution step finds at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// A symlink with this target.
    Link(String),
    /// Something that is not a symlink.
    Other,
    /// Nothing.
    Absent,
}

/// The install root, opened once.
#[derive(Debug)]
pub struct RootDir {
    path: PathBuf,
    fd: OwnedFd,
    /// The root is the machine's `/`: an absolute symlink target cannot leave it.
    is_slash: bool,
    /// The mount the root directory is on.
    mnt: u64,
    /// Unique among the handles of this process (for per-thread caches).
    id: u64,
}

fn cstr(p: &OsStr) -> Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| {
        InstallError::new(
            HResult::E_INVALIDARG,
            format!("{}: a path with a NUL byte", p.to_string_lossy()),
        )
    })
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `statx(dirfd, name, AT_SYMLINK_NOFOLLOW)`; `None` when nothing is there.
fn statx_at(dirfd: RawFd, name: &std::ffi::CStr) -> std::io::Result<Option<Stat>> {
    // SAFETY: statx writes into the struct we pass; name is NUL-terminated.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            dirfd,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        let e = last_err();
        if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
            return Ok(None);
        }
        return Err(e);
    }
    let dev = libc::makedev(st.stx_dev_major, st.stx_dev_minor);
    Ok(Some(Stat {
        kind: u32::from(st.stx_mode) & libc::S_IFMT,
        mode: u32::from(st.stx_mode) & 0o7777,
        size: st.stx_size,
        dev,
        mnt: if st.stx_mask & libc::STATX_MNT_ID != 0 {
            st.stx_mnt_id
        } else {
            dev
        },
        uid: st.stx_uid,
        gid: st.stx_gid,
        ino: st.stx_ino,
        ctime_ns: i128::from(st.stx_ctime.tv_sec) * 1_000_000_000
            + i128::from(st.stx_ctime.tv_nsec),
    }))
}

/// The mount id of an absolute path (following symlinks), as [`Stat::mnt`] gives it.
pub fn mount_of(p: &Path) -> Option<u64> {
    let real = upkeep_fs::canonicalize(p).ok()?;
    let c = CString::new(real.as_os_str().as_bytes()).ok()?;
    statx_at(libc::AT_FDCWD, &c).ok().flatten().map(|s| s.mnt)
}

/// Splits `rel` into its parent (`.` for none) and its last component.
fn split(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "." } else { p }, n),
        None => (".", rel),
    }
}

impl RootDir {
    /// Opens `path` (which must be a directory) as an install root. Fails with a clear
    /// message on a kernel without `openat2` (Linux 5.6).
    pub fn open(path: &Path) -> Result<RootDir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: open(2) with a NUL-terminated path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(InstallError::io(path, last_err()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let is_slash = upkeep_fs::canonicalize(path).is_ok_and(|p| p == Path::new("/"));
        let mnt = {
            // SAFETY: statx with AT_EMPTY_PATH on our descriptor writes into `st`.
            let mut st: libc::statx = unsafe { std::mem::zeroed() };
            let rc = unsafe {
                libc::statx(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH,
                    libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
                    &mut st,
                )
            };
            if rc != 0 {
                return Err(InstallError::io(path, last_err()));
            }
            if st.stx_mask & libc::STATX_MNT_ID != 0 {
                st.stx_mnt_id
            } else {
                libc::makedev(st.stx_dev_major, st.stx_dev_minor)
            }
        };
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let root = RootDir {
            path: path.to_path_buf(),
            fd,
            is_slash,
            mnt,
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        // Probe openat2 once, so that an old kernel fails here with a clear message.
        root.open_beneath(".", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSYS) {
                    InstallError::new(
                        HResult::WU_E_UH_UNEXPECTED,
                        "this kernel lacks openat2(2) (Linux 5.6 or later is required to install safely)",
                    )
                } else {
                    InstallError::io(path, e)
                }
            })?;
        Ok(root)
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mount the root directory itself is on.
    pub fn mnt(&self) -> u64 {
        self.mnt
    }

    /// Creates a symlink at `rel` (which must not exist) pointing to `target`.
    pub fn symlink(&self, target: &str, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        let t = CString::new(target).map_err(|_| {
            InstallError::new(HResult::E_INVALIDARG, format!("{target:?}: a NUL byte"))
        })?;
        // SAFETY: symlinkat with NUL-terminated strings and a directory descriptor.
        if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(self.err(rel)(last_err()));
        }
        Ok(())
    }

    /// Whether the root is the machine's `/`.
    pub fn is_slash(&self) -> bool {
        self.is_slash
    }

    /// `rel` joined to the root's path, for messages and for handlers that run outside.
    pub fn display(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    fn err(&self, rel: &str) -> impl Fn(std::io::Error) -> InstallError + '_ {
        let p = self.path.join(crate::escape_controls(rel));
        move |e| InstallError::io(&p, e)
    }

    /// `openat2(root, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
    fn open_beneath(&self, rel: &str, flags: i32) -> std::io::Result<OwnedFd> {
        let c = CString::new(rel).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        // A concurrent rename anywhere on the system makes a `..` lookup return EAGAIN:
        // retry a bounded number of times.
        for _ in 0..16 {
            // SAFETY: openat2 with a valid directory descriptor, a NUL-terminated path and
            // an open_how of the size passed; the result is a new descriptor we own.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh descriptor.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// The directory holding `rel` (resolved inside the root) and its last component.
    fn parent(&self, rel: &str) -> std::io::Result<(OwnedFd, CString)> {
        let (dir, name) = split(rel);
        if name.is_empty() || name == "." || name == ".." {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let fd = self.open_beneath(dir, libc::O_PATH | libc::O_DIRECTORY)?;
        let name =
            CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok((fd, name))
    }

    /// What is at `rel`, not following a symlink there; `None` when nothing is (or a
    /// parent is missing or not a directory).
    pub fn stat(&self, rel: &str) -> Result<Option<Stat>> {
        let (dir, name) = match self.parent(rel) {
            Ok(x) => x,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(None)
            }
            Err(e) => return Err(self.err(rel)(e)),
        };
        statx_at(dir.as_raw_fd(), &name).map_err(self.err(rel))
    }

    /// [`stat`](Self::stat) for a hint only — whether a file may be left as it is — with
    /// the last parent directory this thread looked in kept open: files come directory by
    /// directory, and an upgrade asks this of every file. A stale answer (the directory
    /// replaced meanwhile) only means "changed" — the file is written again — never a
    /// change outside the root: every change resolves its path anew.
    pub fn stat_hint(&self, rel: &str) -> Option<Stat> {
        use std::cell::RefCell;
        thread_local! {
            static LAST: RefCell<Option<(u64, String, OwnedFd)>> = const { RefCell::new(None) };
        }
        let (dir, name) = split(rel);
        let name = CString::new(name).ok()?;
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            let hit = matches!(&*last, Some((id, d, _)) if *id == self.id && d == dir);
            if !hit {
                let fd = self
                    .open_beneath(dir, libc::O_PATH | libc::O_DIRECTORY)
                    .ok()?;
                *last = Some((self.id, dir.to_string(), fd));
            }
            let (_, _, fd) = last.as_ref()?;
            statx_at(fd.as_raw_fd(), &name).ok().flatten()
        })
    }

    /// The target of the symlink at `rel`; `None` when there is no symlink there.
    pub fn read_link(&self, rel: &str) -> Result<Option<String>> {
        if !self.stat(rel)?.is_some_and(|s| s.is_symlink()) {
            return Ok(None);
        }
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: readlinkat writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = last_err();
            if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) {
                return Ok(None);
            }
            return Err(self.err(rel)(e));
        }
        buf.truncate(n as usize);
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    /// Opens the regular file at `rel` for reading (a symlink there is not followed).
    pub fn open_file(&self, rel: &str) -> Result<std::fs::File> {
        let fd = self
            .open_beneath(rel, libc::O_RDONLY | libc::O_NOFOLLOW)
            .map_err(self.err(rel))?;
        Ok(std::fs::File::from(fd))
    }

    /// Creates the directory `rel` with exactly `mode` (set after creation, whatever the
    /// umask).
    pub fn mkdir(&self, rel: &str, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        // SAFETY: mkdirat/fchmodat on a directory descriptor and a NUL-terminated name.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
            return Err(self.err(rel)(last_err()));
        }
        if unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) } != 0 {
            return Err(self.err(rel)(last_err()));
        }
        Ok(())
    }

    /// Removes the empty directory `rel`.
    pub fn rmdir(&self, rel: &str) -> std::io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: unlinkat on a directory descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
            return Err(last_err());
        }
        Ok(())
    }

    /// Removes the file or symlink at `rel`.
    pub fn remove_file(&self, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        // SAFETY: as in rmdir.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(self.err(rel)(last_err()));
        }
        Ok(())
    }

    /// Renames `from` (an absolute path outside the root: the agent's work directory) to
    /// `rel`, replacing what is there.
    pub fn rename_in(&self, from: &Path, rel: &str) -> Result<()> {
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        let f = cstr(from.as_os_str())?;
        // SAFETY: renameat with valid descriptors and NUL-terminated names.
        if unsafe { libc::renameat(libc::AT_FDCWD, f.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }
            != 0
        {
            return Err(self.err(rel)(last_err()));
        }
        Ok(())
    }

    /// Hard-links the file or symlink at `rel` to `to` (an absolute path outside the root).
    pub fn link_out(&self, rel: &str, to: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        let t = cstr(to.as_os_str())?;
        // SAFETY: linkat with valid descriptors and NUL-terminated names; flags 0 never
        // follows a symlink at `rel`.
        if unsafe {
            libc::linkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                0,
            )
        } != 0
        {
            return Err(self.err(rel)(last_err()));
        }
        Ok(())
    }

    /// Flushes the filesystem holding the root (one `syncfs`).
    pub fn syncfs(&self) -> Result<()> {
        self.syncfs_at(".")
    }

    /// Flushes the filesystem holding the directory `rel` (a mount inside the root).
    pub fn syncfs_at(&self, rel: &str) -> Result<()> {
        let fd = self
            .open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(self.err(rel))?;
        upkeep_fs::syncfs_fd(std::os::fd::AsFd::as_fd(&fd)).map_err(self.err(rel))
    }

    /// Makes the directory `rel`'s entries durable (`fsync` of the directory).
    pub fn fsync_dir(&self, rel: &str) -> Result<()> {
        let fd = self
            .open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(self.err(rel))?;
        std::fs::File::from(fd).sync_all().map_err(self.err(rel))
    }

    /// Renames `from` to `to`, both inside the root (on one mount).
    pub fn rename_within(&self, from: &str, to: &str) -> Result<()> {
        let (fd, fname) = self.parent(from).map_err(self.err(from))?;
        let (td, tname) = self.parent(to).map_err(self.err(to))?;
        // SAFETY: renameat with valid descriptors and NUL-terminated names.
        if unsafe {
            libc::renameat(
                fd.as_raw_fd(),
                fname.as_ptr(),
                td.as_raw_fd(),
                tname.as_ptr(),
            )
        } != 0
        {
            return Err(self.err(to)(last_err()));
        }
        Ok(())
    }

    /// Hard-links the file or symlink at `from` to `to`, both inside the root.
    pub fn link_within(&self, from: &str, to: &str) -> Result<()> {
        let (fd, fname) = self.parent(from).map_err(self.err(from))?;
        let (td, tname) = self.parent(to).map_err(self.err(to))?;
        // SAFETY: linkat with valid descriptors and NUL-terminated names; flags 0 never
        // follows a symlink at `from`.
        if unsafe {
            libc::linkat(
                fd.as_raw_fd(),
                fname.as_ptr(),
                td.as_raw_fd(),
                tname.as_ptr(),
                0,
            )
        } != 0
        {
            return Err(self.err(from)(last_err()));
        }
        Ok(())
    }

    /// Creates the file `rel` (which must not exist) with exactly `mode`, for writing.
    pub fn create_file(&self, rel: &str, mode: u32) -> Result<std::fs::File> {
        let (dir, name) = self.parent(rel).map_err(self.err(rel))?;
        // SAFETY: openat on a directory descriptor with a NUL-terminated name; the result
        // is a new descriptor we own.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(self.err(rel)(last_err()));
        }
        // SAFETY: a fresh descriptor.
        let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(self.err(rel))?;
        Ok(f)
    }

    /// Creates the directory `rel` readable by root only, unless a directory is there.
    pub fn ensure_private_dir(&self, rel: &str) -> Result<()> {
        match self.stat(rel)? {
            Some(s) if s.is_dir() => Ok(()),
            Some(_) => Err(InstallError::new(
                HResult::WU_E_UH_UNEXPECTED,
                format!("{}: not a directory", self.display(rel).display()),
            )),
            None => self.mkdir(rel, 0o700),
        }
    }

    /// The path a lookup of `rel` inside the root reaches, `/`-separated and relative:
    /// every symlink on the way is followed as `RESOLVE_IN_ROOT` follows it (an absolute
    /// target starts again at the root, `..` stops at the root); the last component is
    /// followed too when `follow_last`. Components that do not exist yet are kept as
    /// written. A loop is refused.
    pub fn canonical(&self, rel: &str, follow_last: bool) -> Result<String> {
        self.walk(rel, follow_last, &|p| self.node(p), false)
            .map(|(p, _)| p)
    }

    /// What is at `rel` on disk, for [`walk`](Self::walk).
    pub(crate) fn node(&self, rel: &str) -> Result<Node> {
        Ok(match self.stat(rel)? {
            None => Node::Absent,
            Some(s) if s.is_symlink() => match self.read_link(rel)? {
                Some(t) => Node::Link(t),
                None => Node::Absent,
            },
            Some(_) => Node::Other,
        })
    }

    /// The resolution behind [`canonical`](Self::canonical) and the archive's link check:
    /// `node(p)` says what is at the canonical path `p`. An absolute target starts again at
    /// the root, as `RESOLVE_IN_ROOT` and a chroot resolve it. With `strict`, a `..` above
    /// the root is not stopped there but returned as the step that would leave the root,
    /// `Ok((_, Some(why)))`.
    pub(crate) fn walk(
        &self,
        rel: &str,
        follow_last: bool,
        node: &dyn Fn(&str) -> Result<Node>,
        strict: bool,
    ) -> Result<(String, Option<String>)> {
        let mut out: Vec<String> = Vec::new();
        let mut todo: std::collections::VecDeque<String> =
            rel.split('/').map(str::to_string).collect();
        let mut links = 0;
        let mut missing = false;
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    if out.pop().is_none() && strict {
                        return Ok((String::new(), Some("`..` above the root".to_string())));
                    }
                    continue;
                }
                _ => {}
            }
            out.push(c);
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            if missing || (last && !follow_last) {
                continue;
            }
            let here = out.join("/");
            match node(&here)? {
                Node::Link(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(InstallError::new(
                            HResult::WU_E_UH_INSTALLERFAILURE,
                            format!(
                                "{}: too many levels of symbolic links (a loop?)",
                                crate::escape_controls(rel)
                            ),
                        ));
                    }
                    out.pop();
                    if target.starts_with('/') {
                        out.clear();
                    }
                    for c in target.rsplit('/') {
                        todo.push_front(c.to_string());
                    }
                }
                Node::Absent => missing = true,
                Node::Other => {}
            }
        }
        Ok((out.join("/"), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        upkeep_fs::create_dir_all(root.join("usr/lib")).unwrap();
        upkeep_fs::symlink("usr/lib", root.join("lib")).unwrap();
        upkeep_fs::symlink("/", root.join("abs")).unwrap();
        upkeep_fs::symlink("../../..", root.join("usr/lib/up")).unwrap();
        upkeep_fs::write(t.path().join("outside"), b"host").unwrap();
        let r = RootDir::open(&root).unwrap();
        assert_eq!(r.canonical("lib/x.so", false).unwrap(), "usr/lib/x.so");
        assert_eq!(
            r.canonical("abs/usr/lib/up/outside", false).unwrap(),
            "outside"
        );
        assert_eq!(r.canonical("lib", true).unwrap(), "usr/lib");
        assert_eq!(r.canonical("lib", false).unwrap(), "lib");
        // The kernel agrees: nothing above the root is reached.
        assert!(r.stat("lib/up/outside").unwrap().is_none());
        r.rename_in(
            &{
                let f = t.path().join("staged");
                upkeep_fs::write(&f, b"new").unwrap();
                f
            },
            "abs/usr/lib/up/outside",
        )
        .unwrap();
        assert_eq!(upkeep_fs::read(t.path().join("outside")).unwrap(), b"host");
        assert_eq!(upkeep_fs::read(root.join("outside")).unwrap(), b"new");
        upkeep_fs::symlink("loop", root.join("loop")).unwrap();
        assert!(r.canonical("loop/x", false).is_err());
    }
}
