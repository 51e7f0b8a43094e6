//! `upkeep search`, `upkeep show` and the hidden `upkeep __ids` (bash completion): the
//! commands that only read the catalog, and the one search every command that names
//! updates runs first ([`run`]).

use upkeep::{Error, HResult, SearchResult, UpdateSession};

use crate::exit::Exit;
use crate::{output, Global};

/// What `upkeep search` was asked for.
#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub here: Global,
    /// Criteria, e.g. "IsInstalled=0 and Type='Software'".
    criteria: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Search only the metadata already trusted locally (no network).
    #[arg(long)]
    offline: bool,
    /// Include updates superseded by others in the result.
    #[arg(long)]
    include_superseded: bool,
    /// Include updates that do not apply to this machine (flag N; `show ID` says why).
    #[arg(long)]
    include_not_applicable: bool,
    /// Search only this update service (`service list`); default: every one.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    #[command(flatten)]
    filter: output::Filter,
}

/// What `upkeep show` was asked for.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub here: Global,
    /// The update id.
    id: uuid::Uuid,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Use only local metadata.
    #[arg(long)]
    offline: bool,
    /// Print the update's license terms (with --json: as "eula_text").
    #[arg(long)]
    eula: bool,
}

/// Which updates a search looks at, beside its criteria.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// Only the metadata already trusted locally.
    pub offline: bool,
    /// Superseded updates too.
    pub include_superseded: bool,
    /// Updates that do not apply here too.
    pub include_not_applicable: bool,
    /// Only this update service.
    pub service: Option<&'a str>,
}

impl Scope<'_> {
    /// The scope of a command that names updates: naming one (superseded included) finds
    /// it even where it does not apply, so that `show` says why and `install` refuses with
    /// the rule that failed.
    pub fn naming(offline: bool, by_name: bool) -> Scope<'static> {
        Scope {
            offline,
            include_superseded: by_name,
            include_not_applicable: by_name,
            service: None,
        }
    }
}

/// Runs one search with `global`'s settings (over the process's one agent); errors are
/// reported (as JSON with `json`).
pub fn run(
    global: &Global,
    criteria: &str,
    scope: Scope<'_>,
    json: bool,
) -> Result<(UpdateSession, SearchResult), Exit> {
    let session = global.session().map_err(|e| Exit::from_error(&e, json))?;
    let mut searcher = session.create_update_searcher();
    searcher.set_online(!scope.offline);
    searcher.set_include_potentially_superseded_updates(scope.include_superseded);
    searcher.set_include_not_applicable(scope.include_not_applicable);
    if let Some(s) = scope.service {
        searcher.set_server_selection(upkeep::ServerSelection::Others);
        searcher.set_service_id(s);
    }
    let result = searcher
        .search(criteria)
        .map_err(|e| Exit::from_error(&e, json))?;
    Ok((session, result))
}

/// `upkeep search`.
pub fn search(global: &Global, a: SearchArgs) -> Result<Exit, Exit> {
    let scope = Scope {
        offline: a.offline,
        include_superseded: a.include_superseded,
        include_not_applicable: a.include_not_applicable,
        service: a.service.as_deref(),
    };
    let (session, result) = run(global, a.criteria.as_deref().unwrap_or(""), scope, a.json)?;
    output::print_search_filtered(&result, a.json, &a.filter);
    let code = Exit::for_result(result.result_code());
    // The process exits next: skip freeing what may be a 100,000-update catalog.
    std::mem::forget((session, result));
    Ok(code)
}

/// `upkeep show`.
pub fn show(global: &Global, a: ShowArgs) -> Result<Exit, Exit> {
    let (id, json) = (a.id, a.json);
    let criteria = format!("UpdateID='{id}' and DeploymentAction=*");
    let (session, result) = run(global, &criteria, Scope::naming(a.offline, true), json)?;
    // An installed revision is listed beside a newer published one: show the newest (it
    // says which revision is installed).
    let newest = result
        .updates()
        .iter()
        .max_by_key(|u| u.identity().revision_number);
    let Some(u) = newest else {
        let e = Error::new(
            HResult::WU_E_UNKNOWN_ID,
            format!("update {id} is not in the repository"),
        );
        return Err(Exit::from_error(&e, json));
    };
    if a.eula {
        let text = session
            .eula_text(u)
            .map_err(|e| Exit::from_error(&e, json))?;
        if json {
            println!("{}", serde_json::json!({ "id": id, "eula_text": text }));
        } else {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        return Ok(Exit::Success);
    }
    output::print_update(u, json);
    Ok(Exit::Success)
}

/// `upkeep __ids`: every update id and KB id of the trusted catalog, offline, one a line
/// (what bash completion offers).
pub fn ids(global: &Global) -> Result<Exit, Exit> {
    let scope = Scope {
        offline: true,
        include_superseded: true,
        ..Scope::default()
    };
    let (_, r) = run(global, "IsInstalled=0 or IsInstalled=1", scope, false)?;
    let mut seen = std::collections::BTreeSet::new();
    for u in r.updates() {
        seen.insert(u.identity().update_id.to_string());
        for kb in u.kb_article_ids() {
            seen.insert(format!("KB{}", kb.trim_start_matches("KB")));
        }
    }
    for w in seen {
        println!("{w}");
    }
    Ok(Exit::Success)
}
