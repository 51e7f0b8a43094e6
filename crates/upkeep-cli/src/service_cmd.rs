//! `upkeep service add|update|remove|list`: the update services this machine takes updates from
//! (WUA's `IUpdateServiceManager`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use upkeep::{UpdateService, UpdateServiceManager};

use crate::exit::Exit;
use crate::output::print_table;
use crate::Global;

/// Where the state is (the settings that mean something to every `service` verb).
#[derive(Args, Debug, Clone, Default)]
pub struct Here {
    /// State directory (trusted metadata, cache, state database).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// What `upkeep service` does.
#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Register an update service with its own trusted root: a repository URL or a local
    /// directory.
    Add {
        /// Its name (a-z, 0-9, `.`, `_`, `-`).
        name: String,
        /// Base URL (`https://…/`, `file:///…/`) or a directory.
        url: String,
        /// The service's initially trusted root metadata (checked to be self-signed).
        #[arg(long, value_name = "FILE")]
        trusted_root: PathBuf,
        #[command(flatten)]
        here: Here,
    },
    /// Replace the offline bundle of a service added from one with a newer bundle, keeping
    /// the service's trust (a bundle older than what it trusts is refused).
    Update {
        /// Its name.
        name: String,
        /// The newer bundle (`upkeep repo bundle`).
        bundle: PathBuf,
        #[command(flatten)]
        here: Here,
    },
    /// Unregister a service added with `service add` (installed updates stay).
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        here: Here,
    },
    /// List the services, in the order searches take them.
    List {
        #[command(flatten)]
        here: Here,
    },
}

fn manager(global: &Global, here: &Here) -> Result<UpdateServiceManager, Exit> {
    let g = global.with(&Global {
        state_dir: here.state_dir.clone(),
        config: here.config.clone(),
        ..Global::default()
    });
    g.builder()
        .build_service_manager()
        .map_err(|e| Exit::from_error(&e, here.json))
}

fn service_json(s: &UpdateService) -> serde_json::Value {
    json!({
        "name": s.name,
        "url": s.url,
        "mirrors": s.mirrors,
        "origin": s.origin,
        "is_default": s.is_default(),
        "trusted": s.trusted,
    })
}

/// Runs `upkeep service …`.
pub fn run(global: &Global, cmd: ServiceCommand) -> Result<Exit, Exit> {
    match cmd {
        ServiceCommand::Add {
            name,
            url,
            trusted_root,
            here,
        } => {
            let m = manager(global, &here)?;
            let s = m
                .add_service(&name, &url, &trusted_root)
                .map_err(|e| Exit::from_error(&e, here.json))?;
            if here.json {
                println!("{}", service_json(&s));
            } else {
                println!(
                    "Added service {} ({}); `upkeep search` now covers it.",
                    s.name,
                    s.url.as_deref().unwrap_or("-")
                );
            }
        }
        ServiceCommand::Update { name, bundle, here } => {
            let m = manager(global, &here)?;
            let s = m
                .update_service(&name, &bundle)
                .map_err(|e| Exit::from_error(&e, here.json))?;
            if here.json {
                println!("{}", service_json(&s));
            } else {
                println!(
                    "Updated service {} from {}; `upkeep search` now uses it.",
                    s.name,
                    bundle.display()
                );
            }
        }
        ServiceCommand::Remove { name, here } => {
            let m = manager(global, &here)?;
            m.remove_service(&name)
                .map_err(|e| Exit::from_error(&e, here.json))?;
            if here.json {
                println!("{}", json!({ "removed": name }));
            } else {
                println!("Removed service {name}.");
            }
        }
        ServiceCommand::List { here } => {
            let m = manager(global, &here)?;
            let list = m.services().map_err(|e| Exit::from_error(&e, here.json))?;
            if here.json {
                let v: Vec<_> = list.iter().map(service_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "services": v })).expect("JSON")
                );
            } else if list.is_empty() {
                println!(
                    "No update service: give --repo and --trusted-root, or `upkeep service add`."
                );
            } else {
                let rows: Vec<[String; 4]> = list
                    .iter()
                    .map(|s| {
                        [
                            s.name.clone(),
                            format!("{:?}", s.origin).to_lowercase(),
                            if s.trusted { "yes" } else { "no" }.to_string(),
                            s.url.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "ORIGIN", "TRUSTED", "URL"], &rows);
            }
        }
    }
    Ok(Exit::Success)
}
