//! The upkeep update agent library.
//!
//! upkeep finds updates in a TUF-signed repository, downloads their content and installs
//! them, with the programming model of the Windows Update Agent API: an [`UpdateSession`]
//! creates an [`UpdateSearcher`], an [`UpdateDownloader`] and an [`UpdateInstaller`]; every
//! operation runs synchronously or as a job with progress and completion callbacks; results
//! carry WUA's result codes ([`HResult`], [`OperationResultCode`]).
//!
//! This crate owns the public API, the catalog built from verified metadata and WUA's
//! search-criteria language ([`criteria`]). TUF lives in `upkeep-tuf`, value types in
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
    ($handle:ident, $progress:ty, $end:literal, $(#[$abort:meta])*) => {
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
        }
    };
}

/// The overall result of a job from its updates' results (design, "Job semantics"): any
/// aborted → `Aborted`; all succeeded → `Succeeded`; some → `SucceededWithErrors`; none →
/// `Failed` with the last failure's code.
pub(crate) fn overall_result(
    results: &[(OperationResultCode, HResult)],
) -> (OperationResultCode, HResult) {
    let succeeded = results
        .iter()
        .filter(|r| r.0 == OperationResultCode::Succeeded)
        .count();
    if results.iter().any(|r| r.0 == OperationResultCode::Aborted) {
        (OperationResultCode::Aborted, HResult::WU_E_CALL_CANCELLED)
    } else if succeeded == results.len() {
        (OperationResultCode::Succeeded, HResult::S_OK)
    } else if succeeded > 0 {
        (OperationResultCode::SucceededWithErrors, HResult::S_OK)
    } else {
        let last = results
            .iter()
            .rev()
            .find(|r| r.0 == OperationResultCode::Failed)
            .map_or(HResult::E_FAIL, |r| r.1);
        (OperationResultCode::Failed, last)
    }
}

pub mod applicable;
pub mod catalog;
mod catalog_index;
pub mod config;
pub mod criteria;
mod downloader;
mod error;
mod installer;
mod search_job;
mod services;
mod session;

pub use catalog::UpdateException;
pub use config::{Config, ResolvedConfig};
pub use downloader::{
    DownloadCompletedCallback, DownloadCompletedCallbackArgs, DownloadJob, DownloadProgress,
    DownloadProgressChangedCallback, DownloadProgressChangedCallbackArgs, DownloadResult,
    UpdateDownloadResult, UpdateDownloader,
};
pub use error::{tuf_hresult, tuf_kind, Error, ErrorKind, Result};
pub use installer::{
    InstallationCompletedCallback, InstallationCompletedCallbackArgs, InstallationJob,
    InstallationProgress, InstallationProgressChangedCallback,
    InstallationProgressChangedCallbackArgs, InstallationResult, UpdateInstallationResult,
    UpdateInstaller,
};
pub use search_job::{AsyncState, SearchCompletedCallback, SearchCompletedCallbackArgs, SearchJob};
pub use services::{ServiceOrigin, UpdateService, UpdateServiceManager, DEFAULT_SERVICE};
pub use session::{
    CacheImport, CacheObject, CachePartial, CacheReport, InstalledUpdate, SearchResult,
    ServerSelection, UpdateSearcher, UpdateSession, UpdateSessionBuilder, VerifiedUpdate,
};
pub use upkeep_install::verify::PathState;
pub use upkeep_store::HistoryEntry as UpdateHistoryEntry;
pub use upkeep_tuf::Limits;
pub use upkeep_types::*;
