//! upkeep's file-system layer: what every other crate needs from the disk, written once.
//!
//! - [`write_atomic`]: a file replaced whole or not at all, durable when it returns
//!   (temporary file in the same directory, `fsync`, `rename`, `fsync` of the directory).
//! - [`syncfs`]: one flush of a whole filesystem (cheaper than an `fsync` per file).
//! - [`free_space`]: bytes available to this process on a filesystem.
//! - [`try_lock`]: an exclusive advisory lock on a file only its owner can open (0600).
//! - [`Verifier`]: one check of signed hashes — every listed algorithm is checked; none
//!   listed, or only unknown ones, is an error, never a skip.
//!
//! - The standard library's path calls ([`read`], [`open`], [`open_with`],
//!   [`create_dir_all`], [`rename`], [`remove_file`], [`metadata`], [`read_dir`],
//!   [`copy`], …), each returning a [`PathError`] that names its path.
//!
//! Errors name their path ([`PathError`]; it converts into an `io::Error` of the same kind
//! for callers that speak `io`). The workspace's `clippy.toml` points every other crate
//! here: the raw calls are allowed only in this crate.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// An I/O error and the path it happened on. Its message says both; the I/O error is not
/// also its `source()`, so that a report says the cause once.
#[derive(Debug)]
pub struct PathError {
    /// The file or directory.
    pub path: PathBuf,
    /// The second path of a two-path call (a rename's or copy's destination, a link's
    /// name), when there is one.
    pub to: Option<PathBuf>,
    /// The cause.
    pub source: io::Error,
}

impl PathError {
    /// The cause's kind (`NotFound`, `AlreadyExists`, …).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// The cause's `errno`, when it came from the system.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// Whether the path (or a directory on the way to it) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == io::ErrorKind::NotFound
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.to {
            Some(to) => write!(
                f,
                "{} -> {}: {}",
                self.path.display(),
                to.display(),
                self.source
            ),
            None => write!(f, "{}: {}", self.path.display(), self.source),
        }
    }
}

impl std::error::Error for PathError {}

/// For callers whose errors are `io::Error`: the kind is kept and the message names the
/// path (the `PathError` is the error's inner value, so `raw_os_error` is on it).
impl From<PathError> for io::Error {
    fn from(e: PathError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// `map_err(at(path))`: names the path an I/O error happened on.
pub fn at(path: &Path) -> impl FnOnce(io::Error) -> PathError + '_ {
    move |source| PathError {
        path: path.to_path_buf(),
        to: None,
        source,
    }
}

/// `map_err(at2(from, to))`: names both paths of a rename, copy or link.
fn at2<'a>(from: &'a Path, to: &'a Path) -> impl FnOnce(io::Error) -> PathError + 'a {
    move |source| PathError {
        path: from.to_path_buf(),
        to: Some(to.to_path_buf()),
        source,
    }
}

// The standard library's calls, each returning an error that names its path (as uv's
// `uv-fs` and `fs-err` do). Everything outside this crate uses these: the workspace's
// `clippy.toml` refuses the raw ones.

/// `std::fs::read`.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<u8>, PathError> {
    let path = path.as_ref();
    std::fs::read(path).map_err(at(path))
}

/// `std::fs::read_to_string`.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String, PathError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(at(path))
}

/// `std::fs::write`: creates or truncates `path`, not atomically and not flushed (see
/// [`write_atomic`] for state that must survive a crash).
pub fn write(path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> Result<(), PathError> {
    let path = path.as_ref();
    std::fs::write(path, data).map_err(at(path))
}

/// `File::open`: for reading.
pub fn open(path: impl AsRef<Path>) -> Result<File, PathError> {
    let path = path.as_ref();
    File::open(path).map_err(at(path))
}

/// `File::create`: for writing, created or truncated.
pub fn create(path: impl AsRef<Path>) -> Result<File, PathError> {
    let path = path.as_ref();
    File::create(path).map_err(at(path))
}

/// `OpenOptions::open`: `path` opened as `options` say (flags, mode, `O_NOFOLLOW`…).
pub fn open_with(
    options: &std::fs::OpenOptions,
    path: impl AsRef<Path>,
) -> Result<File, PathError> {
    let path = path.as_ref();
    options.open(path).map_err(at(path))
}

/// `std::fs::create_dir_all`.
pub fn create_dir_all(path: impl AsRef<Path>) -> Result<(), PathError> {
    let path = path.as_ref();
    std::fs::create_dir_all(path).map_err(at(path))
}

/// `DirBuilder::create` with `mode` (before the umask); its parent must exist.
pub fn create_dir_mode(path: impl AsRef<Path>, mode: u32) -> Result<(), PathError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = path.as_ref();
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(at(path))
}

/// `DirBuilder::recursive(true).create` with `mode`: `path` and any missing parent,
/// each created with `mode` (before the umask).
pub fn create_dir_all_mode(path: impl AsRef<Path>, mode: u32) -> Result<(), PathError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = path.as_ref();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(at(path))
}

/// `std::fs::rename`: `from` replaces `to` atomically (same filesystem).
pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), PathError> {
    let (from, to) = (from.as_ref(), to.as_ref());
    std::fs::rename(from, to).map_err(at2(from, to))
}

/// `std::fs::copy`: the bytes and permissions of `from` into `to`.
pub fn copy(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<u64, PathError> {
    let (from, to) = (from.as_ref(), to.as_ref());
    std::fs::copy(from, to).map_err(at2(from, to))
}

/// `std::fs::hard_link`: `link` becomes a second name of `original`.
pub fn hard_link(original: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<(), PathError> {
    let (original, link) = (original.as_ref(), link.as_ref());
    std::fs::hard_link(original, link).map_err(at2(original, link))
}

/// `std::os::unix::fs::symlink`: `link` made a symbolic link to `target`.
pub fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<(), PathError> {
    let (target, link) = (target.as_ref(), link.as_ref());
    std::os::unix::fs::symlink(target, link).map_err(at(link))
}

/// `std::fs::read_link`.
pub fn read_link(path: impl AsRef<Path>) -> Result<PathBuf, PathError> {
    let path = path.as_ref();
    std::fs::read_link(path).map_err(at(path))
}

/// `std::fs::remove_file` (a symbolic link itself, not its target).
pub fn remove_file(path: impl AsRef<Path>) -> Result<(), PathError> {
    let path = path.as_ref();
    std::fs::remove_file(path).map_err(at(path))
}

/// `std::fs::remove_dir`: an empty directory.
pub fn remove_dir(path: impl AsRef<Path>) -> Result<(), PathError> {
    let path = path.as_ref();
    std::fs::remove_dir(path).map_err(at(path))
}

/// `std::fs::remove_dir_all` (symbolic links inside are removed, not followed).
pub fn remove_dir_all(path: impl AsRef<Path>) -> Result<(), PathError> {
    let path = path.as_ref();
    std::fs::remove_dir_all(path).map_err(at(path))
}

/// `std::fs::metadata` (follows symbolic links).
pub fn metadata(path: impl AsRef<Path>) -> Result<std::fs::Metadata, PathError> {
    let path = path.as_ref();
    std::fs::metadata(path).map_err(at(path))
}

/// `std::fs::symlink_metadata` (a symbolic link itself).
pub fn symlink_metadata(path: impl AsRef<Path>) -> Result<std::fs::Metadata, PathError> {
    let path = path.as_ref();
    std::fs::symlink_metadata(path).map_err(at(path))
}

/// `std::fs::read_dir`. An error reading a later entry is the directory's `io::Error`.
pub fn read_dir(path: impl AsRef<Path>) -> Result<std::fs::ReadDir, PathError> {
    let path = path.as_ref();
    std::fs::read_dir(path).map_err(at(path))
}

/// `std::fs::set_permissions`.
pub fn set_permissions(
    path: impl AsRef<Path>,
    permissions: std::fs::Permissions,
) -> Result<(), PathError> {
    let path = path.as_ref();
    std::fs::set_permissions(path, permissions).map_err(at(path))
}

/// `std::fs::canonicalize`.
pub fn canonicalize(path: impl AsRef<Path>) -> Result<PathBuf, PathError> {
    let path = path.as_ref();
    std::fs::canonicalize(path).map_err(at(path))
}

/// The directory of `path` and a temporary name in it for this process.
fn temp_beside(path: &Path) -> (&Path, PathBuf) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    (dir, dir.join(format!(".{name}.tmp{}", std::process::id())))
}

/// Replaces `path` with `data` atomically and durably: the old content or the new one is
/// there after a crash or a power cut, never a mix, and the new one is on disk when this
/// returns.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), PathError> {
    let (dir, tmp) = temp_beside(path);
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(at(path)(e));
    }
    fsync_dir(dir)
}

/// Replaces `path` with what `write` writes, atomically but not durably: a reader sees the
/// old file or the whole new one, never a part; after a crash either may be there, or
/// neither. For derived data that is checked when read and rebuilt when wrong (a cache),
/// where an `fsync` of many megabytes would cost more than rebuilding.
pub fn write_replace(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), PathError> {
    let mut r = Replacement::create(path)?;
    write(r.writer()).map_err(at(path))?;
    r.commit()
}

/// A file being written beside `path` that replaces it atomically on [`Replacement::commit`]
/// (not flushed to disk, as [`write_replace`]); dropped without a commit, it is removed and
/// `path` is left as it was. For a replacement written in several steps.
pub struct Replacement {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<io::BufWriter<File>>,
    at: u64,
}

impl Replacement {
    /// Starts the replacement of `path`.
    pub fn create(path: &Path) -> Result<Replacement, PathError> {
        let (_, tmp) = temp_beside(path);
        let f = File::create(&tmp).map_err(at(path))?;
        Ok(Replacement {
            path: path.to_path_buf(),
            tmp,
            w: Some(io::BufWriter::with_capacity(1 << 20, f)),
            at: 0,
        })
    }

    /// Where the next byte written goes.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// The writer (counting what it writes into [`Replacement::position`]).
    pub fn writer(&mut self) -> &mut dyn Write {
        self
    }

    /// Writes everything out and renames the file over `path`.
    pub fn commit(mut self) -> Result<(), PathError> {
        let w = self.w.take().expect("written once");
        let r = w.into_inner().map_err(|e| e.into_error()).and_then(|f| {
            drop(f);
            std::fs::rename(&self.tmp, &self.path)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        r.map_err(at(&self.path))
    }
}

impl Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.as_mut().expect("not committed").write(buf)?;
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.as_mut().expect("not committed").flush()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Flushes the filesystem holding `dir` (one `syncfs`).
pub fn syncfs(dir: &Path) -> Result<(), PathError> {
    let f = File::open(dir).map_err(at(dir))?;
    syncfs_fd(f.as_fd()).map_err(at(dir))
}

/// Flushes the filesystem holding an open file or directory.
pub fn syncfs_fd(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: syncfs takes a valid open file descriptor and has no memory effects.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Swaps two entries of one filesystem atomically (`renameat2(RENAME_EXCHANGE)`): after
/// a crash either both names hold what they held, or each the other's; then the directory
/// is flushed. Both must exist.
pub fn exchange(a: &Path, b: &Path) -> Result<(), PathError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| at(p)(io::Error::from_raw_os_error(libc::EINVAL)))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: renameat2 reads two NUL-terminated paths and has no memory effects.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(at(a)(io::Error::last_os_error()));
    }
    fsync_dir(a.parent().unwrap_or(Path::new(".")))
}

/// Bytes available to this process on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, PathError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| at(dir)(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: statvfs writes into the struct we pass and reads the NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(at(dir)(io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Takes an exclusive lock on `path` (created 0600 — no one else can open it to hold the
/// lock against us), opened for reading and writing; `None` when another process or
/// handle holds it.
pub fn try_lock(path: &Path) -> Result<Option<File>, PathError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(at(path))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(at(path)(e)),
    }
}

/// Why bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// No hash was listed, or none this build knows (the bytes cannot be trusted).
    NoUsableHash,
    /// A listed algorithm this build cannot compute.
    Unsupported(String),
    /// This algorithm's digest differs from the signed one.
    Mismatch(String),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::NoUsableHash => f.write_str("no sha256 or sha512 hash is signed"),
            VerifyError::Unsupported(a) => write!(f, "unsupported hash algorithm {a:?}"),
            VerifyError::Mismatch(a) => write!(f, "the {a} hash does not match the signed one"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks bytes against every signed hash: SHA-256 and SHA-512.
#[derive(Clone)]
pub struct Verifier {
    sha256: Option<(sha2::Sha256, String)>,
    sha512: Option<(sha2::Sha512, String)>,
}

impl Verifier {
    /// A verifier for `(algorithm, hex digest)` pairs. Every one must be known; at least
    /// one must be given.
    pub fn new<'a>(
        hashes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Verifier, VerifyError> {
        use sha2::Digest;
        let mut v = Verifier {
            sha256: None,
            sha512: None,
        };
        for (alg, hex) in hashes {
            match alg {
                "sha256" => v.sha256 = Some((sha2::Sha256::new(), hex.to_ascii_lowercase())),
                "sha512" => v.sha512 = Some((sha2::Sha512::new(), hex.to_ascii_lowercase())),
                other => return Err(VerifyError::Unsupported(other.to_string())),
            }
        }
        if v.sha256.is_none() && v.sha512.is_none() {
            return Err(VerifyError::NoUsableHash);
        }
        Ok(v)
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        if let Some((h, _)) = &mut self.sha256 {
            h.update(data);
        }
        if let Some((h, _)) = &mut self.sha512 {
            h.update(data);
        }
    }

    /// Whether every digest matches.
    pub fn finish(self) -> Result<(), VerifyError> {
        use sha2::Digest;
        if let Some((h, want)) = self.sha256 {
            if hex::encode(h.finalize()) != want {
                return Err(VerifyError::Mismatch("sha256".into()));
            }
        }
        if let Some((h, want)) = self.sha512 {
            if hex::encode(h.finalize()) != want {
                return Err(VerifyError::Mismatch("sha512".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exchange_swaps_two_directories_and_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), b"old").unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("f"), b"new").unwrap();
        super::exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read(a.join("f")).unwrap(), b"new");
        assert_eq!(std::fs::read(b.join("f")).unwrap(), b"old");
        let e = super::exchange(&a, &d.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("/a"), "{e}");
    }

    use super::*;

    #[test]
    fn the_standard_calls_name_their_path_once_and_keep_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = read(&missing).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let text = e.to_string();
        assert_eq!(text.matches("missing").count(), 1, "{text}");
        assert!(
            std::error::Error::source(&e).is_none(),
            "the cause is said once"
        );

        // Two-path calls name both.
        let to = dir.path().join("to");
        let e = rename(&missing, &to).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&*missing.to_string_lossy()) && text.contains(&*to.to_string_lossy()),
            "{text}"
        );

        // As an io::Error: same kind, the path in the message, the errno on the inner value.
        let io: io::Error = open(&missing).unwrap_err().into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(io.to_string().contains("missing"), "{io}");
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<PathError>());
        assert_eq!(inner.and_then(PathError::raw_os_error), Some(libc::ENOENT));

        // The happy paths do what std does.
        let f = dir.path().join("a/b/f");
        create_dir_all(f.parent().unwrap()).unwrap();
        write(&f, b"x").unwrap();
        assert_eq!(read_to_string(&f).unwrap(), "x");
        symlink("f", dir.path().join("a/b/l")).unwrap();
        assert_eq!(read_link(dir.path().join("a/b/l")).unwrap(), Path::new("f"));
        assert!(symlink_metadata(dir.path().join("a/b/l"))
            .unwrap()
            .is_symlink());
        create_dir_mode(dir.path().join("p"), 0o700).unwrap();
        let e = create_dir_mode(dir.path().join("p"), 0o700).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        remove_dir_all(dir.path().join("a")).unwrap();
        assert!(metadata(&f).unwrap_err().is_not_found());
    }

    #[test]
    fn write_atomic_replaces_whole_files_and_names_its_path_on_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        let e = write_atomic(&d.path().join("missing/f"), b"x").unwrap_err();
        assert!(e.to_string().contains("missing/f"), "{e}");
    }

    #[test]
    fn a_replacement_replaces_on_commit_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("idx");
        std::fs::write(&p, b"old").unwrap();
        // Dropped half-written: the old file stays, nothing else is left.
        let mut r = Replacement::create(&p).unwrap();
        r.writer().write_all(b"half").unwrap();
        assert_eq!(r.position(), 4);
        drop(r);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // Committed: the new file, whole.
        let mut r = Replacement::create(&p).unwrap();
        r.writer().write_all(b"new ").unwrap();
        r.writer().write_all(b"file").unwrap();
        assert_eq!(r.position(), 8);
        r.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new file");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // Its errors name the path.
        let e = Replacement::create(&d.path().join("missing/idx"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing/idx"), "{e}");
    }

    #[test]
    fn every_listed_hash_is_checked_and_none_is_an_error() {
        use sha2::Digest;
        let data = b"content";
        let s256 = hex::encode(sha2::Sha256::digest(data));
        let s512 = hex::encode(sha2::Sha512::digest(data));
        let mut v = Verifier::new([("sha256", s256.as_str()), ("sha512", s512.as_str())]).unwrap();
        v.update(data);
        assert_eq!(v.finish(), Ok(()));
        // A wrong sha512 beside a right sha256 is refused.
        let mut v = Verifier::new([("sha256", s256.as_str()), ("sha512", "00")]).unwrap();
        v.update(data);
        assert_eq!(v.finish(), Err(VerifyError::Mismatch("sha512".into())));
        assert_eq!(Verifier::new([]).err(), Some(VerifyError::NoUsableHash));
        assert_eq!(
            Verifier::new([("md5", "x")]).err(),
            Some(VerifyError::Unsupported("md5".into()))
        );
    }

    #[test]
    fn a_lock_is_held_once_and_only_its_owner_can_open_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let held = try_lock(&p).unwrap().expect("free");
        assert!(try_lock(&p).unwrap().is_none(), "held elsewhere");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(held);
        assert!(try_lock(&p).unwrap().is_some());
        assert!(free_space(d.path()).unwrap() > 0);
        syncfs(d.path()).unwrap();
    }
}
