//! The install engine: install, upgrade and uninstall in phases, each a function whose
//! result is a value the next one takes:
//!
//! 1. [`Engine::plan_install`]: every check that needs only the request and the state
//!    database; an [`InstallPlan`] (install or upgrade, the revision and updates it
//!    replaces, the content it stages) or [`Decision::Nothing`]. Nothing is written.
//! 2. stage: the content unpacked into the transaction's stage directory (payloads
//!    re-hashed against their signed hashes) or pinned; the root untouched.
//! 3. changes: ownership checked against the staged entries (another installed update's
//!    path, dpkg's), local changes found, the root's change set computed; still untouched.
//! 4. apply: the change set applied in the transaction (backups kept), a command run.
//! 5. commit: the record, what it owns, history, in one database transaction.
//!
//! An uninstall plans (its checks and change set) before its transaction begins, then
//! applies and commits the same way.
//!
//! **Install.** An update whose id is not installed, and which supersedes nothing
//! installed, is a first install. An update whose id is installed at a lower revision, or
//! which supersedes installed updates (directly, or through updates the caller or the
//! installed records know), is an **upgrade**: one transaction that replaces all of them.
//! Files only the old updates had are put back as they were before any of them (or
//! removed), files only the new one has are added, files whose content and mode are
//! unchanged are not touched (same inode), changed files are replaced. Backups keep
//! pointing at what was there before the first revision, so uninstalling the new one
//! restores the root as it was before any revision. History gets one row for the upgrade
//! (with the previous revision) and one row for each other update it replaced.
//!
//! **Checks**, all before the root changes: the license accepted, every content file cached
//! (and its signed hashes right: payloads are re-hashed while staged, command content while
//! pinned), free space for at least the content, and ownership — every file or symlink path
//! belongs to at most one installed update; an update may write another installed update's
//! path only if it supersedes it, else the install fails with `E_FILE_EXISTS` naming both
//! updates and the path.
//!
//! **Uninstall** uses the installed record alone (its own removal rules, its own uninstall
//! command and its pinned content), so it works after the repository removed or replaced
//! the update. It never removes or restores a path another installed update owns, and a
//! directory goes only when no installed update uses it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use upkeep_store::{Commit, HistoryEntry, Installed, OwnedKind, OwnedPath, Store, TxOperation};
use upkeep_types::{
    HResult, Handler, InstallationRebootBehavior, OperationResultCode, UpdateOperation,
    UpdateRecord,
};

use crate::command::{self, Invocation, RunFile};
use crate::files::{Known, Payload, Policy, Staged, StagedEntry, Stager};
use crate::tx::{pinned_rel, Op, Planned, Tx};
use crate::{checkpoint, InstallError, Layout, Reporter, Result, Step};

/// Free space kept in reserve beyond what an operation is known to write.
pub const SPACE_MARGIN: u64 = 4 << 20;

/// What to install.
#[derive(Clone, Debug)]
pub struct InstallRequest<'a> {
    /// The update's signed record.
    pub update: &'a UpdateRecord,
    /// Its content files in the cache, one per `update.content` entry (`None`: not
    /// downloaded).
    pub cached: Vec<Option<PathBuf>>,
    /// Whether its license was accepted (ignored when it has none).
    pub eula_accepted: bool,
    /// Ids of updates it supersedes, as far as the caller knows them transitively; the
    /// engine follows the installed records' own supersedence further.
    pub supersedes: Vec<String>,
    /// Reinstall even if this revision is installed, rewriting files that changed on disk.
    pub forced: bool,
    /// Why the update does not apply to this machine (its applicability rules or
    /// prerequisites, as the caller evaluated them): refused with `WU_E_NOT_APPLICABLE`.
    pub not_applicable: Option<String>,
    /// Installed without the agent (an `installed_if` rule holds): nothing to do unless
    /// forced.
    pub detected: bool,
}

/// What to uninstall.
#[derive(Clone, Debug)]
pub struct UninstallRequest<'a> {
    /// The update id.
    pub update_id: &'a str,
    /// The update as the repository has it now: used only for an update installed by an
    /// agent that kept no record (schema 1).
    pub fallback: Option<&'a UpdateRecord>,
    /// Its cached content (for `fallback`).
    pub fallback_cached: Vec<Option<PathBuf>>,
}

/// A successful operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// A restart is required to finish.
    pub reboot_required: bool,
    /// A command's raw exit code (0 for `files`).
    pub exit_code: i64,
    /// For an upgrade: the revision of the same update it replaced.
    pub previous_revision: Option<u32>,
    /// Other installed updates it replaced because it supersedes them.
    pub replaced: Vec<String>,
    /// Nothing was done: this revision (or a later one) is installed.
    pub already_installed: bool,
    /// Local changes kept (a path changed since it was installed is never replaced or
    /// removed silently), each said in a sentence; the result and history carry them.
    pub kept: Vec<String>,
}

impl Done {
    /// Takes in a command's outcome: its exit code, and a restart it asked for.
    fn absorb(&mut self, out: command::Outcome) {
        self.reboot_required |= out.reboot_required;
        self.exit_code = out.exit_code;
    }
}

/// What [`Engine::plan_install`] decided.
#[derive(Debug)]
pub enum Decision<'r> {
    /// Nothing to do (this revision or a later one is installed, or it was detected
    /// installed): the result as it is.
    Nothing(Done),
    /// An install or upgrade, every check that needs no content passed.
    Go(Box<InstallPlan<'r>>),
}

/// An install or upgrade as decided before anything is written: which update, whether it
/// installs or upgrades, what it replaces, the content it stages, and what the updates it
/// replaces and the other installed updates own (for the ownership check once staged).
#[derive(Debug)]
pub struct InstallPlan<'r> {
    record: &'r UpdateRecord,
    id: String,
    what: String,
    op: TxOperation,
    prev: Option<Installed>,
    replaced: Vec<Installed>,
    paths: Vec<PathBuf>,
    content_bytes: u64,
    /// Paths the leaving updates (the previous revision, the superseded ones) own.
    old: HashMap<String, OwnedPath>,
    /// Files and symlinks other installed updates own: path → owner.
    others: HashMap<String, String>,
    /// Every installed update's title, by id.
    titles: HashMap<String, String>,
    /// Directories other installed updates use.
    dirs_in_use: HashSet<String>,
    forced: bool,
}

impl InstallPlan<'_> {
    /// Install, or upgrade (a previous revision or superseded updates leave).
    pub fn operation(&self) -> TxOperation {
        self.op
    }
    /// The update's id.
    pub fn update_id(&self) -> &str {
        &self.id
    }
    /// The installed revision this one replaces.
    pub fn previous_revision(&self) -> Option<u32> {
        self.prev.as_ref().map(|p| p.revision)
    }
    /// Other installed updates it replaces (it supersedes them): id and title.
    pub fn replaces(&self) -> impl Iterator<Item = (&str, &str)> {
        self.replaced
            .iter()
            .map(|r| (r.update_id.as_str(), r.title.as_str()))
    }
    /// Bytes of content it stages from the cache.
    pub fn content_bytes(&self) -> u64 {
        self.content_bytes
    }
}

/// The root's changes of one install, computed from its staged content: nothing applied.
#[derive(Debug, Default)]
struct ChangeSet {
    /// In order: take-backs, new entries, directories removed (deepest first).
    plan: Vec<Planned>,
    /// What the update will own.
    owned: Vec<OwnedPath>,
    /// Local changes kept, each said in a sentence.
    kept: Vec<String>,
    /// Paths holding a local change (no stamp: their bytes are not the digest's).
    diverted: HashSet<String>,
}

impl ChangeSet {
    /// An upgrade's new content for a path the leaving revision owns: when the path was
    /// changed since it was installed (a local change), the change stays and the new
    /// content goes beside it as `PATH.upkeep-new` (said in `kept`); the update still
    /// owns the path, so `verify` reports the change and uninstall keeps it. Returns what
    /// to put at the path itself.
    fn divert(
        &mut self,
        root: &crate::root::RootDir,
        prior: Option<&OwnedPath>,
        rel: &str,
        staged: Option<PathBuf>,
    ) -> Result<Option<PathBuf>> {
        let (Some(s), Some(o)) = (&staged, prior.filter(|o| o.kind != OwnedKind::Dir)) else {
            return Ok(staged);
        };
        let crate::verify::PathState::Changed { what } = crate::verify::check_quick(root, o)?
        else {
            return Ok(staged);
        };
        let shown = crate::escape_controls(rel);
        self.kept.push(format!(
            "kept {shown}, changed since it was installed ({what}); the new revision's file is {shown}.upkeep-new"
        ));
        self.diverted.insert(rel.to_string());
        self.plan.push(Planned {
            rel: format!("{rel}.upkeep-new"),
            op: Op::Put {
                staged: s.clone(),
                keep_backup: false,
            },
        });
        Ok(None)
    }

    /// Plans a staged file or symlink (nothing to do when unchanged: `staged` is `None`)
    /// and records what the update will own at its path. What is there now is kept as the
    /// original when no leaving update owned the path (`new_path`).
    fn put(&mut self, staged: Option<PathBuf>, new_path: bool, record: OwnedPath) {
        if let Some(s) = staged {
            self.plan.push(Planned {
                rel: record.path.clone(),
                op: Op::Put {
                    staged: s,
                    keep_backup: new_path,
                },
            });
        }
        self.owned.push(record);
    }
}

/// An uninstall as decided before anything is written.
#[derive(Debug)]
struct UninstallPlan {
    /// A command update's uninstall command.
    command: Option<Invocation>,
    /// The root's changes, in order.
    changes: Vec<Planned>,
    /// The result once they are applied (a restart its record asks for, local changes
    /// kept).
    done: Done,
}

/// The install engine over one install root and state database.
pub struct Engine<'a> {
    store: &'a Store,
    layout: &'a Layout,
    client_application_id: String,
}

fn title_of(i: &Installed) -> &str {
    &i.title
}

fn depth(p: &str) -> usize {
    p.matches('/').count()
}

/// Fails with `E_DISK_FULL` unless the filesystem holding `dir` has `need` bytes (plus a
/// margin) available.
fn check_space(dir: &Path, need: u64) -> Result<()> {
    let avail = upkeep_fs::free_space(dir).map_err(InstallError::from)?;
    if avail < need.saturating_add(SPACE_MARGIN) {
        return Err(InstallError::new(
            HResult::E_DISK_FULL,
            format!(
                "{}: {} bytes free, the operation needs at least {} (plus {} in reserve)",
                dir.display(),
                avail,
                need,
                SPACE_MARGIN
            ),
        ));
    }
    Ok(())
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A content file's signed hashes as `(algorithm, hex)` pairs.
fn signed_hashes(f: &upkeep_types::ContentFile) -> Vec<(String, String)> {
    f.hashes
        .iter()
        .map(|(a, h)| (a.to_string(), h.to_string()))
        .collect()
}

/// The record's content files as they run beside a command: from `dir` (pinned) or the
/// cache.
fn run_files(record: &UpdateRecord, paths: &[PathBuf]) -> Vec<RunFile> {
    paths
        .iter()
        .zip(&record.content)
        .map(|(p, f)| RunFile {
            cached: p.clone(),
            name: file_name(&f.path),
            hashes: Some(signed_hashes(f)),
        })
        .collect()
}

/// Gives a path back to what was there before its owner: its original, or nothing.
/// Takes back what an update put at `o.path` — unless it was changed since (a local
/// change: an administrator's edit, another package manager's file), which is kept, with
/// the file from before the install (if any) put beside it as `PATH.upkeep-orig`, and said
/// in `kept`.
fn take_back_checked(
    root: &crate::root::RootDir,
    o: &OwnedPath,
    kept: &mut Vec<String>,
) -> Result<Option<Planned>> {
    let state = crate::verify::check_quick(root, o)?;
    let crate::verify::PathState::Changed { what } = state else {
        return Ok(Some(take_back(o)));
    };
    let shown = crate::escape_controls(&o.path);
    Ok(match &o.original {
        Some(b) => {
            let beside = format!("{}.upkeep-orig", o.path);
            kept.push(format!(
                "kept {shown}, changed since it was installed ({what}); the file from before the install is {shown}.upkeep-orig"
            ));
            Some(Planned {
                rel: beside,
                op: Op::Restore(b.clone()),
            })
        }
        None => {
            kept.push(format!(
                "kept {shown}, changed since it was installed ({what})"
            ));
            None
        }
    })
}

/// The files dpkg owns in the install root, from `var/lib/dpkg/info/*.list` (one absolute
/// path a line; directories are listed too, and are shared freely): path (relative,
/// canonical) → package. Empty when the root has no dpkg database.
fn dpkg_owned(root: &crate::root::RootDir) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(info) = root.canonical("var/lib/dpkg/info", true) else {
        return out;
    };
    let Ok(rd) = upkeep_fs::read_dir(root.display(&info)) else {
        return out;
    };
    // Directories resolve once each (merged /usr: `/lib/x` is `usr/lib/x`).
    let mut dirs: HashMap<String, String> = HashMap::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pkg) = name.strip_suffix(".list") else {
            continue;
        };
        // `pkg:arch` for multi-arch packages.
        let pkg = pkg.split(':').next().unwrap_or(pkg).to_string();
        let Ok(text) = upkeep_fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let rel = line.trim_start_matches('/');
            if rel.is_empty() || rel == "." {
                continue;
            }
            let (dir, base) = rel.rsplit_once('/').unwrap_or(("", rel));
            let dir = dirs.entry(dir.to_string()).or_insert_with(|| {
                root.canonical(dir, true)
                    .unwrap_or_else(|_| dir.to_string())
            });
            let rel = if dir.is_empty() {
                base.to_string()
            } else {
                format!("{dir}/{base}")
            };
            // Directories are listed too; only files and links are looked up here.
            out.insert(rel, pkg.clone());
        }
    }
    out
}

fn take_back(o: &OwnedPath) -> Planned {
    Planned {
        rel: o.path.clone(),
        op: match &o.original {
            Some(b) => Op::Restore(b.clone()),
            None => Op::Remove,
        },
    }
}

/// Removes directories (if empty), deepest first.
fn rmdir_plan(mut dirs: Vec<&OwnedPath>) -> impl Iterator<Item = Planned> + '_ {
    dirs.sort_by(|a, b| {
        depth(&b.path)
            .cmp(&depth(&a.path))
            .then(b.path.cmp(&a.path))
    });
    dirs.into_iter().map(|o| Planned {
        rel: o.path.clone(),
        op: Op::Rmdir(o.mode),
    })
}

fn always_reboot(b: &upkeep_types::InstallationBehavior) -> bool {
    b.reboot_behavior == InstallationRebootBehavior::AlwaysRequiresReboot
}

impl<'a> Engine<'a> {
    /// An engine recording `client_application_id` in history.
    pub fn new(store: &'a Store, layout: &'a Layout, client_application_id: &str) -> Engine<'a> {
        Engine {
            store,
            layout,
            client_application_id: client_application_id.to_string(),
        }
    }

    fn history(
        &self,
        operation: UpdateOperation,
        id: &str,
        revision: u32,
        title: &str,
        result: std::result::Result<&Done, &InstallError>,
    ) -> HistoryEntry {
        let (result_code, hresult, unmapped) = match result {
            Ok(d) => (OperationResultCode::Succeeded, HResult::S_OK, d.exit_code),
            Err(e) if e.hresult == HResult::WU_E_CALL_CANCELLED => {
                (OperationResultCode::Aborted, e.hresult, e.unmapped)
            }
            Err(e) => (OperationResultCode::Failed, e.hresult, e.unmapped),
        };
        HistoryEntry {
            operation,
            result_code,
            hresult,
            date: jiff::Timestamp::now(),
            update_id: id.to_string(),
            revision,
            title: title.to_string(),
            client_application_id: self.client_application_id.clone(),
            unmapped_result_code: unmapped,
            previous_revision: result.ok().and_then(|d| d.previous_revision),
            replaced_by: None,
            message: match result {
                Err(e) => Some(e.message.clone()),
                Ok(d) if !d.kept.is_empty() => Some(d.kept.join("; ")),
                Ok(_) => None,
            },
        }
    }

    fn record_failure(&self, h: HistoryEntry) {
        if let Err(e) = self.store.add_history(&h) {
            tracing::error!("recording history: {e}");
        }
    }

    /// Installs (or upgrades to) `req.update`. On failure nothing in the root or the
    /// state has changed but a history row recording the failure.
    pub fn install(&self, req: &InstallRequest<'_>, reporter: &dyn Reporter) -> Result<Done> {
        let m = &req.update.metadata;
        let r = self.try_install(req, reporter);
        if let Err(e) = &r {
            self.record_failure(self.history(
                UpdateOperation::Installation,
                &m.id.to_string(),
                m.revision,
                &m.title,
                Err(e),
            ));
        }
        r
    }

    fn try_install(&self, req: &InstallRequest<'_>, reporter: &dyn Reporter) -> Result<Done> {
        let plan = match self.plan_install(req)? {
            Decision::Nothing(done) => return Ok(done),
            Decision::Go(plan) => plan,
        };
        let started = std::time::Instant::now();
        let mut tx = Tx::begin(self.store, self.layout, &plan.id, plan.op)?;
        let staged = self.stage(&plan, &tx, reporter)?;
        checkpoint(&format!("{}:staged", plan.op.as_str()));
        tracing::debug!(elapsed = ?started.elapsed(), entries = staged.len(), "staged");
        let changes = self.changes(&plan, staged)?;
        tracing::debug!(elapsed = ?started.elapsed(), changes = changes.plan.len(), "planned");
        let (done, owned) = self.apply(&plan, changes, &mut tx, reporter)?;
        tracing::debug!(elapsed = ?started.elapsed(), "applied");
        let done = self.commit(&plan, done, owned, tx)?;
        tracing::debug!(elapsed = ?started.elapsed(), "committed");
        Ok(done)
    }

    /// Phase 1 of an install: every check that needs only the request and the state
    /// database — applicability, what is installed (this revision already is: nothing to
    /// do), supersedence within the update's own service, the license, the content cached,
    /// free space for it — and what the install will replace. Nothing is written. The plan
    /// is what a dry run or an authorisation prompt can show
    /// ([`InstallPlan::operation`], [`InstallPlan::replaces`], …).
    pub fn plan_install<'r>(&self, req: &InstallRequest<'r>) -> Result<Decision<'r>> {
        let record = req.update;
        let m = &record.metadata;
        let id = m.id.to_string();
        let what = format!("update {id} ({})", m.title);
        if let Some(why) = &req.not_applicable {
            return Err(InstallError::new(
                HResult::WU_E_NOT_APPLICABLE,
                format!("{what} does not apply to this machine: {why}"),
            ));
        }
        let installed = self.store.installed()?;
        let prev = installed.iter().find(|i| i.update_id == id);
        if req.detected && prev.is_none() && !req.forced {
            return Ok(Decision::Nothing(Done {
                already_installed: true,
                ..Done::default()
            }));
        }
        if let Some(p) = prev {
            if !req.forced && p.revision >= m.revision {
                return Ok(Decision::Nothing(Done {
                    reboot_required: p.reboot_required,
                    already_installed: true,
                    ..Done::default()
                }));
            }
        }
        // Supersedence, followed through what the installed records of the same service
        // say: an update supersedes only updates of its own service (one service cannot
        // sign for another's), so a claim on another service's installed update is refused.
        let service = record.service_name();
        let service_of = |i: &Installed| {
            i.record
                .as_ref()
                .map_or(upkeep_types::DEFAULT_SERVICE, |r| r.service_name())
                .to_string()
        };
        let mut sup: HashSet<String> = req.supersedes.iter().cloned().collect();
        sup.extend(m.supersedes.iter().map(|u| u.to_string()));
        loop {
            let more: Vec<String> = installed
                .iter()
                .filter(|i| sup.contains(&i.update_id) && service_of(i) == service)
                .filter_map(|i| i.record.as_ref())
                .flat_map(|r| r.metadata.supersedes.iter().map(|u| u.to_string()))
                .filter(|u| !sup.contains(u))
                .collect();
            if more.is_empty() {
                break;
            }
            sup.extend(more);
        }
        sup.remove(&id);
        let replaced: Vec<Installed> = installed
            .iter()
            .filter(|i| i.update_id != id && sup.contains(&i.update_id))
            .cloned()
            .collect();
        if let Some(other) = replaced.iter().find(|i| service_of(i) != service) {
            return Err(InstallError::new(
                HResult::WU_E_NOT_APPLICABLE,
                format!(
                    "{what} from service {service} supersedes update {} ({}), which is installed from service {}; an update may supersede only updates of its own service",
                    other.update_id,
                    crate::escape_controls(&other.title),
                    service_of(other)
                ),
            ));
        }

        if m.eula.is_some() && !req.eula_accepted {
            return Err(InstallError::new(
                HResult::WU_E_EULAS_DECLINED,
                format!("{what}: its license terms were not accepted"),
            ));
        }
        if req.cached.len() != record.content.len() {
            return Err(InstallError::new(
                HResult::E_INVALIDARG,
                format!(
                    "{what}: {} cached paths for {} content files",
                    req.cached.len(),
                    record.content.len()
                ),
            ));
        }
        let mut paths = Vec::with_capacity(record.content.len());
        for (p, f) in req.cached.iter().zip(&record.content) {
            match p {
                Some(p) => paths.push(p.clone()),
                None => {
                    return Err(InstallError::new(
                        HResult::WU_E_DM_NOTDOWNLOADED,
                        format!("{what}: {} is not downloaded", f.path),
                    ))
                }
            }
        }
        let content_bytes: u64 = record.content.iter().map(|f| f.length).sum();
        // A declared installed size is what staging will write (at most): check for it.
        check_space(
            &self.layout.work,
            content_bytes.max(m.installed_size.unwrap_or(0)),
        )?;

        let prev = prev.cloned();
        let leaving: Vec<&Installed> = prev.iter().chain(replaced.iter()).collect();
        let leaving_ids: HashSet<&str> = leaving.iter().map(|i| i.update_id.as_str()).collect();
        let op = if leaving.is_empty() {
            TxOperation::Install
        } else {
            TxOperation::Upgrade
        };
        // What the leaving updates own, and what the others own.
        let mut old: HashMap<String, OwnedPath> = HashMap::new();
        for l in &leaving {
            for o in self.store.owned(&l.update_id)? {
                match old.get_mut(&o.path) {
                    Some(e) if e.kind == OwnedKind::Dir => e.created |= o.created,
                    _ => {
                        old.insert(o.path.clone(), o);
                    }
                }
            }
        }
        let mut others: HashMap<String, String> = HashMap::new();
        let mut dirs_in_use: HashSet<String> = HashSet::new();
        for (owner, path, kind) in self.store.owners()? {
            if leaving_ids.contains(owner.as_str()) {
                continue;
            }
            if kind == OwnedKind::Dir {
                dirs_in_use.insert(path);
            } else {
                others.insert(path, owner);
            }
        }
        Ok(Decision::Go(Box::new(InstallPlan {
            record,
            id,
            what,
            op,
            prev,
            replaced,
            paths,
            content_bytes,
            old,
            others,
            titles: installed
                .iter()
                .map(|i| (i.update_id.clone(), title_of(i).to_string()))
                .collect(),
            dirs_in_use,
            forced: req.forced,
        })))
    }

    /// Phase 2: the content staged (files: unpacked into the transaction's stage directory,
    /// every payload re-hashed against its signed hashes; command: pinned), the root
    /// untouched.
    fn stage(
        &self,
        plan: &InstallPlan<'_>,
        tx: &Tx<'_>,
        reporter: &dyn Reporter,
    ) -> Result<Vec<StagedEntry>> {
        let (record, m) = (plan.record, &plan.record.metadata);
        match &m.handler {
            Handler::Files => {
                let known: HashMap<String, Known> = plan
                    .old
                    .iter()
                    .filter_map(|(p, o)| {
                        let digest = o.digest.clone()?;
                        let k = match o.kind {
                            OwnedKind::File => Known::File {
                                sha256: digest,
                                mode: o.mode,
                                size: o.size,
                            },
                            OwnedKind::Symlink => Known::Symlink(digest),
                            OwnedKind::Dir => return None,
                        };
                        Some((p.clone(), k))
                    })
                    .collect();
                let policy = Policy {
                    setid: m.setid_paths.clone(),
                    max_bytes: Some(m.installed_size.unwrap_or_else(|| {
                        plan.content_bytes
                            .saturating_mul(upkeep_types::DEFAULT_EXPANSION)
                            .max(upkeep_types::MIN_EXPANSION_BOUND)
                    })),
                    max_bytes_source: match m.installed_size {
                        Some(_) => "the installed size the update declares".into(),
                        None => format!(
                            "the update declares no installed size: {}× its payloads, at least {} MiB",
                            upkeep_types::DEFAULT_EXPANSION,
                            upkeep_types::MIN_EXPANSION_BOUND >> 20
                        ),
                    },
                };
                let mut stager = Stager::new(self.layout, tx.stage_dir(), &known, plan.forced)
                    .with_policy(policy);
                let n = plan.paths.len() as f64;
                for (i, (p, f)) in plan.paths.iter().zip(&record.content).enumerate() {
                    let payload = Payload {
                        path: p.clone(),
                        length: f.length,
                        hashes: Some(signed_hashes(f)),
                    };
                    let step = Step {
                        parent: reporter,
                        from: 0.7 * i as f64 / n,
                        width: 0.7 / n,
                    };
                    stager.stage(&payload, &step)?;
                }
                stager.finish()
            }
            Handler::Command { .. } => {
                let dir = tx.pinned_dir();
                crate::create_private_dir(&dir)?;
                for (i, f) in run_files(record, &plan.paths).iter().enumerate() {
                    let mode = if i == 0 { 0o700 } else { 0o600 };
                    command::copy_in(f, &dir.join(&f.name), mode)?;
                }
                Ok(Vec::new())
            }
        }
    }

    /// Phase 3: the root's changes, from the staged entries — ownership checked (another
    /// installed update's path, or dpkg's, is refused), local changes found and kept —
    /// with nothing applied yet.
    fn changes(&self, plan: &InstallPlan<'_>, staged: Vec<StagedEntry>) -> Result<ChangeSet> {
        let m = &plan.record.metadata;
        let what = &plan.what;
        let dpkg = if staged.is_empty() {
            HashMap::new()
        } else {
            dpkg_owned(&self.layout.dir)
        };
        for e in &staged {
            if matches!(e.what, Staged::Dir(_)) {
                continue;
            }
            if let Some(pkg) = dpkg.get(&e.rel) {
                if !m.takes_over_dpkg.iter().any(|p| p == pkg)
                    && !plan.prev.as_ref().is_some_and(|p| {
                        p.record
                            .as_ref()
                            .is_some_and(|r| r.metadata.takes_over_dpkg.contains(pkg))
                    })
                {
                    return Err(InstallError::new(
                        HResult::E_FILE_EXISTS,
                        format!(
                            "{what} writes {}, which the dpkg package {pkg} owns on this machine; an update takes a package's files over only when it declares it (takes_over_dpkg = [\"{pkg}\"], repo add --takes-over-dpkg {pkg})",
                            crate::escape_controls(&e.rel),
                        ),
                    ));
                }
            }
            if let Some(owner) = plan.others.get(&e.rel) {
                let title = plan.titles.get(owner).map_or("", String::as_str);
                return Err(InstallError::new(
                    HResult::E_FILE_EXISTS,
                    format!(
                        "{what} writes {}, which belongs to installed update {owner} ({title}); it does not supersede that update",
                        crate::escape_controls(&e.rel)
                    ),
                ));
            }
        }

        // Removals of what only the leaving updates had, then the new entries, then
        // directories no one uses any more (deepest first).
        let root = &self.layout.dir;
        let mut cs = ChangeSet::default();
        let new_paths: HashSet<&str> = staged.iter().map(|e| e.rel.as_str()).collect();
        let mut leaving_files: Vec<&OwnedPath> = plan
            .old
            .values()
            .filter(|o| o.kind != OwnedKind::Dir && !new_paths.contains(o.path.as_str()))
            .collect();
        leaving_files.sort_by(|a, b| b.path.cmp(&a.path));
        for o in leaving_files {
            let step = take_back_checked(root, o, &mut cs.kept)?;
            cs.plan.extend(step);
        }
        cs.owned.reserve(staged.len());
        for e in staged {
            let prior = plan.old.get(&e.rel);
            let original = prior
                .filter(|o| o.kind != OwnedKind::Dir)
                .and_then(|o| o.original.clone());
            match e.what {
                Staged::Dir(mode) => {
                    let on_disk = root.stat(&e.rel)?.is_some();
                    if !on_disk {
                        cs.plan.push(Planned {
                            rel: e.rel.clone(),
                            op: Op::Dir(mode),
                        });
                    }
                    cs.owned.push(OwnedPath {
                        path: e.rel,
                        kind: OwnedKind::Dir,
                        mode,
                        size: 0,
                        digest: None,
                        original: None,
                        created: !on_disk || prior.is_some_and(|o| o.created),
                        stamp: None,
                    });
                }
                Staged::File {
                    staged,
                    mode,
                    size,
                    sha256,
                } => {
                    let staged = cs.divert(root, prior, &e.rel, staged)?;
                    cs.put(
                        staged,
                        prior.is_none(),
                        OwnedPath {
                            path: e.rel,
                            kind: OwnedKind::File,
                            mode,
                            size,
                            digest: Some(sha256),
                            original,
                            created: false,
                            stamp: None,
                        },
                    )
                }
                Staged::Symlink { staged, target } => {
                    let staged = cs.divert(root, prior, &e.rel, staged)?;
                    cs.put(
                        staged,
                        prior.is_none(),
                        OwnedPath {
                            path: e.rel,
                            kind: OwnedKind::Symlink,
                            mode: 0o777,
                            size: 0,
                            digest: Some(target),
                            original,
                            created: false,
                            stamp: None,
                        },
                    )
                }
            }
        }
        let owned_paths: HashSet<&str> = cs.owned.iter().map(|o| o.path.as_str()).collect();
        let rmdirs: Vec<&OwnedPath> = plan
            .old
            .values()
            .filter(|o| {
                o.kind == OwnedKind::Dir
                    && o.created
                    && !owned_paths.contains(o.path.as_str())
                    && !plan.dirs_in_use.contains(&o.path)
            })
            .collect();
        let rmdirs: Vec<Planned> = rmdir_plan(rmdirs).collect();
        cs.plan.extend(rmdirs);
        Ok(cs)
    }

    /// Phase 4: the change set applied to the root in the transaction (backups kept for
    /// rollback), each installed path stamped, and a command update's command run.
    fn apply(
        &self,
        plan: &InstallPlan<'_>,
        changes: ChangeSet,
        tx: &mut Tx<'_>,
        reporter: &dyn Reporter,
    ) -> Result<(Done, Vec<OwnedPath>)> {
        let (record, m) = (plan.record, &plan.record.metadata);
        let ChangeSet {
            plan: root_plan,
            mut owned,
            kept,
            diverted,
        } = changes;
        let command = matches!(m.handler, Handler::Command { .. });
        let (from, width) = if command { (0.0, 0.1) } else { (0.7, 0.3) };
        let backups = tx.apply(
            &root_plan,
            &Step {
                parent: reporter,
                from,
                width,
            },
        )?;
        // Each file's and symlink's stamp as installed: unchanged, a later uninstall knows
        // it untouched without hashing it. A path that keeps a local change gets none: it
        // holds other bytes than its digest.
        for o in owned.iter_mut().filter(|o| o.kind != OwnedKind::Dir) {
            o.stamp = match diverted.contains(&o.path) {
                true => None,
                false => self.layout.dir.stat_hint(&o.path).map(|st| st.stamp()),
            };
        }
        if !backups.is_empty() {
            let backups: HashMap<String, String> = backups.into_iter().collect();
            for o in &mut owned {
                if let Some(b) = backups.get(&o.path) {
                    o.original = Some(b.clone());
                }
            }
        }
        let mut done = Done {
            reboot_required: always_reboot(&m.installation_behavior),
            previous_revision: plan.prev.as_ref().map(|p| p.revision),
            replaced: plan.replaced.iter().map(|r| r.update_id.clone()).collect(),
            kept,
            ..Done::default()
        };
        if let Handler::Command {
            arguments,
            timeout_secs,
            success_exit_codes,
            reboot_exit_codes,
            ..
        } = &m.handler
        {
            let pinned: Vec<PathBuf> = record
                .content
                .iter()
                .map(|f| tx.pinned_dir().join(file_name(&f.path)))
                .collect();
            let out = command::run(
                &Invocation {
                    files: run_files(record, &pinned),
                    arguments: arguments.clone(),
                    timeout: std::time::Duration::from_secs(*timeout_secs),
                    operation: if plan.prev.is_some() {
                        "upgrade"
                    } else {
                        "install"
                    }
                    .into(),
                    previous_revision: done.previous_revision,
                    success_exit_codes: success_exit_codes.clone(),
                    reboot_exit_codes: reboot_exit_codes.clone(),
                    install_root: self.layout.root.clone(),
                    update_id: plan.id.clone(),
                    revision: m.revision,
                    run_dir: self.layout.work.join("run").join(&plan.id),
                },
                &Step {
                    parent: reporter,
                    from: 0.1,
                    width: 0.9,
                },
            )?;
            done.absorb(out);
        }
        Ok((done, owned))
    }

    /// Phase 5: the record, what it owns, the replaced updates gone and history, in one
    /// database transaction (the transaction's commit point).
    fn commit(
        &self,
        plan: &InstallPlan<'_>,
        done: Done,
        owned: Vec<OwnedPath>,
        tx: Tx<'_>,
    ) -> Result<Done> {
        let m = &plan.record.metadata;
        let command = matches!(m.handler, Handler::Command { .. });
        let rec = Installed {
            update_id: plan.id.clone(),
            revision: m.revision,
            title: m.title.clone(),
            handler: m.handler.id().to_string(),
            installed_at: jiff::Timestamp::now(),
            reboot_required: done.reboot_required,
            record: Some(plan.record.clone()),
            pinned: command.then(|| pinned_rel(tx.id)),
        };
        let mut history = vec![self.history(
            UpdateOperation::Installation,
            &plan.id,
            m.revision,
            &m.title,
            Ok(&done),
        )];
        for r in &plan.replaced {
            let mut h = self.history(
                UpdateOperation::Uninstallation,
                &r.update_id,
                r.revision,
                &r.title,
                Ok(&Done::default()),
            );
            h.replaced_by = Some(plan.id.clone());
            history.push(h);
        }
        tx.commit(&Commit {
            installed: Some((&rec, &owned)),
            removed: &done.replaced,
            history: &history,
            reboot_required: done.reboot_required,
        })?;
        Ok(done)
    }

    /// Uninstalls an installed update from its own record. On failure nothing in the root
    /// or the state has changed but a history row recording the failure.
    pub fn uninstall(&self, req: &UninstallRequest<'_>, reporter: &dyn Reporter) -> Result<Done> {
        let rec = self.store.installed_update(req.update_id)?;
        let r = match &rec {
            Some(rec) => self.try_uninstall(req, rec, reporter),
            None => Err(InstallError::new(
                HResult::WU_E_NOT_APPLICABLE,
                format!("update {} is not installed", req.update_id),
            )),
        };
        if let (Err(e), Some(rec)) = (&r, &rec) {
            self.record_failure(self.history(
                UpdateOperation::Uninstallation,
                &rec.update_id,
                rec.revision,
                &rec.title,
                Err(e),
            ));
        }
        r
    }

    fn try_uninstall(
        &self,
        req: &UninstallRequest<'_>,
        rec: &Installed,
        reporter: &dyn Reporter,
    ) -> Result<Done> {
        let id = &rec.update_id;
        let UninstallPlan {
            command: command_run,
            changes: plan,
            mut done,
        } = self.plan_uninstall(req, rec)?;
        let mut tx = Tx::begin(self.store, self.layout, id, TxOperation::Uninstall)?;
        if let Some(inv) = &command_run {
            let out = command::run(
                inv,
                &Step {
                    parent: reporter,
                    from: 0.0,
                    width: 0.9,
                },
            )?;
            done.absorb(out);
        }
        let step = if command_run.is_some() {
            Step {
                parent: reporter,
                from: 0.9,
                width: 0.1,
            }
        } else {
            Step {
                parent: reporter,
                from: 0.0,
                width: 1.0,
            }
        };
        tx.apply(&plan, &step)?;
        let history = [self.history(
            UpdateOperation::Uninstallation,
            id,
            rec.revision,
            &rec.title,
            Ok(&done),
        )];
        tx.commit(&Commit {
            installed: None,
            removed: std::slice::from_ref(id),
            history: &history,
            reboot_required: done.reboot_required,
        })?;
        Ok(done)
    }

    /// Every check of an uninstall (uninstallable, a command update's uninstall command
    /// and its pinned content) and its changes to the root — each path taken back unless
    /// another update owns it now or it was changed since (kept), the directories it
    /// created that no one else uses — with nothing written.
    fn plan_uninstall(&self, req: &UninstallRequest<'_>, rec: &Installed) -> Result<UninstallPlan> {
        let id = &rec.update_id;
        let what = format!("update {id} ({})", rec.title);
        let (record, from_record) = match (&rec.record, req.fallback) {
            (Some(r), _) => (Some(r), true),
            (None, f) => (f, false),
        };
        if record.is_some_and(|r| !r.metadata.uninstallable) {
            return Err(InstallError::new(
                HResult::WU_E_UNINSTALL_NOT_ALLOWED,
                format!("{what} cannot be uninstalled"),
            ));
        }
        // A command update: its own uninstall command and its pinned content.
        let mut command_run = None;
        if rec.handler == "command" {
            let Some(record) = record else {
                return Err(InstallError::new(
                    HResult::WU_E_UH_INVALIDMETADATA,
                    format!("{what}: no record of how it was installed; it is no longer published"),
                ));
            };
            let Handler::Command {
                uninstall_arguments,
                timeout_secs,
                success_exit_codes,
                reboot_exit_codes,
                ..
            } = &record.metadata.handler
            else {
                return Err(InstallError::new(
                    HResult::WU_E_UH_INVALIDMETADATA,
                    format!("{what}: installed by the command handler, recorded otherwise"),
                ));
            };
            let Some(args) = uninstall_arguments else {
                return Err(InstallError::new(
                    HResult::WU_E_UNINSTALL_NOT_ALLOWED,
                    format!("{what} declares no uninstall command"),
                ));
            };
            let paths: Vec<PathBuf> = match (&rec.pinned, from_record) {
                (Some(pinned), true) => record
                    .content
                    .iter()
                    .map(|f| self.layout.work.join(pinned).join(file_name(&f.path)))
                    .collect(),
                _ => req
                    .fallback_cached
                    .iter()
                    .zip(&record.content)
                    .map(|(p, f)| {
                        p.clone().ok_or_else(|| {
                            InstallError::new(
                                HResult::WU_E_DM_NOTDOWNLOADED,
                                format!("{what}: {} is not downloaded", f.path),
                            )
                        })
                    })
                    .collect::<Result<_>>()?,
            };
            command_run = Some(Invocation {
                files: run_files(record, &paths),
                arguments: args.clone(),
                timeout: std::time::Duration::from_secs(*timeout_secs),
                operation: "uninstall".into(),
                previous_revision: None,
                success_exit_codes: success_exit_codes.clone(),
                reboot_exit_codes: reboot_exit_codes.clone(),
                install_root: self.layout.root.clone(),
                update_id: id.clone(),
                revision: rec.revision,
                run_dir: self.layout.work.join("run").join(id),
            });
        }
        // The plan: every file restored or removed (unless another update owns it now),
        // then the directories it created that no one else uses, deepest first.
        let owned = self.store.owned(id)?;
        let mut others: HashSet<String> = HashSet::new();
        let mut dirs_in_use: HashSet<String> = HashSet::new();
        for (owner, path, kind) in self.store.owners()? {
            if owner == *id {
                continue;
            }
            if kind == OwnedKind::Dir {
                dirs_in_use.insert(path);
            } else {
                others.insert(path);
            }
        }
        let mut kept = Vec::new();
        let mut plan: Vec<Planned> = Vec::new();
        for o in owned
            .iter()
            .rev()
            .filter(|o| o.kind != OwnedKind::Dir && !others.contains(&o.path))
        {
            plan.extend(take_back_checked(&self.layout.dir, o, &mut kept)?);
        }
        let rmdirs: Vec<&OwnedPath> = owned
            .iter()
            .filter(|o| o.kind == OwnedKind::Dir && o.created && !dirs_in_use.contains(&o.path))
            .collect();
        plan.extend(rmdir_plan(rmdirs));

        let behavior = record.map(|r| {
            r.metadata
                .uninstallation_behavior
                .clone()
                .unwrap_or_else(|| r.metadata.installation_behavior.clone())
        });
        let done = Done {
            reboot_required: behavior.as_ref().is_some_and(always_reboot),
            kept,
            ..Done::default()
        };
        Ok(UninstallPlan {
            command: command_run,
            changes: plan,
            done,
        })
    }
}
