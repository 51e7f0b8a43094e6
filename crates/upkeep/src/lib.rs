//! The upkeep update agent library.
//!
//! upkeep finds updates in a TUF-signed repository, downloads their content and installs
//! them, with the programming model of the Windows Update Agent API: an [`UpdateSession`]
//! creates an [`UpdateSearcher`] (and downloaders and installers), results carry WUA's
//! result codes ([`HResult`], [`OperationResultCode`]).
//!
//! This crate owns the public API, the catalog built from verified metadata and WUA's
//! search-criteria language ([`criteria`]). TUF lives in `upkeep-tuf`, value types in
//! `upkeep-types`.

pub mod catalog;
pub mod config;
pub mod criteria;
mod downloader;
mod error;
mod installer;
mod search_job;
mod session;

pub use catalog::UpdateException;
pub use config::{Config, ResolvedConfig};
pub use downloader::{
    DownloadCompletedCallback, DownloadCompletedCallbackArgs, DownloadJob, DownloadProgress,
    DownloadProgressChangedCallback, DownloadProgressChangedCallbackArgs, DownloadResult,
    UpdateDownloadResult, UpdateDownloader,
};
pub use error::{tuf_hresult, Error, Result};
pub use installer::{
    InstallationCompletedCallback, InstallationCompletedCallbackArgs, InstallationJob,
    InstallationProgress, InstallationProgressChangedCallback,
    InstallationProgressChangedCallbackArgs, InstallationResult, UpdateInstallationResult,
    UpdateInstaller,
};
pub use search_job::{AsyncState, SearchCompletedCallback, SearchCompletedCallbackArgs, SearchJob};
pub use session::{SearchResult, UpdateSearcher, UpdateSession, UpdateSessionBuilder};
pub use upkeep_store::HistoryEntry as UpdateHistoryEntry;
pub use upkeep_tuf::Limits;
pub use upkeep_types::*;
