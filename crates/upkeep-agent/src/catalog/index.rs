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
//! (`count` slots of [`Slot::LEN`] bytes: id, text offset and length, tail offset and
//! length, has-rules flag, record SHA-256 — one encoding, [`Slot::put`] and
//! [`Slot::get`]), then the records in catalog order. A record is the verified `custom` text
//! the update came from, as the targets role carried it (a `u32` length, then the text —
//! read back by the same parser that read it from the role), followed by a binary tail
//! with its resolved content files; the header names the service of every entry.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use sha2::Digest;
use upkeep_types::{ContentFile, HResult, Update, UpdateState};
use uuid::Uuid;

use crate::catalog::{Catalog, UpdateException};

const MAGIC: &[u8; 8] = b"UPKIDX04";

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
            upkeep_fs::read(dir.join(name))
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
    text_at: u64,
    text_len: u32,
    tail_at: u64,
    tail_len: u32,
    rules: bool,
    sha: [u8; 32],
}

impl Slot {
    /// The bytes of one slot in the table.
    const LEN: usize = 16 + 8 + 4 + 8 + 4 + 1 + 32;

    /// Appends the slot's bytes (little-endian numbers) to `out`.
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.text_at.to_le_bytes());
        out.extend_from_slice(&self.text_len.to_le_bytes());
        out.extend_from_slice(&self.tail_at.to_le_bytes());
        out.extend_from_slice(&self.tail_len.to_le_bytes());
        out.push(u8::from(self.rules));
        out.extend_from_slice(&self.sha);
    }

    /// Reads a slot from `c` ([`Slot::LEN`] bytes).
    fn get(c: &[u8]) -> Slot {
        let n = |r: std::ops::Range<usize>| -> &[u8] { &c[r] };
        Slot {
            id: Uuid::from_bytes(n(0..16).try_into().expect("16 bytes")),
            text_at: u64::from_le_bytes(n(16..24).try_into().expect("8 bytes")),
            text_len: u32::from_le_bytes(n(24..28).try_into().expect("4 bytes")),
            tail_at: u64::from_le_bytes(n(28..36).try_into().expect("8 bytes")),
            tail_len: u32::from_le_bytes(n(36..40).try_into().expect("4 bytes")),
            rules: c[40] != 0,
            sha: n(41..73).try_into().expect("32 bytes"),
        }
    }
}

/// The first half of an index, written beside the catalog build: the verified record
/// texts, in the order given, each with its SHA-256.
pub(crate) struct Texts {
    out: upkeep_fs::Replacement,
    written: Vec<(u64, u32, [u8; 32])>,
}

/// Starts the index at `path` with `texts` (the file replaces `path` only when
/// [`finish`]ed; dropped, it is removed).
pub(crate) fn write_texts<'a>(
    path: &Path,
    texts: impl Iterator<Item = &'a str>,
) -> std::io::Result<Texts> {
    let mut out = upkeep_fs::Replacement::create(path).map_err(|e| e.source)?;
    out.writer().write_all(MAGIC)?;
    let mut written = Vec::new();
    for t in texts {
        let at = out.position();
        out.writer().write_all(t.as_bytes())?;
        let len = u32::try_from(t.len()).map_err(std::io::Error::other)?;
        written.push((at, len, sha2::Sha256::digest(t.as_bytes()).into()));
    }
    Ok(Texts { out, written })
}

/// Completes the index of `cat`, built under `key`, whose entry `i` came from text
/// `text_of[i]` of `texts`: the tails, the table, the header, then the file replaces the
/// index (atomically; not flushed to disk: a lost or damaged index is rebuilt).
pub(crate) fn finish(
    texts: Texts,
    key: &Key,
    cat: &Catalog,
    text_of: &[usize],
) -> std::io::Result<()> {
    let Texts { mut out, written } = texts;
    let entries = cat.entries();
    // One service per catalog index (a merged catalog is never written).
    let service = entries
        .first()
        .and_then(|u| u.service())
        .map(str::to_string);
    if entries.iter().any(|u| u.service() != service.as_deref()) {
        return Err(std::io::Error::other("the catalog mixes services"));
    }
    if text_of.len() != entries.len() || text_of.iter().any(|&t| t >= written.len()) {
        return Err(std::io::Error::other(
            "the record texts do not match the catalog's entries",
        ));
    }
    // Tails and slots are made on up to four threads, in order; a slot's tail offset is
    // moved by the tails before its part once they are known.
    let written = &written;
    let parts = in_parts(entries.len(), |r| {
        encode(&entries[r.clone()], &text_of[r], written)
    });
    let mut table = Vec::with_capacity(entries.len() * Slot::LEN);
    for part in parts {
        let (tails, slots) = part?;
        let base = out.position();
        for mut slot in slots {
            slot.tail_at += base;
            slot.put(&mut table);
        }
        out.writer().write_all(&tails)?;
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
    let table_at = out.position();
    out.writer().write_all(&table)?;
    let header_at = out.position();
    out.writer().write_all(&header)?;
    out.writer().write_all(&table_at.to_le_bytes())?;
    out.writer().write_all(&header_at.to_le_bytes())?;
    out.writer().write_all(MAGIC)?;
    out.commit().map_err(|e| e.source)
}

/// A record's hash: SHA-256 of its text's SHA-256 and its tail.
fn record_sha(text_sha: &[u8; 32], tail: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(text_sha);
    h.update(tail);
    h.finalize().into()
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

/// The tails of `part` and its slots (tail offsets relative to the part's first tail).
fn encode(
    part: &[Update],
    text_of: &[usize],
    written: &[(u64, u32, [u8; 32])],
) -> std::io::Result<(Vec<u8>, Vec<Slot>)> {
    let mut tails = Vec::with_capacity(part.len() * 160);
    let mut slots = Vec::with_capacity(part.len());
    for (u, &t) in part.iter().zip(text_of) {
        let (text_at, text_len, text_sha) = &written[t];
        let start = tails.len();
        put_tail(&mut tails, u)?;
        let tail = &tails[start..];
        slots.push(Slot {
            id: u.identity().update_id,
            text_at: *text_at,
            text_len: *text_len,
            tail_at: start as u64,
            tail_len: u32::try_from(tail.len()).map_err(std::io::Error::other)?,
            rules: !u.metadata().applicability.is_empty(),
            sha: record_sha(text_sha, tail),
        });
    }
    Ok((tails, slots))
}

/// Opens the index at `path` if it was built under `key` and its table is intact: the
/// catalog (entries read as needed) — `None` otherwise (a damaged one is removed).
pub(crate) fn open(path: &Path, key: &Key) -> Option<Catalog> {
    let file = upkeep_fs::open(path).ok()?;
    let refuse = |why: &str| {
        tracing::warn!(index = %path.display(), "catalog index refused ({why}); rebuilding it from the verified metadata");
        let _ = upkeep_fs::remove_file(path);
        None
    };
    let mut head = [0u8; 16];
    if file.read_exact_at(&mut head, 0).is_ok() && head[..6] == MAGIC[..6] && head[..8] != *MAGIC {
        // Written by another version of the agent: simply rebuilt.
        tracing::debug!(index = %path.display(), "catalog index of another format; rebuilding it");
        let _ = upkeep_fs::remove_file(path);
        return None;
    }
    if file.read_exact_at(&mut head, 0).is_err() || &head[..8] != MAGIC {
        return refuse("not an index");
    }
    let len = file.metadata().ok()?.len();
    let mut trailer = [0u8; 24];
    if len < 32 || file.read_exact_at(&mut trailer, len - 24).is_err() || trailer[16..] != *MAGIC {
        return refuse("no trailer");
    }
    let table_at = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let header_at = u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes"));
    if !(8 <= table_at && table_at <= header_at && header_at <= len - 24)
        || len - 24 - header_at > 64 << 20
    {
        return refuse("bad trailer");
    }
    let mut hbytes = vec![0u8; (len - 24 - header_at) as usize];
    if file.read_exact_at(&mut hbytes, header_at).is_err() {
        return refuse("truncated header");
    }
    let Ok(header) = serde_json::from_slice::<Header>(&hbytes) else {
        return refuse("bad header");
    };
    if header.key != *key {
        return None; // built under other metadata: simply stale
    }
    if (header.count as u128) * (Slot::LEN as u128) != u128::from(header_at - table_at) {
        return refuse("its table does not match its header");
    }
    let mut table = vec![0u8; (header_at - table_at) as usize];
    if file.read_exact_at(&mut table, table_at).is_err()
        || hex::encode(sha2::Sha256::digest(&table)) != header.table_sha256
    {
        return refuse("its table does not match its header");
    }
    let slots: Vec<Slot> = table.chunks_exact(Slot::LEN).map(Slot::get).collect();
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
fn decode(text: &[u8], tail: &[u8], id: Uuid, service: Option<&Arc<str>>) -> Option<Update> {
    let text = std::str::from_utf8(text).ok()?;
    let tail = get_tail(tail)?;
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
        let n = s.text_len as usize;
        let mut buf = vec![0u8; n + s.tail_len as usize];
        let ok = self.file.read_exact_at(&mut buf[..n], s.text_at).is_ok()
            && self.file.read_exact_at(&mut buf[n..], s.tail_at).is_ok()
            && record_sha(&sha2::Sha256::digest(&buf[..n]).into(), &buf[n..]) == s.sha;
        match ok
            .then(|| decode(&buf[..n], &buf[n..], s.id, self.service.as_ref()))
            .flatten()
        {
            Some(u) => Some(u),
            None => {
                if !self.tampered.swap(true, Ordering::SeqCst) {
                    tracing::warn!(index = %self.path.display(), update = %s.id, "a record of the catalog index was changed; rebuilding the catalog from the verified metadata");
                    let _ = upkeep_fs::remove_file(&self.path);
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
        in_parts(n, |r| {
            r.filter_map(|i| self.at(i).cloned()).collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect()
    }
}

/// `f` over `0..n` cut into consecutive ranges, on up to four threads (one range below
/// 1,024 items or on one core), the results in order.
fn in_parts<R: Send>(n: usize, f: impl Fn(std::ops::Range<usize>) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(4);
    if threads < 2 || n < 1024 {
        return vec![f(0..n)];
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| sc.spawn(move || f(start..(start + chunk).min(n))))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .expect("a part of the catalog index does not panic")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_reads_back_as_written_in_its_length() {
        let slot = Slot {
            id: Uuid::from_u128(0x1234),
            text_at: u64::MAX - 1,
            text_len: 77,
            tail_at: 1 << 40,
            tail_len: u32::MAX,
            rules: true,
            sha: [9; 32],
        };
        let mut b = Vec::new();
        slot.put(&mut b);
        assert_eq!(b.len(), Slot::LEN);
        let back = Slot::get(&b);
        assert_eq!(
            (
                back.id,
                back.text_at,
                back.text_len,
                back.tail_at,
                back.tail_len,
                back.rules,
                back.sha
            ),
            (
                slot.id,
                slot.text_at,
                slot.text_len,
                slot.tail_at,
                slot.tail_len,
                slot.rules,
                slot.sha
            )
        );
    }
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
