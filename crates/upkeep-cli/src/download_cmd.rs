//! `upkeep download`: select updates, download them with progress bars (only on a
//! terminal), Ctrl-C requests abort and keeps partial files for resuming.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use upkeep::{
    AsyncState, DownloadCompletedCallbackArgs, DownloadJob, DownloadPhase, DownloadPriority,
    DownloadProgressChangedCallbackArgs, DownloadType, Error, HResult, OperationResultCode,
    UpdateCollection,
};

use crate::exit::Exit;
use crate::Global;

/// `--priority` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PriorityArg {
    Low,
    Normal,
    High,
    ExtraHigh,
}

/// What `upkeep download` was asked for.
#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    #[command(flatten)]
    which: Selection,
    /// Only the updates' bootstrappers.
    #[arg(long)]
    bootstrapper: bool,
    /// Download priority.
    #[arg(long, value_enum, default_value = "normal")]
    priority: PriorityArg,
}

/// Which updates a `download` or `install` is for, and the output form.
#[derive(clap::Args, Debug)]
pub struct Selection {
    /// Update ids.
    pub ids: Vec<uuid::Uuid>,
    /// Every update matching IsInstalled=0 and IsHidden=0.
    #[arg(long)]
    pub all: bool,
    /// Updates matching these criteria.
    #[arg(long)]
    pub criteria: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl Selection {
    /// The selected updates; `None` (after saying so) when there are none, so there is
    /// nothing to `verb`.
    pub fn pick(&self, global: &Global, verb: &str) -> Result<Option<UpdateCollection>, Exit> {
        let updates = select(
            global,
            &self.ids,
            self.all,
            self.criteria.as_deref(),
            "IsInstalled=0 and IsHidden=0",
            self.json,
        )?;
        if !updates.is_empty() {
            return Ok(Some(updates));
        }
        if self.json {
            println!("{}", json!({"result_code": "Succeeded", "updates": []}));
        } else {
            println!("Nothing to {verb}.");
        }
        Ok(None)
    }
}

/// The updates named by ids, `--all` (`all_criteria`) or `--criteria`: exactly one of
/// them must be given; unknown ids are `WU_E_UNKNOWN_ID`.
pub fn select(
    global: &Global,
    ids: &[uuid::Uuid],
    all: bool,
    criteria: Option<&str>,
    all_criteria: &str,
    json: bool,
) -> Result<UpdateCollection, Exit> {
    let usage = |msg: String| Exit::from_error(&Error::new(HResult::E_INVALIDARG, msg), json);
    let chosen = [!ids.is_empty(), all, criteria.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if chosen != 1 {
        return Err(usage(
            "give update ids, --all, or --criteria (one of them)".into(),
        ));
    }
    let criteria = match (criteria, all) {
        (Some(c), _) => c.to_string(),
        (None, true) => all_criteria.into(),
        (None, false) => ids
            .iter()
            .map(|id| format!("UpdateID='{id}' and DeploymentAction=*"))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let (_session, result) = global.search(&criteria, false, !ids.is_empty(), json)?;
    let found = result.updates().clone();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !found.iter().any(|u| u.identity().update_id == **id))
        .map(|id| id.to_string())
        .collect();
    if !missing.is_empty() {
        let e = Error::new(
            HResult::WU_E_UNKNOWN_ID,
            format!("not in the repository: {}", missing.join(", ")),
        );
        return Err(Exit::from_error(&e, json));
    }
    // In the order the ids were given; the newest revision of each (an installed
    // revision is listed beside a newer published one).
    if !ids.is_empty() {
        return Ok(ids
            .iter()
            .filter_map(|id| {
                found
                    .iter()
                    .filter(|u| u.identity().update_id == *id)
                    .max_by_key(|u| u.identity().revision_number)
                    .cloned()
            })
            .collect());
    }
    Ok(found)
}

/// Downloads `updates` with bars on a terminal (overall and current update: bytes, rate,
/// ETA, phase); Ctrl-C requests abort.
pub fn transfer(
    session: &upkeep::UpdateSession,
    updates: &UpdateCollection,
    kind: DownloadType,
    priority: DownloadPriority,
    json: bool,
) -> Result<upkeep::DownloadResult, Exit> {
    let mut downloader = session.create_update_downloader();
    downloader.set_updates(updates.clone());
    downloader.set_priority(priority);
    let bars = std::io::stdout().is_terminal() && !json;
    let multi = MultiProgress::with_draw_target(if bars {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let total_style = ProgressStyle::with_template(
        "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let current_style =
        ProgressStyle::with_template("{prefix:>8} {msg} {bytes}/{total_bytes} ({percent}%)")
            .expect("valid template");
    let overall = multi.add(
        ProgressBar::new(0)
            .with_style(total_style)
            .with_prefix("total"),
    );
    let current = multi.add(
        ProgressBar::new(0)
            .with_style(current_style)
            .with_prefix("update"),
    );
    let titles: Vec<String> = updates.iter().map(|u| u.title().to_string()).collect();
    let (o2, c2) = (overall.clone(), current.clone());
    let job = downloader
        .begin_download2(
            kind,
            move |_: &DownloadJob, args: &DownloadProgressChangedCallbackArgs| {
                let p = args.progress();
                o2.set_length(p.total_bytes_to_download());
                o2.set_position(p.total_bytes_downloaded());
                c2.set_length(p.current_update_bytes_to_download());
                c2.set_position(p.current_update_bytes_downloaded());
                let phase = match p.current_update_download_phase() {
                    DownloadPhase::Initializing => "starting",
                    DownloadPhase::Downloading => "downloading",
                    DownloadPhase::Verifying => "verifying",
                };
                let title = titles
                    .get(p.current_update_index())
                    .map(String::as_str)
                    .unwrap_or("");
                c2.set_message(format!("{title} [{phase}]"));
            },
            |_: &DownloadJob, _: &DownloadCompletedCallbackArgs| {},
            AsyncState::none(),
        )
        .map_err(|e| Exit::from_error(&e, json))?;
    let abort_job = job.clone();
    crate::on_ctrl_c(Box::new(move || {
        eprintln!("\nupkeep: aborting; partial downloads are kept and resume next time");
        abort_job.request_abort();
    }));
    // Keep the bars ticking while waiting.
    while !job.wait_timeout(Duration::from_millis(100)) {}
    let result = downloader
        .end_download(&job)
        .map_err(|e| Exit::from_error(&e, json))?;
    overall.finish_and_clear();
    current.finish_and_clear();
    Ok(result)
}

pub fn run(global: &Global, a: DownloadArgs) -> Result<Exit, Exit> {
    let Some(updates) = a.which.pick(global, "download")? else {
        return Ok(Exit::Success);
    };
    let json = a.which.json;
    let session = global.session().map_err(|e| Exit::from_error(&e, json))?;
    let kind = if a.bootstrapper {
        DownloadType::UpdateBootstrapper
    } else {
        DownloadType::Full
    };
    let priority = match a.priority {
        PriorityArg::Low => DownloadPriority::Low,
        PriorityArg::Normal => DownloadPriority::Normal,
        PriorityArg::High => DownloadPriority::High,
        PriorityArg::ExtraHigh => DownloadPriority::ExtraHigh,
    };
    let result = transfer(&session, &updates, kind, priority, json)?;
    let rows: Vec<(String, OperationResultCode, HResult)> = (0..updates.len())
        .map(|i| {
            let r = result.update_result(i).expect("one result per update");
            (
                r.message().unwrap_or_default().to_string(),
                r.result_code(),
                r.hresult(),
            )
        })
        .collect();
    crate::output::print_results(
        "Download",
        &updates,
        &rows,
        result.result_code(),
        result.hresult(),
        None,
        json,
    );
    Ok(Exit::for_result(result.result_code()))
}
