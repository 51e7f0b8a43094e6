//! `UpdateInstaller` (WUA's `IUpdateInstaller`), `InstallationJob`, `InstallationProgress`
//! and the results, on the job engine and the install engine (`upkeep-install`).
//!
//! One install or uninstall runs at a time per state directory, across processes: `begin_*`
//! takes `<state_dir>/install.lock` or fails with `WU_E_INSTALL_NOT_ALLOWED`, and
//! [`UpdateInstaller::is_busy`] is true meanwhile. Updates are installed one after another in
//! collection order, each in its own crash-safe transaction; an update that fails is rolled
//! back and the next one goes on. Abort stops at the next safe point of the current update
//! (which is rolled back) and ends the rest `Aborted`.

use std::sync::Arc;
use std::time::Duration;

use upkeep_install::{command, files, tx, InstallError};
use upkeep_job::{Callbacks, Job};
use upkeep_store::{HistoryEntry, Installed, Store};
use upkeep_types::{
    HResult, Handler, InstallationImpact, InstallationRebootBehavior, OperationResultCode, Update,
    UpdateCollection, UpdateOperation,
};

use crate::error::{Error, Result};
use crate::search_job::AsyncState;
use crate::session::UpdateSession;

/// `IUpdateInstallationResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateInstallationResult {
    result_code: OperationResultCode,
    hresult: HResult,
    reboot_required: bool,
}

impl UpdateInstallationResult {
    fn new(result_code: OperationResultCode, hresult: HResult) -> Self {
        UpdateInstallationResult {
            result_code,
            hresult,
            reboot_required: false,
        }
    }
    /// `ResultCode`.
    pub fn result_code(&self) -> OperationResultCode {
        self.result_code
    }
    /// `HResult`.
    pub fn hresult(&self) -> HResult {
        self.hresult
    }
    /// `RebootRequired`.
    pub fn reboot_required(&self) -> bool {
        self.reboot_required
    }
}

/// `IInstallationProgress`: an owned snapshot.
#[derive(Clone, Debug)]
pub struct InstallationProgress {
    current_update_index: usize,
    current_update_percent_complete: i32,
    percent_complete: i32,
    results: Arc<Vec<UpdateInstallationResult>>,
}

impl InstallationProgress {
    /// `CurrentUpdateIndex`.
    pub fn current_update_index(&self) -> usize {
        self.current_update_index
    }
    /// `CurrentUpdatePercentComplete`.
    pub fn current_update_percent_complete(&self) -> i32 {
        self.current_update_percent_complete
    }
    /// `PercentComplete`: updates done plus the current one's fraction; never goes down.
    pub fn percent_complete(&self) -> i32 {
        self.percent_complete
    }
    /// `GetUpdateResult(i)`.
    pub fn update_result(&self, i: usize) -> Option<UpdateInstallationResult> {
        self.results.get(i).copied()
    }
}

/// `IInstallationResult`.
#[derive(Clone, Debug)]
pub struct InstallationResult {
    result_code: OperationResultCode,
    hresult: HResult,
    reboot_required: bool,
    results: Vec<UpdateInstallationResult>,
}

impl InstallationResult {
    /// `ResultCode`: all succeeded → `Succeeded`, some → `SucceededWithErrors`, none →
    /// `Failed`, aborted → `Aborted`.
    pub fn result_code(&self) -> OperationResultCode {
        self.result_code
    }
    /// `HResult`.
    pub fn hresult(&self) -> HResult {
        self.hresult
    }
    /// `RebootRequired`: any update's.
    pub fn reboot_required(&self) -> bool {
        self.reboot_required
    }
    /// `GetUpdateResult(i)`.
    pub fn update_result(&self, i: usize) -> Option<UpdateInstallationResult> {
        self.results.get(i).copied()
    }
}

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
type Ctx = upkeep_job::JobContext<InstallationProgress, Result<InstallationResult>>;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Install,
    Uninstall,
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
        matches!(self.session.try_install_lock(), Ok(None))
    }
    /// `RebootRequiredBeforeInstallation`: a restart asked for by an earlier install or
    /// uninstall has not happened yet.
    pub fn reboot_required_before_installation(&self) -> Result<bool> {
        Ok(self.session.store()?.reboot_pending()?)
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
        let updates = match &self.updates {
            Some(u) if !u.is_empty() => u.clone(),
            _ => {
                return Err(Error::new(
                    HResult::WU_E_NO_UPDATE,
                    "no updates: set_updates was not called or the collection is empty",
                ))
            }
        };
        if updates.len() > 1 {
            if let Some(u) = updates.iter().find(|u| {
                u.metadata().installation_behavior.impact
                    == InstallationImpact::RequiresExclusiveHandling
            }) {
                return Err(Error::new(
                    HResult::WU_E_EXCLUSIVE_INSTALL_CONFLICT,
                    format!(
                        "update {} ({}) must be installed on its own",
                        u.identity().update_id,
                        u.title()
                    ),
                ));
            }
        }
        let Some(lock) = self.session.try_install_lock()? else {
            return Err(Error::new(
                HResult::WU_E_INSTALL_NOT_ALLOWED,
                "another install or uninstall is running; try again when is_busy() is false",
            ));
        };
        let n = updates.len();
        let initial = InstallationProgress {
            current_update_index: 0,
            current_update_percent_complete: 0,
            percent_complete: 0,
            results: Arc::new(vec![
                UpdateInstallationResult::new(
                    OperationResultCode::NotStarted,
                    HResult::S_OK
                );
                n
            ]),
        };
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
            });
        let session = self.session.clone();
        let forced = self.is_forced;
        let work_updates = updates.clone();
        let job = Job::spawn("upkeep-install", initial, state, callbacks, move |ctx| {
            let r = run(ctx, &session, &work_updates, op, forced);
            drop(lock); // the next installer may start once this one has finished
            r
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

fn percent(x: f64) -> i32 {
    (x * 100.0).clamp(0.0, 100.0) as i32
}

fn run(
    ctx: &Ctx,
    session: &UpdateSession,
    updates: &UpdateCollection,
    op: Operation,
    forced: bool,
) -> Result<InstallationResult> {
    let store = session.store()?;
    let n = updates.len();
    let mut results =
        vec![UpdateInstallationResult::new(OperationResultCode::NotStarted, HResult::S_OK); n];
    let client = session.client_application_id();
    for (i, u) in updates.iter().enumerate() {
        if ctx.is_abort_requested() {
            results[i] = UpdateInstallationResult::new(
                OperationResultCode::Aborted,
                HResult::WU_E_CALL_CANCELLED,
            );
            continue;
        }
        results[i] = UpdateInstallationResult::new(OperationResultCode::InProgress, HResult::S_OK);
        let snapshot = Arc::new(results.clone());
        ctx.update(|p| {
            p.current_update_index = i;
            p.current_update_percent_complete = 0;
            p.results = snapshot;
        });
        let mut progress = |f: f64| {
            ctx.update(|p| {
                p.current_update_percent_complete =
                    p.current_update_percent_complete.max(percent(f));
                p.percent_complete = p.percent_complete.max(percent((i as f64 + f) / n as f64));
            })
        };
        let abort = || ctx.is_abort_requested();
        let history = |code: OperationResultCode, hresult: HResult, unmapped: i64| HistoryEntry {
            operation: match op {
                Operation::Install => UpdateOperation::Installation,
                Operation::Uninstall => UpdateOperation::Uninstallation,
            },
            result_code: code,
            hresult,
            date: jiff::Timestamp::now(),
            update_id: u.identity().update_id.to_string(),
            revision: u.identity().revision_number,
            title: u.title().to_string(),
            client_application_id: client.clone(),
            unmapped_result_code: unmapped,
        };
        let outcome = match op {
            Operation::Install => {
                install_one(session, &store, u, forced, &history, &mut progress, &abort)
            }
            Operation::Uninstall => {
                uninstall_one(session, &store, u, forced, &history, &mut progress, &abort)
            }
        };
        results[i] = match outcome {
            Ok(reboot) => UpdateInstallationResult {
                result_code: OperationResultCode::Succeeded,
                hresult: HResult::S_OK,
                reboot_required: reboot,
            },
            Err(e) => {
                let code = if e.hresult == HResult::WU_E_CALL_CANCELLED {
                    OperationResultCode::Aborted
                } else {
                    OperationResultCode::Failed
                };
                tracing::warn!("{} {}: {}", u.identity().update_id, u.title(), e.message);
                if let Err(h) = store.add_history(&history(code, e.hresult, e.unmapped)) {
                    tracing::error!("recording history: {h}");
                }
                UpdateInstallationResult::new(code, e.hresult)
            }
        };
        let snapshot = Arc::new(results.clone());
        ctx.update(|p| {
            p.results = snapshot;
            p.current_update_percent_complete = 100;
            p.percent_complete = p.percent_complete.max(percent((i + 1) as f64 / n as f64));
        });
    }
    let (code, hresult) = crate::overall_result(
        &results
            .iter()
            .map(|r| (r.result_code, r.hresult))
            .collect::<Vec<_>>(),
    );
    Ok(InstallationResult {
        result_code: code,
        hresult,
        reboot_required: results.iter().any(|r| r.reboot_required),
        results,
    })
}

/// The cached copy of every content file, or `WU_E_DM_NOTDOWNLOADED`.
fn cached_content(
    session: &UpdateSession,
    u: &Update,
) -> std::result::Result<Vec<std::path::PathBuf>, InstallError> {
    let cache = session
        .content_cache()
        .map_err(|e| InstallError::new(e.hresult(), e.message().to_string()))?;
    u.download_contents()
        .iter()
        .map(|f| {
            cache.get(f).ok_or_else(|| {
                InstallError::new(
                    HResult::WU_E_DM_NOTDOWNLOADED,
                    format!(
                        "update {} ({}): {} is not downloaded",
                        u.identity().update_id,
                        u.title(),
                        f.path
                    ),
                )
            })
        })
        .collect()
}

fn err(e: Error) -> InstallError {
    InstallError::new(e.hresult(), e.message().to_string())
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn install_one(
    session: &UpdateSession,
    store: &Store,
    u: &Update,
    forced: bool,
    history: &dyn Fn(OperationResultCode, HResult, i64) -> HistoryEntry,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> std::result::Result<bool, InstallError> {
    let id = u.identity().update_id.to_string();
    let rev = u.identity().revision_number;
    let installed = store.installed()?.into_iter().find(|i| i.update_id == id);
    if !forced && installed.as_ref().is_some_and(|i| i.revision >= rev) {
        return Ok(installed.is_some_and(|i| i.reboot_required));
    }
    if installed.is_some() {
        // A new revision (or a forced reinstall) replaces the old one: uninstall it first,
        // so that the new one's backups are of the files from before any revision.
        uninstall_one(session, store, u, true, history, &mut |_| {}, abort)?;
    }
    if u.metadata().eula.is_some()
        && !u.eula_accepted()
        && !store.accepted_eulas()?.contains(&(id.clone(), rev))
    {
        return Err(InstallError::new(
            HResult::WU_E_EULAS_DECLINED,
            format!(
                "update {id} ({}): its license terms were not accepted",
                u.title()
            ),
        ));
    }
    if u.eula_accepted() && u.metadata().eula.is_some() {
        store.accept_eula(&id, rev)?;
    }
    let paths = cached_content(session, u)?;
    let layout = session.layout().map_err(err)?;
    let always_reboot = u.metadata().installation_behavior.reboot_behavior
        == InstallationRebootBehavior::AlwaysRequiresReboot;
    let (t, reboot, unmapped) = match u.handler() {
        Handler::Files => {
            let f = &u.download_contents()[0];
            let payload = files::Payload {
                path: paths[0].clone(),
                length: f.length,
                sha256: f.hashes.get("sha256").map(str::to_string),
            };
            (
                files::install(store, &layout, &id, &payload, progress, abort)?,
                always_reboot,
                0,
            )
        }
        Handler::Command {
            arguments,
            timeout_secs,
            ..
        } => {
            let out = run_command(
                session,
                u,
                &paths,
                arguments,
                *timeout_secs,
                "install",
                &layout,
                progress,
                abort,
            )?;
            let t = tx::Tx::begin(store, &layout, &id, "install")?;
            (t, always_reboot || out.reboot_required, out.exit_code)
        }
    };
    let rec = Installed {
        update_id: id,
        revision: rev,
        title: u.title().to_string(),
        handler: u.handler_id().to_string(),
        installed_at: jiff::Timestamp::now(),
        reboot_required: reboot,
    };
    let h = history(OperationResultCode::Succeeded, HResult::S_OK, unmapped);
    t.commit(|s, txid| Ok(s.commit_install(txid, &rec, &h)?))?;
    Ok(reboot)
}

#[allow(clippy::too_many_arguments)]
fn run_command(
    session: &UpdateSession,
    u: &Update,
    paths: &[std::path::PathBuf],
    arguments: &[String],
    timeout_secs: u64,
    operation: &str,
    layout: &upkeep_install::Layout,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> std::result::Result<command::Outcome, InstallError> {
    let inv = command::Invocation {
        files: paths
            .iter()
            .zip(u.download_contents())
            .map(|(p, f)| command::RunFile {
                cached: p.clone(),
                name: file_name(&f.path),
                sha256: f.hashes.get("sha256").map(str::to_string),
            })
            .collect(),
        arguments: arguments.to_vec(),
        timeout: Duration::from_secs(timeout_secs),
        operation: operation.into(),
        install_root: session.config().install_root.clone(),
        update_id: u.identity().update_id.to_string(),
        revision: u.identity().revision_number,
        run_dir: layout
            .work
            .join("run")
            .join(u.identity().update_id.to_string()),
    };
    command::run(&inv, progress, abort)
}

fn uninstall_one(
    session: &UpdateSession,
    store: &Store,
    u: &Update,
    forced: bool,
    history: &dyn Fn(OperationResultCode, HResult, i64) -> HistoryEntry,
    progress: &mut dyn FnMut(f64),
    abort: &dyn Fn() -> bool,
) -> std::result::Result<bool, InstallError> {
    let id = u.identity().update_id.to_string();
    if !u.is_uninstallable() {
        return Err(InstallError::new(
            HResult::WU_E_UNINSTALL_NOT_ALLOWED,
            format!("update {id} ({}) cannot be uninstalled", u.title()),
        ));
    }
    let installed = store.installed()?.into_iter().find(|i| i.update_id == id);
    if installed.is_none() && !forced {
        return Err(InstallError::new(
            HResult::WU_E_NOT_APPLICABLE,
            format!("update {id} ({}) is not installed", u.title()),
        ));
    }
    let layout = session.layout().map_err(err)?;
    let behavior = u
        .metadata()
        .uninstallation_behavior
        .clone()
        .unwrap_or_else(|| u.metadata().installation_behavior.clone());
    let mut reboot = behavior.reboot_behavior == InstallationRebootBehavior::AlwaysRequiresReboot;
    let mut unmapped = 0;
    let mut t = tx::Tx::begin(store, &layout, &id, "uninstall")?;
    let plan = match u.handler() {
        Handler::Files => tx::uninstall_plan(&store.owned(&id)?),
        Handler::Command {
            uninstall_arguments,
            timeout_secs,
            ..
        } => {
            let Some(args) = uninstall_arguments else {
                t.rollback()?;
                return Err(InstallError::new(
                    HResult::WU_E_UNINSTALL_NOT_ALLOWED,
                    format!("update {id} ({}) declares no uninstall command", u.title()),
                ));
            };
            let ran = cached_content(session, u).and_then(|paths| {
                run_command(
                    session,
                    u,
                    &paths,
                    args,
                    *timeout_secs,
                    "uninstall",
                    &layout,
                    progress,
                    abort,
                )
            });
            match ran {
                Ok(out) => {
                    reboot |= out.reboot_required;
                    unmapped = out.exit_code;
                }
                Err(e) => {
                    t.rollback()?;
                    return Err(e);
                }
            }
            Vec::new()
        }
    };
    if let Err(e) = t.apply(&plan, progress, abort) {
        t.rollback()?;
        return Err(e);
    }
    let h = history(OperationResultCode::Succeeded, HResult::S_OK, unmapped);
    t.commit(|s, txid| Ok(s.commit_uninstall(txid, &id, reboot, &h)?))?;
    Ok(reboot)
}
