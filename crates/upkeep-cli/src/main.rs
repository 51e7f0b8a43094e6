//! The `upkeep` command: search, show, download, install, uninstall, history, hide, status,
//! repository authoring and the demo. This is the only crate that knows about
//! terminals; libraries report through types and `tracing`.

mod cache_cmd;
mod completions;
#[cfg(feature = "publisher")]
mod demo;
mod download_cmd;
mod exit;
mod install_cmd;
mod logs;
mod manual;
mod output;
#[cfg(feature = "publisher")]
mod repo_cmd;
mod search_cmd;
mod service_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use upkeep::{Error, HResult, UpdateSession};

use crate::exit::Exit;

/// mimalloc instead of glibc malloc: glibc keeps a heap per thread, and the threads that load
/// hashed bins left ~140 MB of freed memory stranded in theirs on a 100,000-update catalog.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// upkeep: an update agent with the Windows Update Agent's model over a TUF-signed
/// repository.
#[derive(Parser, Debug)]
#[command(name = "upkeep", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(flatten)]
    logging: Logging,
    #[command(subcommand)]
    command: Command,
}

/// How much to log: meaningful for every command.
#[derive(Args, Debug, Clone, Default)]
struct Logging {
    /// Log only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log more: -v for progress notes, -vv for debugging (`UPKEEP_LOG` overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Settings of the agent commands (they override the configuration file and `UPKEEP_*`
/// variables): given before the command, or after an agent command — not offered where
/// they would mean nothing (`repo`, `demo`, `completions`, `man`).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct Global {
    /// Repository base URL (serves <URL>/metadata/ and <URL>/targets/), or a local
    /// directory.
    #[arg(long = "repo", value_name = "URL")]
    pub repo: Option<String>,
    /// Initially trusted root metadata (copied into the state directory on first use).
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
    /// State directory (trusted metadata, cache, state database).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Install root.
    #[arg(long = "root", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl Global {
    /// These settings with those given after the command (`here`) taking precedence.
    pub fn with(&self, here: &Global) -> Global {
        Global {
            repo: here.repo.clone().or_else(|| self.repo.clone()),
            trusted_root: here
                .trusted_root
                .clone()
                .or_else(|| self.trusted_root.clone()),
            state_dir: here.state_dir.clone().or_else(|| self.state_dir.clone()),
            root: here.root.clone().or_else(|| self.root.clone()),
            config: here.config.clone().or_else(|| self.config.clone()),
        }
    }
    fn is_empty(&self) -> bool {
        self.repo.is_none()
            && self.trusted_root.is_none()
            && self.state_dir.is_none()
            && self.root.is_none()
            && self.config.is_none()
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Find updates matching WUA search criteria (default: IsInstalled=0 and IsHidden=0).
    Search(search_cmd::SearchArgs),
    /// Show every field of one update.
    Show(search_cmd::ShowArgs),
    /// Download updates' content into the verified cache (bars on a terminal; Ctrl-C aborts
    /// and keeps partial files for resuming).
    Download(download_cmd::DownloadArgs),
    /// Install updates (downloading what is missing first), each in a crash-safe transaction.
    Install(install_cmd::InstallArgs),
    /// Uninstall updates, restoring what their install replaced.
    Uninstall(install_cmd::UninstallArgs),
    /// List installed updates (from the agent's own records; no repository needed).
    List {
        #[command(flatten)]
        here: Global,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Check every path installed updates own against what was installed there (kind,
    /// size, content, mode, link target), as `dpkg --verify` does; exit 1 if any differs.
    Verify {
        #[command(flatten)]
        here: Global,
        /// Update ids (default: every installed update).
        ids: Vec<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show install and uninstall history, newest first.
    History {
        #[command(flatten)]
        here: Global,
        /// At most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Hide updates from default searches.
    Hide {
        #[command(flatten)]
        here: Global,
        /// Update ids or KB article ids (KB5001001).
        #[arg(required = true)]
        ids: Vec<download_cmd::UpdateRef>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show hidden updates again.
    Unhide {
        #[command(flatten)]
        here: Global,
        /// Update ids or KB article ids (KB5001001).
        #[arg(required = true)]
        ids: Vec<download_cmd::UpdateRef>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Whether an installer is busy, whether a restart is pending, the last results.
    Status {
        #[command(flatten)]
        here: Global,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Update services: add, remove, list the repositories this machine trusts.
    #[command(subcommand)]
    Service(service_cmd::ServiceCommand),
    /// The content cache: list what it holds, clean it.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
    /// The update ids and KB article ids the trusted metadata knows, one a line, offline
    /// (what the bash completion offers where an id is taken).
    #[command(name = "__ids", hide = true)]
    Ids {
        #[command(flatten)]
        here: Global,
    },
    /// Print a shell completion script: `upkeep completions bash > /etc/bash_completion.d/upkeep`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `upkeep man | man -l -`; `--out DIR` writes it and one
    /// page per command (`upkeep-search.1`, …) there.
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Create, change, publish and serve repositories.
    #[cfg(feature = "publisher")]
    #[command(subcommand)]
    Repo(repo_cmd::RepoCommand),
    /// Build a signed demo repository, serve it on loopback and walk through the agent.
    #[cfg(feature = "publisher")]
    Demo,
}

impl Global {
    /// A session from these settings, over the process's one agent: the first call opens
    /// it (configuration, trusted metadata, recovery), every later one with the same
    /// settings is another session over it — `install` selects and installs with one
    /// catalog in memory, one transfer queue and one store.
    pub fn session(&self) -> Result<UpdateSession, Error> {
        static OPEN: std::sync::Mutex<Vec<(Global, UpdateSession)>> =
            std::sync::Mutex::new(Vec::new());
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = open.iter().find(|(g, _)| g == self) {
            return Ok(s.clone());
        }
        let session = self.builder().build()?;
        open.push((self.clone(), session.clone()));
        Ok(session)
    }

    /// A session builder with these settings.
    pub fn builder(&self) -> upkeep::UpdateSessionBuilder {
        // The caller's name in history: the configuration's, else the CLI's.
        let mut b = UpdateSession::builder().default_client_application_id("upkeep-cli");
        if let Some(c) = &self.config {
            b = b.config_file(c);
        }
        if let Some(r) = &self.repo {
            b = b.repository(r);
        }
        if let Some(t) = &self.trusted_root {
            b = b.trusted_root(t);
        }
        if let Some(s) = &self.state_dir {
            b = b.state_dir(s);
        }
        if let Some(r) = &self.root {
            b = b.install_root(r);
        }
        b
    }
}

/// Whether `c` uses the agent settings (`--repo`, `--state-dir`, …).
fn takes_agent_settings(c: &Command) -> bool {
    match c {
        #[cfg(feature = "publisher")]
        Command::Repo(_) | Command::Demo => false,
        Command::Completions { .. } | Command::Man { .. } => false,
        _ => true,
    }
}

fn run(cli: Cli) -> Result<Exit, Exit> {
    if !takes_agent_settings(&cli.command) && !cli.global.is_empty() {
        crate::logs::error!("--repo, --trusted-root, --state-dir, --root and --config belong to the agent commands (search, install, …); this command does not use them");
        return Err(Exit::Usage);
    }
    match cli.command {
        Command::Search(a) => search_cmd::search(&cli.global.with(&a.here), a),
        Command::Show(a) => search_cmd::show(&cli.global.with(&a.here), a),
        Command::Download(args) => download_cmd::run(&cli.global.with(&args.here), args),
        Command::Install(a) => install_cmd::install(&cli.global.with(&a.here), a),
        Command::Uninstall(a) => install_cmd::uninstall(&cli.global.with(&a.here), a),
        Command::List { here, json } => install_cmd::list(&cli.global.with(&here), json),
        Command::Verify { here, ids, json } => {
            install_cmd::verify(&cli.global.with(&here), &ids, json)
        }
        Command::History { here, limit, json } => {
            install_cmd::history(&cli.global.with(&here), limit, json)
        }
        Command::Hide { here, ids, json } => {
            install_cmd::hide(&cli.global.with(&here), &ids, true, json)
        }
        Command::Unhide { here, ids, json } => {
            install_cmd::hide(&cli.global.with(&here), &ids, false, json)
        }
        Command::Status { here, json } => install_cmd::status(&cli.global.with(&here), json),
        Command::Cache(c) => cache_cmd::run(&cli.global, c),
        Command::Service(c) => service_cmd::run(&cli.global, c),
        Command::Completions { shell } => {
            completions::print(shell);
            Ok(Exit::Success)
        }
        Command::Ids { here } => search_cmd::ids(&cli.global.with(&here)),
        Command::Man { out } => {
            manual::run(out.as_deref()).map_err(|e| {
                crate::logs::error!("writing the manual: {e}");
                Exit::Failure
            })?;
            Ok(Exit::Success)
        }
        #[cfg(feature = "publisher")]
        Command::Repo(cmd) => repo_cmd::run(cmd),
        #[cfg(feature = "publisher")]
        Command::Demo => demo::run(),
    }
}

type Handler = Box<dyn Fn() + Send>;
static CTRL_C: std::sync::Mutex<Option<Handler>> = std::sync::Mutex::new(None);

/// Makes Ctrl-C (SIGINT) call `f` (replacing the previous action) instead of ending the
/// process: the running job is asked to abort and the command reports what happened.
pub fn on_ctrl_c(f: Handler) {
    let mut slot = CTRL_C.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        let _ = ctrlc::set_handler(|| {
            if let Some(f) = CTRL_C.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                f()
            }
        });
    }
    *slot = Some(f);
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`upkeep search | head`) instead of failing to print.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // `--json` anywhere before `--`: stderr carries only JSON from here on.
    let json = std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if json && e.use_stderr() {
                let code = HResult::E_INVALIDARG;
                let v = serde_json::json!({
                    "error": {
                        "message": e.to_string().trim_end(),
                        "hresult": format!("0x{:08X}", code.as_u32()),
                        "name": code.name(),
                    }
                });
                eprintln!("{v}");
            } else {
                let _ = e.print();
            }
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logs::init(json, cli.logging.quiet, cli.logging.verbose);
    match run(cli) {
        Ok(code) | Err(code) => code.into(),
    }
}
