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
    /// Copy content files into the cache (WUA's CopyToCache): every file under PATH whose
    /// SHA-256 is that of a content file of the trusted metadata is checked and imported;
    /// no network is needed.
    Import {
        #[command(flatten)]
        here: Global,
        /// Files or directories (an export, a USB stick).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Copy cached content out (WUA's CopyFromCache) to DIR/<target path>, for another
    /// machine's `cache import`: the named updates, or every update whose content is cached.
    Export {
        #[command(flatten)]
        here: Global,
        /// Destination directory.
        dir: std::path::PathBuf,
        /// Update ids or KB article ids (default: everything cached).
        ids: Vec<crate::download_cmd::UpdateRef>,
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
        CacheCommand::Import { here, paths, json } => import(&global.with(&here), &paths, json),
        CacheCommand::Export {
            here,
            dir,
            ids,
            json,
        } => export(&global.with(&here), &dir, &ids, json),
    }
}

fn import(global: &Global, paths: &[std::path::PathBuf], json: bool) -> Result<Exit, Exit> {
    let session = global.session().map_err(|e| Exit::from_error(&e, json))?;
    let r = session
        .copy_to_cache(paths)
        .map_err(|e| Exit::from_error(&e, json))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
    } else {
        for (file, target) in &r.imported {
            println!("imported {file} as {target}");
        }
        for t in &r.already {
            println!("already cached: {t}");
        }
        for (file, why) in &r.failed {
            crate::logs::warning!("{file}: {why}");
        }
        println!(
            "{} file(s) imported ({}), {} already cached, {} matching no signed content, {} refused",
            r.imported.len(),
            human_bytes(r.bytes),
            r.already.len(),
            r.unmatched.len(),
            r.failed.len()
        );
    }
    Ok(if r.failed.is_empty() {
        Exit::Success
    } else {
        Exit::Partial
    })
}

fn export(
    global: &Global,
    dir: &std::path::Path,
    ids: &[crate::download_cmd::UpdateRef],
    json: bool,
) -> Result<Exit, Exit> {
    let session = global.session().map_err(|e| Exit::from_error(&e, json))?;
    let mut s = session.create_update_searcher();
    s.set_online(false);
    s.set_include_not_applicable(true);
    s.set_include_potentially_superseded_updates(true);
    let found = s
        .search("IsInstalled=0 or IsInstalled=1")
        .map_err(|e| Exit::from_error(&e, json))?;
    let chosen: upkeep::UpdateCollection = found
        .updates()
        .iter()
        .filter(|u| {
            if ids.is_empty() {
                u.is_downloaded()
            } else {
                ids.iter()
                    .any(|r| r.names(&u.identity().update_id.to_string(), u.kb_article_ids()))
            }
        })
        .cloned()
        .collect();
    let missing: Vec<String> = ids
        .iter()
        .filter(|r| {
            !chosen
                .iter()
                .any(|u| r.names(&u.identity().update_id.to_string(), u.kb_article_ids()))
        })
        .map(|r| r.to_string())
        .collect();
    if !missing.is_empty() {
        let e = upkeep::Error::new(
            upkeep::HResult::WU_E_UNKNOWN_ID,
            format!("not in the trusted metadata: {}", missing.join(", ")),
        );
        return Err(Exit::from_error(&e, json));
    }
    let files = session
        .copy_from_cache(&chosen, dir)
        .map_err(|e| Exit::from_error(&e, json))?;
    if json {
        println!(
            "{}",
            json!({"updates": chosen.len(), "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()})
        );
    } else {
        println!(
            "{} file(s) of {} update(s) copied to {}",
            files.len(),
            chosen.len(),
            dir.display()
        );
    }
    Ok(Exit::Success)
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
