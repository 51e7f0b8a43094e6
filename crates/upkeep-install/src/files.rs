//! The `files` handler's staging: tar, tar.zst or tar.gz payloads read once each, in the
//! order the update lists them, into the transaction's stage directory.
//!
//! Every entry is checked before anything in the root changes: its path must be relative
//! with no `..` (a leading `./` is fine); no entry may be written through a symlink (one in
//! the archive or one already on disk); a symlink's target must be relative and stay inside
//! the root; directories, regular files and symlinks are accepted, devices, FIFOs and hard
//! links are not. Every regular file is hashed (SHA-256) as it is read: a file whose path,
//! content and mode equal what the installed revision put there is not written at all (an
//! upgrade leaves it untouched); every other file is written to the stage directory with
//! its mode. A path that appears twice — in one payload or in two — takes the later entry,
//! as `tar -x` would. Each payload's signed SHA-256 is checked once its last byte is read.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use upkeep_types::HResult;

use crate::root::Node;
use crate::{InstallError, Layout, Reporter, Result};

/// A payload file in the content cache and what the signed metadata says of it.
#[derive(Clone, Debug)]
pub struct Payload {
    /// The cached file.
    pub path: PathBuf,
    /// Its signed length.
    pub length: u64,
    /// Its signed hashes (`(algorithm, hex)`), every one re-checked while it is read;
    /// `None` only where nothing is signed yet (a publisher checking a payload).
    pub hashes: Option<Vec<(String, String)>>,
}

/// What an archive entry becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staged {
    /// A directory with this mode.
    Dir(u32),
    /// A regular file.
    File {
        /// Its staged copy; `None` when it equals what is installed (see [`Known`]) and was
        /// not written.
        staged: Option<PathBuf>,
        /// Permission bits.
        mode: u32,
        /// Size in bytes.
        size: u64,
        /// SHA-256 of the content (hex).
        sha256: String,
    },
    /// A symbolic link.
    Symlink {
        /// Its staged copy; `None` when it equals what is installed.
        staged: Option<PathBuf>,
        /// Its target.
        target: String,
    },
}

/// One staged path, relative to the install root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedEntry {
    /// `/`-separated, no `.` or `..`.
    pub rel: String,
    /// What goes there.
    pub what: Staged,
}

/// What the installed revision has at a path, as recorded: a file's digest and mode, or a
/// symlink's target. A staged entry equal to it and still so on disk is not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Known {
    /// A file with this SHA-256, mode and size.
    File {
        /// SHA-256 (hex).
        sha256: String,
        /// Permission bits.
        mode: u32,
        /// Size.
        size: u64,
    },
    /// A symlink to this target.
    Symlink(String),
}

/// A refused payload; names from the archive in `msg` are shown with control characters
/// escaped.
fn bad(msg: String) -> InstallError {
    InstallError::new(
        HResult::WU_E_UH_INSTALLERFAILURE,
        crate::escape_controls(&msg),
    )
}

/// `a/./b/` → `a/b`; `None` for an empty path (the archive root itself); an error for an
/// absolute path or `..`.
fn clean(raw: &Path) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| bad(format!("{}: not UTF-8", raw.display())))?
                    .to_string(),
            ),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad(format!("{}: `..` in an archive path", raw.display())))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(format!("{}: absolute archive path", raw.display())))
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Whether a symlink at `rel` with `target` stays inside the root, lexically. An absolute
/// target is resolved as in the root, as `RESOLVE_IN_ROOT` and a chroot resolve it
/// (Debian's masked units are `x.service -> /dev/null`); `..` above the root is refused.
fn link_stays_inside(rel: &str, target: &Path) -> bool {
    // From the link's directory, or from the root for an absolute target.
    let mut depth: i64 = if target.is_absolute() {
        0
    } else {
        rel.matches('/').count() as i64
    };
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return false,
        }
    }
    true
}

struct Hashing<R> {
    inner: R,
    verifier: Option<upkeep_fs::Verifier>,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(v) = &mut self.verifier {
            v.update(&buf[..n]);
        }
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// Files up to this size are read into memory by the decoding thread and handed to a
/// writer thread, which hashes them and writes the ones that changed; larger files are
/// hashed and written as they are decoded.
const IN_MEMORY: u64 = 4 << 20;

/// Writer threads beside the decoding thread (measured: one decoder and two writers place
/// a tree fastest on two cores; see `install-notes.md`).
const WRITERS: usize = 2;

/// Staged files per directory of the stage directory.
const SHARD: usize = 128;

/// Files waiting for each writer.
const QUEUE: usize = 8;

/// What writers need to know, shared read-only.
#[derive(Clone, Copy)]
struct Context<'a> {
    layout: &'a Layout,
    known: &'a HashMap<String, Known>,
    verify_disk: bool,
    /// Stage what changed (false: check and hash only, for [`inspect`]).
    writes: bool,
}

/// A file for a writer: the `seq`-th assignment of `entries[index]`.
struct Job {
    seq: u64,
    index: usize,
    rel: String,
    data: Vec<u8>,
    mode: u32,
    dst: PathBuf,
}

impl Context<'_> {
    /// Whether the installed file at `rel` is the recorded one with this content.
    fn unchanged_file(&self, rel: &str, sha256: &str, mode: u32, size: u64) -> bool {
        let Some(Known::File {
            sha256: k,
            mode: km,
            size: ks,
        }) = self.known.get(rel)
        else {
            return false;
        };
        if k != sha256 || *km != mode || *ks != size {
            return false;
        }
        let root = &self.layout.dir;
        match root.stat_hint(rel) {
            Some(m) if m.is_file() && m.size == size && m.mode == mode => {
                !self.verify_disk
                    || root
                        .open_file(rel)
                        .ok()
                        .and_then(|f| reader_sha256(f).ok())
                        .is_some_and(|h| h == sha256)
            }
            _ => false,
        }
    }

    fn unchanged_link(&self, rel: &str, target: &str) -> bool {
        matches!(self.known.get(rel), Some(Known::Symlink(t)) if t == target)
            && self
                .layout
                .dir
                .read_link(rel)
                .is_ok_and(|t| t.as_deref() == Some(target))
    }

    /// A writer's work: hash, and write unless unchanged.
    fn write(&self, job: Job) -> Result<(u64, usize, Staged)> {
        let sha256 = hex::encode(Sha256::digest(&job.data));
        let size = job.data.len() as u64;
        let staged = if !self.writes || self.unchanged_file(&job.rel, &sha256, job.mode, size) {
            None
        } else {
            write_new(&job.dst, &job.data, job.mode)?;
            Some(job.dst)
        };
        Ok((
            job.seq,
            job.index,
            Staged::File {
                staged,
                mode: job.mode,
                size,
                sha256,
            },
        ))
    }
}

/// Stages payloads into a stage directory.
pub struct Stager<'a> {
    ctx: Context<'a>,
    stage: PathBuf,
    entries: Vec<StagedEntry>,
    /// For each entry, the number of the assignment that holds (a later entry for the same
    /// path wins over a writer's result for an earlier one).
    assigned: Vec<u64>,
    seq: u64,
    index: HashMap<String, usize>,
    /// Directories known to be real directories (on disk or staged).
    dirs_ok: HashSet<String>,
    symlinks: HashSet<String>,
    /// Files staged so far by each writer (the last: by the decoding thread itself).
    next: [usize; WRITERS + 1],
    protected: &'a [String],
    /// Archive directory path → the canonical path it reaches inside the root.
    canon: HashMap<String, String>,
    /// Hard links to resolve once every writer is done: (entry, its assignment, target).
    hardlinks: Vec<(usize, u64, usize)>,
    policy: Policy,
    /// Bytes of file content read so far, against `policy.max_bytes`.
    total: u64,
}

/// What the update's signed metadata allows its payloads.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Paths that may carry set-user-id or set-group-id bits (as the archive names them
    /// or as they resolve in the root); any other entry with them is refused.
    pub setid: Vec<String>,
    /// The most file content the payloads may expand to (`None`: no bound).
    pub max_bytes: Option<u64>,
    /// Where `max_bytes` comes from, for the refusal's message.
    pub max_bytes_source: String,
}

impl<'a> Stager<'a> {
    /// A stager writing into `stage`. `known` is what the installed revisions being
    /// replaced have at each path; with `verify_disk` (a forced reinstall) a file is left
    /// untouched only if its bytes on disk still hash to the recorded digest.
    pub fn new(
        layout: &'a Layout,
        stage: PathBuf,
        known: &'a HashMap<String, Known>,
        verify_disk: bool,
    ) -> Stager<'a> {
        Stager {
            ctx: Context {
                layout,
                known,
                verify_disk,
                writes: true,
            },
            stage,
            entries: Vec::new(),
            assigned: Vec::new(),
            seq: 0,
            index: HashMap::new(),
            dirs_ok: HashSet::new(),
            symlinks: HashSet::new(),
            next: [0; WRITERS + 1],
            protected: &layout.protected,
            canon: HashMap::new(),
            hardlinks: Vec::new(),
            policy: Policy::default(),
            total: 0,
        }
    }

    /// Sets what the payloads may contain (set-id paths, a size bound).
    pub fn with_policy(mut self, policy: Policy) -> Stager<'a> {
        self.policy = policy;
        self
    }

    /// The staged entries, in archive order (parents before children), once hard links are
    /// staged and every symlink is checked against the final tree: no chain of symlinks
    /// — the payloads' own, and those already in the root — may lead out of the root.
    pub fn finish(mut self) -> Result<Vec<StagedEntry>> {
        for (i, seq, ti) in std::mem::take(&mut self.hardlinks) {
            if self.assigned[i] != seq {
                continue; // a later entry replaced the link
            }
            let rel = self.entries[i].rel.clone();
            let target = self.entries[ti].rel.clone();
            let Staged::File {
                staged,
                mode,
                size,
                sha256,
            } = self.entries[ti].what.clone()
            else {
                return Err(bad(format!(
                    "{rel}: a hard link to {target}, which is no longer a regular file"
                )));
            };
            let mine = if !self.ctx.writes || self.ctx.unchanged_file(&rel, &sha256, mode, size) {
                None
            } else {
                let dst = self.staged_path(WRITERS)?;
                match &staged {
                    Some(p) => upkeep_fs::hard_link(p, &dst).map_err(InstallError::from)?,
                    // The target is unchanged in the root: link to it there.
                    None => self.ctx.layout.dir.link_out(&target, &dst)?,
                }
                Some(dst)
            };
            self.entries[i].what = Staged::File {
                staged: mine,
                mode,
                size,
                sha256,
            };
        }
        let root = &*self.ctx.layout.dir;
        let node = |p: &str| -> Result<Node> {
            match self.index.get(p).map(|&i| &self.entries[i].what) {
                Some(Staged::Symlink { target, .. }) => Ok(Node::Link(target.clone())),
                Some(_) => Ok(Node::Other),
                None => root.node(p),
            }
        };
        for e in &self.entries {
            if let Staged::Symlink { target, .. } = &e.what {
                if let (_, Some(why)) = root.walk(&e.rel, true, &node, true)? {
                    return Err(bad(format!(
                        "{}: symlink to {target} leads out of the install root ({why})",
                        e.rel
                    )));
                }
            }
        }
        Ok(self.entries)
    }

    /// Where the archive path `raw` goes: its directory resolved through the symlinks
    /// already in the root (a merged-/usr `lib/x` is `usr/lib/x`), never through a
    /// symlink the payloads create. A directory entry where the root has a symlink to a
    /// directory keeps the symlink and means its target.
    fn place(&mut self, raw: &str, is_dir: bool) -> Result<String> {
        self.not_through_archive_link(raw, raw)?;
        let (dir, name) = match raw.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", raw),
        };
        let cdir = self.canon_dir(dir)?;
        let rel = if cdir.is_empty() {
            name.to_string()
        } else {
            format!("{cdir}/{name}")
        };
        if is_dir && !self.index.contains_key(&rel) {
            if let Some(s) = self.ctx.layout.dir.stat(&rel)? {
                if s.is_symlink() {
                    let target = self.canon_dir(raw)?;
                    return match self.ctx.layout.dir.stat(&target)? {
                        Some(t) if t.is_dir() => Ok(target),
                        _ => Err(bad(format!(
                            "{raw}: a directory where the install root has a symlink to {target}, which is not a directory"
                        ))),
                    };
                }
            }
        }
        self.not_through_archive_link(raw, &rel)?;
        Ok(rel)
    }

    /// Refuses `path` if one of its parents is a symlink the payloads create.
    fn not_through_archive_link(&self, raw: &str, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            at += i + 1;
            if self.symlinks.contains(dir) {
                return Err(bad(format!(
                    "{raw}: written through the archive's symlink {dir}"
                )));
            }
        }
        Ok(())
    }

    /// The canonical path of the archive directory `dir` (cached per directory).
    fn canon_dir(&mut self, dir: &str) -> Result<String> {
        if dir.is_empty() {
            return Ok(String::new());
        }
        if let Some(c) = self.canon.get(dir) {
            return Ok(c.clone());
        }
        let c = self.ctx.layout.dir.canonical(dir, true)?;
        self.canon.insert(dir.to_string(), c.clone());
        Ok(c)
    }

    /// Every parent of `rel` must be a real directory (or become one): never a symlink.
    fn parents(&mut self, rel: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let dir = &rel[..at + i];
            at += i + 1;
            if self.dirs_ok.contains(dir) {
                continue;
            }
            if self.symlinks.contains(dir) {
                return Err(bad(format!(
                    "{rel}: written through the archive's symlink {dir}"
                )));
            }
            match self.ctx.layout.dir.stat(dir)? {
                // Resolved by `place`; one here appeared since, or dangles.
                Some(m) if m.is_symlink() => {
                    return Err(bad(format!(
                        "{rel}: written through the symlink {dir} in the install root"
                    )))
                }
                Some(m) if !m.is_dir() => {
                    return Err(bad(format!("{rel}: {dir} is a file in the install root")))
                }
                Some(m) => {
                    self.add(dir, Staged::Dir(m.mode))?;
                }
                None => {
                    self.add(dir, Staged::Dir(0o755))?;
                }
            }
            self.dirs_ok.insert(dir.to_string());
        }
        Ok(())
    }

    /// Sets what goes at `rel`; returns its index and the assignment's number.
    fn add(&mut self, rel: &str, what: Staged) -> Result<(usize, u64)> {
        self.seq += 1;
        let i = match self.index.get(rel) {
            Some(&i) => {
                let was_dir = matches!(self.entries[i].what, Staged::Dir(_));
                if was_dir != matches!(what, Staged::Dir(_)) {
                    return Err(bad(format!(
                        "{rel}: both a directory and a file in the payload"
                    )));
                }
                self.entries[i].what = what; // a later entry for the same path wins, as with tar
                self.assigned[i] = self.seq;
                i
            }
            None => {
                self.index.insert(rel.to_string(), self.entries.len());
                self.entries.push(StagedEntry {
                    rel: rel.to_string(),
                    what,
                });
                self.assigned.push(self.seq);
                self.entries.len() - 1
            }
        };
        Ok((i, self.seq))
    }

    /// A new path in the stage directory for `writer` (`WRITERS`: the decoding thread), in
    /// directories of [`SHARD`] files each writer has to itself: small directories keep
    /// creating and renaming cheap, and writers do not wait for each other's directory
    /// locks.
    fn staged_path(&mut self, writer: usize) -> Result<PathBuf> {
        let n = self.next[writer];
        let shard = self.stage.join(format!("{writer}-{}", n / SHARD));
        if n.is_multiple_of(SHARD) {
            crate::create_private_dir(&shard)?;
        }
        self.next[writer] += 1;
        Ok(shard.join(n.to_string()))
    }

    /// Reads one payload to the end, staging its entries. `reporter` gets the fraction of
    /// this payload read; writer errors (a full disk) are reported after the writers stop.
    pub fn stage(&mut self, payload: &Payload, reporter: &dyn Reporter) -> Result<()> {
        let f = upkeep_fs::open(&payload.path).map_err(InstallError::from)?;
        let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let mut input = BufReader::with_capacity(
            1 << 20,
            Hashing {
                inner: f,
                verifier: crate::verifier(payload.hashes.as_deref(), &payload.path)?,
                read: read.clone(),
            },
        );
        let magic = input
            .fill_buf()
            .map_err(|e| InstallError::io(&payload.path, e))?
            .get(..4)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let listed = {
            let decoder: Box<dyn Read + '_> = if magic == [0x28, 0xb5, 0x2f, 0xfd] {
                Box::new(
                    zstd::Decoder::with_buffer(&mut input)
                        .map_err(|e| InstallError::io(&payload.path, e))?,
                )
            } else if magic.starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::bufread::MultiGzDecoder::new(&mut input))
            } else {
                Box::new(&mut input)
            };
            let mut archive = tar::Archive::new(decoder);
            let ctx = self.ctx;
            let failed = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(u64, usize, Staged)>>();
                let mut writers = Vec::with_capacity(WRITERS);
                for _ in 0..WRITERS {
                    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
                    let done_tx = done_tx.clone();
                    let failed = &failed;
                    s.spawn(move || {
                        for job in rx {
                            let r = ctx.write(job);
                            if r.is_err() {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            if done_tx.send(r).is_err() {
                                break;
                            }
                        }
                    });
                    writers.push(tx);
                }
                drop(done_tx);
                let listed =
                    self.entries_of(&mut archive, payload, &read, reporter, &writers, &failed);
                drop(writers); // the writers finish their queues and end
                let mut results = Vec::new();
                let mut first_err = None;
                for r in done_rx {
                    match r {
                        Ok(x) => results.push(x),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                listed?;
                if let Some(e) = first_err {
                    return Err(e);
                }
                for (seq, index, staged) in results {
                    if self.assigned[index] == seq {
                        self.entries[index].what = staged;
                    }
                }
                Ok(())
            })
        };
        if let Err(e) = &listed {
            if e.hresult == HResult::WU_E_CALL_CANCELLED || e.hresult == HResult::E_DISK_FULL {
                return listed;
            }
        }
        // The hash covers the whole file, trailing padding included. It is checked even when
        // the archive could not be read: corrupt bytes in the cache are the cause to report.
        let drained = std::io::copy(&mut input, &mut std::io::sink());
        let h = input.into_inner();
        if let Some(v) = h.verifier {
            if drained.is_err() || read.get() != payload.length || v.finish().is_err() {
                return Err(InstallError::new(
                    HResult::WU_E_DM_INCORRECTFILEHASH,
                    format!(
                        "{}: the cached payload does not match its signed hash; download it again",
                        payload.path.display()
                    ),
                ));
            }
        }
        listed
    }

    fn entries_of<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        payload: &Payload,
        read: &std::cell::Cell<u64>,
        reporter: &dyn Reporter,
        writers: &[std::sync::mpsc::SyncSender<Job>],
        failed: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        let what = |e: std::io::Error| {
            bad(format!(
                "{}: not a valid archive: {e}",
                payload.path.display()
            ))
        };
        let mut count = 0u64;
        for entry in archive.entries().map_err(what)? {
            let mut entry = entry.map_err(what)?;
            count += 1;
            if count.is_multiple_of(64) && reporter.is_cancelled() {
                return Err(InstallError::cancelled());
            }
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(()); // a writer's error is reported once they have all stopped
            }
            let raw = entry.path().map_err(what)?.into_owned();
            let Some(archived) = clean(&raw)? else {
                continue;
            };
            let kind = entry.header().entry_type();
            let rel = self.place(&archived, kind == tar::EntryType::Directory)?;
            if rel.split('/').any(|c| c == crate::tx::AREA) {
                return Err(bad(format!(
                    "{rel}: `{}` is the agent's own directory name; a payload may not write there",
                    crate::tx::AREA
                )));
            }
            if let Some(own) = self
                .protected
                .iter()
                .find(|own| rel == **own || rel.starts_with(&format!("{own}/")))
            {
                return Err(bad(format!(
                    "{rel}: inside the agent's own directory {own}; a payload may not write there"
                )));
            }
            self.parents(&rel)?;
            let mode = entry.header().mode().map_err(what)? & 0o7777;
            if mode & 0o6000 != 0
                && !self
                    .policy
                    .setid
                    .iter()
                    .any(|p| p.trim_start_matches("./") == archived || *p == rel)
            {
                return Err(bad(format!(
                    "{archived}: set-user-id or set-group-id bits (mode {mode:o}) the update does not declare"
                )));
            }
            match kind {
                tar::EntryType::Directory => {
                    self.add(&rel, Staged::Dir(mode))?;
                    self.dirs_ok.insert(rel);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if self.dirs_ok.contains(&rel) {
                        return Err(bad(format!("{rel}: both a directory and a file")));
                    }
                    let size = entry.header().size().map_err(what)?;
                    self.total = self.total.saturating_add(size);
                    if let Some(max) = self.policy.max_bytes.filter(|m| self.total > *m) {
                        return Err(bad(format!(
                            "{}: expands to more than {max} bytes ({}); refused before it fills the disk",
                            payload.path.display(),
                            self.policy.max_bytes_source
                        )));
                    }
                    self.symlinks.remove(&rel);
                    if size <= IN_MEMORY {
                        let mut data = Vec::with_capacity(size as usize);
                        entry.read_to_end(&mut data).map_err(what)?;
                        let writer = count as usize % writers.len();
                        let dst = self.staged_path(writer)?;
                        // Until the writer's result: a placeholder with the file's place.
                        let (index, seq) = self.add(
                            &rel,
                            Staged::File {
                                staged: Some(dst.clone()),
                                mode,
                                size,
                                sha256: String::new(),
                            },
                        )?;
                        let job = Job {
                            seq,
                            index,
                            rel,
                            data,
                            mode,
                            dst,
                        };
                        if writers[writer].send(job).is_err() {
                            return Ok(()); // a writer stopped: its error is reported
                        }
                    } else {
                        let staged = self.large_file(&rel, &mut entry, mode, &what)?;
                        self.add(&rel, staged)?;
                    }
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(what)?
                        .ok_or_else(|| bad(format!("{rel}: a symlink without a target")))?
                        .into_owned();
                    if !link_stays_inside(&rel, &target) {
                        return Err(bad(format!(
                            "{rel}: symlink to {} leaves the install root",
                            target.display()
                        )));
                    }
                    let target_s = target
                        .to_str()
                        .ok_or_else(|| bad(format!("{rel}: a symlink target that is not UTF-8")))?
                        .to_string();
                    let staged = if !self.ctx.writes || self.ctx.unchanged_link(&rel, &target_s) {
                        None
                    } else {
                        let dst = self.staged_path(WRITERS)?;
                        upkeep_fs::symlink(&target, &dst).map_err(InstallError::from)?;
                        Some(dst)
                    };
                    self.symlinks.insert(rel.clone());
                    self.symlinks.insert(archived.clone());
                    self.add(
                        &rel,
                        Staged::Symlink {
                            staged,
                            target: target_s,
                        },
                    )?;
                }
                tar::EntryType::Link => {
                    let to = entry
                        .link_name()
                        .map_err(what)?
                        .ok_or_else(|| bad(format!("{rel}: a hard link without a target")))?
                        .into_owned();
                    let to = clean(&to)?
                        .ok_or_else(|| bad(format!("{rel}: a hard link to the archive root")))?;
                    let to = self.place(&to, false)?;
                    let target = self
                        .index
                        .get(&to)
                        .copied()
                        .filter(|&i| matches!(self.entries[i].what, Staged::File { .. }))
                        .ok_or_else(|| {
                            bad(format!(
                                "{rel}: a hard link to {to}, which is not a regular file earlier in the payload"
                            ))
                        })?;
                    self.symlinks.remove(&rel);
                    // Staged once every writer is done (`finish`): the target's content
                    // may still be on its way.
                    let (index, seq) = self.add(
                        &rel,
                        Staged::File {
                            staged: None,
                            mode,
                            size: 0,
                            sha256: String::new(),
                        },
                    )?;
                    self.hardlinks.push((index, seq, target));
                }
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => {}
                other => {
                    return Err(bad(format!(
                        "{rel}: {other:?} entries (devices, FIFOs, sockets) are not installed"
                    )))
                }
            }
            if count.is_multiple_of(16) {
                reporter.on_progress((read.get() as f64 / payload.length.max(1) as f64).min(1.0));
            }
        }
        Ok(())
    }

    /// Hashes a large file entry while writing it to the stage directory; removes the
    /// staged copy if it equals what is installed.
    fn large_file(
        &mut self,
        rel: &str,
        entry: &mut impl Read,
        mode: u32,
        what: &dyn Fn(std::io::Error) -> InstallError,
    ) -> Result<Staged> {
        let dst = self.staged_path(WRITERS)?;
        let mut out = if self.ctx.writes {
            Some(new_file(&dst, mode)?)
        } else {
            None
        };
        let mut h = Sha256::new();
        let mut written = 0u64;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = entry.read(&mut chunk).map_err(what)?;
            if n == 0 {
                break;
            }
            h.update(&chunk[..n]);
            if let Some(out) = &mut out {
                out.write_all(&chunk[..n])
                    .map_err(|e| InstallError::io(&dst, e))?;
            }
            written += n as u64;
        }
        let Some(out) = out else {
            let sha256 = hex::encode(h.finalize());
            return Ok(Staged::File {
                staged: None,
                mode,
                size: written,
                sha256,
            });
        };
        start_writeback(&out);
        drop(out);
        let sha256 = hex::encode(h.finalize());
        let staged = if self.ctx.unchanged_file(rel, &sha256, mode, written) {
            upkeep_fs::remove_file(&dst).map_err(InstallError::from)?;
            None
        } else {
            Some(dst)
        };
        Ok(Staged::File {
            staged,
            mode,
            size: written,
            sha256,
        })
    }
}

/// What [`inspect`] found in an update's payloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// Bytes of regular-file content the payloads expand to (what `installed_size`
    /// declares).
    pub installed_size: u64,
    /// Entries (files, directories, links) after later entries replaced earlier ones.
    pub entries: usize,
}

/// Checks an update's `files` payloads exactly as an install checks them — every entry,
/// with the same function and rules (paths, symlinks and their chains, hard links,
/// devices, set-id bits against `policy.setid`, the expansion bound, readable to the end,
/// the signed hash) — against an empty root, writing nothing. For publishers: what
/// `repo add` refuses here, no device would install.
pub fn inspect(payloads: &[Payload], policy: Policy) -> Result<Inspection> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir().join(format!("upkeep-inspect-{}-{n}", std::process::id()));
    crate::create_private_dir(&tmp)?;
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = upkeep_fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(tmp.clone());
    let layout = Layout::new(&tmp.join("root"), &tmp.join("state"))?;
    let known = HashMap::new();
    let stage = tmp.join("stage");
    crate::create_private_dir(&stage)?;
    let mut stager = Stager::new(&layout, stage, &known, false).with_policy(policy);
    stager.ctx.writes = false;
    for p in payloads {
        stager.stage(p, &crate::Silent)?;
    }
    let total = stager.total;
    let entries = stager.finish()?;
    Ok(Inspection {
        installed_size: total,
        entries: entries.len(),
    })
}

/// Creates `path` with `mode` from the start (never readable by others in between).
fn new_file(path: &Path, mode: u32) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = upkeep_fs::open_with(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777),
        path,
    )
    .map_err(InstallError::from)?;
    // The umask may have cleared bits; set-id and sticky bits need an explicit chmod.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| InstallError::io(path, e))?;
    Ok(f)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = new_file(path, mode)?;
    f.write_all(data).map_err(|e| InstallError::io(path, e))?;
    start_writeback(&f);
    Ok(())
}

/// Starts writing a staged file's data back to disk now, without waiting: the `syncfs`
/// before the commit then finds little left to do, and the disk works while the CPU
/// decodes the next files (as dpkg does; `tar` followed by `sync` cannot overlap them).
fn start_writeback(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on an open descriptor; no memory effects. A failure only
    // means the data is flushed later, by the syncfs.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// SHA-256 (hex) of a file's content.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    reader_sha256(upkeep_fs::open(path)?)
}

/// SHA-256 (hex) of everything `r` reads.
fn reader_sha256(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    std::io::copy(&mut r, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(
            clean(Path::new("./a/./b/")).unwrap().as_deref(),
            Some("a/b")
        );
        assert_eq!(clean(Path::new("./")).unwrap(), None);
        assert!(clean(Path::new("/etc/passwd")).is_err());
        assert!(clean(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn symlink_targets_must_stay_inside() {
        assert!(link_stays_inside("a/b", Path::new("c")));
        assert!(link_stays_inside("a/b", Path::new("../c")));
        assert!(!link_stays_inside("a/b", Path::new("../../c")));
        // Absolute targets resolve in the root; `..` above it still leaves.
        assert!(link_stays_inside("b", Path::new("/etc/passwd")));
        assert!(link_stays_inside("a/b/c", Path::new("/dev/null")));
        assert!(!link_stays_inside("b", Path::new("/../etc/passwd")));
        assert!(link_stays_inside("a/b/c", Path::new("../../x/../y")));
    }
}
