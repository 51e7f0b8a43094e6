//! Crash-safe transactions over the install root.
//!
//! A transaction is a list of planned changes ([`Planned`]). They are applied in batches:
//! each batch's journal entries are committed to the state database (durable) before any of
//! the batch's changes; a path that exists is hard-linked aside into `backups/<tx>/<seq>`
//! (and the backup directory fsynced) before anything replaces or removes it, so the old
//! file is reachable at every instant; new files arrive by `rename` from `stage/<tx>/`.
//! After the last batch one `syncfs` flushes the root, and only then is the transaction
//! committed in the database — in the same SQLite transaction that records what is
//! installed ([`Tx::commit`]).
//!
//! A backup either outlives the commit (it is what was at the path before any installed
//! update owned it: the new owner's *original*, put back by its uninstall) or serves
//! rollback only (it is an earlier revision's file) and is deleted after the commit.
//!
//! Rollback walks the journal backwards and is idempotent, so it is also the recovery of a
//! transaction interrupted at any instant: a backup that exists is renamed back over its
//! path, a path that did not exist before is removed, a created directory is removed if
//! empty, a removed directory is created again. A [`Tx`] is passed by value and rolls back
//! when dropped uncommitted; rollback errors are logged and the transaction stays in the
//! journal for the next session's recovery.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use upkeep_store::{Commit, JournalEntry, JournalKind, Store, TxOperation, TxState};
use upkeep_types::HResult;

use crate::root::RootDir;
use crate::{checkpoint, InstallError, Layout, Reporter, Result};

/// Journal entries per durable batch.
pub const BATCH: usize = 1000;

/// One planned change of a path (relative to the install root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a directory with this mode (nothing to do if one is there).
    Dir(u32),
    /// Put the staged file or symlink at this path, replacing what is there. What was
    /// there is backed up; `keep_backup` keeps it after the commit (it becomes the owner's
    /// original) instead of deleting it.
    Put {
        /// The staged file.
        staged: PathBuf,
        /// Keep the backup after the commit.
        keep_backup: bool,
    },
    /// Remove the file or symlink at this path (nothing to do if none is there).
    Remove,
    /// Put back a file from an earlier backup (relative to the work directory); the backup
    /// is deleted once the transaction is committed.
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

/// A running transaction. Dropped without [`commit`](Tx::commit), it rolls back.
pub struct Tx<'a> {
    store: &'a Store,
    layout: &'a Layout,
    /// Its id in the journal.
    pub id: i64,
    operation: TxOperation,
    seq: usize,
    finished: bool,
    /// The work directory's mount.
    work_mnt: u64,
    /// Areas on other mounts this transaction uses, by mount.
    areas: HashMap<u64, String>,
}

/// The agent's directory at the top of another mount inside the root; no payload may
/// write a path with this component.
pub const AREA: &str = ".upkeep";

/// `a/b/c` → `a/b`; `c` → ``.
fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Copies the staged file or symlink `staged` (in the work directory) to `to` in the root.
fn copy_into(root: &RootDir, staged: &Path, to: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = upkeep_fs::symlink_metadata(staged).map_err(InstallError::from)?;
    if m.file_type().is_symlink() {
        let target = upkeep_fs::read_link(staged).map_err(InstallError::from)?;
        return root.symlink(&target.to_string_lossy(), to);
    }
    let mut out = root.create_file(to, m.permissions().mode() & 0o7777)?;
    let mut src = upkeep_fs::open(staged).map_err(InstallError::from)?;
    std::io::copy(&mut src, &mut out).map_err(|e| InstallError::io(&root.display(to), e))?;
    Ok(())
}

fn exists(p: &Path) -> Option<std::fs::Metadata> {
    upkeep_fs::symlink_metadata(p).ok()
}

fn stage_dir(layout: &Layout, id: i64) -> PathBuf {
    layout.work.join("stage").join(id.to_string())
}

fn backup_dir(layout: &Layout, id: i64) -> PathBuf {
    layout.work.join("backups").join(id.to_string())
}

/// Where a transaction keeps a `command` update's verified content (relative to the work
/// directory); it becomes the installed record's `pinned` directory when committed.
pub fn pinned_rel(id: i64) -> String {
    format!("pinned/{id}")
}

/// The file in the work directory naming the state database it belongs to.
pub const OWNER_FILE: &str = "owner";

/// What the work directory holds that only its database can explain: backups (originals of
/// installed updates), pinned content, staged files.
fn work_in_use(layout: &Layout) -> bool {
    ["backups", "pinned", "stage"]
        .iter()
        .any(|d| upkeep_fs::read_dir(layout.work.join(d)).is_ok_and(|mut rd| rd.next().is_some()))
}

/// Binds the work directory to `store`, or refuses to use either when they do not belong
/// together: a work directory bound to another database, or one holding backups or pinned
/// content while the database knows of nothing (it was deleted, truncated or replaced),
/// is damage — applying or reusing what it holds could put stale files over live ones.
/// The error says so and changes nothing; the operator restores the database or moves
/// the work directory aside.
pub fn claim_work_tree(store: &Store, layout: &Layout) -> Result<()> {
    let f = layout.work.join(OWNER_FILE);
    let damage = |why: String| {
        InstallError::new(
            HResult::WU_E_DS_UNEXPECTED,
            format!(
                "the work directory {} {why}: the state database {} was lost or replaced. Nothing was changed; restore the database, or move the work directory aside (the backups in it are what uninstalling would have put back)",
                layout.work.display(),
                store.path()
            ),
        )
    };
    match upkeep_fs::read_to_string(&f) {
        Ok(id) if id.trim() == store.id() => Ok(()),
        Ok(id) => Err(damage(format!(
            "belongs to another state database (id {})",
            crate::escape_controls(id.trim())
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let knows_nothing = store.installed()?.is_empty()
                && store.history_count()? == 0
                && store.unfinished_txs()?.is_empty();
            if knows_nothing && work_in_use(layout) {
                return Err(damage(
                    "holds backups or pinned content no installed update accounts for".into(),
                ));
            }
            // A new work directory, or one from before databases had an identity.
            upkeep_fs::write_atomic(&f, format!("{}\n", store.id()).as_bytes())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates a directory that must not exist yet: a transaction's directories are its own.
fn create_own_dir(d: &Path) -> Result<()> {
    if let Some(parent) = d.parent() {
        crate::create_private_dir(parent)?;
    }
    upkeep_fs::create_dir_mode(d, 0o700).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            InstallError::new(
                HResult::WU_E_DS_UNEXPECTED,
                format!(
                    "{} exists already: it is not this transaction's; nothing was changed",
                    d.display()
                ),
            )
        } else {
            e.into()
        }
    })
}

impl<'a> Tx<'a> {
    /// Starts a transaction: recorded `open` (so recovery rolls it back) before anything.
    /// The work directory must belong to `store` ([`claim_work_tree`]), and the
    /// transaction's stage and backup directories must not exist yet.
    pub fn begin(
        store: &'a Store,
        layout: &'a Layout,
        update_id: &str,
        operation: TxOperation,
    ) -> Result<Tx<'a>> {
        claim_work_tree(store, layout)?;
        let id = store.begin_tx(update_id, operation)?;
        let dirs = [stage_dir(layout, id), backup_dir(layout, id)];
        let mut made: Vec<&Path> = Vec::new();
        for d in &dirs {
            if let Err(e) = create_own_dir(d) {
                // Nothing was done under this transaction: forget it, touching no one
                // else's directory.
                for m in made {
                    let _ = upkeep_fs::remove_dir(m);
                }
                store.end_tx(id)?;
                return Err(e);
            }
            made.push(d);
        }
        let tx = Tx {
            store,
            layout,
            id,
            operation,
            seq: 0,
            finished: false,
            work_mnt: crate::root::mount_of(&layout.work).unwrap_or_else(|| layout.dir.mnt()),
            areas: HashMap::new(),
        };
        Ok(tx)
    }

    /// What this transaction does.
    pub fn operation(&self) -> TxOperation {
        self.operation
    }

    /// Where this transaction stages new files.
    pub fn stage_dir(&self) -> PathBuf {
        stage_dir(self.layout, self.id)
    }

    /// Where this transaction pins a `command` update's content.
    pub fn pinned_dir(&self) -> PathBuf {
        self.layout.work.join(pinned_rel(self.id))
    }

    fn point(&self, what: &str) {
        checkpoint(&format!("{}:{what}", self.operation.as_str()));
    }

    /// The agent's area for `rel` when `rel` is on another mount than the work directory:
    /// `.upkeep` at the top of that mount (relative to the root), with this
    /// transaction's `stage/<tx>` and `backups/<tx>` in it. A rename or a hard link works
    /// only within one mount, so that is where a file for such a path is staged and where
    /// what it replaces is linked aside. `None`: the work directory serves.
    fn area_for(&mut self, rel: &str) -> Result<Option<String>> {
        let root = &*self.layout.dir;
        // The mount of the nearest existing ancestor (a parent may be created in this
        // transaction; it will be on that mount).
        let mut at = parent_of(rel);
        let mnt = loop {
            if at.is_empty() {
                break root.mnt();
            }
            if let Some(st) = root.stat(at)? {
                break st.mnt;
            }
            at = parent_of(at);
        };
        if mnt == self.work_mnt {
            return Ok(None);
        }
        if let Some(a) = self.areas.get(&mnt) {
            return Ok(Some(a.clone()));
        }
        // Up to the mount point: the topmost ancestor on that mount.
        while !at.is_empty() {
            let up = parent_of(at);
            let up_mnt = if up.is_empty() {
                root.mnt()
            } else {
                root.stat(up)?.map_or(0, |s| s.mnt)
            };
            if up_mnt != mnt {
                break;
            }
            at = up;
        }
        if at.is_empty() {
            return Err(InstallError::new(
                HResult::WU_E_UH_UNEXPECTED,
                format!(
                    "{}: on another mount than the agent's work directory {}, and no mount point inside the root",
                    root.display(rel).display(),
                    self.layout.work.display()
                ),
            ));
        }
        let area = format!("{at}/{AREA}");
        for d in [
            area.clone(),
            format!("{area}/stage"),
            format!("{area}/stage/{}", self.id),
            format!("{area}/backups"),
            format!("{area}/backups/{}", self.id),
        ] {
            root.ensure_private_dir(&d)?;
        }
        self.areas.insert(mnt, area.clone());
        Ok(Some(area))
    }

    /// Applies `plan` in journalled batches and returns, for every path whose backup is
    /// kept, `(path, backup)`. `reporter` gets the fraction done and is asked for
    /// cancellation between batches. On an error the transaction is left for the caller
    /// to drop (which rolls it back).
    ///
    /// A backup is named relative to the work directory, or — for a path on another
    /// mount — `@` and its path in the root (in that mount's area). A file put on another
    /// mount is first copied into that mount's area (journalled, so that rollback removes
    /// it) and renamed from there.
    pub fn apply(
        &mut self,
        plan: &[Planned],
        reporter: &dyn Reporter,
    ) -> Result<Vec<(String, String)>> {
        let root = self.layout.dir.clone();
        let mut done = 0;
        let mut kept = Vec::new();
        for batch in plan.chunks(BATCH) {
            if reporter.is_cancelled() {
                return Err(InstallError::cancelled());
            }
            // 1. Journal what this batch will do, durably, before doing any of it.
            let mut entries: Vec<JournalEntry> = Vec::with_capacity(batch.len());
            // (the entry of each change, the change, its temporary path in an area)
            let mut work: Vec<(usize, &Planned, Option<String>)> = Vec::with_capacity(batch.len());
            for p in batch {
                let there = root.stat(&p.rel)?;
                // What the change is: (kind, backs up what is there, keep, mode, source).
                let (kind, backs_up, keep, mode, source) = match (&p.op, &there) {
                    (Op::Dir(_), Some(m)) if m.is_dir() => continue,
                    (Op::Dir(_), Some(_)) => {
                        return Err(InstallError::new(
                            HResult::WU_E_UH_INSTALLERFAILURE,
                            format!("{}: a file is where a directory must go", p.rel),
                        ))
                    }
                    (Op::Dir(mode), None) => (JournalKind::Dir, false, false, *mode, None),
                    (Op::Put { .. } | Op::Restore(_), Some(m)) if m.is_dir() => {
                        return Err(InstallError::new(
                            HResult::WU_E_UH_INSTALLERFAILURE,
                            format!("{}: a directory is where a file must go", p.rel),
                        ))
                    }
                    (Op::Put { keep_backup, .. }, _) => {
                        (JournalKind::File, there.is_some(), *keep_backup, 0, None)
                    }
                    (Op::Restore(src), _) => (
                        JournalKind::File,
                        there.is_some(),
                        false,
                        0,
                        Some(src.clone()),
                    ),
                    (Op::Remove, None) | (Op::Rmdir(_), None) => continue,
                    (Op::Remove, Some(m)) if m.is_dir() => continue,
                    (Op::Remove, Some(_)) => (JournalKind::File, true, false, 0, None),
                    (Op::Rmdir(_), Some(m)) if !m.is_dir() => continue,
                    (Op::Rmdir(mode), Some(_)) => (JournalKind::Rmdir, false, false, *mode, None),
                };
                let area = if kind == JournalKind::File {
                    self.area_for(&p.rel)?
                } else {
                    None
                };
                let seq = self.seq + entries.len();
                let temp = match (&p.op, &area) {
                    (Op::Put { .. } | Op::Restore(_), Some(a)) => {
                        Some(format!("{a}/stage/{}/{seq}", self.id))
                    }
                    _ => None,
                };
                if let Some(t) = &temp {
                    entries.push(JournalEntry {
                        path: t.clone(),
                        kind: JournalKind::File,
                        backup: None,
                        keep_backup: false,
                        mode: 0,
                        source: None,
                    });
                }
                let seq = self.seq + entries.len();
                let backup = backs_up.then(|| match &area {
                    Some(a) => format!("@{a}/backups/{}/{seq}", self.id),
                    None => format!("backups/{}/{seq}", self.id),
                });
                if keep {
                    if let Some(b) = &backup {
                        kept.push((p.rel.clone(), b.clone()));
                    }
                }
                entries.push(JournalEntry {
                    path: p.rel.clone(),
                    kind,
                    backup,
                    keep_backup: keep,
                    mode,
                    source,
                });
                work.push((entries.len() - 1, p, temp));
            }
            self.store.journal(self.id, self.seq, &entries)?;
            self.point("journaled");
            // 2. Link aside every path this batch replaces or removes; make the links durable.
            let mut linked: HashSet<String> = HashSet::new();
            for (i, _, _) in &work {
                let e = &entries[*i];
                match e.backup.as_deref().map(|b| b.strip_prefix('@').ok_or(b)) {
                    Some(Ok(in_root)) => {
                        root.link_within(&e.path, in_root)?;
                        linked.insert(parent_of(in_root).to_string());
                    }
                    Some(Err(b)) => {
                        root.link_out(&e.path, &self.layout.work.join(b))?;
                        linked.insert(String::new());
                    }
                    None => {}
                }
            }
            for d in &linked {
                if d.is_empty() {
                    let d = backup_dir(self.layout, self.id);
                    upkeep_fs::fsync_dir(&d)?;
                } else {
                    root.fsync_dir(d)?;
                }
            }
            // 3. The changes.
            for (i, p, temp) in &work {
                let path = &entries[*i].path;
                match (&p.op, temp) {
                    (Op::Dir(mode), _) => root.mkdir(path, *mode)?,
                    (Op::Put { staged, .. }, None) => root.rename_in(staged, path)?,
                    (Op::Put { staged, .. }, Some(t)) => {
                        copy_into(&root, staged, t)?;
                        root.rename_within(t, path)?;
                    }
                    (Op::Remove, _) => root.remove_file(path)?,
                    (Op::Restore(src), temp) => match (src.strip_prefix('@'), temp) {
                        (None, None) => {
                            let tmp = self.stage_dir().join(format!("r{}", self.seq + i));
                            let src = self.layout.work.join(src);
                            upkeep_fs::hard_link(&src, &tmp).map_err(InstallError::from)?;
                            root.rename_in(&tmp, path)?;
                        }
                        (Some(in_root), Some(t)) => {
                            root.link_within(in_root, t)?;
                            root.rename_within(t, path)?;
                        }
                        _ => {
                            return Err(InstallError::new(
                                HResult::WU_E_UH_UNEXPECTED,
                                format!(
                                    "{}: its original was kept on another mount than the one the path is on now",
                                    root.display(path).display()
                                ),
                            ))
                        }
                    },
                    (Op::Rmdir(_), _) => match root.rmdir(path) {
                        // Someone put files there since: the directory stays.
                        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                        r => r.map_err(|e| InstallError::io(&root.display(path), e))?,
                    },
                }
                // `UPKEEP_CRASH_AT=install:change#N` stops after the N-th change.
                self.point("change");
            }
            self.seq += entries.len();
            done += batch.len();
            reporter.on_progress(done as f64 / plan.len().max(1) as f64);
        }
        self.point("applied");
        Ok(kept)
    }

    /// Flushes the root, then records `commit` (which marks the transaction committed in
    /// the same database transaction as the state it records), then cleans up.
    pub fn commit(mut self, commit: &Commit<'_>) -> Result<()> {
        let started = std::time::Instant::now();
        self.layout.dir.syncfs()?;
        for area in self.areas.values() {
            self.layout.dir.syncfs_at(area)?;
        }
        self.point("synced");
        tracing::debug!(elapsed = ?started.elapsed(), "root flushed");
        self.store.commit(self.id, commit)?;
        tracing::debug!(elapsed = ?started.elapsed(), "state committed");
        self.finished = true;
        self.point("committed");
        finish_committed(self.store, self.layout, self.id)
    }

    /// Undoes everything this transaction did (what dropping it does, with the error
    /// returned instead of logged).
    pub fn rollback(mut self) -> Result<()> {
        self.finished = true;
        rollback(self.store, self.layout, self.id)
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Err(e) = rollback(self.store, self.layout, self.id) {
            tracing::error!(
                tx = self.id,
                "rolling back the {} transaction failed; the next session retries: {e}",
                self.operation.as_str()
            );
        }
    }
}

fn remove_dir_all_if_there(p: &Path) -> Result<()> {
    if exists(p).is_some() {
        upkeep_fs::remove_dir_all(p).map_err(InstallError::from)?;
    }
    Ok(())
}

/// Rolls back transaction `id` from its journal (idempotent) and forgets it.
fn rollback(store: &Store, layout: &Layout, id: i64) -> Result<()> {
    let root = &*layout.dir;
    for e in store.journal_entries(id)?.iter().rev() {
        let path = &e.path;
        match e.kind {
            JournalKind::File => match &e.backup {
                Some(b) => match b.strip_prefix('@') {
                    Some(in_root) => {
                        if root.stat(in_root)?.is_some() {
                            root.rename_within(in_root, path)?;
                        }
                    }
                    None => {
                        let b = layout.work.join(b);
                        if exists(&b).is_some() {
                            root.rename_in(&b, path)?;
                        }
                    }
                },
                None => {
                    if root.stat(path)?.is_some_and(|m| !m.is_dir()) {
                        root.remove_file(path)?;
                    }
                }
            },
            JournalKind::Dir => {
                let _ = root.rmdir(path);
            }
            JournalKind::Rmdir => {
                if root.stat(path)?.is_none() {
                    root.mkdir(path, e.mode)?;
                }
            }
        }
    }
    root.syncfs()?;
    let areas = areas_of(store, id)?;
    for a in &areas {
        root.syncfs_at(a)?;
    }
    remove_dir_all_if_there(&stage_dir(layout, id))?;
    remove_dir_all_if_there(&backup_dir(layout, id))?;
    remove_dir_all_if_there(&layout.work.join(pinned_rel(id)))?;
    for a in &areas {
        // Emptied by the journal's own entries.
        let _ = root.rmdir(&format!("{a}/stage/{id}"));
        let _ = root.rmdir(&format!("{a}/backups/{id}"));
    }
    store.end_tx(id)?;
    Ok(())
}

/// The areas on other mounts (`<mount>/.upkeep`, relative to the root) that transaction
/// `id`'s journal uses.
fn areas_of(store: &Store, id: i64) -> Result<HashSet<String>> {
    let marker = format!("/{AREA}/");
    Ok(store
        .journal_entries(id)?
        .iter()
        .flat_map(|e| {
            [
                Some(e.path.as_str()),
                e.backup.as_deref().and_then(|b| b.strip_prefix('@')),
            ]
        })
        .flatten()
        .filter_map(|p| {
            p.find(&marker)
                .map(|i| p[..i + marker.len() - 1].to_string())
        })
        .collect())
}

/// After the commit: delete the backups that served rollback only and the originals that
/// were put back, the stage directory, and pinned content no installed update refers to;
/// then forget the journal.
fn finish_committed(store: &Store, layout: &Layout, id: i64) -> Result<()> {
    for e in store.journal_entries(id)? {
        let drop_backup = e.backup.as_ref().filter(|_| !e.keep_backup);
        for rel in drop_backup.into_iter().chain(e.source.as_ref()) {
            if let Some(in_root) = rel.strip_prefix('@') {
                let root = &*layout.dir;
                if root.stat(in_root)?.is_some() {
                    root.remove_file(in_root)?;
                }
                let _ = root.rmdir(parent_of(in_root)); // the last one empties it
                continue;
            }
            let p = layout.work.join(rel);
            match upkeep_fs::remove_file(&p) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
            if let Some(parent) = p.parent() {
                let _ = upkeep_fs::remove_dir(parent); // the last one empties it
            }
        }
    }
    remove_dir_all_if_there(&stage_dir(layout, id))?;
    let _ = upkeep_fs::remove_dir(backup_dir(layout, id));
    for a in areas_of(store, id)? {
        let _ = layout.dir.rmdir(&format!("{a}/stage/{id}"));
        let _ = layout.dir.rmdir(&format!("{a}/backups/{id}"));
    }
    collect_pinned(store, layout)?;
    store.end_tx(id)?;
    Ok(())
}

/// Deletes pinned content that neither an installed update nor an open transaction
/// refers to (an upgraded or uninstalled `command` update's).
fn collect_pinned(store: &Store, layout: &Layout) -> Result<()> {
    let dir = layout.work.join("pinned");
    let Ok(rd) = upkeep_fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut live: std::collections::HashSet<String> = store
        .installed()?
        .into_iter()
        .filter_map(|i| i.pinned)
        .collect();
    live.extend(
        store
            .unfinished_txs()?
            .into_iter()
            .filter(|t| t.state == TxState::Open)
            .map(|t| pinned_rel(t.tx_id)),
    );
    for e in rd.flatten() {
        let rel = format!("pinned/{}", e.file_name().to_string_lossy());
        if !live.contains(&rel) {
            remove_dir_all_if_there(&e.path())?;
        }
    }
    Ok(())
}

/// Recovery at session open: rolls back every transaction that was not committed and
/// finishes every committed one. Returns how many it found. The caller holds the install
/// lock, so no live transaction is touched. A journal this build cannot read stops it
/// with an error, before anything is changed.
pub fn recover(store: &Store, layout: &Layout) -> Result<usize> {
    claim_work_tree(store, layout)?;
    let txs = store.unfinished_txs()?;
    for t in &txs {
        // Read every journal first: an entry this build does not know stops recovery
        // before any change.
        store.journal_entries(t.tx_id)?;
    }
    for t in &txs {
        match t.state {
            TxState::Committed => {
                tracing::info!(tx = t.tx_id, update = %t.update_id, "finishing a committed {}", t.operation.as_str());
                finish_committed(store, layout, t.tx_id)?;
            }
            TxState::Open => {
                tracing::warn!(tx = t.tx_id, update = %t.update_id, "rolling back an interrupted {}", t.operation.as_str());
                rollback(store, layout, t.tx_id)?;
            }
        }
    }
    Ok(txs.len())
}
