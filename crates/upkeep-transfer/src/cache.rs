//! The content-addressed cache.
//!
//! An object is committed (renamed into `objects/`) only after its signed hashes matched,
//! and then *stamped*: `verified/<key>` (a symlink to `<inode>.<mtime>.<size>`) records the
//! object as it was when verified. A changed object (written in place, truncated, replaced)
//! has another inode, modification time or size — and only root can reach the cache — so
//! its stamp no longer matches: it is
//! hashed again when next used, and removed if it is wrong, so the next download fetches it
//! again. Objects without a matching stamp do not count as downloaded.

use std::io;
use std::path::{Path, PathBuf};

use upkeep_types::ContentFile;

/// `objects/<sha256>` (verified), `verified/<sha256>` (its stamp),
/// `partial/<sha256>.part` and `.meta` (in progress), `partial/<sha256>.<pid>.<n>.tmp` (a
/// verified small file between write and rename).
#[derive(Clone, Debug)]
pub struct ContentCache {
    dir: PathBuf,
}

/// The cache key of a file: its signed SHA-256, or SHA-512 when that is all it has.
pub fn key(file: &ContentFile) -> Option<String> {
    let h = file
        .hashes
        .get("sha256")
        .or_else(|| file.hashes.get("sha512"))?;
    // Hex only: the key becomes a file name.
    h.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| h.to_ascii_lowercase())
}

/// Whether the process that named a temporary file `<key>.<pid>.<n>.tmp` still runs (a
/// name without a pid is taken as live).
fn tmp_owner_alive(name: &str) -> bool {
    let Some(pid) = name
        .strip_suffix(".tmp")
        .and_then(|n| n.rsplit('.').nth(1))
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        return true;
    };
    if pid == std::process::id() as i32 {
        return true;
    }
    // SAFETY: kill with signal 0 only checks that the process exists; no memory effects.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl ContentCache {
    /// Opens (creating) a cache directory.
    pub fn open(dir: &Path) -> Result<ContentCache, upkeep_fs::PathError> {
        upkeep_fs::create_dir_all(dir.join("objects"))?;
        upkeep_fs::create_dir_all(dir.join("partial"))?;
        upkeep_fs::create_dir_all(dir.join("verified"))?;
        // Temporary files of a process that died between write and rename; a live one
        // renames within moments, so anything an hour old is litter.
        if let Ok(rd) = upkeep_fs::read_dir(dir.join("partial")) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if old && e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = upkeep_fs::remove_file(e.path());
                }
            }
        }
        Ok(ContentCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a verified file lives.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.dir.join("objects").join(key)
    }

    pub(crate) fn partial_path(&self, key: &str) -> PathBuf {
        self.dir.join("partial").join(format!("{key}.part"))
    }

    /// A private temporary name beside the partial files (unique in this process and
    /// across processes).
    pub(crate) fn temp_path(&self, key: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join("partial")
            .join(format!("{key}.{}.{n}.tmp", std::process::id()))
    }

    pub(crate) fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join("partial").join(format!("{key}.meta"))
    }

    /// The verified copy of `file`. An object whose stamp does not match (changed since
    /// it was verified, or from an agent that kept no stamps) is hashed now: stamped if
    /// right, removed if wrong (so it is fetched again).
    pub fn get(&self, file: &ContentFile) -> Option<PathBuf> {
        let k = key(file)?;
        let p = self.object_path(&k);
        let m = upkeep_fs::symlink_metadata(&p).ok()?;
        let whole = m.is_file() && m.len() == file.length;
        if whole && self.stamp_matches(&k, &m) {
            self.touch(&k);
            return Some(p);
        }
        if whole && hashes_match(&p, file).unwrap_or(false) {
            if let Err(e) = self.stamp(&k) {
                tracing::warn!("{}: stamping a verified object: {e}", p.display());
            }
            return Some(p);
        }
        tracing::warn!(
            "{}: the cached copy of {} no longer matches its signed length and hashes; removed, to be downloaded again",
            p.display(),
            file.path
        );
        self.evict(file);
        None
    }

    /// Hashes `file`'s object now: whether it is there and right. A wrong one is removed.
    pub fn verify(&self, file: &ContentFile) -> bool {
        let Some(k) = key(file) else { return false };
        let p = self.object_path(&k);
        if hashes_match(&p, file).unwrap_or(false) {
            return true;
        }
        if p.exists() {
            tracing::warn!(
                "{}: the cached copy of {} does not match its signed hashes; removed, to be downloaded again",
                p.display(),
                file.path
            );
            self.evict(file);
        }
        false
    }

    /// Removes `file`'s object and its stamp (it was found damaged).
    pub fn evict(&self, file: &ContentFile) {
        let Some(k) = key(file) else { return };
        let _ = upkeep_fs::remove_file(self.object_path(&k));
        let _ = upkeep_fs::remove_file(self.stamp_path(&k));
    }

    fn stamp_path(&self, key: &str) -> PathBuf {
        self.dir.join("verified").join(key)
    }

    fn stamp_matches(&self, key: &str, m: &std::fs::Metadata) -> bool {
        upkeep_fs::read_link(self.stamp_path(key)).is_ok_and(|t| t.as_os_str() == &*stamp_of(m))
    }

    /// Records the object `key` as verified, as it is now. The stamp is a symlink whose
    /// target names the object's inode, modification time and size, replaced atomically.
    pub(crate) fn stamp(&self, key: &str) -> Result<(), upkeep_fs::PathError> {
        let m = upkeep_fs::symlink_metadata(self.object_path(key))?;
        let tmp = self.temp_path(key);
        upkeep_fs::symlink(stamp_of(&m), &tmp)?;
        upkeep_fs::rename(&tmp, self.stamp_path(key)).inspect_err(|_| {
            let _ = upkeep_fs::remove_file(&tmp);
        })
    }

    /// Keys of every verified object whose stamp still matches (a directory listing, a
    /// `readlink` and a `stat` per cached object — not per update: cheap for a search
    /// result of 100,000 updates).
    pub fn object_keys(&self) -> std::collections::HashSet<String> {
        upkeep_fs::read_dir(self.dir.join("verified"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|k| {
                        upkeep_fs::symlink_metadata(self.object_path(k))
                            .is_ok_and(|m| m.is_file() && self.stamp_matches(k, &m))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records that the object `key` was used now (the modification time of its stamp,
    /// which least-recently-used eviction orders by; the stamp's target — what it checks —
    /// is unchanged).
    pub fn touch(&self, key: &str) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(self.stamp_path(key).as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a NUL-terminated path; a null `times` means "now"; the link itself is
        // changed, not what it names.
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                std::ptr::null(),
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
    }

    /// Every object in the cache, verified or not, with its size and when it was last
    /// used, least recently used first.
    pub fn entries(&self) -> Vec<CacheEntry> {
        let mut out: Vec<CacheEntry> = upkeep_fs::read_dir(self.dir.join("objects"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let key = e.file_name().into_string().ok()?;
                        let m = e.metadata().ok()?;
                        let stamp = upkeep_fs::symlink_metadata(self.stamp_path(&key)).ok();
                        Some(CacheEntry {
                            verified: stamp.is_some() && self.stamp_matches(&key, &m),
                            last_used: stamp
                                .and_then(|s| s.modified().ok())
                                .or_else(|| m.modified().ok())
                                .unwrap_or(std::time::UNIX_EPOCH),
                            bytes: m.len(),
                            key,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| {
            a.last_used
                .cmp(&b.last_used)
                .then_with(|| a.key.cmp(&b.key))
        });
        out
    }

    /// Unfinished downloads (`.part`) and temporary copies (`.tmp`, of a download or an
    /// import that has not been renamed into `objects/` yet): (file name, bytes, last
    /// written).
    pub fn partials(&self) -> Vec<(String, u64, std::time::SystemTime)> {
        upkeep_fs::read_dir(self.dir.join("partial"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let m = e.metadata().ok()?;
                        (name.ends_with(".part") || name.ends_with(".tmp"))
                            .then(|| (name, m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the object `key` and its stamp; the bytes freed.
    pub fn remove_key(&self, key: &str) -> u64 {
        let p = self.object_path(key);
        let n = upkeep_fs::symlink_metadata(&p).map_or(0, |m| m.len());
        let gone = upkeep_fs::remove_file(&p).is_ok();
        let _ = upkeep_fs::remove_file(self.stamp_path(key));
        if gone {
            n
        } else {
            0
        }
    }

    /// Removes unfinished downloads last written more than `max_age` ago (`None`: all) that
    /// no transfer holds; (files, bytes) removed.
    pub fn remove_partials(&self, max_age: Option<std::time::Duration>) -> (usize, u64) {
        let mut removed = (0, 0);
        for (name, bytes, modified) in self.partials() {
            let old = max_age.is_none_or(|age| modified.elapsed().is_ok_and(|e| e > age));
            if !old {
                continue;
            }
            let path = self.dir.join("partial").join(&name);
            if name.ends_with(".tmp") {
                // `<key>.<pid>.<n>.tmp`: the copy of a live process stays; one whose
                // process is gone (killed mid-copy) is litter.
                if tmp_owner_alive(&name) {
                    continue;
                }
                if upkeep_fs::remove_file(&path).is_ok() {
                    removed.0 += 1;
                    removed.1 += bytes;
                }
                continue;
            }
            // A running transfer holds the lock: its file stays.
            let Ok(Some(_held)) = upkeep_fs::try_lock(&path) else {
                continue;
            };
            if upkeep_fs::remove_file(&path).is_ok() {
                let key = name.trim_end_matches(".part");
                let _ = upkeep_fs::remove_file(self.meta_path(key));
                removed.0 += 1;
                removed.1 += bytes;
            }
        }
        removed
    }

    /// Removes least recently used objects until the objects add up to at most `max_bytes`,
    /// never one of `keep` (content a job is using now: a cap smaller than one job's
    /// content is exceeded rather than breaking the job); (objects, bytes) removed.
    pub fn enforce_cap(
        &self,
        max_bytes: u64,
        keep: &std::collections::HashSet<String>,
    ) -> (usize, u64) {
        let entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut removed = (0, 0);
        for e in entries {
            if total <= max_bytes {
                break;
            }
            if keep.contains(&e.key) {
                continue;
            }
            let freed = self.remove_key(&e.key);
            if freed > 0 || !self.object_path(&e.key).exists() {
                total = total.saturating_sub(e.bytes);
                removed.0 += 1;
                removed.1 += e.bytes;
            }
        }
        removed
    }

    /// Bytes of an unfinished transfer of `file` kept for resuming.
    pub fn partial_len(&self, file: &ContentFile) -> u64 {
        key(file)
            .and_then(|k| upkeep_fs::metadata(self.partial_path(&k)).ok())
            .map_or(0, |m| m.len())
    }
}

/// One object of the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its key (the content's SHA-256, or SHA-512).
    pub key: String,
    /// Its size.
    pub bytes: u64,
    /// When it was downloaded or last used (by an install, or a license read).
    pub last_used: std::time::SystemTime,
    /// Its stamp matches: it counts as downloaded.
    pub verified: bool,
}

/// The stamp of an object with metadata `m`: its inode, modification time and size. (Not
/// the change time: hard-linking an object — a backup, a copy of the cache — changes that
/// without changing a byte. Only root can reach the cache to set a modification time back.)
fn stamp_of(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}.{}.{:09}.{}",
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.len()
    )
}

/// Whether the file at `p` has `file`'s signed hashes.
fn hashes_match(p: &Path, file: &ContentFile) -> io::Result<bool> {
    use std::io::Read;
    let Some(mut d) = crate::pipeline::Digests::for_file(file) else {
        return Ok(false);
    };
    let mut f = upkeep_fs::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        d.update(&buf[..n]);
    }
    Ok(d.check(file).is_ok())
}
