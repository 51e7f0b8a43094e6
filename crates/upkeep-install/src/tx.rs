//! Crash-safe transactions over the install root.
//!
//! A transaction is a list of planned changes ([`Planned`]). They are applied in batches:
//! each batch's journal entries are committed to the state database (durable) before any of
//! the batch's changes; a path that exists is hard-linked aside into `backups/<tx>/<seq>`
//! (and the backup directory fsynced) before anything replaces or removes it, so the old
//! file is reachable at every instant; new files arrive by `rename` from `stage/<tx>/`.
//! After the last batch one `syncfs` flushes the root, and only then is the transaction
//! committed in the database — in the same SQLite transaction that records the update as
//! installed or uninstalled.
//!
//! Rollback walks the journal backwards and is idempotent, so it is also the recovery of a
//! transaction interrupted at any instant: a backup that exists is renamed back over its
//! path, a path that did not exist before is removed, a created directory is removed if
//! empty, a removed directory is created again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use upkeep_store::{JournalEntry, Store};
use upkeep_types::HResult;

use crate::{checkpoint, syncfs, InstallError, Layout, Result};

/// Journal entries per durable batch.
pub const BATCH: usize = 1000;

/// One planned change of a path (relative to the install root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a directory with this mode (nothing to do if one is there).
    Dir(u32),
    /// Put the staged file or symlink at this path (replacing what is there).
    Put(PathBuf),
    /// Remove the file or symlink at this path (nothing to do if none is there).
    Remove,
    /// Put back a file from an earlier backup (relative to the work directory), keeping
    /// the backup until the transaction is committed.
    Restore(String),
    /// Remove this directory if it is empty; recreated with this mode on rollback.
    Rmdir(u32),
}

/// A planned change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Path relative to the install root, `/`-separated, no `.` or `..`.
    pub rel: String,
    /// What to do.
    pub op: Op,
}

/// A running transaction.
pub struct Tx<'a> {
    store: &'a Store,
    layout: &'a Layout,
    /// Its id in the journal.
    pub id: i64,
    operation: String,
    seq: usize,
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |e| InstallError::io(p, e)
}

fn exists(p: &Path) -> Option<std::fs::Metadata> {
    std::fs::symlink_metadata(p).ok()
}

impl<'a> Tx<'a> {
    /// Starts a transaction: recorded `open` (so recovery rolls it back) before anything.
    pub fn begin(
        store: &'a Store,
        layout: &'a Layout,
        update_id: &str,
        operation: &str,
    ) -> Result<Tx<'a>> {
        let id = store.begin_tx(update_id, operation)?;
        let tx = Tx {
            store,
            layout,
            id,
            operation: operation.to_string(),
            seq: 0,
        };
        for d in [tx.stage_dir(), tx.backup_dir()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(tx)
    }

    /// Where this transaction stages new files.
    pub fn stage_dir(&self) -> PathBuf {
        self.layout.work.join("stage").join(self.id.to_string())
    }

    fn backup_dir(&self) -> PathBuf {
        self.layout.work.join("backups").join(self.id.to_string())
    }

    /// Applies `plan` in journalled batches. `progress` gets the fraction done; `abort`
    /// is polled between batches. On an error the caller rolls back.
    pub fn apply(
        &mut self,
        plan: &[Planned],
        progress: &mut dyn FnMut(f64),
        abort: &dyn Fn() -> bool,
    ) -> Result<()> {
        let root = &self.layout.root;
        let mut done = 0;
        for batch in plan.chunks(BATCH) {
            if abort() {
                return Err(InstallError::new(HResult::WU_E_CALL_CANCELLED, "aborted"));
            }
            // 1. Journal what this batch will do, durably, before doing any of it.
            let mut entries = Vec::with_capacity(batch.len());
            let mut work = Vec::with_capacity(batch.len());
            for p in batch {
                let path = root.join(&p.rel);
                let there = exists(&path);
                let seq = self.seq + entries.len();
                let backup = || Some(format!("backups/{}/{seq}", self.id));
                let entry = |kind: &str,
                             backup: Option<String>,
                             mode: u32,
                             source: Option<String>| JournalEntry {
                    path: p.rel.clone(),
                    kind: kind.into(),
                    backup,
                    mode,
                    source,
                };
                let e = match (&p.op, &there) {
                    (Op::Dir(_), Some(m)) if m.is_dir() => continue,
                    (Op::Dir(_), Some(_)) => {
                        return Err(InstallError::new(
                            HResult::WU_E_UH_INSTALLERFAILURE,
                            format!("{}: a file is where a directory must go", p.rel),
                        ))
                    }
                    (Op::Dir(mode), None) => entry("dir", None, *mode, None),
                    (Op::Put(_) | Op::Restore(_), Some(m)) if m.is_dir() => {
                        return Err(InstallError::new(
                            HResult::WU_E_UH_INSTALLERFAILURE,
                            format!("{}: a directory is where a file must go", p.rel),
                        ))
                    }
                    (Op::Put(_), _) => entry("file", there.as_ref().and(backup()), 0, None),
                    (Op::Restore(src), _) => {
                        entry("file", there.as_ref().and(backup()), 0, Some(src.clone()))
                    }
                    (Op::Remove, None) | (Op::Rmdir(_), None) => continue,
                    (Op::Remove, Some(m)) if m.is_dir() => continue,
                    (Op::Remove, Some(_)) => entry("file", backup(), 0, None),
                    (Op::Rmdir(mode), Some(_)) => entry("rmdir", None, *mode, None),
                };
                entries.push(e);
                work.push(p);
            }
            self.store.journal(self.id, self.seq, &entries)?;
            checkpoint(&format!("{}:journaled", self.operation));
            // 2. Link aside every path this batch replaces or removes; make the links durable.
            let mut linked = false;
            for e in &entries {
                if let Some(b) = &e.backup {
                    let (from, to) = (root.join(&e.path), self.layout.work.join(b));
                    std::fs::hard_link(&from, &to).map_err(io(&from))?;
                    linked = true;
                }
            }
            if linked {
                let d = self.backup_dir();
                std::fs::File::open(&d)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&d))?;
            }
            // 3. The changes.
            for (i, (e, p)) in entries.iter().zip(&work).enumerate() {
                let path = root.join(&e.path);
                match &p.op {
                    Op::Dir(mode) => {
                        std::fs::create_dir(&path).map_err(io(&path))?;
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                            .map_err(io(&path))?;
                    }
                    Op::Put(staged) => std::fs::rename(staged, &path).map_err(io(&path))?,
                    Op::Remove => std::fs::remove_file(&path).map_err(io(&path))?,
                    Op::Restore(src) => {
                        let tmp = self.stage_dir().join(format!("r{}", self.seq + i));
                        let src = self.layout.work.join(src);
                        std::fs::hard_link(&src, &tmp).map_err(io(&src))?;
                        std::fs::rename(&tmp, &path).map_err(io(&path))?;
                    }
                    Op::Rmdir(_) => match std::fs::remove_dir(&path) {
                        // Someone put files there since: the directory stays.
                        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                        r => r.map_err(io(&path))?,
                    },
                }
                // `UPKEEP_CRASH_AT=install:change#N` stops after the N-th change.
                checkpoint(&format!("{}:change", self.operation));
            }
            self.seq += entries.len();
            done += batch.len();
            progress(done as f64 / plan.len().max(1) as f64);
        }
        checkpoint(&format!("{}:applied", self.operation));
        Ok(())
    }

    /// Flushes the root, then commits with `commit` (which must mark the transaction
    /// committed in the same database transaction as the state it records), then cleans up.
    pub fn commit(self, commit: impl FnOnce(&Store, i64) -> Result<()>) -> Result<()> {
        syncfs(&self.layout.root)?;
        checkpoint(&format!("{}:synced", self.operation));
        commit(self.store, self.id)?;
        checkpoint(&format!("{}:committed", self.operation));
        finish_committed(self.store, self.layout, self.id, &self.operation)
    }

    /// Undoes everything this transaction did.
    pub fn rollback(self) -> Result<()> {
        rollback(self.store, self.layout, self.id)
    }
}

/// Rolls back transaction `id` from its journal (idempotent) and forgets it.
fn rollback(store: &Store, layout: &Layout, id: i64) -> Result<()> {
    let root = &layout.root;
    for e in store.journal_entries(id)?.iter().rev() {
        let path = root.join(&e.path);
        match e.kind.as_str() {
            "file" => match &e.backup {
                Some(b) => {
                    let b = layout.work.join(b);
                    if exists(&b).is_some() {
                        std::fs::rename(&b, &path).map_err(io(&path))?;
                    }
                }
                None => {
                    if exists(&path).is_some_and(|m| !m.is_dir()) {
                        std::fs::remove_file(&path).map_err(io(&path))?;
                    }
                }
            },
            "dir" => {
                let _ = std::fs::remove_dir(&path);
            }
            "rmdir" if exists(&path).is_none() => {
                std::fs::create_dir(&path).map_err(io(&path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                    .map_err(io(&path))?;
            }
            _ => {}
        }
    }
    syncfs(root)?;
    for d in ["stage", "backups"] {
        let p = layout.work.join(d).join(id.to_string());
        if exists(&p).is_some() {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    store.end_tx(id)?;
    Ok(())
}

/// After the commit: drop what the committed state no longer needs, then forget the
/// journal. An install keeps its backups (its uninstall restores them).
fn finish_committed(store: &Store, layout: &Layout, id: i64, operation: &str) -> Result<()> {
    let mut dirs = vec![layout.work.join("stage").join(id.to_string())];
    if operation == "uninstall" {
        dirs.push(layout.work.join("backups").join(id.to_string()));
        for e in store.journal_entries(id)? {
            if let Some(src) = &e.source {
                let p = layout.work.join(src);
                let _ = std::fs::remove_file(&p);
                if let Some(parent) = p.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
    for d in dirs {
        if exists(&d).is_some() {
            std::fs::remove_dir_all(&d).map_err(io(&d))?;
        }
    }
    store.end_tx(id)?;
    Ok(())
}

/// Recovery at session open: rolls back every transaction that was not committed and
/// finishes every committed one. Returns how many it found. The caller holds the install
/// lock, so no live transaction is touched.
pub fn recover(store: &Store, layout: &Layout) -> Result<usize> {
    let txs = store.unfinished_txs()?;
    for t in &txs {
        if t.state == "committed" {
            tracing::info!(tx = t.tx_id, update = %t.update_id, "finishing a committed {}", t.operation);
            finish_committed(store, layout, t.tx_id, &t.operation)?;
        } else {
            tracing::warn!(tx = t.tx_id, update = %t.update_id, "rolling back an interrupted {}", t.operation);
            rollback(store, layout, t.tx_id)?;
        }
    }
    Ok(txs.len())
}

/// The uninstall plan of an installed update, from what its install journalled: created
/// files removed, replaced files restored from their backups, created directories removed
/// if empty — in reverse order.
pub fn uninstall_plan(owned: &[JournalEntry]) -> Vec<Planned> {
    owned
        .iter()
        .rev()
        .map(|e| Planned {
            rel: e.path.clone(),
            op: match (e.kind.as_str(), &e.backup) {
                ("dir", _) => Op::Rmdir(e.mode),
                ("file", Some(b)) => Op::Restore(b.clone()),
                _ => Op::Remove,
            },
        })
        .collect()
}
