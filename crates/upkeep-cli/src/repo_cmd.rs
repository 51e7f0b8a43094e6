//! `upkeep repo …`: repository authoring.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use upkeep::{
    Category, DeploymentAction, Handler, InstallationImpact, InstallationRebootBehavior,
    UpdateMetadata, UpdateType,
};
use upkeep_publish::{
    ContentSource, InitOptions, Manifest, NewUpdate, PublishError, Repository, RepositoryConfig,
};

use crate::exit::Exit;

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository: keys (DIR/keys, mode 0600), DIR/metadata, DIR/targets.
    Init {
        /// Repository directory (must not exist or be empty).
        dir: PathBuf,
        /// Use N hashed bins (a power of two) for large catalogs.
        #[arg(long, value_name = "N")]
        bins: Option<u32>,
        /// Timestamp lifetime in seconds.
        #[arg(long, value_name = "SECS")]
        timestamp_expiry: Option<u64>,
    },
    /// Add an update (replacing any earlier revision of the same id) and publish.
    Add(Box<AddArgs>),
    /// Remove an update and publish.
    Remove {
        /// Repository directory.
        dir: PathBuf,
        /// The update id.
        id: uuid::Uuid,
    },
    /// Re-sign every role with new versions and renewed expiry.
    Publish {
        /// Repository directory.
        dir: PathBuf,
    },
    /// List the updates in a repository.
    List {
        /// Repository directory.
        dir: PathBuf,
    },
    /// Serve a repository over HTTP/1.1 for development (keep-alive, Range).
    Serve {
        /// Repository directory.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HandlerKind {
    Files,
    Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Impact {
    Normal,
    Minor,
    Exclusive,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Reboot {
    Never,
    Always,
    CanRequest,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// Repository directory.
    dir: PathBuf,
    /// Read every field from an update.toml manifest instead of flags.
    #[arg(long, conflicts_with_all = ["id", "title", "payload", "handler"])]
    manifest: Option<PathBuf>,
    /// Update id (a UUID).
    #[arg(long, required_unless_present = "manifest")]
    id: Option<uuid::Uuid>,
    /// Title.
    #[arg(long, required_unless_present = "manifest")]
    title: Option<String>,
    /// Payload file (tar / tar.zst / tar.gz for `files`; an executable for `command`).
    #[arg(long, required_unless_present = "manifest")]
    payload: Option<PathBuf>,
    /// Handler.
    #[arg(long, value_enum, required_unless_present = "manifest")]
    handler: Option<HandlerKind>,
    /// Revision number.
    #[arg(long, default_value_t = 1)]
    revision: u32,
    /// Description.
    #[arg(long, default_value = "")]
    description: String,
    /// KB article id (repeatable).
    #[arg(long = "kb")]
    kb: Vec<String>,
    /// Category as UUID=NAME (repeatable).
    #[arg(long = "category", value_parser = parse_category)]
    categories: Vec<Category>,
    /// Update type.
    #[arg(long = "type", default_value = "software", value_parser = ["software", "driver"])]
    update_type: String,
    /// Severity: Critical, Important, Moderate or Low.
    #[arg(long, default_value = "")]
    severity: String,
    /// Id of an update this one supersedes (repeatable).
    #[arg(long)]
    supersedes: Vec<uuid::Uuid>,
    /// Installation is mandatory.
    #[arg(long)]
    mandatory: bool,
    /// Users cannot uninstall it.
    #[arg(long)]
    not_uninstallable: bool,
    /// License text file (UTF-8).
    #[arg(long)]
    eula: Option<PathBuf>,
    /// Installation impact.
    #[arg(long, value_enum, default_value = "normal")]
    impact: Impact,
    /// Reboot behaviour.
    #[arg(long, value_enum, default_value = "never")]
    reboot: Reboot,
    /// The installation may ask for user input.
    #[arg(long)]
    can_request_user_input: bool,
    /// The installation needs the network.
    #[arg(long)]
    requires_network: bool,
    /// Install argument for the command handler (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Uninstall argument for the command handler (repeatable; none means not uninstallable by the handler).
    #[arg(long = "uninstall-arg", allow_hyphen_values = true)]
    uninstall_args: Vec<String>,
    /// Command timeout in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Exit code of the command that means success (repeatable; default 0).
    #[arg(long = "success-exit-code", allow_hyphen_values = true)]
    success_exit_codes: Vec<i64>,
    /// Exit code of the command that means success with a restart required (repeatable;
    /// default 3010 and 1641; a Linux exit status has 8 bits, so scripts declare their own,
    /// e.g. 194).
    #[arg(long = "reboot-exit-code", allow_hyphen_values = true)]
    reboot_exit_codes: Vec<i64>,
    /// Path in a `files` payload that may carry set-user-id or set-group-id bits
    /// (repeatable); devices refuse any other entry with them.
    #[arg(long = "setid", value_name = "PATH")]
    setid: Vec<String>,
    /// Bytes the `files` payloads expand to once installed; devices stop extracting beyond
    /// it (without it: 100× the payloads' size, at least 64 MiB).
    #[arg(long, value_name = "BYTES")]
    installed_size: Option<u64>,
    /// Bootstrapper file.
    #[arg(long)]
    bootstrapper: Option<PathBuf>,
    /// More content files (repeatable).
    #[arg(long = "content")]
    content: Vec<PathBuf>,
    /// Release date (RFC 3339; default now).
    #[arg(long)]
    release_date: Option<jiff::Timestamp>,
    /// Install-by date (RFC 3339).
    #[arg(long)]
    deadline: Option<jiff::Timestamp>,
    /// Deployment action.
    #[arg(long, default_value = "installation", value_parser = ["installation", "uninstallation", "optional-installation"])]
    deployment_action: String,
    /// Optional update, discoverable only by browsing.
    #[arg(long)]
    browse_only: bool,
}

fn parse_category(s: &str) -> Result<Category, String> {
    let (id, name) = s.split_once('=').ok_or("expected UUID=NAME")?;
    Ok(Category {
        id: id.parse().map_err(|_| format!("{id:?} is not a UUID"))?,
        name: name.to_string(),
    })
}

impl AddArgs {
    fn to_update(&self) -> Result<NewUpdate, PublishError> {
        if let Some(m) = &self.manifest {
            return Manifest::load(m);
        }
        let (Some(id), Some(title), Some(payload), Some(handler)) = (
            self.id,
            self.title.clone(),
            self.payload.clone(),
            self.handler,
        ) else {
            return Err(PublishError::Invalid(
                "--id, --title, --payload and --handler are required".into(),
            ));
        };
        let mut m = UpdateMetadata::new(id, title, "placeholder");
        m.revision = self.revision;
        m.description = self.description.clone();
        m.kb_article_ids = self.kb.clone();
        m.categories = self.categories.clone();
        m.update_type = UpdateType::from_name(&self.update_type).unwrap_or_default();
        m.severity = self.severity.clone();
        m.supersedes = self.supersedes.clone();
        m.mandatory = self.mandatory;
        m.uninstallable = !self.not_uninstallable;
        m.installation_behavior.impact = match self.impact {
            Impact::Normal => InstallationImpact::Normal,
            Impact::Minor => InstallationImpact::Minor,
            Impact::Exclusive => InstallationImpact::RequiresExclusiveHandling,
        };
        m.installation_behavior.reboot_behavior = match self.reboot {
            Reboot::Never => InstallationRebootBehavior::NeverReboots,
            Reboot::Always => InstallationRebootBehavior::AlwaysRequiresReboot,
            Reboot::CanRequest => InstallationRebootBehavior::CanRequestReboot,
        };
        m.installation_behavior.can_request_user_input = self.can_request_user_input;
        m.installation_behavior.requires_network_connectivity = self.requires_network;
        m.handler = match handler {
            HandlerKind::Files => {
                if !self.args.is_empty()
                    || !self.uninstall_args.is_empty()
                    || !self.success_exit_codes.is_empty()
                    || !self.reboot_exit_codes.is_empty()
                {
                    return Err(PublishError::Invalid(
                        "--arg, --uninstall-arg, --success-exit-code and --reboot-exit-code belong to the command handler".into(),
                    ));
                }
                m.setid_paths = self.setid.clone();
                m.installed_size = self.installed_size;
                Handler::Files
            }
            HandlerKind::Command if !self.setid.is_empty() || self.installed_size.is_some() => {
                return Err(PublishError::Invalid(
                    "--setid and --installed-size belong to the files handler".into(),
                ))
            }
            HandlerKind::Command => Handler::Command {
                arguments: self.args.clone(),
                uninstall_arguments: (!self.uninstall_args.is_empty())
                    .then(|| self.uninstall_args.clone()),
                timeout_secs: self.timeout,
                success_exit_codes: if self.success_exit_codes.is_empty() {
                    upkeep::default_success_codes()
                } else {
                    self.success_exit_codes.clone()
                },
                reboot_exit_codes: if self.reboot_exit_codes.is_empty() {
                    upkeep::default_reboot_codes()
                } else {
                    self.reboot_exit_codes.clone()
                },
            },
        };
        m.release_date = Some(self.release_date.unwrap_or_else(jiff::Timestamp::now));
        m.deadline = self.deadline;
        m.deployment_action = match self.deployment_action.as_str() {
            "uninstallation" => DeploymentAction::Uninstallation,
            "optional-installation" => DeploymentAction::OptionalInstallation,
            _ => DeploymentAction::Installation,
        };
        m.browse_only = self.browse_only;
        Ok(NewUpdate {
            metadata: m,
            payload: ContentSource::File(payload),
            extra_content: self
                .content
                .iter()
                .cloned()
                .map(ContentSource::File)
                .collect(),
            eula: self.eula.clone().map(ContentSource::File),
            bootstrapper: self.bootstrapper.clone().map(ContentSource::File),
        })
    }
}

/// A `files` update's payloads are checked as every device will check them — the same
/// function (`upkeep_install::files::inspect`) — so that what devices would refuse is
/// refused here, with the reason; and its `installed_size` is filled in when not given.
fn check_files_payloads(update: &mut NewUpdate) -> Result<(), Exit> {
    if !matches!(update.metadata.handler, Handler::Files) {
        return Ok(());
    }
    let mut payloads = Vec::new();
    for src in std::iter::once(&update.payload).chain(&update.extra_content) {
        let ContentSource::File(path) = src else {
            continue;
        };
        let length = std::fs::metadata(path)
            .map_err(|e| {
                eprintln!("upkeep: error: {}: {e}", path.display());
                Exit::Usage
            })?
            .len();
        payloads.push(upkeep_install::files::Payload {
            path: path.clone(),
            length,
            sha256: None,
        });
    }
    let m = &update.metadata;
    let policy = upkeep_install::files::Policy {
        setid: m.setid_paths.clone(),
        max_bytes: m.installed_size,
        max_bytes_source: "--installed-size".into(),
    };
    match upkeep_install::files::inspect(&payloads, policy) {
        Ok(found) => {
            update
                .metadata
                .installed_size
                .get_or_insert(found.installed_size);
            Ok(())
        }
        Err(e) => {
            let hint = if e.message.contains("set-user-id") {
                " (declare it with --setid PATH if it must be)"
            } else {
                ""
            };
            eprintln!(
                "upkeep: error: refused: {}{hint}; devices would refuse this payload",
                e.message
            );
            Err(Exit::Usage)
        }
    }
}

fn fail(e: PublishError) -> Exit {
    eprintln!("upkeep: error: {e}");
    match e {
        PublishError::Invalid(_) | PublishError::UnknownUpdate(_) => Exit::Usage,
        _ => Exit::Failure,
    }
}

pub fn run(cmd: RepoCommand) -> Result<Exit, Exit> {
    match cmd {
        RepoCommand::Init {
            dir,
            bins,
            timestamp_expiry,
        } => {
            let mut config = RepositoryConfig {
                bins: bins.unwrap_or(0),
                ..Default::default()
            };
            if let Some(t) = timestamp_expiry {
                config.timestamp_expiry_secs = t;
            }
            let repo = Repository::init(&dir, InitOptions { config }).map_err(fail)?;
            println!("Created repository {}", dir.display());
            println!("  trusted root for clients: {}", repo.root_path().display());
            println!("  keys (keep them private): {}", dir.join("keys").display());
            Ok(Exit::Success)
        }
        RepoCommand::Add(args) => {
            let mut update = args.to_update().map_err(fail)?;
            check_files_payloads(&mut update)?;
            let (id, title) = (update.metadata.id, update.metadata.title.clone());
            let mut repo = Repository::open(&args.dir).map_err(fail)?;
            let report = repo.add_update(update).map_err(fail)?;
            println!(
                "Added {id} \"{title}\"; the repository has {} update(s)",
                report.updates
            );
            Ok(Exit::Success)
        }
        RepoCommand::Remove { dir, id } => {
            let mut repo = Repository::open(&dir).map_err(fail)?;
            let report = repo.remove_update(id).map_err(fail)?;
            println!(
                "Removed {id}; the repository has {} update(s)",
                report.updates
            );
            Ok(Exit::Success)
        }
        RepoCommand::Publish { dir } => {
            let mut repo = Repository::open(&dir).map_err(fail)?;
            let report = repo.publish().map_err(fail)?;
            for (role, v) in &report.roles {
                println!("  {role} v{v}");
            }
            println!("Published {} update(s)", report.updates);
            Ok(Exit::Success)
        }
        RepoCommand::List { dir } => {
            let repo = Repository::open(&dir).map_err(fail)?;
            for (id, m) in repo.updates().map_err(fail)? {
                println!("{id}  r{}  {}", m.revision, m.title);
            }
            Ok(Exit::Success)
        }
        RepoCommand::Serve { dir, listen } => {
            if !dir.join("metadata").join("timestamp.json").is_file() {
                eprintln!(
                    "upkeep: error: {} is not a published repository",
                    dir.display()
                );
                return Err(Exit::Usage);
            }
            let server = upkeep_publish::serve::Server::start(
                listen,
                upkeep_publish::serve::repository_mounts(&dir),
            )
            .map_err(|e| {
                eprintln!("upkeep: error: cannot listen on {listen}: {e}");
                Exit::Failure
            })?;
            eprintln!(
                "Serving {} at {} (Ctrl-C to stop)",
                dir.display(),
                server.base_url()
            );
            server.wait();
            Ok(Exit::Success)
        }
    }
}
