//! `UpdateDownloader` (WUA's `IUpdateDownloader` and `IUpdateDownloaderEx`), `DownloadJob`,
//! `DownloadProgress` and the results, on the job engine and the transfer engine.
//!
//! Updates are downloaded one after another in collection order (ordered by priority among
//! jobs is future work); each content file goes to the content-addressed cache in
//! `<state_dir>/cache` by `upkeep-transfer`, which verifies it against the signed hashes.

use upkeep_job::{Callbacks, Job};
use upkeep_transfer::{ContentCache, Engine, Phase, TransferOptions};
use upkeep_types::{
    ContentFile, DownloadPhase, DownloadPriority, DownloadType, HResult, OperationResultCode,
    UpdateCollection,
};

use crate::error::{Error, Result};
use crate::search_job::AsyncState;
use crate::session::UpdateSession;

/// `IUpdateDownloadResult`: one update's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateDownloadResult {
    result_code: OperationResultCode,
    hresult: HResult,
}

impl UpdateDownloadResult {
    fn new(result_code: OperationResultCode, hresult: HResult) -> Self {
        UpdateDownloadResult {
            result_code,
            hresult,
        }
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
    results: Vec<UpdateDownloadResult>,
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
        self.results.get(i).copied()
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
        self.results.get(i).copied()
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

/// `IDownloadProgressChangedCallback`; closures implement it, `()` is none.
pub trait DownloadProgressChangedCallback: Send + Sync + 'static {
    /// Called on the job's callback thread with the latest snapshot.
    fn invoke(&self, job: &DownloadJob, args: &DownloadProgressChangedCallbackArgs);
}

impl<F: Fn(&DownloadJob, &DownloadProgressChangedCallbackArgs) + Send + Sync + 'static>
    DownloadProgressChangedCallback for F
{
    fn invoke(&self, job: &DownloadJob, args: &DownloadProgressChangedCallbackArgs) {
        self(job, args)
    }
}

impl DownloadProgressChangedCallback for () {
    fn invoke(&self, _: &DownloadJob, _: &DownloadProgressChangedCallbackArgs) {}
}

/// `IDownloadCompletedCallback`; closures implement it, `()` is none.
pub trait DownloadCompletedCallback: Send + Sync + 'static {
    /// Called once, on the job's callback thread, after the last progress callback.
    fn invoke(&self, job: &DownloadJob, args: &DownloadCompletedCallbackArgs);
}

impl<F: Fn(&DownloadJob, &DownloadCompletedCallbackArgs) + Send + Sync + 'static>
    DownloadCompletedCallback for F
{
    fn invoke(&self, job: &DownloadJob, args: &DownloadCompletedCallbackArgs) {
        self(job, args)
    }
}

impl DownloadCompletedCallback for () {
    fn invoke(&self, _: &DownloadJob, _: &DownloadCompletedCallbackArgs) {}
}

type Inner = Job<DownloadProgress, Result<DownloadResult>>;

/// `IDownloadJob`. Cheap to clone; dropping it does not cancel the download.
#[derive(Clone, Debug)]
pub struct DownloadJob {
    job: Inner,
    updates: UpdateCollection,
}

impl DownloadJob {
    /// `AsyncState`; released by `end_download`.
    pub fn async_state(&self) -> AsyncState {
        self.job.async_state()
    }
    /// `IsCompleted`.
    pub fn is_completed(&self) -> bool {
        self.job.is_completed()
    }
    /// `Updates`: the job's own copy, taken at `begin_*`.
    pub fn updates(&self) -> &UpdateCollection {
        &self.updates
    }
    /// `GetProgress`.
    pub fn progress(&self) -> DownloadProgress {
        self.job.progress()
    }
    /// `RequestAbort`: returns at once; finished updates keep their results, the rest end
    /// `Aborted`; partial files are kept for resuming.
    pub fn request_abort(&self) {
        self.job.request_abort()
    }
    /// `CleanUp`.
    pub fn clean_up(&self) -> Result<()> {
        Ok(self.job.clean_up()?)
    }
    /// Waits up to `timeout`; true if complete.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        self.job.wait_timeout(timeout)
    }
    /// Completes when the download does.
    pub async fn wait(&self) {
        self.job.wait().await
    }
}

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
        ContentCache::open(&dir).map_err(|e| {
            Error::new(
                HResult::WU_E_DM_UNEXPECTED,
                format!("{}: {e}", dir.display()),
            )
        })
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
        if self.session.read_only() {
            return Err(Error::new(
                HResult::WU_E_INVALID_OPERATION,
                "the session is read-only",
            ));
        }
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
        let (base, consistent) = self.session.content_base()?;
        let cache = self.session.content_cache()?;
        let engine = Engine::new(cache, TransferOptions::default())
            .map_err(|e| Error::new(e.hresult(), e.to_string()))?;
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
            results: vec![
                UpdateDownloadResult::new(OperationResultCode::NotStarted, HResult::S_OK);
                plan.len()
            ],
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
            });
        let job = Job::spawn("upkeep-download", initial, state, callbacks, move |ctx| {
            run(ctx, &engine, &plan, &base, consistent)
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

fn run(
    ctx: &upkeep_job::JobContext<DownloadProgress, Result<DownloadResult>>,
    engine: &Engine,
    plan: &[Vec<ContentFile>],
    base: &str,
    consistent: bool,
) -> Result<DownloadResult> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                HResult::E_FAIL,
                format!("cannot start the transfer runtime: {e}"),
            )
        })?;
    let mut done_before: u64 = 0;
    let mut results =
        vec![UpdateDownloadResult::new(OperationResultCode::NotStarted, HResult::S_OK); plan.len()];
    let mut aborted = false;
    let mut last_error = HResult::S_OK;
    for (i, files) in plan.iter().enumerate() {
        if aborted || ctx.is_abort_requested() {
            aborted = true;
            results[i] = UpdateDownloadResult::new(
                OperationResultCode::Aborted,
                HResult::WU_E_CALL_CANCELLED,
            );
            continue;
        }
        let update_total: u64 = files.iter().map(|f| f.length).sum();
        results[i] = UpdateDownloadResult::new(OperationResultCode::InProgress, HResult::S_OK);
        let snapshot_results = results.clone();
        ctx.update(|p| {
            p.current_update_index = i;
            p.current_update_bytes_to_download = update_total;
            p.current_update_bytes_downloaded = 0;
            p.current_update_percent_complete = 0;
            p.current_update_download_phase = DownloadPhase::Initializing;
            p.results = snapshot_results;
        });
        let mut update_done_before = 0u64;
        let mut outcome = Ok(());
        for f in files {
            let url = upkeep_tuf::target_url(base, &f.path, &f.hashes, consistent);
            let fetched = rt.block_on(engine.fetch(
                f,
                std::slice::from_ref(&url),
                &mut |t| {
                    let phase = match t.phase {
                        Phase::Initializing => DownloadPhase::Initializing,
                        Phase::Downloading => DownloadPhase::Downloading,
                        Phase::Verifying => DownloadPhase::Verifying,
                    };
                    ctx.update(|p| {
                        // Bytes may restart from zero (a server ignoring Range); the
                        // percentages never go down.
                        let cur = update_done_before + t.bytes_done;
                        p.current_update_bytes_downloaded =
                            p.current_update_bytes_downloaded.max(cur);
                        p.current_update_download_phase = phase;
                        p.current_update_percent_complete =
                            percent(p.current_update_bytes_downloaded, update_total);
                        p.total_bytes_downloaded = p.total_bytes_downloaded.max(done_before + cur);
                        p.percent_complete = p
                            .percent_complete
                            .max(percent(p.total_bytes_downloaded, p.total_bytes_to_download));
                    });
                },
                &|| ctx.is_abort_requested(),
            ));
            match fetched {
                Ok(_) => update_done_before += f.length,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        done_before += update_total;
        results[i] = match outcome {
            Ok(()) => UpdateDownloadResult::new(OperationResultCode::Succeeded, HResult::S_OK),
            Err(e) if e.hresult() == HResult::WU_E_CALL_CANCELLED => {
                aborted = true;
                UpdateDownloadResult::new(
                    OperationResultCode::Aborted,
                    HResult::WU_E_CALL_CANCELLED,
                )
            }
            Err(e) => {
                tracing::warn!("download failed: {e}");
                last_error = e.hresult();
                UpdateDownloadResult::new(OperationResultCode::Failed, e.hresult())
            }
        };
        let snapshot_results = results.clone();
        ctx.update(|p| p.results = snapshot_results);
    }
    let succeeded = results
        .iter()
        .filter(|r| r.result_code == OperationResultCode::Succeeded)
        .count();
    let (code, hresult) = if aborted {
        (OperationResultCode::Aborted, HResult::WU_E_CALL_CANCELLED)
    } else if succeeded == results.len() {
        (OperationResultCode::Succeeded, HResult::S_OK)
    } else if succeeded > 0 {
        (OperationResultCode::SucceededWithErrors, HResult::S_OK)
    } else {
        (OperationResultCode::Failed, last_error)
    };
    Ok(DownloadResult {
        result_code: code,
        hresult,
        results,
    })
}
