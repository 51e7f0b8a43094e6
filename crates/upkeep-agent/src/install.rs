//! Installs and uninstalls: every check before a job starts ([`Agent::prepare_install`],
//! whose ticket holds the machine's install lock), then the job body
//! ([`Agent::install`]) — each update in its own crash-safe transaction of the install
//! engine (`upkeep-install`), prerequisites first, an update that fails rolled back and the
//! next one going on; abort at the next safe point. WUA's results and progress as data.

use std::sync::Arc;

use upkeep_install::engine::{Engine, InstallRequest, UninstallRequest};
use upkeep_types::{HResult, InstallationImpact, OperationResultCode, Update, UpdateCollection};

use crate::error::{Error, Result};
use crate::{Agent, Reporter, Request};

/// Install or uninstall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    /// Install (or upgrade to) the updates.
    Install,
    /// Uninstall them.
    Uninstall,
}

/// An install or uninstall that passed every check and holds the machine's install lock
/// (released when it is dropped, or when [`Agent::install`] ends).
#[derive(Debug)]
pub struct InstallTicket {
    req: Request,
    updates: UpdateCollection,
    op: Operation,
    forced: bool,
    _lock: std::fs::File,
}

impl InstallTicket {
    /// The updates, as the caller gave them.
    pub fn updates(&self) -> &UpdateCollection {
        &self.updates
    }
    /// Install or uninstall.
    pub fn operation(&self) -> Operation {
        self.op
    }
}

/// `IUpdateInstallationResult`, and why it failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateInstallationResult {
    result_code: OperationResultCode,
    hresult: HResult,
    reboot_required: bool,
    message: Option<Arc<str>>,
}

impl crate::PerUpdate for UpdateInstallationResult {
    fn outcome(&self) -> (OperationResultCode, HResult) {
        (self.result_code, self.hresult)
    }
    fn stopped(message: &str) -> Self {
        UpdateInstallationResult::failed(
            OperationResultCode::Failed,
            HResult::E_UNEXPECTED,
            message,
        )
    }
}

impl UpdateInstallationResult {
    /// A result with no message.
    pub fn new(result_code: OperationResultCode, hresult: HResult) -> Self {
        UpdateInstallationResult {
            result_code,
            hresult,
            reboot_required: false,
            message: None,
        }
    }
    /// A result with a message saying why.
    pub fn failed(result_code: OperationResultCode, hresult: HResult, message: &str) -> Self {
        UpdateInstallationResult {
            message: Some(message.into()),
            ..UpdateInstallationResult::new(result_code, hresult)
        }
    }
    /// What went wrong, naming the update and the cause (an upkeep extension: WUA has
    /// only the `HResult`); `None` when nothing did.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallationProgress {
    current_update_index: usize,
    current_update_percent_complete: i32,
    percent_complete: i32,
    results: Arc<Vec<UpdateInstallationResult>>,
}

impl InstallationProgress {
    /// The snapshot of a job of `n` updates that has not started.
    pub fn not_started(n: usize) -> InstallationProgress {
        InstallationProgress {
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
        }
    }

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
        self.results.get(i).cloned()
    }
}

/// `IInstallationResult`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallationResult {
    result_code: OperationResultCode,
    hresult: HResult,
    reboot_required: bool,
    results: Vec<UpdateInstallationResult>,
}

impl InstallationResult {
    /// The result of a job whose work stopped on an internal error (the transaction in
    /// progress was rolled back as the stack unwound): what had finished keeps its
    /// result, every other update is `Failed` with `E_UNEXPECTED`.
    pub fn after_panic(last: &InstallationProgress, msg: &str) -> InstallationResult {
        let results = crate::after_panic(
            &last.results,
            &format!("stopped on an internal error: {msg}"),
        );
        let (result_code, hresult) = crate::overall_of(&results);
        InstallationResult {
            result_code,
            hresult,
            reboot_required: results.iter().any(|r| r.reboot_required),
            results,
        }
    }

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
        self.results.get(i).cloned()
    }
}

fn percent(x: f64) -> i32 {
    (x * 100.0).clamp(0.0, 100.0) as i32
}

/// The job's progress and abort, as the install engine sees them: one update's fraction
/// mapped into the job's snapshot.
struct JobReporter<'a> {
    ctx: &'a dyn Reporter<InstallationProgress>,
    index: usize,
    count: usize,
}

impl upkeep_install::Reporter for JobReporter<'_> {
    fn on_progress(&self, f: f64) {
        let (i, n) = (self.index as f64, self.count as f64);
        self.ctx.update(&mut |p| {
            p.current_update_percent_complete = p.current_update_percent_complete.max(percent(f));
            p.percent_complete = p.percent_complete.max(percent((i + f) / n));
        })
    }
    fn is_cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }
}

impl Agent {
    /// Every check before an install or uninstall job starts, and the machine's install
    /// lock: updates given, the caller may change the machine, no restart pending (unless
    /// `forced`), an update that needs exclusive handling alone, no other install running
    /// (`WU_E_INSTALL_NOT_ALLOWED`). The ticket holds the lock until the job ends.
    pub fn prepare_install(
        &self,
        req: &Request,
        updates: Option<&UpdateCollection>,
        op: Operation,
        forced: bool,
    ) -> Result<InstallTicket> {
        let updates = match updates {
            Some(u) if !u.is_empty() => u.clone(),
            _ => {
                return Err(Error::new(
                    HResult::WU_E_NO_UPDATE,
                    "no updates: set_updates was not called or the collection is empty",
                ))
            }
        };
        req.check_writable(match op {
            Operation::Install => "install",
            Operation::Uninstall => "uninstall",
        })?;
        // `RebootRequiredBeforeInstallation`: a restart an earlier install or uninstall
        // asked for comes first (`is_forced` overrides it, as it overrides the rest).
        if !forced && self.store()?.reboot_pending()? {
            return Err(Error::new(
                HResult::WU_E_INSTALL_NOT_ALLOWED,
                "a restart is pending (an earlier install or uninstall asked for one): restart the machine first, or force the operation (is_forced; upkeep install --force)",
            ));
        }
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
        let Some(lock) = self.try_install_lock()? else {
            return Err(Error::new(
                HResult::WU_E_INSTALL_NOT_ALLOWED,
                "another install or uninstall is running; try again when is_busy() is false",
            ));
        };
        Ok(InstallTicket {
            req: req.clone(),
            updates,
            op,
            forced,
            _lock: lock,
        })
    }

    /// The job body of an install or uninstall: each update in its own crash-safe
    /// transaction of the install engine (prerequisites first), its result at its index;
    /// progress and abort through `reporter`. Ends by releasing the ticket's lock.
    pub fn install(
        &self,
        ticket: InstallTicket,
        reporter: &dyn Reporter<InstallationProgress>,
    ) -> Result<InstallationResult> {
        let r = self.install_locked(&ticket, reporter);
        drop(ticket); // the next installer may start once this one has finished
        r
    }

    fn install_locked(
        &self,
        ticket: &InstallTicket,
        ctx: &dyn Reporter<InstallationProgress>,
    ) -> Result<InstallationResult> {
        let (updates, op, forced) = (&ticket.updates, ticket.op, ticket.forced);
        let session = self;
        let store = session.store()?;
        let layout = session.layout()?;
        let cache = session.content_cache()?;
        let client = ticket.req.client_application_id.clone();
        let engine = Engine::new(&store, &layout, &client);
        let supersedes = session.supersedence();
        let n = updates.len();
        let mut results =
            vec![UpdateInstallationResult::new(OperationResultCode::NotStarted, HResult::S_OK); n];
        // Installs run prerequisites first; results stay at the caller's indices.
        let order = match op {
            Operation::Install => crate::applicable::install_order(
                &updates
                    .iter()
                    .map(|u| (u.identity().update_id, u.prerequisites().to_vec()))
                    .collect::<Vec<_>>(),
            ),
            Operation::Uninstall => (0..n).collect(),
        };
        let facts = (op == Operation::Install
            && updates
                .iter()
                .any(|u| !u.metadata().applicability.is_empty()))
        .then(|| crate::applicable::Facts::read(session.config()));
        let mut succeeded_here: std::collections::HashSet<uuid::Uuid> = Default::default();
        for (step, &i) in order.iter().enumerate() {
            let u = updates.get(i).expect("an index of the collection");
            if ctx.is_cancelled() {
                results[i] = UpdateInstallationResult::failed(
                    OperationResultCode::Aborted,
                    HResult::WU_E_CALL_CANCELLED,
                    "aborted before it started",
                );
                continue;
            }
            results[i] =
                UpdateInstallationResult::new(OperationResultCode::InProgress, HResult::S_OK);
            let snapshot = Arc::new(results.clone());
            ctx.update(&mut |p| {
                p.current_update_index = i;
                p.current_update_percent_complete = 0;
                p.results = snapshot.clone();
            });
            let reporter = JobReporter {
                ctx,
                index: step,
                count: n,
            };
            let record = u.record();
            let cached: Vec<_> = u.download_contents().iter().map(|f| cache.get(f)).collect();
            if cached.iter().any(Option::is_none) {
                u.mark_not_downloaded(); // missing, or found damaged and removed
            }
            let id = u.identity().update_id.to_string();
            let outcome = match op {
                Operation::Install => {
                    if u.eula_accepted() && u.metadata().eula.is_some() {
                        store.accept_eula(&id, u.identity().revision_number)?;
                    }
                    let accepted = store.accepted_eulas()?;
                    let mine = u.service().unwrap_or(crate::DEFAULT_SERVICE);
                    let foreign = store
                        .installed()?
                        .iter()
                        .find(|i| i.update_id == id)
                        .map(|i| crate::installed_service(i).to_string())
                        .filter(|from| from != mine);
                    let (not_applicable, detected) = match (foreign, &facts) {
                        (Some(from), _) => (
                            Some(format!(
                            "it is installed from service {from}; service {mine} cannot replace it"
                        )),
                            false,
                        ),
                        (None, Some(f)) => {
                            applicability_now(session, f, &store, u, &succeeded_here)?
                        }
                        (None, None) => (None, false),
                    };
                    engine.install(
                        &InstallRequest {
                            update: &record,
                            cached,
                            eula_accepted: u.eula_accepted()
                                || accepted.contains(&(id.clone(), u.identity().revision_number)),
                            supersedes: supersedence_closure(&supersedes, u),
                            forced,
                            not_applicable,
                            detected,
                        },
                        &reporter,
                    )
                }
                Operation::Uninstall => engine.uninstall(
                    &UninstallRequest {
                        update_id: &id,
                        fallback: Some(&record),
                        fallback_cached: cached,
                    },
                    &reporter,
                ),
            };
            if outcome.is_ok() {
                succeeded_here.insert(u.identity().update_id);
            }
            results[i] = match outcome {
            // Nothing to do: said so, and no restart asked for by this job.
            Ok(done) if done.already_installed => UpdateInstallationResult {
                result_code: OperationResultCode::Succeeded,
                hresult: HResult::S_OK,
                reboot_required: false,
                message: Some(
                    format!(
                        "already installed (revision {}); nothing was done (force to install it again)",
                        u.identity().revision_number
                    )
                    .into(),
                ),
            },
            Ok(done) => UpdateInstallationResult {
                result_code: OperationResultCode::Succeeded,
                hresult: HResult::S_OK,
                reboot_required: done.reboot_required,
                // Local changes kept are said, as history says them.
                message: (!done.kept.is_empty()).then(|| done.kept.join("; ").into()),
            },
            Err(e) => {
                let code = if e.hresult == HResult::WU_E_CALL_CANCELLED {
                    OperationResultCode::Aborted
                } else {
                    OperationResultCode::Failed
                };
                // The cause is in the update's result (and history); the log keeps a note.
                tracing::info!("{} {}: {}", u.identity().update_id, u.title(), e.message);
                if e.hresult == HResult::WU_E_DM_INCORRECTFILEHASH {
                    // Damaged in the cache since it was verified: drop what is wrong so
                    // that the next download fetches it again.
                    let mut all = true;
                    for f in u.download_contents() {
                        all &= cache.verify(f);
                    }
                    if !all {
                        u.mark_not_downloaded();
                    }
                }
                UpdateInstallationResult::failed(code, e.hresult, &e.message)
            }
        };
            let snapshot = Arc::new(results.clone());
            ctx.update(&mut |p| {
                p.results = snapshot.clone();
                p.current_update_percent_complete = 100;
                p.percent_complete = p
                    .percent_complete
                    .max(percent((step + 1) as f64 / n as f64));
            });
        }
        if op == Operation::Install {
            let (done, rest): (Vec<_>, Vec<_>) = updates
                .iter()
                .zip(&results)
                .partition(|(_, r)| r.result_code == OperationResultCode::Succeeded);
            let done: Vec<&Update> = done.into_iter().map(|(u, _)| u).collect();
            let still_needed = crate::content_keys(rest.into_iter().map(|(u, _)| u));
            session.after_install(&done, &still_needed);
        }
        let (code, hresult) = crate::overall_of(&results);
        Ok(InstallationResult {
            result_code: code,
            hresult,
            reboot_required: results.iter().any(|r| r.reboot_required),
            results,
        })
    }
}

/// Whether `u` applies to this machine now (its rules re-read, not the search's view): why
/// not, and whether it is installed without the agent. A prerequisite is met when it is
/// installed (by the agent, or detected by its own rules as the session's catalog has
/// them) or was installed earlier in this job.
fn applicability_now(
    session: &Agent,
    facts: &crate::applicable::Facts,
    store: &upkeep_store::Store,
    u: &Update,
    earlier: &std::collections::HashSet<uuid::Uuid>,
) -> Result<(Option<String>, bool)> {
    let v = facts.verdict(&u.metadata().applicability);
    if v.not_applicable.is_some() || u.prerequisites().is_empty() {
        return Ok((v.not_applicable, v.detected_installed));
    }
    let installed: std::collections::HashSet<String> = store
        .installed()?
        .into_iter()
        .map(|i| i.update_id)
        .collect();
    for p in u.prerequisites() {
        if installed.contains(&p.to_string()) || earlier.contains(p) {
            continue;
        }
        let detected = session.cached_update(p).is_some_and(|pu| {
            facts
                .verdict(&pu.metadata().applicability)
                .detected_installed
        });
        if detected {
            continue;
        }
        return Ok((
            Some(format!(
                "prerequisite {p} is not installed (install it first, or in the same job)"
            )),
            false,
        ));
    }
    Ok((None, v.detected_installed))
}

/// The ids `u` supersedes, followed through the updates of its own service that the
/// session's catalog knows (another service's claims are not followed; the install engine
/// refuses a claim on another service's installed update).
fn supersedence_closure(graph: &crate::Supersedence, u: &Update) -> Vec<String> {
    let service = u.service().unwrap_or(crate::DEFAULT_SERVICE);
    let mut seen: std::collections::HashSet<uuid::Uuid> = std::collections::HashSet::new();
    let mut todo: Vec<uuid::Uuid> = u.superseded_update_ids().to_vec();
    while let Some(id) = todo.pop() {
        if seen.insert(id) {
            if let Some((_, next)) = graph.get(&id).filter(|(s, _)| s == service) {
                todo.extend(next.iter().copied());
            }
        }
    }
    seen.into_iter().map(|id| id.to_string()).collect()
}
