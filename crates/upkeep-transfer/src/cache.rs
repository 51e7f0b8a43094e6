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

impl ContentCache {
    /// Opens (creating) a cache directory.
    pub fn open(dir: &Path) -> io::Result<ContentCache> {
        std::fs::create_dir_all(dir.join("objects"))?;
        std::fs::create_dir_all(dir.join("partial"))?;
        std::fs::create_dir_all(dir.join("verified"))?;
        // Temporary files of a process that died between write and rename; a live one
        // renames within moments, so anything an hour old is litter.
        if let Ok(rd) = std::fs::read_dir(dir.join("partial")) {
            for e in rd.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if old && e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
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
        let m = std::fs::symlink_metadata(&p).ok()?;
        let whole = m.is_file() && m.len() == file.length;
        if whole && self.stamp_matches(&k, &m) {
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
        let _ = std::fs::remove_file(self.object_path(&k));
        let _ = std::fs::remove_file(self.stamp_path(&k));
    }

    fn stamp_path(&self, key: &str) -> PathBuf {
        self.dir.join("verified").join(key)
    }

    fn stamp_matches(&self, key: &str, m: &std::fs::Metadata) -> bool {
        std::fs::read_link(self.stamp_path(key)).is_ok_and(|t| t.as_os_str() == &*stamp_of(m))
    }

    /// Records the object `key` as verified, as it is now. The stamp is a symlink whose
    /// target names the object's inode, modification time and size, replaced atomically.
    pub(crate) fn stamp(&self, key: &str) -> io::Result<()> {
        let m = std::fs::symlink_metadata(self.object_path(key))?;
        let tmp = self.temp_path(key);
        std::os::unix::fs::symlink(stamp_of(&m), &tmp)?;
        std::fs::rename(&tmp, self.stamp_path(key)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Keys of every verified object whose stamp still matches (a directory listing, a
    /// `readlink` and a `stat` per cached object — not per update: cheap for a search
    /// result of 100,000 updates).
    pub fn object_keys(&self) -> std::collections::HashSet<String> {
        std::fs::read_dir(self.dir.join("verified"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|k| {
                        std::fs::symlink_metadata(self.object_path(k))
                            .is_ok_and(|m| m.is_file() && self.stamp_matches(k, &m))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Bytes of an unfinished transfer of `file` kept for resuming.
    pub fn partial_len(&self, file: &ContentFile) -> u64 {
        key(file)
            .and_then(|k| std::fs::metadata(self.partial_path(&k)).ok())
            .map_or(0, |m| m.len())
    }
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
    let mut f = std::fs::File::open(p)?;
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
