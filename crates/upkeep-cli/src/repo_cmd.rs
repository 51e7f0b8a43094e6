//! `upkeep repo …`: repository authoring.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use upkeep::{
    Category, DeploymentAction, FileRule, Handler, InstallationImpact, InstallationRebootBehavior,
    OsRule, UpdateMetadata, UpdateType,
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
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Use N hashed bins (a power of two) for large catalogs.
        #[arg(long, value_name = "N")]
        bins: Option<u32>,
        #[command(flatten)]
        lifetimes: Lifetimes,
        /// Keep the root key offline: write it into DIR instead of the repository's keys/.
        #[arg(long, value_name = "DIR")]
        root_keys: Option<PathBuf>,
        /// With --root-keys: keep the targets key there too (every add and remove then
        /// needs --root-keys).
        #[arg(long, requires = "root_keys")]
        offline_targets_key: bool,
    },
    /// Add an update (replacing any earlier revision of the same id) and publish.
    Add(Box<AddArgs>),
    /// Remove an update and publish.
    Remove {
        /// Repository directory.
        dir: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The update id.
        id: uuid::Uuid,
        /// Where an offline root key is (needed only when the root is due for renewal).
        #[arg(long, value_name = "DIR")]
        root_keys: Option<PathBuf>,
    },
    /// Re-sign every role with new versions and renewed expiry; the root too when it
    /// expires within a quarter of its lifetime. Run it before the timestamp expires
    /// (a systemd timer or cron: see the README).
    Publish {
        /// Repository directory.
        dir: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        lifetimes: Lifetimes,
        /// Where an offline root key is (needed only when the root is renewed).
        #[arg(long, value_name = "DIR")]
        root_keys: Option<PathBuf>,
    },
    /// Replace a role's signing key (root, targets, snapshot, timestamp, bins) and publish
    /// so that clients follow; the old key is kept in DIR/keys/retired/.
    RotateKey {
        /// Repository directory.
        dir: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The role.
        role: String,
        /// Where an offline root key is (always needed: the root is signed again).
        #[arg(long, value_name = "DIR")]
        root_keys: Option<PathBuf>,
    },
    /// Remove metadata versions and content files no current metadata references,
    /// keeping what the newest N snapshots refer to (for clients mid-refresh).
    Prune {
        /// Repository directory.
        dir: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Snapshots (and what they reference) to keep, the current one included.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        keep: u64,
    },
    /// Each role's version, keys, threshold and expiry. Exit 0: nothing due; 3: a role
    /// expires within its margin (run `repo publish`); 1: a role has expired (clients
    /// refuse the repository).
    Status {
        /// Repository directory.
        dir: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Where an offline root key is (to say whether it is present).
        #[arg(long, value_name = "DIR")]
        root_keys: Option<PathBuf>,
    },
    /// Write an offline bundle: a self-contained signed snapshot of the repository with
    /// the chosen updates' content, for machines with no network (`service add NAME
    /// FILE.tar`). Needs the targets, snapshot and timestamp keys.
    Bundle {
        /// Repository directory.
        dir: PathBuf,
        /// The bundle to write (a tar file).
        #[arg(long, value_name = "FILE.tar")]
        out: PathBuf,
        /// Only the updates matching these WUA search criteria (default: every update).
        #[arg(long, value_name = "C")]
        criteria: Option<String>,
        /// How long devices accept the bundle (`90d`, `12h`, seconds).
        #[arg(long, default_value = "90d", value_parser = parse_duration)]
        expires: u64,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List the updates in a repository.
    List {
        /// Repository directory.
        dir: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
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

/// Role lifetimes (`repo init`, `repo publish`; kept in repository.toml).
#[derive(Args, Debug, Default)]
pub struct Lifetimes {
    /// Root lifetime: N followed by s, m, h or d (default 365d); renewed by a publish a
    /// quarter of it before it expires.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    root_expiry: Option<u64>,
    /// Targets (and hashed bins) lifetime (default 90d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    targets_expiry: Option<u64>,
    /// Snapshot lifetime (default 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    snapshot_expiry: Option<u64>,
    /// Timestamp lifetime (default 7d): publish more often than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timestamp_expiry: Option<u64>,
}

impl Lifetimes {
    fn apply(&self, c: &mut RepositoryConfig) -> bool {
        let mut changed = false;
        for (v, field) in [
            (self.root_expiry, &mut c.root_expiry_secs),
            (self.targets_expiry, &mut c.targets_expiry_secs),
            (self.snapshot_expiry, &mut c.snapshot_expiry_secs),
            (self.timestamp_expiry, &mut c.timestamp_expiry_secs),
        ] {
            if let Some(v) = v {
                changed |= *field != v;
                *field = v;
            }
        }
        changed
    }
}

/// `N`, `Ns`, `Nm`, `Nh` or `Nd` → seconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by s, m, h or d"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mul).ok_or_else(|| format!("{s:?}: too long"))
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
    /// Print JSON for scripts (the added update's id, the roles signed, warnings).
    #[arg(long)]
    json: bool,
    /// Replace the published revision even though its content differs (devices that
    /// already hold that revision will not update to this one).
    #[arg(long)]
    force: bool,
    /// Where an offline root key is (needed only when the root is due for renewal).
    #[arg(long, value_name = "DIR")]
    root_keys: Option<PathBuf>,
    /// Read every field from an update.toml manifest instead of flags.
    #[arg(long, conflicts_with_all = ["id", "title", "payload", "handler", "arch", "os", "min_agent_version", "requires", "installed_if", "applicable_if", "from_deb"])]
    manifest: Option<PathBuf>,
    /// A Debian binary package (`.deb`) as a `files` update: its data tree is the payload;
    /// its name (the title unless --title), version, description and architecture (unless
    /// --arch) come from its control file; its set-id files are declared. Its maintainer
    /// scripts are not run, and the record says so.
    #[arg(long, value_name = "FILE.deb", conflicts_with_all = ["payload", "handler"])]
    from_deb: Option<PathBuf>,
    /// Update id (a UUID); without it a new one is generated and printed (keep it: the
    /// next revision needs it).
    #[arg(long)]
    id: Option<uuid::Uuid>,
    /// Title.
    #[arg(long, required_unless_present_any = ["manifest", "from_deb"])]
    title: Option<String>,
    /// Payload file (tar / tar.zst / tar.gz for `files`; an executable for `command`).
    #[arg(long, required_unless_present_any = ["manifest", "from_deb"])]
    payload: Option<PathBuf>,
    /// Handler.
    #[arg(long, value_enum, required_unless_present_any = ["manifest", "from_deb"])]
    handler: Option<HandlerKind>,
    /// Revision number.
    #[arg(long, default_value_t = 1)]
    revision: u32,
    /// Description; may have several lines (the record carries them as a list of lines).
    #[arg(long, default_value = "")]
    description: String,
    /// Release notes (WUA's ReleaseNotes); may have several lines.
    #[arg(long, default_value = "")]
    release_notes: String,
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
    /// A Debian package whose files this update may replace where dpkg owns them on a
    /// device (repeatable); any other path dpkg owns is refused at install.
    #[arg(long = "takes-over-dpkg", value_name = "PACKAGE")]
    takes_over_dpkg: Vec<String>,
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
    /// Architecture it applies to, as `uname -m` names it (repeatable; none = any).
    #[arg(long = "arch", value_name = "ARCH")]
    arch: Vec<String>,
    /// Operating system it applies to: an os-release ID with an optional VERSION_ID range,
    /// `debian`, `debian:>=12,<13`, `ubuntu:24.04` (repeatable: any of them).
    #[arg(long = "os", value_name = "ID[:RANGE]", value_parser = parse_os)]
    os: Vec<OsRule>,
    /// The oldest agent version that may install it (older agents report it not
    /// applicable, with a warning).
    #[arg(long, value_name = "VERSION")]
    min_agent_version: Option<String>,
    /// Id of an update that must be installed first (repeatable).
    #[arg(long = "requires", value_name = "UUID")]
    requires: Vec<uuid::Uuid>,
    /// Software installed without the agent that counts as this update installed
    /// (repeatable: any of them): `exists:PATH`, `sha256:PATH=HEX`, `version:PATH=RANGE`,
    /// `version:PATH:KEY=RANGE` (the version from the line KEY=value).
    #[arg(long = "installed-if", value_name = "RULE", value_parser = parse_file_rule)]
    installed_if: Vec<FileRule>,
    /// A file fact that must hold for the update to apply, in the same forms
    /// (repeatable: all of them).
    #[arg(long = "applicable-if", value_name = "RULE", value_parser = parse_file_rule)]
    applicable_if: Vec<FileRule>,
}

fn parse_os(s: &str) -> Result<OsRule, String> {
    let (id, version) = match s.split_once(':') {
        Some((id, r)) => (id, Some(r.to_string())),
        None => (s, None),
    };
    Ok(OsRule {
        id: id.to_string(),
        version,
    })
}

/// `exists:PATH`, `sha256:PATH=HEX`, `version:PATH=RANGE`, `version:PATH:KEY=RANGE`.
fn parse_file_rule(s: &str) -> Result<FileRule, String> {
    let bad = || {
        format!("{s:?}: expected exists:PATH, sha256:PATH=HEX, version:PATH=RANGE or version:PATH:KEY=RANGE")
    };
    let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
    let rule = |path: &str| FileRule {
        path: path.to_string(),
        sha256: None,
        version: None,
        key: None,
    };
    match kind {
        "exists" => Ok(rule(rest)),
        "sha256" => {
            let (path, hex) = rest.split_once('=').ok_or_else(bad)?;
            Ok(FileRule {
                sha256: Some(hex.to_ascii_lowercase()),
                ..rule(path)
            })
        }
        "version" => {
            let (path, range) = rest.split_once('=').ok_or_else(bad)?;
            let (path, key) = match path.rsplit_once(':') {
                Some((p, k)) => (p, Some(k.to_string())),
                None => (path, None),
            };
            Ok(FileRule {
                version: Some(range.to_string()),
                key,
                ..rule(path)
            })
        }
        _ => Err(bad()),
    }
}

fn parse_category(s: &str) -> Result<Category, String> {
    let (id, name) = s.split_once('=').ok_or("expected UUID=NAME")?;
    Ok(Category {
        id: id.parse().map_err(|_| format!("{id:?} is not a UUID"))?,
        name: name.to_string(),
    })
}

impl AddArgs {
    /// The update these flags describe; with `--from-deb`, the directory holding its
    /// converted payload (keep it until the update is added) and what the package holds
    /// that devices will not do.
    fn to_update(
        &self,
    ) -> Result<(NewUpdate, Option<tempfile::TempDir>, Vec<String>), PublishError> {
        if let Some(m) = &self.manifest {
            return Ok((Manifest::load(m)?, None, Vec::new()));
        }
        if let Some(deb) = &self.from_deb {
            return self.deb_update(deb);
        }
        self.update_of(self.title.clone(), self.payload.clone(), self.handler)
            .map(|u| (u, None, Vec::new()))
    }

    fn deb_update(
        &self,
        deb: &std::path::Path,
    ) -> Result<(NewUpdate, Option<tempfile::TempDir>, Vec<String>), PublishError> {
        let work = tempfile::tempdir()
            .map_err(|e| PublishError::Invalid(format!("a temporary directory: {e}")))?;
        let pkg = upkeep_publish::deb::read(deb, work.path())?;
        let title = self.title.clone().unwrap_or_else(|| pkg.package.clone());
        let mut u = self.update_of(
            Some(title),
            Some(pkg.payload.clone()),
            Some(HandlerKind::Files),
        )?;
        let m = &mut u.metadata;
        m.version = Some(pkg.version.clone());
        let mut notes = Vec::new();
        if !pkg.maintainer_scripts.is_empty() {
            notes.push(format!(
                "{} {}: its maintainer scripts ({}) are not run by upkeep; what they do (users, services, alternatives, triggers) does not happen on devices",
                pkg.package,
                pkg.version,
                pkg.maintainer_scripts.join(", ")
            ));
        }
        if m.description.is_empty() {
            m.description = pkg.description.clone();
            if !pkg.maintainer_scripts.is_empty() {
                m.description.push_str(&format!(
                    "\n\nFrom the Debian package {} {} ({}); its maintainer scripts ({}) are not run.",
                    pkg.package,
                    pkg.version,
                    pkg.architecture,
                    pkg.maintainer_scripts.join(", ")
                ));
            }
        }
        if m.applicability.architectures.is_empty() {
            m.applicability.architectures = pkg.machines.clone();
        }
        for p in &pkg.setid_paths {
            if !m.setid_paths.contains(p) {
                m.setid_paths.push(p.clone());
            }
        }
        if !pkg.setid_paths.is_empty() {
            notes.push(format!(
                "{}: set-id files declared as the package has them: {}",
                pkg.package,
                pkg.setid_paths.join(", ")
            ));
        }
        m.installed_size = m.installed_size.or(Some(pkg.installed_size));
        Ok((u, Some(work), notes))
    }

    fn update_of(
        &self,
        title: Option<String>,
        payload: Option<PathBuf>,
        handler: Option<HandlerKind>,
    ) -> Result<NewUpdate, PublishError> {
        let (Some(title), Some(payload), Some(handler)) = (title, payload, handler) else {
            return Err(PublishError::Invalid(
                "--title, --payload and --handler are required".into(),
            ));
        };
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4();
                if !self.json {
                    println!("Generated update id {id} (pass it as --id for the next revision)");
                }
                id
            }
        };
        let mut m = UpdateMetadata::new(id, title, "placeholder");
        m.revision = self.revision;
        m.description = self.description.clone();
        m.release_notes = self.release_notes.clone();
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
                m.takes_over_dpkg = self.takes_over_dpkg.clone();
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
        m.applicability = upkeep::Applicability {
            architectures: self.arch.clone(),
            os: self.os.clone(),
            min_agent_version: self.min_agent_version.clone(),
            prerequisites: self.requires.clone(),
            installed_if: self.installed_if.clone(),
            applicable_if: self.applicable_if.clone(),
        };
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

/// A `command` update's payload must be runnable (`#!` or ELF). A `files` update's
/// payloads are checked as every device will check them — the same
/// function (`upkeep_install::files::inspect`) — so that what devices would refuse is
/// refused here, with the reason; and its `installed_size` is filled in when not given.
fn check_files_payloads(update: &mut NewUpdate, json: bool) -> Result<(), Exit> {
    let refuse = |message: &str| {
        if json {
            eprintln!(
                "{}",
                serde_json::json!({ "error": crate::output::error_json(message, upkeep::HResult::WU_E_UH_INSTALLERFAILURE) })
            );
        } else {
            crate::logs::error!("refused: {message}");
        }
        Exit::Usage
    };
    if let Handler::Command { .. } = update.metadata.handler {
        // The command handler's payload must be something it can run.
        if let ContentSource::File(p) = &update.payload {
            upkeep_install::command::check_executable(p).map_err(|e| refuse(&e.message))?;
        }
        return Ok(());
    }
    let mut payloads = Vec::new();
    for src in std::iter::once(&update.payload).chain(&update.extra_content) {
        let ContentSource::File(path) = src else {
            continue;
        };
        let length = upkeep_fs::metadata(path)
            .map_err(|e| {
                crate::logs::error!("{e}");
                Exit::Usage
            })?
            .len();
        payloads.push(upkeep_install::files::Payload {
            path: path.clone(),
            length,
            hashes: None,
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
            Err(refuse(&format!(
                "{}{hint}; devices would refuse this payload",
                e.message
            )))
        }
    }
}

/// Moves `role`'s key from the repository into `off` (created 0700).
fn move_key_offline(dir: &std::path::Path, off: &std::path::Path, role: &str) -> Result<(), Exit> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: upkeep_fs::PathError| {
        crate::logs::error!("{e}");
        Exit::Failure
    };
    upkeep_fs::create_dir_all(off).map_err(err)?;
    upkeep_fs::set_permissions(off, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    let (from, to) = (
        dir.join(format!("keys/{role}.json")),
        off.join(format!("{role}.json")),
    );
    let data = upkeep_fs::read(&from).map_err(err)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = upkeep_fs::open_with(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600),
            &to,
        )
        .map_err(err)?;
        f.write_all(&data).map_err(|e| err(upkeep_fs::at(&to)(e)))?;
        f.sync_all().map_err(|e| err(upkeep_fs::at(&to)(e)))?;
    }
    upkeep_fs::remove_file(&from).map_err(err)
}

/// Reports a publisher error (as one JSON line with `json`) and picks the exit code.
fn fail_as(json: bool) -> impl Fn(PublishError) -> Exit {
    move |e| {
        let (exit, code) = match e {
            PublishError::Invalid(_) | PublishError::UnknownUpdate(_) => {
                (Exit::Usage, upkeep::HResult::E_INVALIDARG)
            }
            _ => (Exit::Failure, upkeep::HResult::E_FAIL),
        };
        if json {
            eprintln!(
                "{}",
                serde_json::json!({ "error": crate::output::error_json(&e.to_string(), code) })
            );
        } else {
            crate::logs::error!("{e}");
        }
        exit
    }
}

/// The roles a publish signed, as JSON.
fn roles_json(roles: &[(String, u64)]) -> serde_json::Value {
    roles
        .iter()
        .map(|(r, v)| serde_json::json!({"role": r, "version": v}))
        .collect()
}

pub fn run(cmd: RepoCommand) -> Result<Exit, Exit> {
    match cmd {
        RepoCommand::Init {
            dir,
            bins,
            lifetimes,
            root_keys,
            offline_targets_key,
            json,
        } => {
            let fail = fail_as(json);
            let mut config = RepositoryConfig {
                bins: bins.unwrap_or(0),
                ..Default::default()
            };
            lifetimes.apply(&mut config);
            let repo = Repository::init(&dir, InitOptions { config }).map_err(&fail)?;
            if json {
                if let Some(off) = &root_keys {
                    move_key_offline(&dir, off, "root")?;
                    if offline_targets_key {
                        move_key_offline(&dir, off, "targets")?;
                    }
                }
                let c = repo.config();
                println!(
                    "{}",
                    serde_json::json!({
                        "dir": dir,
                        "trusted_root": repo.root_path(),
                        "keys": dir.join("keys"),
                        "offline_keys": root_keys,
                        "lifetimes_secs": {
                            "root": c.root_expiry_secs,
                            "targets": c.targets_expiry_secs,
                            "snapshot": c.snapshot_expiry_secs,
                            "timestamp": c.timestamp_expiry_secs,
                        },
                    })
                );
                return Ok(Exit::Success);
            }
            println!("Created repository {}", dir.display());
            println!("  trusted root for clients: {}", repo.root_path().display());
            println!("  keys (keep them private): {}", dir.join("keys").display());
            let c = repo.config();
            let days = |secs: u64| secs as f64 / 86_400.0;
            println!(
                "  lifetimes (repository.toml): root {}d, targets {}d, snapshot {}d, timestamp {}d — run `upkeep repo publish` more often than every {}d (a timer: see the README); `upkeep repo status` says what is due",
                days(c.root_expiry_secs),
                days(c.targets_expiry_secs),
                days(c.snapshot_expiry_secs),
                days(c.timestamp_expiry_secs),
                days(c.timestamp_expiry_secs * 3 / 4),
            );
            if let Some(off) = root_keys {
                move_key_offline(&dir, &off, "root")?;
                if offline_targets_key {
                    move_key_offline(&dir, &off, "targets")?;
                }
                println!(
                    "  root key (offline; needed to renew or rotate): {}",
                    off.join("root.json").display()
                );
            }
            Ok(Exit::Success)
        }
        RepoCommand::Add(args) => {
            let fail = fail_as(args.json);
            let (mut update, _work, notes) = args.to_update().map_err(&fail)?;
            check_files_payloads(&mut update, args.json)?;
            let (id, title) = (update.metadata.id, update.metadata.title.clone());
            let mut repo =
                Repository::open_with_keys(&args.dir, args.root_keys.as_deref()).map_err(&fail)?;
            let report = repo
                .add_updates_with(vec![update], args.force)
                .map_err(&fail)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": id,
                        "title": title,
                        "updates": report.updates,
                        "roles": roles_json(&report.roles),
                        "warnings": notes.iter().chain(&report.warnings).collect::<Vec<_>>(),
                    })
                );
                return Ok(Exit::Success);
            }
            for w in notes.iter().chain(&report.warnings) {
                crate::logs::warning!("{w}");
            }
            println!(
                "Added {id} \"{}\"; the repository has {} update(s)",
                crate::output::t(&title),
                report.updates
            );
            Ok(Exit::Success)
        }
        RepoCommand::Remove {
            dir,
            id,
            root_keys,
            json,
        } => {
            let fail = fail_as(json);
            let mut repo = Repository::open_with_keys(&dir, root_keys.as_deref()).map_err(&fail)?;
            let report = repo.remove_update(id).map_err(&fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "updates": report.updates, "roles": roles_json(&report.roles), "warnings": report.warnings})
                );
                return Ok(Exit::Success);
            }
            for w in &report.warnings {
                crate::logs::warning!("{w}");
            }
            println!(
                "Removed {id}; the repository has {} update(s)",
                report.updates
            );
            Ok(Exit::Success)
        }
        RepoCommand::Publish {
            dir,
            lifetimes,
            root_keys,
            json,
        } => {
            let fail = fail_as(json);
            let mut repo = Repository::open_with_keys(&dir, root_keys.as_deref()).map_err(&fail)?;
            let mut config = repo.config().clone();
            if lifetimes.apply(&mut config) {
                repo.set_config(config).map_err(&fail)?;
            }
            let report = repo.publish().map_err(&fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"updates": report.updates, "roles": roles_json(&report.roles), "warnings": report.warnings})
                );
                return Ok(Exit::Success);
            }
            for w in &report.warnings {
                crate::logs::warning!("{w}");
            }
            for (role, v) in &report.roles {
                println!("  {role} v{v}");
            }
            println!("Published {} update(s)", report.updates);
            Ok(Exit::Success)
        }
        RepoCommand::RotateKey {
            dir,
            role,
            root_keys,
            json,
        } => {
            let fail = fail_as(json);
            let mut repo = Repository::open_with_keys(&dir, root_keys.as_deref()).map_err(&fail)?;
            let report = repo.rotate_key(&role).map_err(&fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"rotated": role, "roles": roles_json(&report.roles)})
                );
                return Ok(Exit::Success);
            }
            for (r, v) in &report.roles {
                println!("  {r} v{v}");
            }
            println!(
                "Rotated the {role} key; the old one is kept in {}",
                report
                    .retired_key
                    .as_deref()
                    .unwrap_or(&dir.join("keys/retired"))
                    .display()
            );
            Ok(Exit::Success)
        }
        RepoCommand::Prune { dir, keep, json } => {
            let fail = fail_as(json);
            let mut repo = Repository::open(&dir).map_err(&fail)?;
            let r = repo.prune(keep as usize).map_err(&fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "metadata_removed": r.metadata_removed,
                        "targets_removed": r.targets_removed,
                        "bytes_removed": r.bytes_removed,
                        "kept_snapshots": keep,
                    })
                );
                return Ok(Exit::Success);
            }
            println!(
                "Removed {} metadata file(s) and {} content file(s) ({} bytes); kept what the newest {keep} snapshot(s) refer to",
                r.metadata_removed, r.targets_removed, r.bytes_removed
            );
            Ok(Exit::Success)
        }
        RepoCommand::Status {
            dir,
            json,
            root_keys,
        } => {
            let fail = fail_as(json);
            let repo = Repository::open_with_keys(&dir, root_keys.as_deref()).map_err(&fail)?;
            let roles = repo.status().map_err(&fail)?;
            let expired = roles.iter().any(|r| r.expired);
            let due = roles.iter().any(|r| r.due);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "roles": roles,
                        "due": due,
                        "expired": expired,
                    })
                );
            } else {
                println!(
                    "{:<10} {:>7}  {:<20}  {:<20}  {:>9}  keys",
                    "ROLE", "VERSION", "EXPIRES", "RENEW FROM", "THRESHOLD"
                );
                for r in &roles {
                    let ids: Vec<String> = r
                        .keyids
                        .iter()
                        .map(|k| k[..16.min(k.len())].to_string())
                        .collect();
                    println!(
                        "{:<10} {:>7}  {:<20}  {:<20}  {:>9}  {}{}{}",
                        r.role,
                        r.version,
                        r.expires.strftime("%Y-%m-%d %H:%M:%S"),
                        r.renew_from.strftime("%Y-%m-%d %H:%M:%S"),
                        r.threshold,
                        ids.join(","),
                        if r.key_present { "" } else { " (key offline)" },
                        if r.expired {
                            "  EXPIRED"
                        } else if r.due {
                            "  renewal due"
                        } else {
                            ""
                        }
                    );
                }
                if expired {
                    crate::logs::error!("a role has expired: clients refuse this repository until `upkeep repo publish` renews it");
                } else if due {
                    crate::logs::warning!(
                        "a role expires within its margin: run `upkeep repo publish`"
                    );
                }
            }
            Ok(if expired {
                Exit::Failure
            } else if due {
                Exit::Partial
            } else {
                Exit::Success
            })
        }
        RepoCommand::Bundle {
            dir,
            out,
            criteria,
            expires,
            json,
        } => {
            let fail = fail_as(json);
            let mut repo = Repository::open(&dir).map_err(&fail)?;
            let updates = repo.updates().map_err(&fail)?;
            let ids: std::collections::BTreeSet<uuid::Uuid> = match &criteria {
                None => updates.keys().copied().collect(),
                Some(c) => {
                    let c = upkeep::criteria::Criteria::parse(c)
                        .map_err(|e| Exit::from_error(&upkeep::Error::from(e), json))?;
                    updates
                        .values()
                        .filter(|m| {
                            c.matches(&upkeep::Update::new(
                                (*m).clone(),
                                Vec::new(),
                                None,
                                None,
                                upkeep::UpdateState::default(),
                            ))
                        })
                        .map(|m| m.id)
                        .collect()
                }
            };
            if ids.is_empty() {
                return Err(fail(PublishError::Invalid(
                    "no update matches: the bundle would be empty".into(),
                )));
            }
            let r = repo.bundle(&out, &ids, expires).map_err(&fail)?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("JSON"));
            } else {
                for w in &r.warnings {
                    crate::logs::warning!("{w}");
                }
                println!(
                    "Wrote {}: {} update(s), {} file(s), {}; version {}, valid until {}. On a device: upkeep service add NAME {} --trusted-root ROOT.json (a later bundle: upkeep service update NAME FILE)",
                    out.display(),
                    r.updates,
                    r.files,
                    crate::output::human_bytes(r.bytes),
                    r.version,
                    r.expires,
                    out.display()
                );
                if let Some((_, v)) = r.published.iter().find(|(role, _)| role == "timestamp") {
                    println!(
                        "The repository was published again (timestamp v{v}), past the bundle: devices that used it go back online without a rollback."
                    );
                }
            }
            Ok(Exit::Success)
        }
        RepoCommand::List { dir, json } => {
            let fail = fail_as(json);
            let repo = Repository::open(&dir).map_err(&fail)?;
            let updates = repo.updates().map_err(&fail)?;
            if json {
                let list: Vec<_> = updates
                    .iter()
                    .map(|(id, m)| serde_json::json!({"id": id, "revision": m.revision, "title": m.title}))
                    .collect();
                println!("{}", serde_json::json!({ "updates": list }));
                return Ok(Exit::Success);
            }
            for (id, m) in updates {
                println!("{id}  r{}  {}", m.revision, crate::output::t(&m.title));
            }
            Ok(Exit::Success)
        }
        RepoCommand::Serve { dir, listen } => {
            if !dir.join("metadata").join("timestamp.json").is_file() {
                crate::logs::error!("{} is not a published repository", dir.display());
                return Err(Exit::Usage);
            }
            let server = upkeep_publish::serve::Server::start(
                listen,
                upkeep_publish::serve::repository_mounts(&dir),
            )
            .map_err(|e| {
                crate::logs::error!("cannot listen on {listen}: {e}");
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
