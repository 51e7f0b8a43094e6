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
    pub here: crate::Global,
    #[command(flatten)]
    which: Selection,
    /// Only the updates' bootstrappers.
    #[arg(long)]
    bootstrapper: bool,
    /// Download priority.
    #[arg(long, value_enum, default_value = "normal")]
    priority: PriorityArg,
}

/// An update as an operator names it: its id, or a KB article id (`KB5001001` or
/// `5001001`), as PSWindowsUpdate's `-KBArticleID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateRef {
    /// An update id.
    Id(uuid::Uuid),
    /// A KB article id, digits only.
    Kb(String),
}

impl std::str::FromStr for UpdateRef {
    type Err = String;
    fn from_str(s: &str) -> Result<UpdateRef, String> {
        if let Ok(id) = uuid::Uuid::parse_str(s) {
            return Ok(UpdateRef::Id(id));
        }
        let digits = s
            .strip_prefix("KB")
            .or_else(|| s.strip_prefix("kb"))
            .unwrap_or(s);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(UpdateRef::Kb(digits.to_string()));
        }
        Err(format!(
            "{s:?} is neither an update id (a UUID) nor a KB article id (KB5001001)"
        ))
    }
}

impl std::fmt::Display for UpdateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpdateRef::Id(id) => write!(f, "{id}"),
            UpdateRef::Kb(kb) => write!(f, "KB{kb}"),
        }
    }
}

impl UpdateRef {
    /// Whether `update_id` / `kbs` is what this names.
    pub fn names(&self, update_id: &str, kbs: &[String]) -> bool {
        match self {
            UpdateRef::Id(id) => id.to_string() == update_id,
            UpdateRef::Kb(kb) => kbs.iter().any(|k| k.trim_start_matches("KB") == kb),
        }
    }
}

/// Which updates a `download` or `install` is for, and the output form.
#[derive(clap::Args, Debug)]
pub struct Selection {
    /// Update ids or KB article ids (KB5001001).
    pub ids: Vec<UpdateRef>,
    /// Every update matching IsInstalled=0 and IsHidden=0.
    #[arg(long)]
    pub all: bool,
    /// Updates matching these criteria.
    #[arg(long)]
    pub criteria: Option<String>,
    /// Select from the metadata already trusted locally, with no network (a machine that
    /// received its content with `cache import`; install with `--no-download`).
    #[arg(long)]
    pub offline: bool,
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
            self.offline,
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
    ids: &[UpdateRef],
    all: bool,
    criteria: Option<&str>,
    all_criteria: &str,
    offline: bool,
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
    let by_kb = ids.iter().any(|r| matches!(r, UpdateRef::Kb(_)));
    let criteria = match (criteria, all) {
        (Some(c), _) => c.to_string(),
        (None, true) => all_criteria.into(),
        // KB article ids are not in WUA's criteria language: look at every update.
        (None, false) if by_kb => "DeploymentAction=*".into(),
        (None, false) => ids
            .iter()
            .map(|id| format!("UpdateID='{id}' and DeploymentAction=*"))
            .collect::<Vec<_>>()
            .join(" or "),
    };
    let scope = crate::search_cmd::Scope::naming(offline, !ids.is_empty());
    let (_session, result) = crate::search_cmd::run(global, &criteria, scope, json)?;
    let found = result.updates().clone();
    let named = |r: &UpdateRef, u: &upkeep::Update| {
        r.names(&u.identity().update_id.to_string(), u.kb_article_ids())
    };
    let missing: Vec<String> = ids
        .iter()
        .filter(|r| !found.iter().any(|u| named(r, u)))
        .map(|r| r.to_string())
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
        let mut out: Vec<upkeep::Update> = Vec::new();
        for r in ids {
            let mut matched: Vec<&upkeep::Update> = found.iter().filter(|u| named(r, u)).collect();
            matched.sort_by_key(|u| std::cmp::Reverse(u.identity().revision_number));
            for u in matched {
                if !out
                    .iter()
                    .any(|o| o.identity().update_id == u.identity().update_id)
                {
                    out.push(u.clone());
                }
            }
        }
        return Ok(out.into_iter().collect());
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
    let titles: Vec<String> = updates
        .iter()
        .map(|u| crate::output::t(u.title()).into_owned())
        .collect();
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
