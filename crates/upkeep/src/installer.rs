//! `UpdateInstaller` (WUA's `IUpdateInstaller`), `InstallationJob`, `InstallationProgress`
//! and the results, on the job engine and the install engine (`upkeep-install`).
//!
//! One install or uninstall runs at a time per state directory, across processes: `begin_*`
//! takes `<state_dir>/install.lock` or fails with `WU_E_INSTALL_NOT_ALLOWED`, and
//! [`UpdateInstaller::is_busy`] is true meanwhile. Updates are installed one after another in
//! collection order, each in its own crash-safe transaction of the install engine
//! (`upkeep-install`: installs, upgrades that replace earlier revisions and superseded
//! updates, uninstalls from the installed record); an update that fails is rolled back and
//! the next one goes on. Abort stops at the next safe point of the current update (which is
//! rolled back) and ends the rest `Aborted`.

use upkeep_agent::Operation;
use upkeep_job::{Callbacks, Job};
use upkeep_types::{HResult, UpdateCollection};

pub use upkeep_agent::{InstallationProgress, InstallationResult, UpdateInstallationResult};

use crate::error::{Error, Result};
use crate::search_job::AsyncState;
use crate::session::UpdateSession;

/// `IInstallationProgressChangedCallbackArgs`.
#[derive(Debug)]
pub struct InstallationProgressChangedCallbackArgs {
    progress: InstallationProgress,
}

impl InstallationProgressChangedCallbackArgs {
    /// `Progress`.
    pub fn progress(&self) -> &InstallationProgress {
        &self.progress
    }
}

/// `IInstallationCompletedCallbackArgs`: reserved, no members.
#[derive(Debug, Default)]
pub struct InstallationCompletedCallbackArgs {
    _reserved: (),
}

callback_trait!(
    /// `IInstallationProgressChangedCallback`; closures implement it, `()` is none.
    InstallationProgressChangedCallback(InstallationJob, InstallationProgressChangedCallbackArgs),
    /// Called on the job's callback thread with the latest snapshot.
);

callback_trait!(
    /// `IInstallationCompletedCallback`; closures implement it, `()` is none.
    InstallationCompletedCallback(InstallationJob, InstallationCompletedCallbackArgs),
    /// Called once, after the last progress callback.
);

type Inner = Job<InstallationProgress, Result<InstallationResult>>;

/// `IInstallationJob`. Cheap to clone; dropping it does not cancel the work.
#[derive(Clone, Debug)]
pub struct InstallationJob {
    job: Inner,
    updates: UpdateCollection,
    uninstall: bool,
}

job_handle!(
    InstallationJob,
    InstallationProgress,
    InstallationResult,
    "end_install` / `end_uninstall",
    /// `RequestAbort`: returns at once; the current update is rolled back at its next safe
    /// point, the rest end `Aborted`, finished ones keep their results.
);

/// WUA's `IUpdateInstaller`.
#[derive(Clone, Debug)]
pub struct UpdateInstaller {
    session: UpdateSession,
    updates: Option<UpdateCollection>,
    is_forced: bool,
}

impl UpdateSession {
    /// `CreateUpdateInstaller`.
    pub fn create_update_installer(&self) -> UpdateInstaller {
        UpdateInstaller {
            session: self.clone(),
            updates: None,
            is_forced: false,
        }
    }
}

impl UpdateInstaller {
    /// `Updates`.
    pub fn updates(&self) -> Option<&UpdateCollection> {
        self.updates.as_ref()
    }
    /// Sets `Updates`.
    pub fn set_updates(&mut self, updates: UpdateCollection) {
        self.updates = Some(updates);
    }
    /// `IsForced`: install even if already installed.
    pub fn is_forced(&self) -> bool {
        self.is_forced
    }
    /// Sets `IsForced`.
    pub fn set_is_forced(&mut self, forced: bool) {
        self.is_forced = forced;
    }
    /// `IsBusy`: an install or uninstall is running now, in this process or another. It
    /// does not reserve the right to start one.
    pub fn is_busy(&self) -> bool {
        self.session.backend().is_busy()
    }
    /// `RebootRequiredBeforeInstallation`: a restart asked for by an earlier install or
    /// uninstall has not happened yet.
    pub fn reboot_required_before_installation(&self) -> Result<bool> {
        self.session.backend().reboot_pending()
    }

    /// `Install`: synchronous.
    pub fn install(&self) -> Result<InstallationResult> {
        let job = self.begin_install((), (), AsyncState::none())?;
        self.end_install(&job)
    }
    /// `Uninstall`: synchronous.
    pub fn uninstall(&self) -> Result<InstallationResult> {
        let job = self.begin_uninstall((), (), AsyncState::none())?;
        self.end_uninstall(&job)
    }

    /// `BeginInstall`. Fails with no job created: updates unset or empty →
    /// `WU_E_NO_UPDATE`; another install or uninstall running → `WU_E_INSTALL_NOT_ALLOWED`;
    /// an update needing exclusive handling together with others →
    /// `WU_E_EXCLUSIVE_INSTALL_CONFLICT`.
    pub fn begin_install(
        &self,
        on_progress: impl InstallationProgressChangedCallback,
        on_completed: impl InstallationCompletedCallback,
        state: AsyncState,
    ) -> Result<InstallationJob> {
        self.begin(Operation::Install, on_progress, on_completed, state)
    }

    /// `BeginUninstall`; the same errors as `begin_install`.
    pub fn begin_uninstall(
        &self,
        on_progress: impl InstallationProgressChangedCallback,
        on_completed: impl InstallationCompletedCallback,
        state: AsyncState,
    ) -> Result<InstallationJob> {
        self.begin(Operation::Uninstall, on_progress, on_completed, state)
    }

    /// `EndInstall`: waits, returns the result, releases the state; a second call or a call
    /// with an uninstall job is `WU_E_INVALID_OPERATION`.
    pub fn end_install(&self, job: &InstallationJob) -> Result<InstallationResult> {
        if job.uninstall {
            return Err(Error::new(
                HResult::WU_E_INVALID_OPERATION,
                "end_install of an uninstall job: use end_uninstall",
            ));
        }
        job.job.take_result()?
    }

    /// `EndUninstall`.
    pub fn end_uninstall(&self, job: &InstallationJob) -> Result<InstallationResult> {
        if !job.uninstall {
            return Err(Error::new(
                HResult::WU_E_INVALID_OPERATION,
                "end_uninstall of an install job: use end_install",
            ));
        }
        job.job.take_result()?
    }

    fn begin(
        &self,
        op: Operation,
        on_progress: impl InstallationProgressChangedCallback,
        on_completed: impl InstallationCompletedCallback,
        state: AsyncState,
    ) -> Result<InstallationJob> {
        let prepared = self.session.backend().begin_install(
            &self.session.request(),
            self.updates.as_ref(),
            op,
            self.is_forced,
        )?;
        let (updates, initial, run) = (prepared.updates, prepared.initial, prepared.run);
        let uninstall = op == Operation::Uninstall;
        let (u1, u2) = (updates.clone(), updates.clone());
        let callbacks = Callbacks::none()
            .on_progress(move |job: &Inner, p: &InstallationProgress| {
                let j = InstallationJob {
                    job: job.clone(),
                    updates: u1.clone(),
                    uninstall,
                };
                on_progress.invoke(
                    &j,
                    &InstallationProgressChangedCallbackArgs {
                        progress: p.clone(),
                    },
                )
            })
            .on_completed(move |job: &Inner| {
                let j = InstallationJob {
                    job: job.clone(),
                    updates: u2.clone(),
                    uninstall,
                };
                on_completed.invoke(&j, &InstallationCompletedCallbackArgs::default())
            })
            .on_panic(|last: &InstallationProgress, msg| {
                Ok(InstallationResult::after_panic(last, &msg))
            });
        let job = Job::spawn("upkeep-install", initial, state, callbacks, move |ctx| {
            run(std::sync::Arc::new(ctx.clone()))
        })
        .map_err(|e| {
            Error::new(
                HResult::E_FAIL,
                format!("cannot start an install thread: {e}"),
            )
        })?;
        Ok(InstallationJob {
            job,
            updates,
            uninstall,
        })
    }
}
