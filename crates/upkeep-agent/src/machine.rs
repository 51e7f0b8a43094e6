//! The machine's state as the agent keeps it: the state database, installed updates and
//! their paths, licenses and hidden updates, history, the install root's layout and lock,
//! recovery, and the content cache's lifetime.

use std::collections::HashSet;
use std::path::PathBuf;

use upkeep_types::{HResult, Update, UpdateCollection};

use crate::error::{Error, Result};
use crate::search::LocalState;
use crate::{Agent, Request};

impl Agent {
    /// The state database (one connection; cheap to open).
    pub fn store(&self) -> Result<upkeep_store::Store> {
        Ok(upkeep_store::Store::open(&self.inner.cfg.state_dir)?)
    }

    pub(crate) fn local_state(&self) -> Result<LocalState> {
        let store = self.store()?;
        let cached = self
            .content_cache()
            .map(|c| c.object_keys())
            .unwrap_or_default();
        // Keyed by UUID: a search looks every catalog entry up here.
        let uuid = |s: &str| s.parse::<uuid::Uuid>().ok();
        Ok(LocalState {
            installed: store
                .installed()?
                .into_iter()
                .filter_map(|i| Some((uuid(&i.update_id)?, i)))
                .collect(),
            hidden: store.hidden()?.iter().filter_map(|h| uuid(h)).collect(),
            eulas: store
                .accepted_eulas()?
                .iter()
                .filter_map(|(id, r)| Some((uuid(id)?, *r)))
                .collect(),
            cached,
        })
    }

    /// Forgets every catalog in memory (the next search reads or rebuilds them).
    pub fn forget_catalogs(&self) {
        self.inner.catalogs.lock().expect("not poisoned").clear();
        *self.inner.merged.lock().expect("not poisoned") = None;
    }

    /// An update of the catalog in memory (no refresh).
    pub fn cached_update(&self, id: &uuid::Uuid) -> Option<Update> {
        let cache = self.inner.merged.lock().expect("not poisoned");
        cache.as_ref().and_then(|(_, cat)| cat.get(id).cloned())
    }

    /// Who supersedes whom, as the catalog in memory knows it (no refresh): id → its
    /// service and the ids it supersedes.
    pub fn supersedence(&self) -> crate::Supersedence {
        let cache = self.inner.merged.lock().expect("not poisoned");
        cache
            .as_ref()
            .map(|(_, cat)| {
                cat.entries()
                    .iter()
                    .filter(|u| !u.superseded_update_ids().is_empty())
                    .map(|u| {
                        (
                            u.identity().update_id,
                            (
                                u.service().unwrap_or(crate::DEFAULT_SERVICE).to_string(),
                                u.superseded_update_ids().to_vec(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks every path the installed updates `ids` own (all installed updates when
    /// `ids` is empty) against what was installed there: kind, size, content, mode,
    /// symlink target (as `dpkg --verify` does). Reads only. An id that is not installed
    /// is `WU_E_NOT_APPLICABLE`.
    pub fn verify(&self, ids: &[String]) -> Result<Vec<VerifiedUpdate>> {
        let store = self.store()?;
        let layout = self.layout()?;
        let installed = store.installed()?;
        if let Some(missing) = ids
            .iter()
            .find(|id| !installed.iter().any(|i| &i.update_id == *id))
        {
            return Err(Error::new(
                HResult::WU_E_NOT_APPLICABLE,
                format!("update {missing} is not installed"),
            ));
        }
        let mut out = Vec::new();
        for i in installed
            .iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.update_id))
        {
            let owned = store.owned(&i.update_id)?;
            let mut changed = Vec::new();
            for o in &owned {
                let state = upkeep_install::verify::check(&layout.dir, o)?;
                if state != upkeep_install::verify::PathState::Intact {
                    changed.push((o.path.clone(), state));
                }
            }
            out.push(VerifiedUpdate {
                update_id: i.update_id.clone(),
                title: i.title.clone(),
                paths_checked: owned.len(),
                changed,
            });
        }
        Ok(out)
    }

    /// Every installed update, from the records the agent keeps (no repository needed),
    /// oldest install first.
    pub fn installed_updates(&self) -> Result<Vec<InstalledUpdate>> {
        let store = self.store()?;
        let local = self.local_state()?;
        let mut out = Vec::new();
        for i in store.installed()? {
            let size_on_disk = store.owned_size(&i.update_id)?;
            let update = local.installed_update(&i);
            out.push(InstalledUpdate {
                update_id: i.update_id,
                revision: i.revision,
                title: i.title,
                handler: i.handler,
                installed_at: i.installed_at,
                reboot_required: i.reboot_required,
                size_on_disk,
                update,
            });
        }
        Ok(out)
    }

    /// Applies `cache_max_bytes`: removes the least recently used content beyond it,
    /// never the objects of `keep`.
    pub fn trim_cache(&self, keep: &HashSet<String>) {
        let Some(max) = self.inner.cfg.cache_max_bytes else {
            return;
        };
        if let Ok(cache) = self.content_cache() {
            let (n, bytes) = cache.enforce_cap(max, keep);
            if n > 0 {
                tracing::info!(
                    objects = n,
                    bytes,
                    "cache over cache_max_bytes ({max}): least recently used content removed"
                );
            }
        }
    }

    /// After an install job: removes the content of the updates it installed (unless
    /// `keep_downloads`; a `command` update's uninstall runs from the copy the install
    /// engine pinned, not from the cache), except what `still_needed` (updates of the job
    /// that did not install) uses; then applies the cap.
    pub fn after_install(&self, installed: &[&Update], still_needed: &HashSet<String>) {
        if !self.inner.cfg.keep_downloads && !installed.is_empty() {
            if let Ok(cache) = self.content_cache() {
                let mut freed = 0;
                for k in content_keys(installed.iter().copied()) {
                    if !still_needed.contains(&k) {
                        freed += cache.remove_key(&k);
                    }
                }
                for u in installed {
                    u.mark_not_downloaded();
                }
                tracing::debug!(bytes = freed, "installed content removed from the cache");
            }
        }
        self.trim_cache(still_needed);
    }

    /// Removes every object and unfinished download from the content cache (`upkeep cache
    /// clean`); pinned copies of installed `command` updates are not in it.
    pub fn clean_cache(&self, req: &Request) -> Result<CacheReport> {
        req.check_writable("clean the cache")?;
        let cache = self.content_cache()?;
        let mut report = CacheReport::default();
        for e in cache.entries() {
            let freed = cache.remove_key(&e.key);
            if freed > 0 {
                report.objects += 1;
                report.bytes += freed;
            }
        }
        let (n, bytes) = cache.remove_partials(None);
        report.partial_files = n;
        report.bytes += bytes;
        Ok(report)
    }

    /// WUA's `CopyToCache`, for a whole directory: every regular file under `paths`
    /// (directories walked, symlinks not followed) whose SHA-256 is that of a content file
    /// of the trusted metadata (loaded from disk: no network) is copied into the cache —
    /// read up to its signed length, every signed hash checked — and counts as downloaded.
    /// A file that matches nothing is reported, not copied.
    pub fn copy_to_cache(&self, req: &Request, paths: &[PathBuf]) -> Result<CacheImport> {
        req.check_writable("import into the cache")?;
        let catalog = self.catalog(false)?;
        let mut by_len: std::collections::HashMap<u64, Vec<(String, upkeep_types::ContentFile)>> =
            Default::default();
        for u in catalog.entries() {
            let files = u
                .download_contents()
                .iter()
                .chain(u.eula_file())
                .chain(u.bootstrapper());
            for f in files {
                if let Some(k) = upkeep_transfer::cache_key(f) {
                    let list = by_len.entry(f.length).or_default();
                    if !list.iter().any(|(key, _)| *key == k) {
                        list.push((k, f.clone()));
                    }
                }
            }
        }
        let cache = self.content_cache()?;
        let mut report = CacheImport::default();
        // The paths named must be there; what vanishes or cannot be read below them while
        // the walk runs is a report of that file, not the end of the import.
        for p in paths {
            upkeep_fs::symlink_metadata(p).map_err(|e| Error::fs(HResult::WU_E_INVALID_FILE, e))?;
        }
        let mut todo: Vec<PathBuf> = paths.to_vec();
        let mut seen_files = 0usize;
        while let Some(p) = todo.pop() {
            let shown = p.display().to_string();
            let m = match upkeep_fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    report.failed.push((shown, format!("cannot be read: {e}")));
                    continue;
                }
            };
            if m.is_dir() {
                match upkeep_fs::read_dir(&p) {
                    Ok(rd) => {
                        for e in rd {
                            match e {
                                Ok(e) => todo.push(e.path()),
                                Err(e) => report
                                    .failed
                                    .push((shown.clone(), format!("cannot be listed: {e}"))),
                            }
                        }
                    }
                    Err(e) => report
                        .failed
                        .push((shown, format!("cannot be listed: {e}"))),
                }
                continue;
            }
            if !m.is_file() {
                continue;
            }
            seen_files += 1;
            if seen_files > 1_000_000 {
                return Err(Error::new(
                    HResult::E_INVALIDARG,
                    "more than 1,000,000 files to import: name the directory of the content",
                ));
            }
            let Some(cands) = by_len.get(&m.len()) else {
                report.unmatched.push(shown);
                continue;
            };
            let files: Vec<upkeep_types::ContentFile> =
                cands.iter().map(|(_, f)| f.clone()).collect();
            match cache.import_candidate(&p, &files) {
                Ok(upkeep_transfer::Imported::New(file, _)) => {
                    report.bytes += file.length;
                    report.imported.push((shown, file.path));
                }
                Ok(upkeep_transfer::Imported::Already(file)) => report.already.push(file.path),
                Ok(upkeep_transfer::Imported::Unmatched) => report.unmatched.push(shown),
                Ok(upkeep_transfer::Imported::NotRegular(what)) => report
                    .failed
                    .push((shown, format!("is {what} now, not a regular file"))),
                Err(e) => report.failed.push((shown, e.to_string())),
            }
        }
        report.imported.sort();
        report.unmatched.sort();
        Ok(report)
    }

    /// WUA's `CopyFromCache`: copies the cached content of `updates` (content files, and
    /// the license text and bootstrapper when cached) to `dir/<target path>`, for another
    /// machine's `copy_to_cache`. An update whose content is not all cached is
    /// `WU_E_DM_NOTDOWNLOADED`, naming it, before anything is copied.
    pub fn copy_from_cache(
        &self,
        updates: &UpdateCollection,
        dir: &std::path::Path,
    ) -> Result<Vec<PathBuf>> {
        let cache = self.content_cache()?;
        let mut plan = Vec::new();
        for u in updates {
            for f in u.download_contents() {
                let Some(src) = cache.get(f) else {
                    return Err(Error::new(
                        HResult::WU_E_DM_NOTDOWNLOADED,
                        format!(
                            "update {} ({}): {} is not in the cache; download it first",
                            u.identity().update_id,
                            u.title(),
                            f.path
                        ),
                    ));
                };
                plan.push((src, f.path.clone()));
            }
            for f in u.eula_file().into_iter().chain(u.bootstrapper()) {
                if let Some(src) = cache.get(f) {
                    plan.push((src, f.path.clone()));
                }
            }
        }
        let mut out = Vec::new();
        for (src, rel) in plan {
            if !upkeep_types::is_valid_target_path(&rel) {
                continue; // validated with the record; never a path out of `dir`
            }
            let to = dir.join(&rel);
            let fail = |e: upkeep_fs::PathError| Error::fs(HResult::WU_E_DM_UNEXPECTED, e);
            if let Some(parent) = to.parent() {
                upkeep_fs::create_dir_all(parent).map_err(fail)?;
            }
            upkeep_fs::copy(&src, &to).map_err(fail)?;
            out.push(to);
        }
        Ok(out)
    }

    /// What the content cache holds, least recently used first, each object with the
    /// updates of the catalog in memory (or of the installed records) whose content it is.
    pub fn cache_entries(&self) -> Result<(Vec<CacheObject>, Vec<CachePartial>)> {
        let cache = self.content_cache()?;
        let mut owners: std::collections::HashMap<String, Vec<String>> = Default::default();
        {
            let cat = self.inner.merged.lock().expect("not poisoned");
            if let Some((_, cat)) = cat.as_ref() {
                for u in cat.entries() {
                    for k in content_keys(std::iter::once(u)) {
                        owners.entry(k).or_default().push(format!(
                            "{} ({})",
                            u.title(),
                            u.identity()
                        ));
                    }
                }
            }
        }
        let objects = cache
            .entries()
            .into_iter()
            .map(|e| CacheObject {
                updates: owners.remove(&e.key).unwrap_or_default(),
                key: e.key,
                bytes: e.bytes,
                last_used: jiff::Timestamp::try_from(e.last_used).unwrap_or_default(),
                verified: e.verified,
            })
            .collect();
        let partials = cache
            .partials()
            .into_iter()
            .map(|(name, bytes, modified)| CachePartial {
                name,
                bytes,
                modified: jiff::Timestamp::try_from(modified).unwrap_or_default(),
            })
            .collect();
        Ok((objects, partials))
    }

    /// The install root and its work directory.
    pub fn layout(&self) -> Result<upkeep_install::Layout> {
        Ok(upkeep_install::Layout::new(
            &self.inner.cfg.install_root,
            &self.inner.cfg.state_dir,
        )?)
    }

    /// Tries to take the machine-wide install lock (`<state_dir>/install.lock`); `None`
    /// when another installer, in this process or another, holds it.
    pub fn try_install_lock(&self) -> Result<Option<std::fs::File>> {
        upkeep_fs::try_lock(&self.inner.cfg.state_dir.join("install.lock"))
            .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))
    }

    /// Recovery: rolls back or finishes install transactions a crash interrupted. Runs
    /// when the session is built, unless another installer holds the lock (then that one
    /// owns the transaction).
    pub(crate) fn recover(&self) -> Result<()> {
        let store = self.store()?;
        if store.unfinished_txs()?.is_empty() {
            return Ok(());
        }
        if let Some(_lock) = self.try_install_lock()? {
            let n = upkeep_install::tx::recover(&store, &self.layout()?)?;
            tracing::info!("recovered {n} interrupted transaction(s)");
        }
        Ok(())
    }

    /// `UpdateSearcher::QueryHistory` and `GetTotalHistoryCount` share this.
    pub fn history(&self, start: usize, count: usize) -> Result<Vec<upkeep_store::HistoryEntry>> {
        Ok(self.store()?.history(start, count)?)
    }
}

impl Agent {
    /// The content cache (`<state_dir>/cache`); unfinished downloads nobody resumed within
    /// `partial_max_age_days` are removed when it is opened.
    pub fn content_cache(&self) -> Result<upkeep_transfer::ContentCache> {
        let dir = self.config().state_dir.join("cache");
        let cache = upkeep_transfer::ContentCache::open(&dir)
            .map_err(|e| Error::fs(HResult::WU_E_DM_UNEXPECTED, e))?;
        let age = std::time::Duration::from_secs(self.config().partial_max_age_days * 86_400);
        let (n, bytes) = cache.remove_partials(Some(age));
        if n > 0 {
            tracing::info!(
                files = n,
                bytes,
                "removed unfinished downloads older than {} days",
                self.config().partial_max_age_days
            );
        }
        Ok(cache)
    }

    /// `AcceptEula`: records that the caller accepted the license of `update` (this
    /// revision), and marks the value. An update without license terms needs nothing.
    pub fn accept_eula(&self, req: &Request, update: &Update) -> Result<()> {
        if update.metadata().eula.is_none() {
            return Ok(());
        }
        req.check_writable("accept license terms")?;
        let id = update.identity();
        self.store()?
            .accept_eula(&id.update_id.to_string(), id.revision_number)?;
        update.mark_eula_accepted();
        Ok(())
    }

    /// `IsHidden = hidden`, recorded for the machine, and on the value. Hiding a mandatory
    /// update is `WU_E_DS_DECLINENOTALLOWED`.
    pub fn set_hidden(&self, req: &Request, update: &Update, hidden: bool) -> Result<()> {
        let id = update.identity().update_id;
        if hidden && update.is_mandatory() {
            return Err(Error::new(
                HResult::WU_E_DS_DECLINENOTALLOWED,
                format!("update {id} is mandatory and cannot be hidden"),
            ));
        }
        req.check_writable("hide or show updates")?;
        self.store()?.set_hidden(&id.to_string(), hidden)?;
        update.mark_hidden(hidden);
        Ok(())
    }

    /// `EulaText`: the license text of `update`, from the content cache or fetched from
    /// its service (verified against its signed hashes either way);
    /// `WU_E_EULA_UNAVAILABLE` when it has none or it cannot be had.
    pub fn eula_text(&self, update: &Update) -> Result<String> {
        let unavailable = |m: String| Error::new(HResult::WU_E_EULA_UNAVAILABLE, m);
        let Some(file) = update.eula_file() else {
            return Err(unavailable(format!(
                "update {} has no license terms",
                update.identity().update_id
            )));
        };
        let path = match self.content_cache()?.get(file) {
            Some(p) => p,
            None => {
                let engine = self.engine()?;
                let (bases, consistent) = self.content_bases(update.service())?;
                let urls: Vec<String> = bases
                    .iter()
                    .map(|b| upkeep_tuf::target_url(b, &file.path, &file.hashes, consistent))
                    .collect();
                engine
                    .fetch_blocking(
                        file,
                        &urls,
                        upkeep_types::DownloadPriority::High,
                        |_| {},
                        || false,
                    )
                    .map_err(|e| unavailable(e.to_string()))?
            }
        };
        let bytes =
            upkeep_fs::read(&path).map_err(|e| Error::fs(HResult::WU_E_EULA_UNAVAILABLE, e))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The cache keys of the content files of `updates`.
pub fn content_keys<'a>(updates: impl Iterator<Item = &'a Update>) -> HashSet<String> {
    updates
        .flat_map(|u| u.download_contents().iter())
        .filter_map(upkeep_transfer::cache_key)
        .collect()
}

/// One installed update as [`UpdateSession::verify`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUpdate {
    /// Its id.
    pub update_id: String,
    /// Its title at install time.
    pub title: String,
    /// How many paths it owns.
    pub paths_checked: usize,
    /// The paths that are not as installed, and how.
    pub changed: Vec<(String, upkeep_install::verify::PathState)>,
}

/// What `copy_to_cache` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheImport {
    /// (file, the target it was imported as).
    pub imported: Vec<(String, String)>,
    /// Targets that were in the cache already.
    pub already: Vec<String>,
    /// Files matching no content file of the trusted metadata.
    pub unmatched: Vec<String>,
    /// (file, why) for files that matched but could not be imported.
    pub failed: Vec<(String, String)>,
    /// Bytes imported.
    pub bytes: u64,
}

/// What `clean_cache` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheReport {
    /// Verified (or unverified) objects.
    pub objects: usize,
    /// Unfinished downloads.
    pub partial_files: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// An object of the content cache.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheObject {
    /// Its key (SHA-256 of the content).
    pub key: String,
    /// Its size.
    pub bytes: u64,
    /// When it was downloaded or last used.
    pub last_used: jiff::Timestamp,
    /// It counts as downloaded (its stamp matches).
    pub verified: bool,
    /// The updates (title and identity) whose content it is, as far as the session's
    /// catalog knows.
    pub updates: Vec<String>,
}

/// An unfinished download kept for resuming.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CachePartial {
    /// Its file name in `cache/partial/`.
    pub name: String,
    /// Bytes so far.
    pub bytes: u64,
    /// Last written.
    pub modified: jiff::Timestamp,
}

/// An installed update as the agent keeps it (not WUA's: WUA answers `IsInstalled=1`
/// searches only; this also works with no repository at all).
#[derive(Clone, Debug)]
pub struct InstalledUpdate {
    /// The update id.
    pub update_id: String,
    /// The installed revision.
    pub revision: u32,
    /// Its title.
    pub title: String,
    /// Its handler id.
    pub handler: String,
    /// When it was installed (or last upgraded).
    pub installed_at: jiff::Timestamp,
    /// Its install asked for a restart that has not happened yet.
    pub reboot_required: bool,
    /// Bytes of the files it owns.
    pub size_on_disk: u64,
    /// The update from its installed record (`None` for one installed by an agent that
    /// kept no record).
    pub update: Option<Update>,
}
