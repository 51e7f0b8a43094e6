//! The seam between the WUA façade and what serves it.
//!
//! [`UpdateSession`](crate::UpdateSession), its searchers, downloaders and installers call
//! a [`Backend`] and nothing else. One implementation exists today: the in-process
//! [`Agent`]. The daemon's client (the next step) is a second one that makes the same calls
//! over D-Bus; the façade — callbacks, snapshots, `AsyncState`, `end_*`, the async forms —
//! stays as it is, because everything a backend hands back is plain data and a job body
//! that reports through a [`Reporter`].
//!
//! A download or an install is two steps, as WUA's `Begin*` is: `begin_*` checks
//! everything and fails at once (the caller's `Begin*` returns the error), and the
//! [`Prepared`] job it returns is run on the job's thread with the job's reporter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use upkeep_agent::{Agent, Operation, Reporter, Request, ResolvedConfig, SearchOptions};
use upkeep_types::{DownloadPriority, DownloadType, HResult, Update, UpdateCollection};

use crate::error::{Error, Result};
use crate::{
    CacheImport, CacheObject, CachePartial, CacheReport, DownloadProgress, DownloadResult,
    InstallationProgress, InstallationResult, InstalledUpdate, SearchResult, VerifiedUpdate,
};

/// A job body: runs once, on the job's thread, reporting through the reporter.
pub type JobBody<P, R> = Box<dyn FnOnce(Arc<dyn Reporter<P>>) -> Result<R> + Send>;

/// A job body a backend has checked and not yet started.
pub struct Prepared<P, R> {
    /// The updates the job works on, in the order their results come.
    pub updates: UpdateCollection,
    /// The snapshot before the job has done anything.
    pub initial: P,
    /// The job: runs on the job's thread, reports through the reporter, and stops at its
    /// next safe point once the reporter says it is cancelled.
    pub run: JobBody<P, R>,
}

impl<P, R> std::fmt::Debug for Prepared<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("updates", &self.updates.len())
            .finish_non_exhaustive()
    }
}

/// What a session needs from the machine's agent, wherever that agent runs. Every argument
/// and result is plain data (or a [`Reporter`]), so that each call can cross a bus.
pub trait Backend: Send + Sync + 'static {
    /// The resolved configuration.
    fn config(&self) -> &ResolvedConfig;
    /// The request a client with this application id makes (the caller's uid filled in).
    fn request(&self, client_application_id: String) -> Request;
    /// `IUpdateSearcher::Search`.
    fn search(&self, req: &Request, criteria: &str, opts: &SearchOptions) -> Result<SearchResult>;
    /// Checks a download (`BeginDownload`'s errors) and returns its job.
    fn begin_download(
        &self,
        req: &Request,
        updates: Option<&UpdateCollection>,
        download_type: DownloadType,
        priority: DownloadPriority,
    ) -> Result<Prepared<DownloadProgress, DownloadResult>>;
    /// Checks an install or uninstall (`BeginInstall`'s errors, the install lock taken)
    /// and returns its job.
    fn begin_install(
        &self,
        req: &Request,
        updates: Option<&UpdateCollection>,
        op: Operation,
        forced: bool,
    ) -> Result<Prepared<InstallationProgress, InstallationResult>>;
    /// `IUpdateInstaller::IsBusy`.
    fn is_busy(&self) -> bool;
    /// `RebootRequiredBeforeInstallation`.
    fn reboot_pending(&self) -> Result<bool>;
    /// `IUpdate::AcceptEula`.
    fn accept_eula(&self, req: &Request, update: &Update) -> Result<()>;
    /// `IUpdate::IsHidden = hidden`.
    fn set_hidden(&self, req: &Request, update: &Update, hidden: bool) -> Result<()>;
    /// `IUpdate::EulaText`.
    fn eula_text(&self, update: &Update) -> Result<String>;
    /// Checks installed files against their records.
    fn verify(&self, ids: &[String]) -> Result<Vec<VerifiedUpdate>>;
    /// Every installed update.
    fn installed_updates(&self) -> Result<Vec<InstalledUpdate>>;
    /// `QueryHistory` (count ≥ 1 already checked).
    fn history(&self, start: usize, count: usize) -> Result<Vec<upkeep_store::HistoryEntry>>;
    /// `GetTotalHistoryCount`.
    fn history_count(&self) -> Result<usize>;
    /// Empties the content cache.
    fn clean_cache(&self, req: &Request) -> Result<CacheReport>;
    /// `CopyToCache`.
    fn copy_to_cache(&self, req: &Request, paths: &[PathBuf]) -> Result<CacheImport>;
    /// `CopyFromCache`.
    fn copy_from_cache(&self, updates: &UpdateCollection, dir: &Path) -> Result<Vec<PathBuf>>;
    /// What the content cache holds.
    fn cache_entries(&self) -> Result<(Vec<CacheObject>, Vec<CachePartial>)>;
    /// The agent itself when it runs in this process (for what only makes sense there,
    /// such as opening its content cache directly).
    fn in_process(&self) -> Option<&Agent> {
        None
    }
}

/// The in-process backend: the calls are the agent's own.
impl Backend for Agent {
    fn config(&self) -> &ResolvedConfig {
        Agent::config(self)
    }
    fn request(&self, client_application_id: String) -> Request {
        Agent::request(self, client_application_id)
    }
    fn search(&self, req: &Request, criteria: &str, opts: &SearchOptions) -> Result<SearchResult> {
        Agent::search(self, req, criteria, opts)
    }
    fn begin_download(
        &self,
        req: &Request,
        updates: Option<&UpdateCollection>,
        download_type: DownloadType,
        priority: DownloadPriority,
    ) -> Result<Prepared<DownloadProgress, DownloadResult>> {
        let ticket = self.prepare_download(req, updates, download_type)?;
        let agent = self.clone();
        Ok(Prepared {
            updates: ticket.updates().clone(),
            initial: ticket.initial_progress().clone(),
            run: Box::new(move |reporter| agent.download_blocking(ticket, priority, reporter)),
        })
    }
    fn begin_install(
        &self,
        req: &Request,
        updates: Option<&UpdateCollection>,
        op: Operation,
        forced: bool,
    ) -> Result<Prepared<InstallationProgress, InstallationResult>> {
        let ticket = self.prepare_install(req, updates, op, forced)?;
        let agent = self.clone();
        let updates = ticket.updates().clone();
        Ok(Prepared {
            initial: InstallationProgress::not_started(updates.len()),
            updates,
            run: Box::new(move |reporter| agent.install(ticket, &*reporter)),
        })
    }
    fn is_busy(&self) -> bool {
        matches!(self.try_install_lock(), Ok(None))
    }
    fn reboot_pending(&self) -> Result<bool> {
        Ok(self.store()?.reboot_pending()?)
    }
    fn accept_eula(&self, req: &Request, update: &Update) -> Result<()> {
        Agent::accept_eula(self, req, update)
    }
    fn set_hidden(&self, req: &Request, update: &Update, hidden: bool) -> Result<()> {
        Agent::set_hidden(self, req, update, hidden)
    }
    fn eula_text(&self, update: &Update) -> Result<String> {
        Agent::eula_text(self, update)
    }
    fn verify(&self, ids: &[String]) -> Result<Vec<VerifiedUpdate>> {
        Agent::verify(self, ids)
    }
    fn installed_updates(&self) -> Result<Vec<InstalledUpdate>> {
        Agent::installed_updates(self)
    }
    fn history(&self, start: usize, count: usize) -> Result<Vec<upkeep_store::HistoryEntry>> {
        Agent::history(self, start, count)
    }
    fn history_count(&self) -> Result<usize> {
        Ok(self.store()?.history_count()?)
    }
    fn clean_cache(&self, req: &Request) -> Result<CacheReport> {
        Agent::clean_cache(self, req)
    }
    fn copy_to_cache(&self, req: &Request, paths: &[PathBuf]) -> Result<CacheImport> {
        Agent::copy_to_cache(self, req, paths)
    }
    fn copy_from_cache(&self, updates: &UpdateCollection, dir: &Path) -> Result<Vec<PathBuf>> {
        Agent::copy_from_cache(self, updates, dir)
    }
    fn cache_entries(&self) -> Result<(Vec<CacheObject>, Vec<CachePartial>)> {
        Agent::cache_entries(self)
    }
    fn in_process(&self) -> Option<&Agent> {
        Some(self)
    }
}

/// What a call that only the in-process agent can answer says over another backend.
pub(crate) fn not_in_process(what: &str) -> Error {
    Error::new(
        HResult::WU_E_NOT_SUPPORTED,
        format!("{what} needs the agent in this process"),
    )
}
