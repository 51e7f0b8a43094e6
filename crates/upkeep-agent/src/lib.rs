//! The upkeep agent: one per machine, under the WUA façade (`upkeep`) and, next, the
//! daemon.
//!
//! An [`Agent`] owns what a machine has once: the configuration, the update services and
//! their trusted metadata, each service's catalog and its index (one in memory, shared by
//! every session), the transfer engine with its one priority queue (a foreground `High`
//! download of one client overtakes a background `Low` one of another), the state
//! database, the install lock, recovery and the cache's policy. What a caller is — its
//! `client_application_id`, its uid, whether it may change the machine — travels with each
//! call as a [`Request`]; no WUA handle is in here. `upkeep::UpdateSession` is one client's
//! view of an agent; many sessions over one agent share its catalogs and its queue.
//!
//! Search lives in [`search`](Agent::search); the catalog and its index in [`catalog`];
//! WUA's criteria language in [`criteria`]; applicability on this machine in
//! [`applicable`]; services in [`UpdateServiceManager`]; errors with their WUA codes and
//! kinds in [`Error`].

pub mod applicable;
pub mod catalog;
pub mod config;
pub mod criteria;
mod download;
mod error;
mod install;
mod machine;
mod open;
mod refresh;
mod search;
mod services;

use std::sync::Arc;

pub use catalog::UpdateException;
pub use config::{Config, ResolvedConfig};
pub use download::{DownloadProgress, DownloadResult, DownloadTicket, UpdateDownloadResult};
pub use error::{tuf_hresult, tuf_kind, Error, ErrorKind, Result};
pub use install::{
    InstallTicket, InstallationProgress, InstallationResult, Operation, UpdateInstallationResult,
};
pub use machine::{
    content_keys, CacheImport, CacheObject, CachePartial, CacheReport, InstalledUpdate,
    VerifiedUpdate,
};
pub use open::AgentBuilder;
pub use search::installed_service;
pub use search::{SearchOptions, SearchResult};
pub use services::{normalize_url, ServiceOrigin, UpdateService, UpdateServiceManager};
pub use upkeep_types::DEFAULT_SERVICE;

/// The machine's update agent. Cheap to clone: clones are the same agent. `Send + Sync`;
/// every method may be called from any thread, by many sessions at once.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<open::AgentInner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ResolvedConfig {
        &self.inner.cfg
    }

    /// A request of this process's user, named `client_application_id`, allowed to change
    /// the machine (what an in-process caller is).
    pub fn request(&self, client_application_id: impl Into<String>) -> Request {
        Request {
            client_application_id: client_application_id.into(),
            // SAFETY: geteuid has no preconditions.
            uid: unsafe { libc::geteuid() },
            interactive: false,
            locale: None,
            read_only: false,
        }
    }

    /// Whether `a` and `b` are the same agent (clones of one).
    pub fn same(a: &Agent, b: &Agent) -> bool {
        Arc::ptr_eq(&a.inner, &b.inner)
    }
}

/// Who asks, with every call that the agent serves: the context the daemon fills from the
/// bus (the caller's uid) and a session from its own settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// WUA's `ClientApplicationID`: recorded in history with what the request changed.
    pub client_application_id: String,
    /// The caller's user id.
    pub uid: u32,
    /// Whether a person is at the other end (may be asked, sees progress).
    pub interactive: bool,
    /// The caller's locale (WUA's `UserLocale`), when it gave one.
    pub locale: Option<String>,
    /// A read-only caller (WUA's `ReadOnly` session): it searches and reads, but every
    /// change is `WU_E_INVALID_OPERATION`.
    pub read_only: bool,
}

impl Request {
    /// `WU_E_INVALID_OPERATION` naming `what`, when the request is read-only.
    pub fn check_writable(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::new(
                upkeep_types::HResult::WU_E_INVALID_OPERATION,
                format!("the session is read-only: it cannot {what}"),
            ));
        }
        Ok(())
    }
}

/// Where a job body reports progress and learns that it is to stop: the job engine's
/// context in process (`upkeep_job::JobContext`), the daemon's job object next.
pub trait Reporter<P>: Send + Sync {
    /// Changes the progress snapshot in place (percentages only ever rise).
    fn update(&self, f: &mut dyn FnMut(&mut P));
    /// Whether the caller asked the job to stop.
    fn is_cancelled(&self) -> bool;
}

impl<P: Clone + Send + Sync + 'static, R: Send + 'static> Reporter<P>
    for upkeep_job::JobContext<P, R>
{
    fn update(&self, f: &mut dyn FnMut(&mut P)) {
        upkeep_job::JobContext::update(self, |p| f(p))
    }
    fn is_cancelled(&self) -> bool {
        self.is_abort_requested()
    }
}

/// Who supersedes whom in the agent's catalog: id → its service and the ids it supersedes.
pub type Supersedence = std::collections::HashMap<uuid::Uuid, (String, Vec<uuid::Uuid>)>;

/// One update's result within a job: what the overall result and the results after a
/// panic are made from (downloads and installs alike).
pub(crate) trait PerUpdate: Clone {
    /// Its result code and HRESULT.
    fn outcome(&self) -> (upkeep_types::OperationResultCode, upkeep_types::HResult);
    /// `Failed` with `E_UNEXPECTED`, saying `message`.
    fn stopped(message: &str) -> Self;
}

/// [`overall_result`] of per-update results.
pub(crate) fn overall_of<T: PerUpdate>(
    results: &[T],
) -> (upkeep_types::OperationResultCode, upkeep_types::HResult) {
    overall_result(&results.iter().map(T::outcome).collect::<Vec<_>>())
}

/// The results of a job whose work stopped on an internal error: what had finished keeps
/// its result, every other update is `Failed` with `E_UNEXPECTED` and `message`.
pub(crate) fn after_panic<T: PerUpdate>(last: &[T], message: &str) -> Vec<T> {
    use upkeep_types::OperationResultCode as C;
    last.iter()
        .map(|r| match r.outcome().0 {
            C::NotStarted | C::InProgress => T::stopped(message),
            _ => r.clone(),
        })
        .collect()
}

/// The overall result of a job from its updates' results (design, "Job semantics"): any
/// aborted → `Aborted`; all succeeded → `Succeeded`; some → `SucceededWithErrors`; none →
/// `Failed` with the last failure's code.
pub fn overall_result(
    results: &[(upkeep_types::OperationResultCode, upkeep_types::HResult)],
) -> (upkeep_types::OperationResultCode, upkeep_types::HResult) {
    use upkeep_types::{HResult, OperationResultCode};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_panic_finished_updates_keep_their_results_and_the_rest_fail() {
        use upkeep_types::{HResult, OperationResultCode as C};
        let r = |c| UpdateInstallationResult::new(c, HResult::S_OK);
        let last = [r(C::Succeeded), r(C::InProgress), r(C::NotStarted)];
        let after = after_panic(&last, "boom");
        assert_eq!(after[0], last[0]);
        for x in &after[1..] {
            assert_eq!(
                (x.result_code(), x.hresult()),
                (C::Failed, HResult::E_UNEXPECTED)
            );
            assert_eq!(x.message(), Some("boom"));
        }
        assert_eq!(overall_of(&after), (C::SucceededWithErrors, HResult::S_OK));
    }

    #[test]
    fn the_agent_and_what_crosses_a_bus_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Agent>();
        check::<Request>();
        check::<SearchResult>();
        check::<Error>();
        check::<InstallTicket>();
        check::<DownloadTicket>();
        check::<InstallationProgress>();
        check::<DownloadProgress>();
    }
}
