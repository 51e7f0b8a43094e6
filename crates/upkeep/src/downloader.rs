//! `UpdateDownloader` (WUA's `IUpdateDownloader` and `IUpdateDownloaderEx`) and
//! `DownloadJob`: a job of the job engine whose body is the agent's
//! ([`Agent::download`](upkeep_agent::Agent::download)); progress and results are the
//! agent's data types. Every session of one agent shares its transfer queue: a `High`
//! download of one session overtakes a `Low` one of another.

use std::sync::Arc;

use upkeep_job::{Callbacks, Job};
use upkeep_types::{DownloadPriority, DownloadType, HResult, UpdateCollection};

pub use upkeep_agent::{DownloadProgress, DownloadResult, UpdateDownloadResult};

use crate::error::{Error, Result};
use crate::search_job::AsyncState;
use crate::session::UpdateSession;

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

/// `IDownloadJob`. Cheap to clone; dropping it does not cancel the download. Beside WUA's
/// callbacks, snapshots and `end_download`, `async` code awaits it and watches its progress:
///
/// ```no_run
/// # async fn f(downloader: upkeep::UpdateDownloader) -> upkeep::Result<()> {
/// let job = downloader.begin_download((), (), upkeep::AsyncState::none())?;
/// let mut progress = job.subscribe();
/// while progress.changed().await.is_ok() {
///     println!("{}%", progress.borrow_and_update().percent_complete());
/// }
/// let result = job.result().await?; // what end_download returns
/// println!("{:?}", result.result_code());
/// // Or await the job itself: its result, taken as end_download takes it.
/// let again = downloader.begin_download((), (), upkeep::AsyncState::none())?;
/// println!("{:?}", again.await?.result_code());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DownloadJob {
    job: Inner,
    updates: UpdateCollection,
}

job_handle!(
    DownloadJob,
    DownloadProgress,
    DownloadResult,
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
    ///
    /// ```no_run
    /// # fn f(session: upkeep::UpdateSession, updates: upkeep::UpdateCollection) -> upkeep::Result<()> {
    /// use upkeep::{AsyncState, DownloadType};
    /// let mut downloader = session.create_update_downloader();
    /// downloader.set_updates(updates);
    /// let job = downloader.begin_download2(
    ///     DownloadType::Full,
    ///     |_job: &upkeep::DownloadJob, args: &upkeep::DownloadProgressChangedCallbackArgs| {
    ///         println!("{}%", args.progress().percent_complete())
    ///     },
    ///     |_job: &upkeep::DownloadJob, _: &upkeep::DownloadCompletedCallbackArgs| println!("done"),
    ///     AsyncState::new("mine"),
    /// )?;
    /// let result = downloader.end_download(&job)?;
    /// println!("{:?}", result.result_code());
    /// # Ok(()) }
    /// ```
    pub fn begin_download2(
        &self,
        download_type: DownloadType,
        on_progress: impl DownloadProgressChangedCallback,
        on_completed: impl DownloadCompletedCallback,
        state: AsyncState,
    ) -> Result<DownloadJob> {
        let prepared = self.session.backend().begin_download(
            &self.session.request(),
            self.updates.as_ref(),
            download_type,
            self.priority,
        )?;
        let (updates, initial, run) = (prepared.updates, prepared.initial, prepared.run);
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
        let job = Job::spawn("upkeep-download", initial, state, callbacks, move |ctx| {
            run(Arc::new(ctx.clone()))
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
