//! `upkeep install`, `uninstall`, `history`, `hide`, `unhide` and `status`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use upkeep::{
    AsyncState, DownloadPriority, DownloadType, Error, HResult, InstallationJob,
    InstallationProgressChangedCallbackArgs, InstallationResult, OperationResultCode,
    UpdateCollection, UpdateSession,
};

use crate::download_cmd::{select, transfer, Selection};
use crate::exit::Exit;
use crate::Global;

/// What `upkeep install` was asked for.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub here: crate::Global,
    #[command(flatten)]
    which: Selection,
    /// Accept the license terms of the selected updates.
    #[arg(long)]
    accept_eula: bool,
    /// Install only what is already downloaded (the rest fails with WU_E_DM_NOTDOWNLOADED).
    #[arg(long)]
    no_download: bool,
    /// WUA's IsForced: install even while a restart is pending, and install the installed
    /// revision again.
    #[arg(long)]
    force: bool,
}

/// What `upkeep uninstall` was asked for.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub here: crate::Global,
    /// Update ids or KB article ids (KB5001001).
    #[arg(required = true)]
    ids: Vec<crate::download_cmd::UpdateRef>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// WUA's IsForced: uninstall even while a restart is pending.
    #[arg(long)]
    force: bool,
}

fn session(global: &Global, json: bool) -> Result<UpdateSession, Exit> {
    global.session().map_err(|e| Exit::from_error(&e, json))
}

fn exit_for(r: &InstallationResult) -> Exit {
    match Exit::for_result(r.result_code()) {
        Exit::Success if r.reboot_required() => Exit::RebootRequired,
        e => e,
    }
}

/// Runs an install or uninstall job with a bar on a terminal; Ctrl-C requests abort.
pub(crate) fn run_job(
    session: &UpdateSession,
    updates: &UpdateCollection,
    uninstall: bool,
    forced: bool,
    json: bool,
) -> Result<InstallationResult, Exit> {
    let mut installer = session.create_update_installer();
    installer.set_updates(updates.clone());
    installer.set_is_forced(forced);
    let bar = ProgressBar::with_draw_target(
        Some(100),
        if std::io::stdout().is_terminal() && !json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    )
    .with_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    )
    .with_prefix(if uninstall { "uninstall" } else { "install" });
    let titles: Vec<String> = updates
        .iter()
        .map(|u| crate::output::t(u.title()).into_owned())
        .collect();
    // From the start the bar says what it is doing, before the first progress report.
    bar.set_message(format!(
        "{} {}",
        if uninstall {
            "preparing to remove"
        } else {
            "checking and staging"
        },
        titles.first().map_or("", String::as_str)
    ));
    let b2 = bar.clone();
    let on_progress = move |_: &InstallationJob, a: &InstallationProgressChangedCallbackArgs| {
        let p = a.progress();
        b2.set_position(p.percent_complete() as u64);
        let title = titles
            .get(p.current_update_index())
            .map_or("", String::as_str);
        b2.set_message(format!(
            "{title} ({}%)",
            p.current_update_percent_complete()
        ));
    };
    let job = if uninstall {
        installer.begin_uninstall(on_progress, (), AsyncState::none())
    } else {
        installer.begin_install(on_progress, (), AsyncState::none())
    }
    .map_err(|e| Exit::from_error(&e, json))?;
    let abort_job = job.clone();
    crate::on_ctrl_c(Box::new(move || {
        eprintln!("\nupkeep: aborting; the update in progress is rolled back");
        abort_job.request_abort();
    }));
    while !job.wait_timeout(Duration::from_millis(100)) {}
    let r = if uninstall {
        installer.end_uninstall(&job)
    } else {
        installer.end_install(&job)
    }
    .map_err(|e| Exit::from_error(&e, json))?;
    bar.finish_and_clear();
    Ok(r)
}

fn report(what: &str, updates: &UpdateCollection, r: &InstallationResult, json: bool) {
    let rows: Vec<_> = (0..updates.len())
        .map(|i| {
            let x = r.update_result(i).expect("one result per update");
            (
                x.message().unwrap_or_default().to_string(),
                x.result_code(),
                x.hresult(),
            )
        })
        .collect();
    let per: Vec<bool> = (0..updates.len())
        .map(|i| r.update_result(i).is_some_and(|x| x.reboot_required()))
        .collect();
    crate::output::print_results(
        what,
        updates,
        &rows,
        r.result_code(),
        r.hresult(),
        Some((&per, r.reboot_required())),
        json,
    );
}

/// `upkeep install`.
pub fn install(global: &Global, a: InstallArgs) -> Result<Exit, Exit> {
    let Some(updates) = a.which.pick(global, "install")? else {
        return Ok(Exit::Success);
    };
    let json = a.which.json;
    let session = session(global, json)?;
    for u in updates.iter() {
        if a.accept_eula {
            session
                .accept_eula(u)
                .map_err(|e| Exit::from_error(&e, json))?;
        } else if !u.eula_accepted() && !json {
            crate::logs::say(
                5,
                &format!(
                    "upkeep: {} has license terms; read them with `upkeep show {} --eula` and install with --accept-eula",
                    crate::output::t(u.title()),
                    u.identity().update_id
                ),
            );
        }
    }
    if !a.no_download {
        // Only what the install will not refuse: an update whose license is not
        // accepted, that does not apply here, or whose revision is installed already is
        // reported by the install without a byte downloaded for it.
        let missing: UpdateCollection = updates
            .iter()
            .filter(|u| !u.is_downloaded())
            .filter(|u| u.metadata().eula.is_none() || u.eula_accepted())
            .filter(|u| u.is_applicable())
            .filter(|u| {
                a.force
                    || !u.is_installed()
                    || u.installed_revision()
                        .is_some_and(|r| r < u.identity().revision_number)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let d = transfer(
                &session,
                &missing,
                DownloadType::Full,
                DownloadPriority::High,
                json,
            )?;
            if d.result_code() == OperationResultCode::Aborted {
                return Err(Exit::from_error(
                    &Error::new(
                        HResult::WU_E_CALL_CANCELLED,
                        "the download was aborted; nothing was installed",
                    ),
                    json,
                ));
            }
        }
    }
    let r = run_job(&session, &updates, false, a.force, json)?;
    report("Install", &updates, &r, json);
    Ok(exit_for(&r))
}

/// `upkeep uninstall`: from the installed records, so the repository is not needed (an
/// update installed by an agent that kept no record is looked up in the repository).
pub fn uninstall(global: &Global, a: UninstallArgs) -> Result<Exit, Exit> {
    let session = session(global, a.json)?;
    let installed = session
        .installed_updates()
        .map_err(|e| Exit::from_error(&e, a.json))?;
    let mut updates = UpdateCollection::new();
    for r in &a.ids {
        let kbs = |i: &upkeep::InstalledUpdate| {
            i.update
                .as_ref()
                .map(|u| u.kb_article_ids().to_vec())
                .unwrap_or_default()
        };
        let matched: Vec<_> = installed
            .iter()
            .filter(|i| r.names(&i.update_id, &kbs(i)))
            .collect();
        if matched.is_empty() {
            let e = Error::new(
                HResult::WU_E_NOT_APPLICABLE,
                format!("update {r} is not installed"),
            );
            return Err(Exit::from_error(&e, a.json));
        }
        for i in matched {
            match &i.update {
                Some(u) => {
                    updates.push(u.clone());
                }
                None => updates.extend(
                    select(
                        global,
                        std::slice::from_ref(r),
                        false,
                        None,
                        "",
                        false,
                        a.json,
                    )?
                    .iter()
                    .cloned(),
                ),
            }
        }
    }
    let r = run_job(&session, &updates, true, a.force, a.json)?;
    report("Uninstall", &updates, &r, a.json);
    Ok(exit_for(&r))
}

/// `upkeep list`: what is installed, from the agent's own records.
pub fn list(global: &Global, json: bool) -> Result<Exit, Exit> {
    let session = session(global, json)?;
    let installed = session
        .installed_updates()
        .map_err(|e| Exit::from_error(&e, json))?;
    if json {
        let list: Vec<_> = installed
            .iter()
            .map(|i| {
                json!({
                    "id": i.update_id,
                    "revision": i.revision,
                    "title": i.title,
                    "handler": i.handler,
                    "installed_at": i.installed_at.to_string(),
                    "size_on_disk": i.size_on_disk,
                    "reboot_required": i.reboot_required,
                    "kb_article_ids": i.update.as_ref().map(|u| u.kb_article_ids().to_vec()).unwrap_or_default(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "installed": list })).expect("JSON")
        );
    } else if installed.is_empty() {
        println!("Nothing is installed.");
    } else {
        let rows: Vec<[String; 6]> = installed
            .iter()
            .map(|i| {
                [
                    i.update_id.clone(),
                    i.revision.to_string(),
                    i.installed_at.strftime("%Y-%m-%d %H:%M").to_string(),
                    crate::output::human_bytes(i.size_on_disk),
                    if i.reboot_required { "yes" } else { "-" }.to_string(),
                    i.title.clone(),
                ]
            })
            .collect();
        crate::output::print_table(
            &["ID", "REV", "INSTALLED", "ON DISK", "RESTART", "TITLE"],
            &rows,
        );
        println!("{} installed update(s)", rows.len());
    }
    Ok(Exit::Success)
}

/// `upkeep verify`: exit 0 when every owned path is as installed, 1 when one is not.
pub fn verify(global: &Global, ids: &[String], json: bool) -> Result<Exit, Exit> {
    use upkeep::PathState;
    let session = session(global, json)?;
    let found = session
        .verify(ids)
        .map_err(|e| Exit::from_error(&e, json))?;
    let describe = |s: &PathState| match s {
        PathState::Intact => "intact".to_string(),
        PathState::Missing => "missing".to_string(),
        PathState::Changed { what } => format!("changed: {what}"),
        PathState::ModeChanged { installed, now } => {
            format!("mode {now:o}, installed {installed:o}")
        }
    };
    let state_name = |s: &PathState| match s {
        PathState::Intact => "intact",
        PathState::Missing => "missing",
        PathState::Changed { .. } => "changed",
        PathState::ModeChanged { .. } => "mode_changed",
    };
    let any = found.iter().any(|u| !u.changed.is_empty());
    if json {
        let list: Vec<_> = found
            .iter()
            .map(|u| {
                json!({
                    "id": u.update_id,
                    "title": u.title,
                    "paths_checked": u.paths_checked,
                    "changed": u.changed.iter().map(|(p, s)| json!({
                        "path": p,
                        "state": state_name(s),
                        "detail": describe(s),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "updates": list, "intact": !any }))
                .expect("JSON")
        );
    } else if found.is_empty() {
        println!("Nothing is installed.");
    } else {
        for u in &found {
            let t = crate::output::t;
            if u.changed.is_empty() {
                println!(
                    "{}  {}: {} path(s) intact",
                    u.update_id,
                    t(&u.title),
                    u.paths_checked
                );
                continue;
            }
            println!(
                "{}  {}: {} of {} path(s) differ",
                u.update_id,
                t(&u.title),
                u.changed.len(),
                u.paths_checked
            );
            for (p, s) in &u.changed {
                println!("  {}  {}", t(p), t(&describe(s)));
            }
        }
    }
    Ok(if any { Exit::Failure } else { Exit::Success })
}

/// `upkeep history`.
pub fn history(global: &Global, limit: usize, json: bool) -> Result<Exit, Exit> {
    let session = session(global, json)?;
    let s = session.create_update_searcher();
    let total = s
        .total_history_count()
        .map_err(|e| Exit::from_error(&e, json))?;
    let entries = if total == 0 {
        Vec::new()
    } else {
        s.query_history(0, limit.max(1))
            .map_err(|e| Exit::from_error(&e, json))?
    };
    if json {
        let list: Vec<_> = entries.iter().map(history_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"total": total, "entries": list})).expect("JSON")
        );
    } else if entries.is_empty() {
        println!("No history.");
    } else {
        for h in &entries {
            let code = if h.hresult == HResult::S_OK {
                String::new()
            } else {
                format!(" [{}]", h.hresult)
            };
            let raw = if h.unmapped_result_code != 0 {
                format!(" (exit {})", h.unmapped_result_code)
            } else {
                String::new()
            };
            let how = match (&h.previous_revision, &h.replaced_by) {
                (Some(p), _) => format!(" (upgrade r{p} → r{})", h.revision),
                (None, Some(by)) => format!(" (replaced by {by})"),
                _ => String::new(),
            };
            println!(
                "{}  {:<15} {:<20} {}{how}{code}{raw}",
                h.date.strftime("%Y-%m-%d %H:%M:%S"),
                h.operation.to_string(),
                h.result_code.to_string(),
                crate::output::t(&h.title)
            );
            if let Some(m) = &h.message {
                println!("{:<57}{}", "", crate::output::t(m));
            }
        }
        println!("{} of {total} entries", entries.len());
    }
    Ok(Exit::Success)
}

/// A history entry in `--json` output (`history`, and `status`'s last results).
fn history_json(h: &upkeep::UpdateHistoryEntry) -> serde_json::Value {
    let mut v = json!({
        "date": h.date.to_string(),
        "operation": h.operation,
        "result_code": h.result_code,
        "hresult": format!("0x{:08X}", h.hresult.as_u32()),
        "id": h.update_id,
        "revision": h.revision,
        "title": h.title,
        "client_application_id": h.client_application_id,
        "unmapped_result_code": h.unmapped_result_code,
        "previous_revision": h.previous_revision,
        "replaced_by": h.replaced_by,
    });
    match &h.message {
        Some(m) if h.result_code == upkeep::OperationResultCode::Succeeded => {
            v["message"] = m.as_str().into();
        }
        Some(m) => v["error"] = crate::output::error_json(m, h.hresult),
        None => {}
    }
    v
}

/// `upkeep hide` / `unhide`.
pub fn hide(
    global: &Global,
    ids: &[crate::download_cmd::UpdateRef],
    hidden: bool,
    json: bool,
) -> Result<Exit, Exit> {
    let updates = select(global, ids, false, None, "", false, json)?;
    let session = session(global, json)?;
    let mut done = Vec::new();
    for u in updates.iter() {
        session
            .set_hidden(u, hidden)
            .map_err(|e| Exit::from_error(&e, json))?;
        if json {
            done.push(json!({
                "id": u.identity().update_id,
                "title": u.title(),
                "is_hidden": hidden,
            }));
        } else {
            println!(
                "{} {}",
                if hidden { "Hidden:" } else { "Shown:" },
                crate::output::t(u.title())
            );
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "updates": done })).expect("JSON")
        );
    }
    Ok(Exit::Success)
}

/// `upkeep status`.
pub fn status(global: &Global, json: bool) -> Result<Exit, Exit> {
    let session = session(global, json)?;
    let installer = session.create_update_installer();
    let busy = installer.is_busy();
    let reboot = installer
        .reboot_required_before_installation()
        .map_err(|e| Exit::from_error(&e, json))?;
    let s = session.create_update_searcher();
    let last = if s
        .total_history_count()
        .map_err(|e| Exit::from_error(&e, json))?
        > 0
    {
        s.query_history(0, 5)
            .map_err(|e| Exit::from_error(&e, json))?
    } else {
        Vec::new()
    };
    if json {
        let last: Vec<_> = last.iter().map(history_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"busy": busy, "reboot_pending": reboot, "last_results": last})
            )
            .expect("JSON")
        );
    } else {
        println!("Installer busy:  {}", if busy { "yes" } else { "no" });
        println!("Restart pending: {}", if reboot { "yes" } else { "no" });
        if !last.is_empty() {
            println!("Last results:");
            for h in &last {
                println!(
                    "  {}  {} {} {}",
                    h.date.strftime("%Y-%m-%d %H:%M:%S"),
                    h.operation,
                    h.result_code,
                    h.title
                );
            }
        }
    }
    Ok(if reboot {
        Exit::RebootRequired
    } else {
        Exit::Success
    })
}
