//! Downloads: every check before a job starts ([`Agent::prepare_download`]: what to fetch
//! from where), then the job body ([`Agent::download`]) on the agent's one transfer
//! engine, whose queue every session shares (priorities hold across clients). WUA's
//! results and progress as data.
//!
//! Every distinct content file of the job is a transfer on the agent's engine, which runs
//! up to `parallel_downloads` at once across all jobs, granting slots by the job's
//! [`DownloadPriority`] (then in request order, so in collection order within a job);
//! `Low` transfers share the optional `low_priority_bytes_per_second` cap. Each file goes
//! to the content-addressed cache in `<state_dir>/cache`, verified against the signed
//! hashes while it streams, and the cache is flushed with one `syncfs` per job.
//!
//! With transfers in parallel, the "current update" of a snapshot is the first update in
//! collection order that is in progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use upkeep_transfer::{Engine, Phase};
use upkeep_types::{
    ContentFile, DownloadPhase, DownloadPriority, DownloadType, HResult, OperationResultCode,
    UpdateCollection,
};

use crate::error::{Error, Result};
use crate::{Agent, Reporter, Request};

/// A download that passed every check: what each update needs, from where, on which
/// engine.
pub struct DownloadTicket {
    plan: Arc<Plan>,
    engine: Engine,
    updates: UpdateCollection,
    download_type: DownloadType,
    initial: DownloadProgress,
}

impl std::fmt::Debug for DownloadTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadTicket")
            .field("updates", &self.updates.len())
            .field("files", &self.plan.files.len())
            .field("download_type", &self.download_type)
            .finish_non_exhaustive()
    }
}

impl DownloadTicket {
    /// The updates, as the caller gave them.
    pub fn updates(&self) -> &UpdateCollection {
        &self.updates
    }
    /// The snapshot before anything started.
    pub fn initial_progress(&self) -> &DownloadProgress {
        &self.initial
    }
}

impl Agent {
    /// Every check before a download job starts: updates given (`WU_E_NO_UPDATE`), the
    /// caller may change the machine, a bootstrapper download only of updates that have
    /// one (`WU_E_NOT_SUPPORTED`), each update's service trusted (`WU_E_NOT_INITIALIZED`).
    pub fn prepare_download(
        &self,
        req: &Request,
        updates: Option<&UpdateCollection>,
        download_type: DownloadType,
    ) -> Result<DownloadTicket> {
        let updates =
            match updates {
                Some(u) if !u.is_empty() => u.clone(),
                _ => return Err(Error::new(
                    HResult::WU_E_NO_UPDATE,
                    "no updates to download: set_updates was not called or the collection is empty",
                )),
            };
        req.check_writable("download")?;
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
                    let b = Arc::new(self.content_bases(svc.as_deref())?);
                    bases_of.insert(svc, b.clone());
                    b
                }
            };
            plan_bases.push(b);
        }
        let engine = self.engine()?;
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
        Ok(DownloadTicket {
            plan: Arc::new(Plan::new(plan, &plan_bases)),
            engine,
            updates,
            download_type,
            initial,
        })
    }

    /// The job body of a download, on the agent's transfer engine: `IsDownloaded` of the
    /// updates (and their clones) follows their content; the cache's cap is applied after,
    /// never at the cost of what this job fetched. Runs on the engine's runtime.
    pub async fn download(
        &self,
        ticket: DownloadTicket,
        priority: DownloadPriority,
        reporter: Arc<dyn Reporter<DownloadProgress>>,
    ) -> Result<DownloadResult> {
        let DownloadTicket {
            plan,
            engine,
            updates,
            download_type,
            ..
        } = ticket;
        let r = run(reporter, engine, plan, priority).await;
        // A bootstrapper alone is not the content.
        if let (Ok(r), DownloadType::Full) = (&r, download_type) {
            for (u, res) in updates.iter().zip(&r.results) {
                if res.result_code == OperationResultCode::Succeeded {
                    u.mark_downloaded();
                }
            }
        }
        let agent = self.clone();
        let keep = crate::content_keys(updates.iter());
        let _ = tokio::task::spawn_blocking(move || agent.trim_cache(&keep)).await;
        r
    }

    /// [`download`](Self::download) from a thread outside any runtime (a job's thread).
    pub fn download_blocking(
        &self,
        ticket: DownloadTicket,
        priority: DownloadPriority,
        reporter: Arc<dyn Reporter<DownloadProgress>>,
    ) -> Result<DownloadResult> {
        let (engine, agent) = (ticket.engine.clone(), self.clone());
        engine.block_on(async move { agent.download(ticket, priority, reporter).await })
    }
}

/// `IUpdateDownloadResult`: one update's outcome, and why it failed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateDownloadResult {
    result_code: OperationResultCode,
    hresult: HResult,
    message: Option<Arc<str>>,
}

impl crate::PerUpdate for UpdateDownloadResult {
    fn outcome(&self) -> (OperationResultCode, HResult) {
        (self.result_code, self.hresult)
    }
    fn stopped(message: &str) -> Self {
        UpdateDownloadResult::failed(OperationResultCode::Failed, HResult::E_UNEXPECTED, message)
    }
}

impl UpdateDownloadResult {
    /// A result with no message.
    pub fn new(result_code: OperationResultCode, hresult: HResult) -> Self {
        UpdateDownloadResult {
            result_code,
            hresult,
            message: None,
        }
    }
    /// A result with a message saying why.
    pub fn failed(result_code: OperationResultCode, hresult: HResult, message: &str) -> Self {
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DownloadResult {
    result_code: OperationResultCode,
    hresult: HResult,
    results: Vec<UpdateDownloadResult>,
}

impl DownloadResult {
    /// The result of a job whose work stopped on an internal error: what had finished
    /// keeps its result, every other update is `Failed` with `E_UNEXPECTED`.
    pub fn after_panic(last: &DownloadProgress, msg: &str) -> DownloadResult {
        let results = crate::after_panic(
            &last.results,
            &format!("the download stopped on an internal error: {msg}"),
        );
        let (result_code, hresult) = crate::overall_of(&results);
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

type Ctx = Arc<dyn Reporter<DownloadProgress>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The job: every distinct file is a task on the agent's transfer thread; the engine runs
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
        ctx.update(&mut |p| b.fill(&plan, p));
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
                ctx.update(&mut |p| b.fill(&plan, p));
            };
            // Stop when the job is aborted or every update needing this file has failed.
            let abort = || {
                ctx.is_cancelled() || {
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
        ctx.update(&mut |p| b.fill(&plan, p));
        drop(b);
        if next < plan.files.len() && !ctx.is_cancelled() {
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
        let r = if ctx.is_cancelled() {
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
    ctx.update(&mut |p| b.fill(&plan, p));
    let results = b.results.to_vec();
    drop(b);
    let (code, hresult) = crate::overall_of(&results);
    Ok(DownloadResult {
        result_code: code,
        hresult,
        results,
    })
}
