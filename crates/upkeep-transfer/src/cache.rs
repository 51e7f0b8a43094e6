//! The content-addressed cache.

use std::io;
use std::path::{Path, PathBuf};

use upkeep_types::ContentFile;

/// `objects/<sha256>` (verified), `partial/<sha256>.part` and `.meta` (in progress),
/// `partial/<sha256>.<pid>.<n>.tmp` (a verified small file between write and rename).
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

    /// The verified copy of `file`, if the cache has one of the signed length.
    pub fn get(&self, file: &ContentFile) -> Option<PathBuf> {
        let p = self.object_path(&key(file)?);
        let m = std::fs::metadata(&p).ok()?;
        (m.is_file() && m.len() == file.length).then_some(p)
    }

    /// Keys of every verified object (one directory listing: cheap for a search result of
    /// 100,000 updates, unlike a `stat` each).
    pub fn object_keys(&self) -> std::collections::HashSet<String> {
        std::fs::read_dir(self.dir.join("objects"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
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
