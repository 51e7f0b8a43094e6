//! `UpdateDownloader` (WUA's `IUpdateDownloader` and `IUpdateDownloaderEx`), `DownloadJob`,
//! `DownloadProgress` and the results, on the job engine and the transfer engine.
//!
//! Every distinct content file of the job is a transfer on the session's engine, which runs
//! up to `parallel_downloads` at once across all of the session's jobs, granting slots by
//! the job's [`DownloadPriority`] (then in request order, so in collection order within a
//! job); `Low` transfers share the optional `low_priority_bytes_per_second` cap. Each file
//! goes to the content-addressed cache in `<state_dir>/cache`, verified against the signed
//! hashes while it streams, and the cache is flushed with one `syncfs` per job.
//!
//! With transfers in parallel, the "current update" of a snapshot is the first update in
//! collection order that is in progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use upkeep_job::{Callbacks, Job};
use upkeep_transfer::{ContentCache, Engine, Phase};
use upkeep_types::{
    ContentFile, DownloadPhase, DownloadPriority, DownloadType, HResult, OperationResultCode,
    UpdateCollection,
};

use crate::error::{Error, Result};
use crate::search_job::AsyncState;
use crate::session::UpdateSession;

/// `IUpdateDownloadResult`: one update's outcome, and why it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateDownloadResult {
    result_code: OperationResultCode,
    hresult: HResult,
    message: Option<Arc<str>>,
}

impl UpdateDownloadResult {
    fn new(result_code: OperationResultCode, hresult: HResult) -> Self {
        UpdateDownloadResult {
            result_code,
            hresult,
            message: None,
        }
    }
    fn failed(result_code: OperationResultCode, hresult: HResult, message: &str) -> Self {
        UpdateDownloadResult {
            result_code,
            hresult,
            message: Some(message.into()),
        }
    }
    /// What went wrong, naming the file and the cause (an upkeep extension: WUA has only
    /// the `HResult`); `None` when nothing did.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
    /// `ResultCode`.
    pub fn result_code(&self) -> OperationResultCode {
        self.result_code
    }
    /// `HResult` (`S_OK` on success).
    pub fn hresult(&self) -> HResult {
        self.hresult
    }
}

/// `IDownloadProgress`: an owned snapshot; it never changes after it is taken.
#[derive(Clone, Debug)]
pub struct DownloadProgress {
    current_update_index: usize,
    current_update_bytes_downloaded: u64,
    current_update_bytes_to_download: u64,
    current_update_download_phase: DownloadPhase,
    total_bytes_downloaded: u64,
    total_bytes_to_download: u64,
    percent_complete: i32,
    current_update_percent_complete: i32,
    results: Arc<Vec<UpdateDownloadResult>>,
}

fn percent(done: u64, total: u64) -> i32 {
    if total == 0 {
        100
    } else {
        ((done.min(total) as u128 * 100) / total as u128) as i32
    }
}

impl DownloadProgress {
    /// `CurrentUpdateIndex`.
    pub fn current_update_index(&self) -> usize {
        self.current_update_index
    }
    /// `CurrentUpdateBytesDownloaded`.
    pub fn current_update_bytes_downloaded(&self) -> u64 {
        self.current_update_bytes_downloaded
    }
    /// `CurrentUpdateBytesToDownload`.
    pub fn current_update_bytes_to_download(&self) -> u64 {
        self.current_update_bytes_to_download
    }
    /// `CurrentUpdateDownloadPhase`.
    pub fn current_update_download_phase(&self) -> DownloadPhase {
        self.current_update_download_phase
    }
    /// `CurrentUpdatePercentComplete`.
    pub fn current_update_percent_complete(&self) -> i32 {
        self.current_update_percent_complete
    }
    /// `PercentComplete`: by bytes over all updates; never goes down.
    pub fn percent_complete(&self) -> i32 {
        self.percent_complete
    }
    /// `TotalBytesDownloaded`.
    pub fn total_bytes_downloaded(&self) -> u64 {
        self.total_bytes_downloaded
    }
    /// `TotalBytesToDownload`.
    pub fn total_bytes_to_download(&self) -> u64 {
        self.total_bytes_to_download
    }
    /// `GetUpdateResult(i)`: `NotStarted`, `InProgress`, or the outcome.
    pub fn update_result(&self, i: usize) -> Option<UpdateDownloadResult> {
        self.results.get(i).cloned()
    }
}

/// `IDownloadResult`.
#[derive(Clone, Debug)]
pub struct DownloadResult {
    result_code: OperationResultCode,
    hresult: HResult,
    results: Vec<UpdateDownloadResult>,
}

impl DownloadResult {
    /// The result of a job whose work stopped on an internal error: what had finished
    /// keeps its result, every other update is `Failed` with `E_UNEXPECTED`.
    fn after_panic(last: &DownloadProgress, msg: &str) -> DownloadResult {
        let results: Vec<UpdateDownloadResult> = last
            .results
            .iter()
            .map(|r| match r.result_code {
                OperationResultCode::NotStarted | OperationResultCode::InProgress => {
                    UpdateDownloadResult::failed(
                        OperationResultCode::Failed,
                        HResult::E_UNEXPECTED,
                        &format!("the download stopped on an internal error: {msg}"),
                    )
                }
                _ => r.clone(),
            })
            .collect();
        let (result_code, hresult) = crate::overall_result(
            &results
                .iter()
                .map(|r| (r.result_code, r.hresult))
                .collect::<Vec<_>>(),
        );
        DownloadResult {
            result_code,
            hresult,
            results,
        }
    }

    /// `ResultCode`: all succeeded → `Succeeded`, some → `SucceededWithErrors`, none →
    /// `Failed`, aborted → `Aborted`.
    pub fn result_code(&self) -> OperationResultCode {
        self.result_code
    }
    /// `HResult`: `S_OK`, or the error that stopped the download.
    pub fn hresult(&self) -> HResult {
        self.hresult
    }
    /// `GetUpdateResult(i)`.
    pub fn update_result(&self, i: usize) -> Option<UpdateDownloadResult> {
        self.results.get(i).cloned()
    }
}

/// `IDownloadProgressChangedCallbackArgs`.
#[derive(Debug)]
pub struct DownloadProgressChangedCallbackArgs {
    progress: DownloadProgress,
}

impl DownloadProgressChangedCallbackArgs {
    /// `Progress`.
    pub fn progress(&self) -> &DownloadProgress {
        &self.progress
    }
}

/// `IDownloadCompletedCallbackArgs`: reserved, no members.
#[derive(Debug, Default)]
pub struct DownloadCompletedCallbackArgs {
    _reserved: (),
}

callback_trait!(
    /// `IDownloadProgressChangedCallback`; closures implement it, `()` is none.
    DownloadProgressChangedCallback(DownloadJob, DownloadProgressChangedCallbackArgs),
    /// Called on the job's callback thread with the latest snapshot.
);

callback_trait!(
    /// `IDownloadCompletedCallback`; closures implement it, `()` is none.
    DownloadCompletedCallback(DownloadJob, DownloadCompletedCallbackArgs),
    /// Called once, on the job's callback thread, after the last progress callback.
);

type Inner = Job<DownloadProgress, Result<DownloadResult>>;

/// `IDownloadJob`. Cheap to clone; dropping it does not cancel the download.
#[derive(Clone, Debug)]
pub struct DownloadJob {
    job: Inner,
    updates: UpdateCollection,
}

job_handle!(
    DownloadJob,
    DownloadProgress,
    "end_download",
    /// `RequestAbort`: returns at once; finished updates keep their results, the rest end
    /// `Aborted`; partial files are kept for resuming.
);

/// WUA's `IUpdateDownloader`.
#[derive(Clone, Debug)]
pub struct UpdateDownloader {
    session: UpdateSession,
    updates: Option<UpdateCollection>,
    priority: DownloadPriority,
    is_forced: bool,
}

impl UpdateSession {
    /// `CreateUpdateDownloader`.
    pub fn create_update_downloader(&self) -> UpdateDownloader {
        UpdateDownloader {
            session: self.clone(),
            updates: None,
            priority: DownloadPriority::Normal,
            is_forced: false,
        }
    }

    /// The content cache of this session (`<state_dir>/cache`).
    pub fn content_cache(&self) -> Result<ContentCache> {
        let dir = self.config().state_dir.join("cache");
        let cache = ContentCache::open(&dir).map_err(|e| {
            Error::new(
                HResult::WU_E_DM_UNEXPECTED,
                format!("{}: {e}", dir.display()),
            )
        })?;
        // Unfinished downloads nobody resumed within `partial_max_age_days`.
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
}

impl UpdateDownloader {
    /// `Updates`.
    pub fn updates(&self) -> Option<&UpdateCollection> {
        self.updates.as_ref()
    }
    /// Sets `Updates`.
    pub fn set_updates(&mut self, updates: UpdateCollection) {
        self.updates = Some(updates);
    }
    /// `Priority` (default `Normal`).
    pub fn priority(&self) -> DownloadPriority {
        self.priority
    }
    /// Sets `Priority`.
    pub fn set_priority(&mut self, p: DownloadPriority) {
        self.priority = p;
    }
    /// `IsForced`.
    pub fn is_forced(&self) -> bool {
        self.is_forced
    }
    /// Sets `IsForced`.
    pub fn set_is_forced(&mut self, forced: bool) {
        self.is_forced = forced;
    }

    /// `Download`: synchronous full download.
    pub fn download(&self) -> Result<DownloadResult> {
        self.download2(DownloadType::Full)
    }

    /// `Download2`.
    pub fn download2(&self, download_type: DownloadType) -> Result<DownloadResult> {
        let job = self.begin_download2(download_type, (), (), AsyncState::none())?;
        self.end_download(&job)
    }

    /// `BeginDownload`: `begin_download2` with `DownloadType::Full`.
    pub fn begin_download(
        &self,
        on_progress: impl DownloadProgressChangedCallback,
        on_completed: impl DownloadCompletedCallback,
        state: AsyncState,
    ) -> Result<DownloadJob> {
        self.begin_download2(DownloadType::Full, on_progress, on_completed, state)
    }

    /// `BeginDownload2`. Fails with no job created: updates unset or empty →
    /// `WU_E_NO_UPDATE`; a bootstrapper download of an update without one →
    /// `WU_E_NOT_SUPPORTED`; no usable repository metadata → `WU_E_NOT_INITIALIZED`.
    pub fn begin_download2(
        &self,
        download_type: DownloadType,
        on_progress: impl DownloadProgressChangedCallback,
        on_completed: impl DownloadCompletedCallback,
        state: AsyncState,
    ) -> Result<DownloadJob> {
        let updates =
            match &self.updates {
                Some(u) if !u.is_empty() => u.clone(),
                _ => return Err(Error::new(
                    HResult::WU_E_NO_UPDATE,
                    "no updates to download: set_updates was not called or the collection is empty",
                )),
            };
        self.session.check_writable("download")?;
        let plan: Vec<Vec<ContentFile>> = updates
            .iter()
            .map(|u| match download_type {
                DownloadType::Full => Ok(u.download_contents().to_vec()),
                DownloadType::UpdateBootstrapper => {
                    u.bootstrapper().cloned().map(|b| vec![b]).ok_or_else(|| {
                        Error::new(
                            HResult::WU_E_NOT_SUPPORTED,
                            format!("update {} has no bootstrapper", u.identity()),
                        )
                    })
                }
            })
            .collect::<Result<_>>()?;
        // Each update's content comes from its own service (and that service's mirrors).
        let mut bases_of: HashMap<Option<String>, Arc<(Vec<String>, bool)>> = HashMap::new();
        let mut plan_bases = Vec::with_capacity(updates.len());
        for u in updates.iter() {
            let svc = u.service().map(str::to_string);
            let b = match bases_of.get(&svc) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(self.session.content_bases(svc.as_deref())?);
                    bases_of.insert(svc, b.clone());
                    b
                }
            };
            plan_bases.push(b);
        }
        let engine = self.session.engine()?;
        let total: u64 = plan.iter().flatten().map(|f| f.length).sum();
        let initial = DownloadProgress {
            current_update_index: 0,
            current_update_bytes_downloaded: 0,
            current_update_bytes_to_download: plan[0].iter().map(|f| f.length).sum(),
            current_update_download_phase: DownloadPhase::Initializing,
            total_bytes_downloaded: 0,
            total_bytes_to_download: total,
            percent_complete: 0,
            current_update_percent_complete: 0,
            results: Arc::new(vec![
                UpdateDownloadResult::new(
                    OperationResultCode::NotStarted,
                    HResult::S_OK
                );
                plan.len()
            ]),
        };
        let job_updates = updates.clone();
        let cb_updates = updates.clone();
        let cb_updates2 = updates.clone();
        let callbacks = Callbacks::none()
            .on_progress(move |job: &Inner, p: &DownloadProgress| {
                let dj = DownloadJob {
                    job: job.clone(),
                    updates: cb_updates.clone(),
                };
                on_progress.invoke(
                    &dj,
                    &DownloadProgressChangedCallbackArgs {
                        progress: p.clone(),
                    },
                )
            })
            .on_completed(move |job: &Inner| {
                let dj = DownloadJob {
                    job: job.clone(),
                    updates: cb_updates2.clone(),
                };
                on_completed.invoke(&dj, &DownloadCompletedCallbackArgs::default())
            })
            .on_panic(|last: &DownloadProgress, msg| Ok(DownloadResult::after_panic(last, &msg)));
        let plan = Arc::new(Plan::new(plan, &plan_bases));
        let priority = self.priority;
        let done_updates = updates.clone();
        let session = self.session.clone();
        let job = Job::spawn("upkeep-download", initial, state, callbacks, move |ctx| {
            let ctx = ctx.clone();
            let r = engine.clone().block_on(run(ctx, engine, plan, priority));
            // `IsDownloaded` of these very objects (and their clones) follows the download
            // of their content; a bootstrapper alone is not the content.
            if let (Ok(r), DownloadType::Full) = (&r, download_type) {
                for (u, res) in done_updates.iter().zip(&r.results) {
                    if res.result_code == OperationResultCode::Succeeded {
                        u.mark_downloaded();
                    }
                }
            }
            // The cache cap, never at the cost of what this job just fetched.
            session.trim_cache(&crate::session::content_keys(done_updates.iter()));
            r
        })
        .map_err(|e| {
            Error::new(
                HResult::E_FAIL,
                format!("cannot start a download thread: {e}"),
            )
        })?;
        Ok(DownloadJob {
            job,
            updates: job_updates,
        })
    }

    /// `EndDownload`: waits, returns the result and releases the job's state; a second
    /// call for the same job is `WU_E_INVALID_OPERATION`.
    pub fn end_download(&self, job: &DownloadJob) -> Result<DownloadResult> {
        job.job.take_result()?
    }
}

/// What a job downloads: each distinct content file once (two updates may share one), and
/// which files each update needs.
struct Plan {
    files: Vec<PlannedFile>,
    updates: Vec<Vec<usize>>,
    update_bytes: Vec<u64>,
}

struct PlannedFile {
    file: ContentFile,
    urls: Vec<String>,
    owners: Vec<usize>,
}

impl Plan {
    fn new(per_update: Vec<Vec<ContentFile>>, bases: &[Arc<(Vec<String>, bool)>]) -> Plan {
        let mut files: Vec<PlannedFile> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let mut updates = Vec::with_capacity(per_update.len());
        let mut update_bytes = Vec::with_capacity(per_update.len());
        for (u, list) in per_update.into_iter().enumerate() {
            let (bases, consistent) = (&bases[u].0, bases[u].1);
            update_bytes.push(list.iter().map(|f| f.length).sum());
            let mut mine = Vec::with_capacity(list.len());
            for f in list {
                let key = upkeep_transfer::cache_key(&f).unwrap_or_else(|| f.path.clone());
                let i = *by_key.entry(key).or_insert_with(|| {
                    files.push(PlannedFile {
                        urls: bases
                            .iter()
                            .map(|b| upkeep_tuf::target_url(b, &f.path, &f.hashes, consistent))
                            .collect(),
                        file: f,
                        owners: Vec::new(),
                    });
                    files.len() - 1
                });
                if !files[i].owners.contains(&u) {
                    files[i].owners.push(u);
                }
                mine.push(i);
            }
            updates.push(mine);
        }
        Plan {
            files,
            updates,
            update_bytes,
        }
    }
}

/// The job's bookkeeping, from which every snapshot is made.
struct Books {
    file_done: Vec<u64>,
    file_phase: Vec<Option<Phase>>,
    update_done: Vec<u64>,
    files_left: Vec<usize>,
    results: Arc<Vec<UpdateDownloadResult>>,
    total_done: u64,
    /// Updates before this one have a final result.
    cursor: usize,
}

impl Books {
    fn is_final(r: &UpdateDownloadResult) -> bool {
        !matches!(
            r.result_code,
            OperationResultCode::NotStarted | OperationResultCode::InProgress
        )
    }

    /// The current update: the first one in progress (transfers run in parallel, so
    /// several may be), else the first not started, else the last.
    fn current(&mut self) -> usize {
        while self.cursor < self.results.len() && Self::is_final(&self.results[self.cursor]) {
            self.cursor += 1;
        }
        let rest = &self.results[self.cursor.min(self.results.len())..];
        rest.iter()
            .position(|r| r.result_code == OperationResultCode::InProgress)
            .or_else(|| {
                rest.iter()
                    .position(|r| r.result_code == OperationResultCode::NotStarted)
            })
            .map_or(self.results.len() - 1, |i| self.cursor + i)
    }

    fn finish(&mut self, u: usize, r: UpdateDownloadResult) {
        if !Self::is_final(&self.results[u]) {
            // Copies the results only if a snapshot still shares them.
            Arc::make_mut(&mut self.results)[u] = r;
        }
    }

    /// Writes the snapshot; the percentages and the current update's bytes never go down.
    fn fill(&mut self, plan: &Plan, p: &mut DownloadProgress) {
        let i = self.current();
        if i != p.current_update_index {
            p.current_update_index = i;
            p.current_update_bytes_downloaded = 0;
            p.current_update_percent_complete = 0;
        }
        let total = plan.update_bytes[i];
        p.current_update_bytes_to_download = total;
        p.current_update_bytes_downloaded = p
            .current_update_bytes_downloaded
            .max(self.update_done[i].min(total));
        p.current_update_percent_complete = p
            .current_update_percent_complete
            .max(percent(p.current_update_bytes_downloaded, total));
        let phases = plan.updates[i]
            .iter()
            .filter_map(|&f| self.file_phase[f])
            .collect::<Vec<_>>();
        p.current_update_download_phase = if phases.contains(&Phase::Downloading) {
            DownloadPhase::Downloading
        } else if phases.contains(&Phase::Verifying)
            || self.results[i].result_code == OperationResultCode::Succeeded
        {
            // A finished update's last phase was its verification.
            DownloadPhase::Verifying
        } else if Self::is_final(&self.results[i]) {
            p.current_update_download_phase
        } else {
            DownloadPhase::Initializing
        };
        p.total_bytes_downloaded = p.total_bytes_downloaded.max(self.total_done);
        p.percent_complete = p
            .percent_complete
            .max(percent(p.total_bytes_downloaded, p.total_bytes_to_download));
        p.results = self.results.clone();
    }
}

type Ctx = upkeep_job::JobContext<DownloadProgress, Result<DownloadResult>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The job: every distinct file is a task on the session's transfer thread; the engine runs
/// as many at once as it has slots, highest priority first, and each update's result is
/// known as soon as its last file is.
async fn run(
    ctx: Ctx,
    engine: Engine,
    plan: Arc<Plan>,
    priority: DownloadPriority,
) -> Result<DownloadResult> {
    let n = plan.updates.len();
    let books = Arc::new(Mutex::new(Books {
        file_done: vec![0; plan.files.len()],
        file_phase: vec![None; plan.files.len()],
        update_done: vec![0; n],
        files_left: plan.updates.iter().map(Vec::len).collect(),
        results: Arc::new(vec![
            UpdateDownloadResult::new(
                OperationResultCode::NotStarted,
                HResult::S_OK
            );
            n
        ]),
        total_done: 0,
        cursor: 0,
    }));
    {
        let mut b = lock(&books);
        for u in 0..n {
            if plan.updates[u].is_empty() {
                b.finish(
                    u,
                    UpdateDownloadResult::new(OperationResultCode::Succeeded, HResult::S_OK),
                );
            }
        }
        ctx.update(|p| b.fill(&plan, p));
    }
    let mut set = tokio::task::JoinSet::new();
    let mut task_file = HashMap::new();
    // Only a few transfers beyond the engine's slots wait at once (in the engine's priority
    // queue); the rest are started as earlier ones end. Thousands of waiting transfers
    // would each wake every 25 ms to look at the abort flag.
    let window = engine.options().parallel * 2;
    let mut next = 0;
    let spawn = |fi: usize,
                 set: &mut tokio::task::JoinSet<std::result::Result<(), (HResult, String)>>,
                 task_file: &mut HashMap<tokio::task::Id, usize>| {
        let (engine, plan, books, ctx) = (engine.clone(), plan.clone(), books.clone(), ctx.clone());
        let handle = set.spawn(async move {
            let pf = &plan.files[fi];
            let mut on_progress = |t: upkeep_transfer::TransferProgress| {
                let mut b = lock(&books);
                b.file_phase[fi] = Some(t.phase);
                let delta = t.bytes_done.saturating_sub(b.file_done[fi]);
                b.file_done[fi] += delta;
                for &u in &pf.owners {
                    b.update_done[u] += delta;
                    b.total_done += delta;
                    if b.results[u].result_code == OperationResultCode::NotStarted {
                        Arc::make_mut(&mut b.results)[u] = UpdateDownloadResult::new(
                            OperationResultCode::InProgress,
                            HResult::S_OK,
                        );
                    }
                }
                ctx.update(|p| b.fill(&plan, p));
            };
            // Stop when the job is aborted or every update needing this file has failed.
            let abort = || {
                ctx.is_abort_requested() || {
                    let b = lock(&books);
                    pf.owners
                        .iter()
                        .all(|&u| b.results[u].result_code == OperationResultCode::Failed)
                }
            };
            let r = engine
                .fetch(&pf.file, &pf.urls, priority, &mut on_progress, &abort)
                .await;
            r.map(|_| ()).map_err(|e| (e.hresult(), e.to_string()))
        });
        task_file.insert(handle.id(), fi);
    };
    while next < plan.files.len() && next < window {
        spawn(next, &mut set, &mut task_file);
        next += 1;
    }
    let mut committed = false;
    while let Some(joined) = set.join_next_with_id().await {
        let (fi, r) = match joined {
            Ok((id, r)) => (task_file[&id], r),
            // A transfer task panicked (a bug): its updates fail, the job goes on.
            Err(e) => (
                task_file[&e.id()],
                Err((HResult::E_FAIL, format!("a transfer task failed: {e}"))),
            ),
        };
        let pf = &plan.files[fi];
        let mut b = lock(&books);
        b.file_phase[fi] = None;
        match r {
            Ok(()) => {
                committed = true;
                for &u in &pf.owners {
                    b.files_left[u] -= 1;
                    if b.files_left[u] == 0 {
                        b.finish(
                            u,
                            UpdateDownloadResult::new(
                                OperationResultCode::Succeeded,
                                HResult::S_OK,
                            ),
                        );
                    }
                }
            }
            Err((code, message)) if code == HResult::WU_E_CALL_CANCELLED => {
                for &u in &pf.owners {
                    b.finish(
                        u,
                        UpdateDownloadResult::failed(OperationResultCode::Aborted, code, &message),
                    );
                }
            }
            Err((code, message)) => {
                tracing::info!("download failed: {message}");
                for &u in &pf.owners {
                    b.finish(
                        u,
                        UpdateDownloadResult::failed(OperationResultCode::Failed, code, &message),
                    );
                }
            }
        }
        ctx.update(|p| b.fill(&plan, p));
        drop(b);
        if next < plan.files.len() && !ctx.is_abort_requested() {
            spawn(next, &mut set, &mut task_file);
            next += 1;
        }
    }
    if committed {
        // One flush for everything this job put in the cache.
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flushing the content cache: {e}"),
            Err(e) => tracing::warn!("flushing the content cache: {e}"),
        }
    }
    let mut b = lock(&books);
    for u in 0..n {
        // Updates a failed sibling file stopped, or that never started.
        let r = if ctx.is_abort_requested() {
            UpdateDownloadResult::failed(
                OperationResultCode::Aborted,
                HResult::WU_E_CALL_CANCELLED,
                "aborted before it finished",
            )
        } else {
            UpdateDownloadResult::failed(
                OperationResultCode::Failed,
                HResult::WU_E_DOWNLOAD_FAILED,
                "not downloaded: another of its content files failed",
            )
        };
        b.finish(u, r);
    }
    ctx.update(|p| b.fill(&plan, p));
    let results = b.results.to_vec();
    drop(b);
    let (code, hresult) = crate::overall_result(
        &results
            .iter()
            .map(|r| (r.result_code, r.hresult))
            .collect::<Vec<_>>(),
    );
    Ok(DownloadResult {
        result_code: code,
        hresult,
        results,
    })
}
