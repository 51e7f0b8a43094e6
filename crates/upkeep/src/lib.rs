//! The upkeep update agent library.
//!
//! upkeep finds updates in a TUF-signed repository, downloads their content and installs
//! them, with the programming model of the Windows Update Agent API: an [`UpdateSession`]
//! creates an [`UpdateSearcher`], an [`UpdateDownloader`] and an [`UpdateInstaller`]; every
//! operation runs synchronously or as a job with progress and completion callbacks; results
//! carry WUA's result codes ([`HResult`], [`OperationResultCode`]).
//!
//! This crate is the WUA façade: sessions, searchers, downloaders, installers and their
//! jobs, over the machine's [`Agent`] (`upkeep-agent`: configuration, services, catalogs,
//! WUA's criteria language, the transfer queue, state, installs). Many sessions may share
//! one agent ([`UpdateSession::new`]). TUF lives in `upkeep-tuf`, value types in
//! `upkeep-types`, jobs in `upkeep-job`, transfers in `upkeep-transfer`, transactions and
//! handlers in `upkeep-install`, state in `upkeep-store`.

/// Declares a WUA callback interface as a trait with one `invoke(&self, job, args)`:
/// closures `Fn(&Job, &Args)` implement it, and `()` is "no callback".
macro_rules! callback_trait {
    ($(#[$m:meta])* $name:ident($job:ty, $args:ty), $(#[$im:meta])*) => {
        $(#[$m])*
        pub trait $name: Send + Sync + 'static {
            $(#[$im])*
            fn invoke(&self, job: &$job, args: &$args);
        }

        impl<F: Fn(&$job, &$args) + Send + Sync + 'static> $name for F {
            fn invoke(&self, job: &$job, args: &$args) {
                self(job, args)
            }
        }

        impl $name for () {
            fn invoke(&self, _: &$job, _: &$args) {}
        }
    };
}

/// The members WUA's `IDownloadJob` and `IInstallationJob` share, for a handle with a
/// `job: upkeep_job::Job<$progress, _>` and an `updates: UpdateCollection` field. The
/// caller documents `request_abort`, whose effect differs.
macro_rules! job_handle {
    ($handle:ident, $progress:ty, $result:ty, $end:literal, $(#[$abort:meta])*) => {
        impl $handle {
            #[doc = concat!("`AsyncState`; released by `", $end, "`.")]
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
            /// `GetProgress`: an owned snapshot.
            pub fn progress(&self) -> $progress {
                self.job.progress()
            }
            $(#[$abort])*
            pub fn request_abort(&self) {
                self.job.request_abort()
            }
            /// `CleanUp`; from inside the job's own callback, `WU_E_INVALID_OPERATION`.
            pub fn clean_up(&self) -> Result<()> {
                Ok(self.job.clean_up()?)
            }
            /// Waits up to `timeout`; true if complete.
            pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
                self.job.wait_timeout(timeout)
            }
            /// Completes when the job does.
            pub async fn wait(&self) {
                self.job.wait().await
            }
            #[doc = concat!("The job's result once it is complete, for `async` callers: what `", $end, "` returns (and, as it, releases `AsyncState`); taken once, by either.")]
            pub async fn result(&self) -> Result<$result> {
                self.job.result().await?
            }
            /// The progress as a stream (`tokio::sync::watch`): `borrow()` is the latest
            /// snapshot, `changed().await` waits for a newer one; snapshots coalesce as for
            /// progress callbacks, the last always arrives, and the stream ends once the job
            /// is complete.
            pub fn subscribe(&self) -> tokio::sync::watch::Receiver<$progress> {
                self.job.subscribe()
            }
        }

        #[doc = concat!("`job.await`: the job's result, as [`", stringify!($handle), "::result`] gives it (taken once; `", $end, "` afterwards is `WU_E_INVALID_OPERATION`). Clone the handle first to keep watching it.")]
        impl std::future::IntoFuture for $handle {
            type Output = Result<$result>;
            type IntoFuture =
                std::pin::Pin<Box<dyn std::future::Future<Output = Result<$result>> + Send>>;
            fn into_future(self) -> Self::IntoFuture {
                Box::pin(async move { self.result().await })
            }
        }
    };
}

pub mod backend;
mod downloader;
mod installer;
mod search_job;
mod session;
pub mod view;

/// The library's errors are the agent's.
pub(crate) mod error {
    pub use upkeep_agent::{Error, Result};
}

pub use backend::{Backend, JobBody, Prepared};
pub use downloader::{
    DownloadCompletedCallback, DownloadCompletedCallbackArgs, DownloadJob, DownloadProgress,
    DownloadProgressChangedCallback, DownloadProgressChangedCallbackArgs, DownloadResult,
    UpdateDownloadResult, UpdateDownloader,
};
pub use installer::{
    InstallationCompletedCallback, InstallationCompletedCallbackArgs, InstallationJob,
    InstallationProgress, InstallationProgressChangedCallback,
    InstallationProgressChangedCallbackArgs, InstallationResult, UpdateInstallationResult,
    UpdateInstaller,
};
pub use search_job::{AsyncState, SearchCompletedCallback, SearchCompletedCallbackArgs, SearchJob};
pub use session::{ServerSelection, UpdateSearcher, UpdateSession, UpdateSessionBuilder};
pub use upkeep_agent::{applicable, catalog, config, criteria};
pub use upkeep_agent::{tuf_hresult, tuf_kind, Error, ErrorKind, Result};
pub use upkeep_agent::{
    Agent, AgentBuilder, CacheImport, CacheObject, CachePartial, CacheReport, Config,
    InstalledUpdate, Operation, Reporter, Request, ResolvedConfig, SearchOptions, SearchResult,
    UpdateException, VerifiedUpdate,
};
pub use upkeep_agent::{ServiceOrigin, UpdateService, UpdateServiceManager, DEFAULT_SERVICE};
pub use upkeep_install::verify::PathState;
pub use upkeep_store::HistoryEntry as UpdateHistoryEntry;
pub use upkeep_tuf::Limits;
pub use upkeep_types::*;
