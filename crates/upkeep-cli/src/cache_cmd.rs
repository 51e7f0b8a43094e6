//! `upkeep cache list|clean`: the content cache (`<state-dir>/cache`).

use clap::Subcommand;
use serde_json::json;

use crate::exit::Exit;
use crate::output::{human_bytes, print_table};
use crate::Global;

/// What `upkeep cache` does.
#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// List the cached content (least recently used first) and unfinished downloads.
    List {
        #[command(flatten)]
        here: Global,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove every cached object and unfinished download (installed updates keep what
    /// they need to uninstall: it is not in the cache).
    Clean {
        #[command(flatten)]
        here: Global,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `upkeep cache …`.
pub fn run(global: &Global, cmd: CacheCommand) -> Result<Exit, Exit> {
    match cmd {
        CacheCommand::List { here, json } => list(&global.with(&here), json),
        CacheCommand::Clean { here, json } => clean(&global.with(&here), json),
    }
}

fn list(global: &Global, json: bool) -> Result<Exit, Exit> {
    let session = global.session().map_err(|e| Exit::from_error(&e, json))?;
    // Name the updates each object belongs to from the metadata already trusted (no
    // network); without any, objects are listed by key alone.
    let mut s = session.create_update_searcher();
    s.set_online(false);
    s.set_include_not_applicable(true);
    let _ = s.search("IsInstalled=0 or IsInstalled=1");
    let (objects, partials) = session
        .cache_entries()
        .map_err(|e| Exit::from_error(&e, json))?;
    let total: u64 = objects.iter().map(|o| o.bytes).sum::<u64>()
        + partials.iter().map(|p| p.bytes).sum::<u64>();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "objects": objects,
                "partial": partials,
                "bytes": total,
                "cache_max_bytes": session.config().cache_max_bytes,
                "keep_downloads": session.config().keep_downloads,
            }))
            .expect("JSON")
        );
        return Ok(Exit::Success);
    }
    if objects.is_empty() && partials.is_empty() {
        println!("The cache is empty.");
        return Ok(Exit::Success);
    }
    let rows: Vec<[String; 5]> = objects
        .iter()
        .map(|o| {
            [
                o.key[..o.key.len().min(16)].to_string(),
                human_bytes(o.bytes),
                o.last_used.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                if o.verified { "yes" } else { "no" }.to_string(),
                if o.updates.is_empty() {
                    "-".to_string()
                } else {
                    o.updates.join("; ")
                },
            ]
        })
        .chain(partials.iter().map(|p| {
            [
                p.name.clone(),
                human_bytes(p.bytes),
                p.modified.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                "partial".to_string(),
                "-".to_string(),
            ]
        }))
        .collect();
    print_table(
        &["OBJECT", "SIZE", "LAST USED", "VERIFIED", "UPDATES"],
        &rows,
    );
    println!(
        "{} object(s), {} partial download(s), {}{}",
        objects.len(),
        partials.len(),
        human_bytes(total),
        match session.config().cache_max_bytes {
            Some(m) => format!(" (cap {})", human_bytes(m)),
            None => String::new(),
        }
    );
    Ok(Exit::Success)
}

fn clean(global: &Global, json: bool) -> Result<Exit, Exit> {
    let session = global.session().map_err(|e| Exit::from_error(&e, json))?;
    let r = session
        .clean_cache()
        .map_err(|e| Exit::from_error(&e, json))?;
    if json {
        println!("{}", serde_json::to_string(&r).expect("JSON"));
    } else {
        println!(
            "Removed {} object(s) and {} partial download(s): {} freed.",
            r.objects,
            r.partial_files,
            human_bytes(r.bytes)
        );
    }
    Ok(Exit::Success)
}
