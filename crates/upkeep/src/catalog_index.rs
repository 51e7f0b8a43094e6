//! The catalog index: the catalog a service's verified metadata produced, kept beside that
//! metadata (`<metadata_dir>/catalog.idx`) so that a new process searching an unchanged
//! repository reads the records it needs instead of loading and verifying every targets
//! role again.
//!
//! **Valid only for the metadata it came from.** The index names the SHA-256 of the trusted
//! `root.json` and `snapshot.json` it was built under; after every refresh (which verifies
//! the top-level metadata as always) it is used only if both still match — any change of
//! the trusted metadata rebuilds the catalog from the verified roles and writes a new index.
//!
//! **Tampering is detected.** The header carries the SHA-256 of the table of entries, and
//! the table the SHA-256 of each record: a changed table is refused when the index is
//! opened; a changed record when it is read, which marks the catalog tampered — the search
//! that met it is run again on a catalog rebuilt from the verified metadata, and the index
//! is rewritten. (Whoever can write the state directory can also replace the trusted root
//! there; the index is no weaker than that directory, whose permissions the agent
//! enforces.)
//!
//! Layout: `UPKIDX03`, a little-endian `u64` header length, the header (JSON), the table
//! (`count` slots of 61 bytes: id, record offset, record length, has-rules flag, record
//! SHA-256), then the records in catalog order. A record is the verified `custom` text
//! the update came from, as the targets role carried it (a `u32` length, then the text —
//! read back by the same parser that read it from the role), followed by a binary tail
//! with its resolved content files; the header names the service of every entry.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use sha2::Digest;
use upkeep_tuf::metadata::Custom;
use upkeep_types::{ContentFile, HResult, Update, UpdateState};
use uuid::Uuid;

use crate::catalog::{Catalog, UpdateException};

const MAGIC: &[u8; 8] = b"UPKIDX03";
const SLOT: usize = 16 + 8 + 4 + 1 + 32;

/// The file name of a service's catalog index.
pub(crate) const FILE: &str = "catalog.idx";

/// What the index was built under: SHA-256 of the trusted `root.json` and `snapshot.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Key {
    root_sha256: String,
    snapshot_sha256: String,
}

impl Key {
    /// The key of the metadata trusted in `dir` now; `None` without a snapshot.
    pub(crate) fn of(dir: &Path) -> Option<Key> {
        let h = |name: &str| {
            std::fs::read(dir.join(name))
                .ok()
                .map(|b| hex::encode(sha2::Sha256::digest(&b)))
        };
        Some(Key {
            root_sha256: h("root.json")?,
            snapshot_sha256: h("snapshot.json")?,
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    key: Key,
    /// The service every entry is from.
    service: Option<String>,
    count: u64,
    table_sha256: String,
    warnings: Vec<(String, u32)>,
}

struct Slot {
    id: Uuid,
    offset: u64,
    len: u32,
    rules: bool,
    sha: [u8; 32],
}

/// Writes the index of `cat`, built under `key` from the verified record texts `records`
/// (one per entry, in entry order), to `path` (replacing it atomically; not flushed to
/// disk: a lost or damaged index is rebuilt).
pub(crate) fn write(
    path: &Path,
    key: &Key,
    cat: &Catalog,
    records: &[Custom],
) -> std::io::Result<()> {
    let entries = cat.entries();
    // One service per catalog index (a merged catalog is never written).
    let service = entries
        .first()
        .and_then(|u| u.service())
        .map(str::to_string);
    if entries.iter().any(|u| u.service() != service.as_deref()) {
        return Err(std::io::Error::other("the catalog mixes services"));
    }
    if records.len() != entries.len() {
        return Err(std::io::Error::other(
            "the record texts do not match the catalog's entries",
        ));
    }
    // Slots (each with its record's hash) and the records' tails are made on up to four
    // threads, in order; the record texts themselves are written as they are, not copied.
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .clamp(1, 4);
    let chunk = entries.len().div_ceil(threads).max(1);
    let parts: Vec<std::io::Result<(Vec<u8>, Vec<u8>)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = entries
            .chunks(chunk)
            .zip(records.chunks(chunk))
            .map(|(part, texts)| sc.spawn(move || encode(part, texts)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("encoding a record does not panic"))
            .collect()
    });
    let mut tails = Vec::with_capacity(parts.len());
    let mut table = Vec::with_capacity(entries.len() * SLOT);
    let mut base = 0u64;
    for part in parts {
        let (tail, mut t) = part?;
        let mut size = 0u64;
        for slot in t.chunks_exact_mut(SLOT) {
            let off = u64::from_le_bytes(slot[16..24].try_into().expect("8 bytes"));
            size = off + u64::from(u32::from_le_bytes(slot[24..28].try_into().expect("4")));
            slot[16..24].copy_from_slice(&(off + base).to_le_bytes());
        }
        base += size;
        tails.push(tail);
        table.extend_from_slice(&t);
    }
    let header = Header {
        key: key.clone(),
        service,
        count: cat.len() as u64,
        table_sha256: hex::encode(sha2::Sha256::digest(&table)),
        warnings: cat
            .warnings()
            .iter()
            .map(|w| (w.message.clone(), w.hresult.as_u32()))
            .collect(),
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    upkeep_fs::write_replace(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        w.write_all(&table)?;
        let mut tails = tails.iter().flat_map(|t| TailIter(t));
        for text in records {
            let tail = tails.next().expect("one tail per record");
            w.write_all(&(text.as_str().len() as u32).to_le_bytes())?;
            w.write_all(text.as_str().as_bytes())?;
            w.write_all(tail)?;
        }
        Ok(())
    })
    .map_err(|e| e.source)
}

/// A record's tail: its content files as resolved from the targets, then its EULA and its
/// bootstrapper (each after a 0/1 byte). A file is its path, its length (`u64`) and its
/// hashes (a count byte, then algorithm and hex pairs); strings are a `u32` length and UTF-8.
fn put_tail(out: &mut Vec<u8>, u: &Update) -> std::io::Result<()> {
    let content = u.download_contents();
    put_u32(out, content.len())?;
    for f in content {
        put_file(out, f)?;
    }
    for f in [u.eula_file(), u.bootstrapper()] {
        match f {
            Some(f) => {
                out.push(1);
                put_file(out, f)?;
            }
            None => out.push(0),
        }
    }
    Ok(())
}

fn put_file(out: &mut Vec<u8>, f: &ContentFile) -> std::io::Result<()> {
    put_str(out, &f.path)?;
    out.extend_from_slice(&f.length.to_le_bytes());
    out.push(u8::try_from(f.hashes.len()).map_err(std::io::Error::other)?);
    for (alg, hex) in f.hashes.iter() {
        put_str(out, alg)?;
        put_str(out, hex)?;
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> std::io::Result<()> {
    put_u32(out, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let n = u32::try_from(n).map_err(std::io::Error::other)?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// A tail read back ([`put_tail`]'s layout): content files, EULA, bootstrapper.
struct Tail {
    content: Vec<ContentFile>,
    eula: Option<ContentFile>,
    bootstrapper: Option<ContentFile>,
}

/// Reads a tail; `None` when it is not one whole tail.
fn get_tail(b: &[u8]) -> Option<Tail> {
    let mut r = Reader(b);
    let n = r.u32()? as usize;
    let content = (0..n.min(b.len()))
        .map(|_| r.file())
        .collect::<Option<Vec<_>>>()?;
    if content.len() != n {
        return None;
    }
    let opt = |r: &mut Reader| match r.take(1)?[0] {
        0 => Some(None),
        1 => r.file().map(Some),
        _ => None,
    };
    let eula = opt(&mut r)?;
    let bootstrapper = opt(&mut r)?;
    r.0.is_empty().then_some(Tail {
        content,
        eula,
        bootstrapper,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn file(&mut self) -> Option<ContentFile> {
        let path = self.str()?.to_string();
        let length = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
        let mut hashes = upkeep_types::Hashes::new();
        for _ in 0..self.take(1)?[0] {
            let alg = self.str()?;
            hashes.insert(alg, self.str()?);
        }
        Some(ContentFile {
            path,
            length,
            hashes,
        })
    }
}

/// The tails of one part, each preceded by its length (a `u32`), one after another.
struct TailIter<'a>(&'a [u8]);

impl<'a> Iterator for TailIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let (tail, rest) = self.0[4..].split_at(n);
        self.0 = rest;
        Some(tail)
    }
}

/// The tails of `part` (length-prefixed) and its slots (offsets relative to the part's
/// first record). A record is its text's length (`u32`), the text, then the tail's JSON.
fn encode(part: &[Update], texts: &[Custom]) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut tails = Vec::with_capacity(part.len() * 160);
    let mut table = Vec::with_capacity(part.len() * SLOT);
    let mut offset = 0u64;
    for (u, text) in part.iter().zip(texts) {
        let text = text.as_str().as_bytes();
        let len_at = tails.len();
        tails.extend_from_slice(&[0; 4]);
        put_tail(&mut tails, u)?;
        let tail = &tails[len_at + 4..];
        let text_len = u32::try_from(text.len()).map_err(std::io::Error::other)?;
        let len = 4 + text.len() + tail.len();
        let mut h = sha2::Sha256::new();
        h.update(text_len.to_le_bytes());
        h.update(text);
        h.update(tail);
        let tail_len = tail.len() as u32;
        tails[len_at..len_at + 4].copy_from_slice(&tail_len.to_le_bytes());
        table.extend_from_slice(u.identity().update_id.as_bytes());
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(
            &u32::try_from(len)
                .map_err(std::io::Error::other)?
                .to_le_bytes(),
        );
        table.push(u8::from(!u.metadata().applicability.is_empty()));
        table.extend_from_slice(&h.finalize());
        offset += len as u64;
    }
    Ok((tails, table))
}

/// Opens the index at `path` if it was built under `key` and its table is intact: the
/// catalog (entries read as needed) — `None` otherwise (a damaged one is removed).
pub(crate) fn open(path: &Path, key: &Key) -> Option<Catalog> {
    let file = std::fs::File::open(path).ok()?;
    let refuse = |why: &str| {
        tracing::warn!(index = %path.display(), "catalog index refused ({why}); rebuilding it from the verified metadata");
        let _ = std::fs::remove_file(path);
        None
    };
    let mut head = [0u8; 16];
    if file.read_exact_at(&mut head, 0).is_ok() && head[..6] == MAGIC[..6] && head[..8] != *MAGIC {
        // Written by another version of the agent: simply rebuilt.
        tracing::debug!(index = %path.display(), "catalog index of another format; rebuilding it");
        let _ = std::fs::remove_file(path);
        return None;
    }
    if file.read_exact_at(&mut head, 0).is_err() || &head[..8] != MAGIC {
        return refuse("not an index");
    }
    let hlen = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    if hlen > 64 << 20 {
        return refuse("header too large");
    }
    let mut hbytes = vec![0u8; hlen as usize];
    if file.read_exact_at(&mut hbytes, 16).is_err() {
        return refuse("truncated header");
    }
    let Ok(header) = serde_json::from_slice::<Header>(&hbytes) else {
        return refuse("bad header");
    };
    if header.key != *key {
        return None; // built under other metadata: simply stale
    }
    let tlen = (header.count as usize).checked_mul(SLOT)?;
    let mut table = vec![0u8; tlen];
    let table_at = 16 + hlen;
    if file.read_exact_at(&mut table, table_at).is_err()
        || hex::encode(sha2::Sha256::digest(&table)) != header.table_sha256
    {
        return refuse("its table does not match its header");
    }
    let slots: Vec<Slot> = table
        .chunks_exact(SLOT)
        .map(|c| Slot {
            id: Uuid::from_bytes(c[..16].try_into().expect("16 bytes")),
            offset: u64::from_le_bytes(c[16..24].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(c[24..28].try_into().expect("4 bytes")),
            rules: c[28] != 0,
            sha: c[29..61].try_into().expect("32 bytes"),
        })
        .collect();
    let by_id = slots.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let parsed = (0..slots.len()).map(|_| OnceLock::new()).collect();
    let warnings = header
        .warnings
        .into_iter()
        .map(|(message, h)| UpdateException {
            message,
            hresult: HResult(h as i32),
        })
        .collect();
    let lazy = Lazy {
        file,
        path: path.to_path_buf(),
        blob_at: table_at + tlen as u64,
        service: header.service.map(Arc::from),
        slots,
        by_id,
        parsed,
        tampered: AtomicBool::new(false),
    };
    Some(Catalog::from_index(lazy, warnings))
}

/// The entries of an index, read and checked one by one.
#[derive(Debug)]
pub(crate) struct Lazy {
    file: std::fs::File,
    path: PathBuf,
    blob_at: u64,
    service: Option<Arc<str>>,
    slots: Vec<Slot>,
    by_id: HashMap<Uuid, usize>,
    parsed: Vec<OnceLock<Option<Update>>>,
    tampered: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// A record read back: its text parsed by the catalog's own parser, and its tail.
fn decode(buf: &[u8], id: Uuid, service: Option<&Arc<str>>) -> Option<Update> {
    let n = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(buf.get(4..4 + n)?).ok()?;
    let tail = get_tail(&buf[4 + n..])?;
    let m = crate::catalog::parse_record(text).ok()??;
    if m.id != id {
        return None;
    }
    Some(Update::signed(
        m,
        tail.content,
        tail.eula,
        tail.bootstrapper,
        service.cloned(),
        UpdateState::default(),
    ))
}

impl Lazy {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_tampered(&self) -> bool {
        self.tampered.load(Ordering::SeqCst)
    }

    /// Reads, checks and parses slot `i`; `None` (and the index marked tampered and
    /// removed) when its bytes are not what the table recorded.
    fn read(&self, i: usize) -> Option<Update> {
        let s = &self.slots[i];
        let mut buf = vec![0u8; s.len as usize];
        let ok = self
            .file
            .read_exact_at(&mut buf, self.blob_at + s.offset)
            .is_ok()
            && sha2::Sha256::digest(&buf)[..] == s.sha[..];
        match ok
            .then(|| decode(&buf, s.id, self.service.as_ref()))
            .flatten()
        {
            Some(u) => Some(u),
            None => {
                if !self.tampered.swap(true, Ordering::SeqCst) {
                    tracing::warn!(index = %self.path.display(), update = %s.id, "a record of the catalog index was changed; rebuilding the catalog from the verified metadata");
                    let _ = std::fs::remove_file(&self.path);
                }
                None
            }
        }
    }

    fn at(&self, i: usize) -> Option<&Update> {
        self.parsed[i].get_or_init(|| self.read(i)).as_ref()
    }

    pub(crate) fn get(&self, id: &Uuid) -> Option<&Update> {
        self.by_id.get(id).and_then(|&i| self.at(i))
    }

    pub(crate) fn with_rules(&self) -> impl Iterator<Item = &Update> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.rules)
            .filter_map(|(i, _)| self.at(i))
    }

    /// Every entry, in catalog order, parsed on up to four threads.
    pub(crate) fn all(&self) -> Vec<Update> {
        let n = self.slots.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(4);
        if threads < 2 || n < 1024 {
            return (0..n).filter_map(|i| self.at(i).cloned()).collect();
        }
        let chunk = n.div_ceil(threads);
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    sc.spawn(move || {
                        (t * chunk..((t + 1) * chunk).min(n))
                            .filter_map(|i| self.at(i).cloned())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("reading a record does not panic"))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep_types::{Hashes, UpdateMetadata};

    fn file(path: &str, n: u64) -> ContentFile {
        let mut hashes = Hashes::new();
        hashes.insert("sha256", "ab".repeat(32));
        hashes.insert("sha512", "cd".repeat(64));
        ContentFile {
            path: path.into(),
            length: n,
            hashes,
        }
    }

    #[test]
    fn a_tail_reads_back_whole_and_a_cut_one_does_not() {
        let m = UpdateMetadata::new(Uuid::from_u128(1), "One", "updates/1/a");
        let content = vec![file("updates/1/a", 7), file("updates/1/ü", 0)];
        let u = Update::new(
            m.clone(),
            content.clone(),
            Some(file("eula.txt", 3)),
            None,
            UpdateState::default(),
        );
        let mut b = Vec::new();
        put_tail(&mut b, &u).unwrap();
        let t = get_tail(&b).unwrap();
        assert_eq!(t.content, content);
        assert_eq!(t.eula, Some(file("eula.txt", 3)));
        assert_eq!(t.bootstrapper, None);
        for cut in 0..b.len() {
            assert!(get_tail(&b[..cut]).is_none(), "cut at {cut}");
        }
        b.push(0);
        assert!(get_tail(&b).is_none(), "trailing bytes");
        let empty = Update::new(m, Vec::new(), None, None, UpdateState::default());
        let mut b = Vec::new();
        put_tail(&mut b, &empty).unwrap();
        assert!(get_tail(&b).unwrap().content.is_empty());
    }
}
