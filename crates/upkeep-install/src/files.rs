//! The `files` handler: a tar, tar.zst or tar.gz payload placed under the install root.
//!
//! The payload is read once. Every entry is checked before anything in the root changes:
//! its path must be relative with no `..` (a leading `./` is fine); no entry may be written
//! through a symlink (one in the archive or one already on disk); a symlink's target must be
//! relative and stay inside the root; directories, regular files and symlinks are accepted,
//! devices, FIFOs and hard links are not. Regular files are written to the transaction's
//! stage directory with their modes; the payload's signed SHA-256 is checked once the last
//! byte is read. Only then is the plan applied as a [`Tx`].

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use upkeep_store::Store;
use upkeep_types::HResult;

use crate::tx::{Op, Planned, Tx};
use crate::{checkpoint, InstallError, Layout, Result};

/// The payload file in the content cache and what the signed metadata says of it.
#[derive(Clone, Debug)]
pub struct Payload {
    /// The cached file.
    pub path: PathBuf,
    /// Its signed length.
    pub length: u64,
    /// Its signed SHA-256 (hex), re-checked while it is read.
    pub sha256: Option<String>,
}

struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn bad(msg: String) -> InstallError {
    InstallError::new(HResult::WU_E_UH_INSTALLERFAILURE, msg)
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

/// Whether a symlink at `rel` with `target` stays inside the root.
fn link_stays_inside(rel: &str, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = rel.matches('/').count() as i64; // the link's directory
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

struct Stager<'a> {
    layout: &'a Layout,
    stage: PathBuf,
    plan: Vec<Planned>,
    index: HashMap<String, usize>,
    /// Directories known to be real directories (on disk or planned).
    dirs_ok: HashSet<String>,
    symlinks: HashSet<String>,
    next: usize,
}

impl Stager<'_> {
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
            match std::fs::symlink_metadata(self.layout.root.join(dir)) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(bad(format!(
                        "{rel}: written through the symlink {dir} in the install root"
                    )))
                }
                Ok(m) if !m.is_dir() => {
                    return Err(bad(format!("{rel}: {dir} is a file in the install root")))
                }
                Ok(_) => {}
                Err(_) => self.add(dir, Op::Dir(0o755))?,
            }
            self.dirs_ok.insert(dir.to_string());
        }
        Ok(())
    }

    fn add(&mut self, rel: &str, op: Op) -> Result<()> {
        match self.index.get(rel) {
            Some(&i) => {
                let was_dir = matches!(self.plan[i].op, Op::Dir(_));
                if was_dir != matches!(op, Op::Dir(_)) {
                    return Err(bad(format!(
                        "{rel}: both a directory and a file in the archive"
                    )));
                }
                self.plan[i].op = op; // a later entry for the same path wins, as with tar
            }
            None => {
                self.index.insert(rel.to_string(), self.plan.len());
                self.plan.push(Planned {
                    rel: rel.to_string(),
                    op,
                });
            }
        }
        Ok(())
    }

    fn staged(&mut self) -> PathBuf {
        self.next += 1;
        self.stage.join(self.next.to_string())
    }
}

/// Stages and applies a `files` payload in a new transaction, leaving it applied but not
/// committed (the caller commits with the state it records). On any error — a hostile
/// entry, a hash mismatch, abort — everything is rolled back before it returns.
pub fn install<'a>(
    store: &'a Store,
    layout: &'a Layout,
    update_id: &str,
    payload: &Payload,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> Result<Tx<'a>> {
    let mut tx = Tx::begin(store, layout, update_id, "install")?;
    let staged = stage(layout, &tx, payload, &mut |f| progress(f * 0.7), abort);
    let plan = match staged {
        Ok(plan) => plan,
        Err(e) => {
            tx.rollback()?;
            return Err(e);
        }
    };
    checkpoint("install:staged");
    match tx.apply(&plan, &mut |f| progress(0.7 + f * 0.3), abort) {
        Ok(()) => Ok(tx),
        Err(e) => {
            tx.rollback()?;
            Err(e)
        }
    }
}

fn stage(
    layout: &Layout,
    tx: &Tx<'_>,
    payload: &Payload,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> Result<Vec<Planned>> {
    let f = std::fs::File::open(&payload.path).map_err(|e| InstallError::io(&payload.path, e))?;
    let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut input = BufReader::with_capacity(
        1 << 20,
        Hashing {
            inner: f,
            hash: Sha256::new(),
            read: read.clone(),
        },
    );
    let magic = input
        .fill_buf()
        .map_err(|e| InstallError::io(&payload.path, e))?
        .get(..4)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
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
    let own_dir = layout
        .work
        .strip_prefix(&layout.root)
        .ok()
        .and_then(|p| p.to_str())
        .map(str::to_string);
    let mut st = Stager {
        layout,
        stage: tx.stage_dir(),
        plan: Vec::new(),
        index: HashMap::new(),
        dirs_ok: HashSet::new(),
        symlinks: HashSet::new(),
        next: 0,
    };
    let what = |e: std::io::Error| {
        bad(format!(
            "{}: not a valid archive: {e}",
            payload.path.display()
        ))
    };
    let mut count = 0u64;
    let mut entries = || -> Result<()> {
        for entry in archive.entries().map_err(what)? {
            let mut entry = entry.map_err(what)?;
            count += 1;
            if count.is_multiple_of(64) && abort() {
                return Err(InstallError::new(HResult::WU_E_CALL_CANCELLED, "aborted"));
            }
            let raw = entry.path().map_err(what)?.into_owned();
            let Some(rel) = clean(&raw)? else { continue };
            if let Some(own) = &own_dir {
                if rel == *own || rel.starts_with(&format!("{own}/")) {
                    return Err(bad(format!("{rel}: the agent's own work directory")));
                }
            }
            st.parents(&rel)?;
            // A symlink's mode means nothing (and some archivers leave it blank).
            let mode = || Ok::<u32, InstallError>(entry.header().mode().map_err(what)? & 0o7777);
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    st.add(&rel, Op::Dir(mode()?))?;
                    st.dirs_ok.insert(rel);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if st.dirs_ok.contains(&rel) {
                        return Err(bad(format!("{rel}: both a directory and a file")));
                    }
                    let mode = mode()?;
                    let dst = st.staged();
                    let mut out =
                        std::fs::File::create(&dst).map_err(|e| InstallError::io(&dst, e))?;
                    std::io::copy(&mut entry, &mut out).map_err(|e| InstallError::io(&dst, e))?;
                    out.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| InstallError::io(&dst, e))?;
                    st.symlinks.remove(&rel);
                    st.add(&rel, Op::Put(dst))?;
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
                    let dst = st.staged();
                    std::os::unix::fs::symlink(&target, &dst)
                        .map_err(|e| InstallError::io(&dst, e))?;
                    st.symlinks.insert(rel.clone());
                    st.add(&rel, Op::Put(dst))?;
                }
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => {}
                other => {
                    return Err(bad(format!(
                        "{rel}: {other:?} entries (devices, FIFOs, hard links) are not installed"
                    )))
                }
            }
            progress((read.get() as f64 / payload.length.max(1) as f64).min(1.0));
        }
        Ok(())
    };
    let listed = entries();

    drop(archive);
    if let Err(e) = &listed {
        if e.hresult == HResult::WU_E_CALL_CANCELLED {
            return listed.map(|()| Vec::new());
        }
    }
    // The hash covers the whole file, trailing padding included. It is checked even when
    // the archive could not be read: corrupt bytes in the cache are the cause to report.
    let drained = std::io::copy(&mut input, &mut std::io::sink());
    let h = input.into_inner();
    if let Some(want) = &payload.sha256 {
        if drained.is_err()
            || read.get() != payload.length
            || hex::encode(h.hash.finalize()) != want.to_ascii_lowercase()
        {
            return Err(InstallError::new(
                HResult::WU_E_DM_INCORRECTFILEHASH,
                format!(
                    "{}: the cached payload does not match its signed hash; download it again",
                    payload.path.display()
                ),
            ));
        }
    }
    listed?;
    Ok(st.plan)
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
        assert!(!link_stays_inside("b", Path::new("/etc/passwd")));
        assert!(link_stays_inside("a/b/c", Path::new("../../x/../y")));
    }
}
