//! The signed update metadata schema, and the caller-facing `Update` and `UpdateCollection`.
//!
//! [`UpdateMetadata`] is what a publisher writes into the `custom.upkeep` field of an update's
//! first content target (see `docs/repository-format.md`). [`Update`] wraps it together with
//! the verified content files and the per-machine state seen when the search ran, behind an
//! `Arc`, so cloning is cheap.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::applicability::Applicability;
use crate::{DeploymentAction, InstallationImpact, InstallationRebootBehavior, UpdateType};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// WUA's `IUpdateIdentity`: the update's id and its revision number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UpdateIdentity {
    /// The update id (a UUID).
    pub update_id: Uuid,
    /// The revision number; a larger revision replaces a smaller one.
    pub revision_number: u32,
}

impl fmt::Display for UpdateIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} r{}", self.update_id, self.revision_number)
    }
}

/// A category an update belongs to (WUA's `ICategory`: id and name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Category {
    /// The category id (a UUID).
    pub id: Uuid,
    /// The display name.
    pub name: String,
}

/// WUA's `IInstallationBehavior`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstallationBehavior {
    /// How much the installation affects the machine.
    pub impact: InstallationImpact,
    /// Whether a restart is needed afterwards.
    pub reboot_behavior: InstallationRebootBehavior,
    /// Whether the installation may ask the user for input.
    pub can_request_user_input: bool,
    /// Whether the installation needs the network.
    pub requires_network_connectivity: bool,
}

/// How an update's content is applied to the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Handler {
    /// A tar, tar.zst or tar.gz payload whose entries are placed under the install root.
    Files,
    /// An executable from the payload, run with declared arguments.
    Command {
        /// Arguments for installation.
        #[serde(default)]
        arguments: Vec<String>,
        /// Arguments for uninstallation; an update without them cannot be uninstalled by
        /// this handler.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uninstall_arguments: Option<Vec<String>>,
        /// How long the command may run, in seconds.
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
        /// Exit codes that mean success (default `[0]`).
        #[serde(default = "default_success_codes")]
        success_exit_codes: Vec<i64>,
        /// Exit codes that mean success with a restart required (default `[3010, 1641]`,
        /// as Windows installers and Intune's return-code table use them; a Linux exit
        /// status has 8 bits, so a script declares its own, e.g. `[194]`).
        #[serde(default = "default_reboot_codes")]
        reboot_exit_codes: Vec<i64>,
    },
}

fn default_timeout() -> u64 {
    3600
}

/// The default `success_exit_codes`.
pub fn default_success_codes() -> Vec<i64> {
    vec![0]
}

/// The default `reboot_exit_codes`.
pub fn default_reboot_codes() -> Vec<i64> {
    vec![3010, 1641]
}

impl Handler {
    /// A `command` handler with these install arguments, no uninstall command, the default
    /// timeout and the default exit-code tables.
    pub fn command(arguments: Vec<String>) -> Handler {
        Handler::Command {
            arguments,
            uninstall_arguments: None,
            timeout_secs: default_timeout(),
            success_exit_codes: default_success_codes(),
            reboot_exit_codes: default_reboot_codes(),
        }
    }
}

impl Handler {
    /// The handler id as WUA's `HandlerID` reports it.
    pub fn id(&self) -> &'static str {
        match self {
            Handler::Files => "files",
            Handler::Command { .. } => "command",
        }
    }
}

/// One update's signed metadata: everything a search needs, with no content download.
///
/// Serialised into `custom.upkeep` of the update's first content target. Unknown fields are
/// ignored, so that an older agent reads a record written for a newer one (a record that an
/// older agent must not install says so with `applicability.min_agent_version`); the
/// publisher refuses unknown keys in its manifests, where they are typos.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateMetadata {
    /// Schema version; this build reads [`SCHEMA_VERSION`].
    pub schema: u32,
    /// The update id.
    pub id: Uuid,
    /// The revision number.
    pub revision: u32,
    /// Short title.
    pub title: String,
    /// The version this revision is known by (a package's version, `1.9.13p3-1+deb12u4`),
    /// shown beside the revision number, which alone orders revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Longer description; several lines are a JSON array of lines in the record (see
    /// [`crate::text`]).
    #[serde(default, with = "crate::text::multiline")]
    pub description: String,
    /// Release notes (WUA's `ReleaseNotes`), multi-line as `description` is.
    #[serde(
        default,
        with = "crate::text::multiline",
        skip_serializing_if = "String::is_empty"
    )]
    pub release_notes: String,
    /// Knowledge-base article ids, without a "KB" prefix.
    #[serde(default)]
    pub kb_article_ids: Vec<String>,
    /// Categories.
    #[serde(default)]
    pub categories: Vec<Category>,
    /// Software or Driver.
    #[serde(rename = "type", default)]
    pub update_type: UpdateType,
    /// MSRC-style severity: "Critical", "Important", "Moderate", "Low" or empty.
    #[serde(default)]
    pub severity: String,
    /// Ids of the updates this one supersedes.
    #[serde(default)]
    pub supersedes: Vec<Uuid>,
    /// Whether installation is mandatory.
    #[serde(default)]
    pub mandatory: bool,
    /// Whether a user can uninstall it.
    #[serde(default = "yes")]
    pub uninstallable: bool,
    /// Target path of the license text, if the update has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eula: Option<String>,
    /// Behaviour when installing.
    #[serde(default)]
    pub installation_behavior: InstallationBehavior,
    /// Behaviour when uninstalling (defaults to the installation behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstallation_behavior: Option<InstallationBehavior>,
    /// How content is applied.
    pub handler: Handler,
    /// Target paths of the content, the first one carrying this record.
    pub content: Vec<String>,
    /// Target path of a bootstrapper, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrapper: Option<String>,
    /// Release date (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_date: Option<jiff::Timestamp>,
    /// Install-by date (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<jiff::Timestamp>,
    /// The action the update is deployed for.
    #[serde(default)]
    pub deployment_action: DeploymentAction,
    /// Discoverable only by browsing (optional update).
    #[serde(default)]
    pub browse_only: bool,
    /// Flagged for automatic selection.
    #[serde(default)]
    pub auto_select_on_web_sites: bool,
    /// Intended for automatic deployment.
    #[serde(default = "yes")]
    pub is_assigned: bool,
    /// More-information URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_info_urls: Vec<String>,
    /// Bytes of file content the `files` payloads expand to once installed. The agent
    /// stops extracting beyond it and checks free space for it before staging; when
    /// absent, [`DEFAULT_EXPANSION`] times the payloads' size bounds the extraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_size: Option<u64>,
    /// Paths (relative to the install root, as the archive names them) that may carry
    /// set-user-id or set-group-id bits; an entry with them that is not listed is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setid_paths: Vec<String>,
    /// Debian packages whose files this update may replace where dpkg owns them in the
    /// install root (`var/lib/dpkg/info/*.list`); any other path dpkg owns is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takes_over_dpkg: Vec<String>,
    /// Which machines it applies to, its prerequisites, and how to detect it installed
    /// without the agent.
    #[serde(default, skip_serializing_if = "Applicability::is_empty")]
    pub applicability: Applicability,
}

/// Without a declared `installed_size`, payloads may expand to this many times their
/// signed size (at least [`MIN_EXPANSION_BOUND`] bytes) before extraction is refused as a
/// decompression bomb.
pub const DEFAULT_EXPANSION: u64 = 100;

/// The smallest expansion bound without a declared `installed_size` (64 MiB).
pub const MIN_EXPANSION_BOUND: u64 = 64 << 20;

fn yes() -> bool {
    true
}

/// A field of [`UpdateMetadata`] that is not acceptable, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("update {id}: {field}: {reason}")]
pub struct MetadataError {
    /// The update id (or `?` when it could not be read).
    pub id: String,
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl UpdateMetadata {
    /// A minimal valid record: the given id, revision 1, a `files` handler and one content path.
    pub fn new(id: Uuid, title: impl Into<String>, content_path: impl Into<String>) -> Self {
        UpdateMetadata {
            schema: SCHEMA_VERSION,
            id,
            revision: 1,
            title: title.into(),
            version: None,
            description: String::new(),
            release_notes: String::new(),
            kb_article_ids: Vec::new(),
            categories: Vec::new(),
            update_type: UpdateType::Software,
            severity: String::new(),
            supersedes: Vec::new(),
            mandatory: false,
            uninstallable: true,
            eula: None,
            installation_behavior: InstallationBehavior::default(),
            uninstallation_behavior: None,
            handler: Handler::Files,
            content: vec![content_path.into()],
            bootstrapper: None,
            release_date: None,
            deadline: None,
            deployment_action: DeploymentAction::Installation,
            browse_only: false,
            auto_select_on_web_sites: false,
            is_assigned: true,
            more_info_urls: Vec::new(),
            installed_size: None,
            setid_paths: Vec::new(),
            takes_over_dpkg: Vec::new(),
            applicability: Applicability::default(),
        }
    }

    /// Checks what serde cannot: schema version, non-empty title and content, sane target
    /// paths, a known severity, no self-supersedence.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let err = |field: &'static str, reason: String| MetadataError {
            id: self.id.to_string(),
            field,
            reason,
        };
        if self.schema != SCHEMA_VERSION {
            return Err(err(
                "schema",
                format!(
                    "version {} is not supported (this build reads {SCHEMA_VERSION})",
                    self.schema
                ),
            ));
        }
        if self.title.trim().is_empty() {
            return Err(err("title", "must not be empty".into()));
        }
        if self.revision == 0 {
            return Err(err("revision", "must be at least 1".into()));
        }
        if self.content.is_empty() {
            return Err(err("content", "must name at least one target".into()));
        }
        let paths = self
            .content
            .iter()
            .map(|p| ("content", p))
            .chain(self.eula.iter().map(|p| ("eula", p)))
            .chain(self.bootstrapper.iter().map(|p| ("bootstrapper", p)));
        for (field, p) in paths {
            if !is_valid_target_path(p) {
                return Err(err(
                    field,
                    format!("{p:?} is not a valid relative target path"),
                ));
            }
        }
        for p in &self.setid_paths {
            if !is_valid_target_path(p.trim_start_matches("./")) {
                return Err(err(
                    "setid_paths",
                    format!("{p:?} is not a valid relative path"),
                ));
            }
        }
        if !["", "Critical", "Important", "Moderate", "Low"].contains(&self.severity.as_str()) {
            return Err(err(
                "severity",
                format!(
                    "{:?} is not one of Critical, Important, Moderate, Low",
                    self.severity
                ),
            ));
        }
        self.applicability
            .validate()
            .map_err(|(field, reason)| err(field, reason))?;
        if self.applicability.prerequisites.contains(&self.id) {
            return Err(err(
                "applicability.prerequisites",
                "an update cannot be its own prerequisite".into(),
            ));
        }
        if self.supersedes.contains(&self.id) {
            return Err(err(
                "supersedes",
                "an update cannot supersede itself".into(),
            ));
        }
        if let Handler::Command {
            timeout_secs,
            success_exit_codes,
            reboot_exit_codes,
            ..
        } = &self.handler
        {
            if *timeout_secs == 0 {
                return Err(err("handler.timeout_secs", "must be at least 1".into()));
            }
            if success_exit_codes.is_empty() {
                return Err(err(
                    "handler.success_exit_codes",
                    "must name at least one code".into(),
                ));
            }
            if let Some(c) = success_exit_codes
                .iter()
                .find(|c| reboot_exit_codes.contains(c))
            {
                return Err(err(
                    "handler.reboot_exit_codes",
                    format!("{c} is also a success code"),
                ));
            }
        }
        Ok(())
    }

    /// Every text field as canonical JSON can carry it (see [`crate::text`]): one-line
    /// fields free of control characters, multi-line ones free of them within each line.
    /// The publisher checks it before writing anything; agents do not refuse a record for
    /// it (a non-canonical signer can escape control characters) and escape them instead
    /// wherever they print text.
    pub fn validate_text(&self) -> Result<(), MetadataError> {
        use crate::text::{check_line, check_text};
        let err = |field: &'static str, reason: String| MetadataError {
            id: self.id.to_string(),
            field,
            reason,
        };
        let mut one_line: Vec<(&'static str, &str)> =
            vec![("title", &self.title), ("severity", &self.severity)];
        one_line.extend(
            self.kb_article_ids
                .iter()
                .map(|k| ("kb_article_ids", k.as_str())),
        );
        one_line.extend(
            self.categories
                .iter()
                .map(|c| ("categories.name", c.name.as_str())),
        );
        one_line.extend(
            self.more_info_urls
                .iter()
                .map(|u| ("more_info_urls", u.as_str())),
        );
        one_line.extend(self.setid_paths.iter().map(|p| ("setid_paths", p.as_str())));
        if let Handler::Command {
            arguments,
            uninstall_arguments,
            ..
        } = &self.handler
        {
            one_line.extend(arguments.iter().map(|a| ("handler.arguments", a.as_str())));
            one_line.extend(
                uninstall_arguments
                    .iter()
                    .flatten()
                    .map(|a| ("handler.uninstall_arguments", a.as_str())),
            );
        }
        for (field, s) in one_line {
            check_line(s).map_err(|why| err(field, format!("{s:?} {why}")))?;
        }
        check_text(&self.description).map_err(|why| err("description", why))?;
        check_text(&self.release_notes).map_err(|why| err("release_notes", why))?;
        Ok(())
    }

    /// The identity (id and revision).
    pub fn identity(&self) -> UpdateIdentity {
        UpdateIdentity {
            update_id: self.id,
            revision_number: self.revision,
        }
    }
}

/// True for a relative, `/`-separated path without empty, `.` or `..` segments.
pub fn is_valid_target_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// A content file of an update, as signed in the repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentFile {
    /// The TUF target path.
    pub path: String,
    /// The signed length in bytes.
    pub length: u64,
    /// Signed hashes, algorithm → lowercase hex.
    pub hashes: crate::Hashes,
}

/// Per-machine facts about an update, as they were when the search ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateState {
    /// Installed at search time.
    pub is_installed: bool,
    /// Hidden by a user.
    pub is_hidden: bool,
    /// All content cached and verified.
    pub is_downloaded: bool,
    /// License accepted.
    pub eula_accepted: bool,
    /// A restart is needed to finish its install or uninstall.
    pub reboot_required: bool,
    /// Installed for at least one product (equals `is_installed` here).
    pub is_present: bool,
    /// The revision installed on this machine, if any: equal to the update's own revision
    /// when it is installed, lower when this update is an upgrade of what is installed.
    pub installed_revision: Option<u32>,
    /// How its applicability rules came out, for an update that has rules (boxed: a
    /// search of 100,000 updates without rules keeps its states small).
    pub applicability: Option<Box<Applied>>,
}

/// An update's applicability rules as a search evaluated them on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Why the update does not apply to this machine (the first rule that failed); `None`
    /// when it applies.
    pub not_applicable: Option<String>,
    /// Installed without the agent, as an `installed_if` rule detected it.
    pub detected: bool,
    /// Every applicability rule as it was checked, prerequisites included.
    pub checks: Vec<crate::applicability::RuleCheck>,
}

/// What the agent keeps of an installed update, so that it can be shown and uninstalled
/// after the repository removed or replaced it: the signed record and its resolved files,
/// as they were when it was installed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// The signed metadata.
    pub metadata: UpdateMetadata,
    /// The content files.
    pub content: Vec<ContentFile>,
    /// The license text's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eula: Option<ContentFile>,
    /// The bootstrapper's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrapper: Option<ContentFile>,
    /// The update service it was installed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The name of the update service that the `repository` setting configures; records
/// without a service name come from it.
pub const DEFAULT_SERVICE: &str = "default";

impl UpdateRecord {
    /// The update service it comes from ([`DEFAULT_SERVICE`] when the record names none).
    pub fn service_name(&self) -> &str {
        self.service.as_deref().unwrap_or(DEFAULT_SERVICE)
    }
}

/// What every copy of an update shares, whatever its per-machine state: the signed parts.
#[derive(Debug)]
struct Signed {
    metadata: UpdateMetadata,
    content: Vec<ContentFile>,
    eula_file: Option<ContentFile>,
    bootstrapper: Option<ContentFile>,
    /// The update service whose signed metadata it came from.
    service: Option<Arc<str>>,
}

#[derive(Debug)]
struct UpdateInner {
    /// Shared by the copies `with_state` makes (a search makes one per catalog entry).
    signed: Arc<Signed>,
    state: UpdateState,
    /// `accept_eula`, `set_is_hidden` and a finished download change these for every
    /// clone of the update.
    eula_accepted: std::sync::atomic::AtomicBool,
    hidden: std::sync::atomic::AtomicBool,
    downloaded: std::sync::atomic::AtomicBool,
}

/// An update found by a search (WUA's `IUpdate`), cheap to clone. Plain data: nothing
/// is read or written through it. The session records what changes an update's state —
/// `UpdateSession::accept_eula`, `set_hidden`, `eula_text` — and marks the value (every
/// clone) with [`mark_eula_accepted`](Self::mark_eula_accepted) and
/// [`mark_hidden`](Self::mark_hidden). It serialises as its signed record and its
/// per-machine state (`{"record": …, "state": …}`), ready to cross a bus.
#[derive(Clone, Debug)]
pub struct Update(Arc<UpdateInner>);

/// The serialised form of an [`Update`].
#[derive(Serialize, Deserialize)]
struct UpdateWire {
    record: UpdateRecord,
    state: UpdateState,
}

impl Serialize for Update {
    /// Its signed record and its state as it is now (acceptance, hiding and downloads
    /// since the search included).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut state = self.0.state.clone();
        state.eula_accepted = self
            .0
            .eula_accepted
            .load(std::sync::atomic::Ordering::SeqCst);
        state.is_hidden = self.is_hidden();
        state.is_downloaded = self.is_downloaded();
        UpdateWire {
            record: self.record(),
            state,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Update {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Update, D::Error> {
        let w = UpdateWire::deserialize(d)?;
        Ok(Update::from_record(w.record, w.state))
    }
}

impl PartialEq for Update {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.identity() == other.identity()
    }
}

impl Update {
    /// Builds an update from verified metadata, its resolved content files and its state.
    pub fn new(
        metadata: UpdateMetadata,
        content: Vec<ContentFile>,
        eula_file: Option<ContentFile>,
        bootstrapper: Option<ContentFile>,
        state: UpdateState,
    ) -> Update {
        Update::signed(metadata, content, eula_file, bootstrapper, None, state)
    }

    /// [`Update::new`] for an update as found in the signed metadata of the update service
    /// `service` (the catalog sets it; records installed from it keep it).
    pub fn signed(
        metadata: UpdateMetadata,
        content: Vec<ContentFile>,
        eula_file: Option<ContentFile>,
        bootstrapper: Option<ContentFile>,
        service: Option<Arc<str>>,
        state: UpdateState,
    ) -> Update {
        Update::from_signed(
            Arc::new(Signed {
                metadata,
                content,
                eula_file,
                bootstrapper,
                service,
            }),
            state,
        )
    }

    fn from_signed(signed: Arc<Signed>, state: UpdateState) -> Update {
        Update(Arc::new(UpdateInner {
            eula_accepted: state.eula_accepted.into(),
            hidden: state.is_hidden.into(),
            downloaded: state.is_downloaded.into(),
            signed,
            state,
        }))
    }

    /// An update from what the agent kept of it at install.
    pub fn from_record(record: UpdateRecord, state: UpdateState) -> Update {
        Update::from_signed(
            Arc::new(Signed {
                metadata: record.metadata,
                content: record.content,
                eula_file: record.eula,
                bootstrapper: record.bootstrapper,
                service: record.service.map(Arc::from),
            }),
            state,
        )
    }

    /// The name of the update service it came from (`None` for a record kept by an agent
    /// that had no services).
    pub fn service(&self) -> Option<&str> {
        self.0.signed.service.as_deref()
    }

    /// What the agent keeps of this update when it installs it.
    pub fn record(&self) -> UpdateRecord {
        UpdateRecord {
            metadata: self.0.signed.metadata.clone(),
            content: self.0.signed.content.clone(),
            eula: self.0.signed.eula_file.clone(),
            bootstrapper: self.0.signed.bootstrapper.clone(),
            service: self.0.signed.service.as_deref().map(str::to_string),
        }
    }

    /// A copy of this update with other per-machine state.
    pub fn with_state(&self, state: UpdateState) -> Update {
        Update::from_signed(self.0.signed.clone(), state)
    }

    /// Makes `eula_accepted` true for every clone of this update (the session's
    /// `accept_eula` calls it once acceptance is recorded).
    pub fn mark_eula_accepted(&self) {
        self.0
            .eula_accepted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets `IsHidden` for every clone of this update (the session's `set_hidden` calls
    /// it once the change is recorded).
    pub fn mark_hidden(&self, hidden: bool) {
        self.0
            .hidden
            .store(hidden, std::sync::atomic::Ordering::SeqCst);
    }

    /// The whole signed record.
    pub fn metadata(&self) -> &UpdateMetadata {
        &self.0.signed.metadata
    }
    /// Per-machine state at search time.
    pub fn state(&self) -> &UpdateState {
        &self.0.state
    }
    /// `Title`.
    pub fn title(&self) -> &str {
        &self.0.signed.metadata.title
    }
    /// `Description`.
    pub fn description(&self) -> &str {
        &self.0.signed.metadata.description
    }
    /// `ReleaseNotes` (empty when the record has none).
    pub fn release_notes(&self) -> &str {
        &self.0.signed.metadata.release_notes
    }
    /// `Identity`.
    pub fn identity(&self) -> UpdateIdentity {
        self.0.signed.metadata.identity()
    }
    /// `KBArticleIDs`.
    pub fn kb_article_ids(&self) -> &[String] {
        &self.0.signed.metadata.kb_article_ids
    }
    /// `Categories`.
    pub fn categories(&self) -> &[Category] {
        &self.0.signed.metadata.categories
    }
    /// `Type`.
    pub fn update_type(&self) -> UpdateType {
        self.0.signed.metadata.update_type
    }
    /// `MsrcSeverity`.
    pub fn msrc_severity(&self) -> &str {
        &self.0.signed.metadata.severity
    }
    /// `SupersededUpdateIDs`.
    pub fn superseded_update_ids(&self) -> &[Uuid] {
        &self.0.signed.metadata.supersedes
    }
    /// `IsMandatory`.
    pub fn is_mandatory(&self) -> bool {
        self.0.signed.metadata.mandatory
    }
    /// `IsUninstallable`.
    pub fn is_uninstallable(&self) -> bool {
        self.0.signed.metadata.uninstallable
    }
    /// `InstallationBehavior`.
    pub fn installation_behavior(&self) -> &InstallationBehavior {
        &self.0.signed.metadata.installation_behavior
    }
    /// `UninstallationBehavior`.
    pub fn uninstallation_behavior(&self) -> &InstallationBehavior {
        self.0
            .signed
            .metadata
            .uninstallation_behavior
            .as_ref()
            .unwrap_or(&self.0.signed.metadata.installation_behavior)
    }
    /// `HandlerID`.
    pub fn handler_id(&self) -> &'static str {
        self.0.signed.metadata.handler.id()
    }
    /// The handler and its arguments.
    pub fn handler(&self) -> &Handler {
        &self.0.signed.metadata.handler
    }
    /// `DeploymentAction`.
    pub fn deployment_action(&self) -> DeploymentAction {
        self.0.signed.metadata.deployment_action
    }
    /// `BrowseOnly`.
    pub fn browse_only(&self) -> bool {
        self.0.signed.metadata.browse_only
    }
    /// `AutoSelectOnWebSites`.
    pub fn auto_select_on_web_sites(&self) -> bool {
        self.0.signed.metadata.auto_select_on_web_sites
    }
    /// Whether the update is assigned for automatic deployment (`IsAssigned` criterion).
    pub fn is_assigned(&self) -> bool {
        self.0.signed.metadata.is_assigned
    }
    /// `Deadline`.
    pub fn deadline(&self) -> Option<jiff::Timestamp> {
        self.0.signed.metadata.deadline
    }
    /// `LastDeploymentChangeTime` (the release date).
    pub fn release_date(&self) -> Option<jiff::Timestamp> {
        self.0.signed.metadata.release_date
    }
    /// `MoreInfoUrls`.
    pub fn more_info_urls(&self) -> &[String] {
        &self.0.signed.metadata.more_info_urls
    }
    /// `DownloadContents`: the content files with their signed lengths and hashes.
    pub fn download_contents(&self) -> &[ContentFile] {
        &self.0.signed.content
    }
    /// The license text's target, if the update has a EULA.
    pub fn eula_file(&self) -> Option<&ContentFile> {
        self.0.signed.eula_file.as_ref()
    }
    /// The bootstrapper's target, if any.
    pub fn bootstrapper(&self) -> Option<&ContentFile> {
        self.0.signed.bootstrapper.as_ref()
    }
    /// `MaxDownloadSize`: all content plus the bootstrapper.
    pub fn max_download_size(&self) -> u64 {
        self.min_download_size() + self.0.signed.bootstrapper.as_ref().map_or(0, |b| b.length)
    }
    /// `MinDownloadSize`: the content files.
    pub fn min_download_size(&self) -> u64 {
        self.0.signed.content.iter().map(|c| c.length).sum()
    }
    /// `IsInstalled` (as seen when the search ran).
    pub fn is_installed(&self) -> bool {
        self.0.state.is_installed
    }
    /// `IsPresent`.
    pub fn is_present(&self) -> bool {
        self.0.state.is_present
    }
    /// `IsHidden`.
    pub fn is_hidden(&self) -> bool {
        self.0.hidden.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// `IsDownloaded`: all content is cached and verified — as the search found it, or
    /// since a download job on this update (or a clone of it) succeeded.
    pub fn is_downloaded(&self) -> bool {
        self.0.downloaded.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Records that every content file is now cached and verified (the downloader calls
    /// this when the update's download succeeds); every clone sees it.
    pub fn mark_downloaded(&self) {
        self.0
            .downloaded
            .store(true, std::sync::atomic::Ordering::SeqCst)
    }
    /// Records that cached content was found damaged and removed (the installer calls
    /// this); every clone sees it.
    pub fn mark_not_downloaded(&self) {
        self.0
            .downloaded
            .store(false, std::sync::atomic::Ordering::SeqCst)
    }
    /// The revision installed on this machine when the search ran: this update's own
    /// revision, a lower one (this update is an upgrade), or none.
    pub fn installed_revision(&self) -> Option<u32> {
        self.0.state.installed_revision
    }
    /// Whether the update applies to this machine (as the search found it). Searches
    /// return only applicable updates unless asked for all.
    pub fn is_applicable(&self) -> bool {
        self.not_applicable_reason().is_none()
    }
    /// Why it does not apply: the first rule that failed, in words.
    pub fn not_applicable_reason(&self) -> Option<&str> {
        self.0
            .state
            .applicability
            .as_ref()
            .and_then(|a| a.not_applicable.as_deref())
    }
    /// Installed without the agent (an `installed_if` rule detected it): `IsInstalled` is
    /// true but the agent owns none of its files and cannot uninstall it.
    pub fn is_detected(&self) -> bool {
        self.0
            .state
            .applicability
            .as_ref()
            .is_some_and(|a| a.detected)
    }
    /// Every applicability rule as the search checked it.
    pub fn applicability_checks(&self) -> &[crate::RuleCheck] {
        self.0
            .state
            .applicability
            .as_ref()
            .map_or(&[], |a| a.checks.as_slice())
    }
    /// Updates that must be installed before this one.
    pub fn prerequisites(&self) -> &[Uuid] {
        &self.0.signed.metadata.applicability.prerequisites
    }
    /// `EulaAccepted`; true for an update without a EULA.
    pub fn eula_accepted(&self) -> bool {
        self.0.signed.metadata.eula.is_none()
            || self
                .0
                .eula_accepted
                .load(std::sync::atomic::Ordering::SeqCst)
    }
    /// `RebootRequired`.
    pub fn reboot_required(&self) -> bool {
        self.0.state.reboot_required
    }
}

/// WUA's `IUpdateCollection`: an ordered list of updates, cheap to clone (copy on write).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpdateCollection(Arc<Vec<Update>>);

impl UpdateCollection {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }
    /// `Count`.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when `Count` is 0.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Item(i)`; `None` past the end.
    pub fn get(&self, i: usize) -> Option<&Update> {
        self.0.get(i)
    }
    /// `Add`: appends and returns the new item's index.
    pub fn push(&mut self, update: Update) -> usize {
        let v = Arc::make_mut(&mut self.0);
        v.push(update);
        v.len() - 1
    }
    /// `Insert(i, u)`; fails with the index when `i > len()`.
    pub fn insert(&mut self, i: usize, update: Update) -> Result<(), IndexError> {
        if i > self.len() {
            return Err(IndexError {
                index: i,
                len: self.len(),
            });
        }
        Arc::make_mut(&mut self.0).insert(i, update);
        Ok(())
    }
    /// `RemoveAt(i)`; fails with the index when out of range.
    pub fn remove(&mut self, i: usize) -> Result<Update, IndexError> {
        if i >= self.len() {
            return Err(IndexError {
                index: i,
                len: self.len(),
            });
        }
        Ok(Arc::make_mut(&mut self.0).remove(i))
    }
    /// `Clear`.
    pub fn clear(&mut self) {
        Arc::make_mut(&mut self.0).clear();
    }
    /// Iterates in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Update> {
        self.0.iter()
    }
    /// The updates as a slice.
    pub fn as_slice(&self) -> &[Update] {
        &self.0
    }
}

/// An index outside a collection (WUA's `WU_E_INVALIDINDEX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("index {index} is out of range for a collection of {len}")]
pub struct IndexError {
    /// The index asked for.
    pub index: usize,
    /// The collection's length.
    pub len: usize,
}

impl IndexError {
    /// The WUA code for this error.
    pub fn hresult(&self) -> crate::HResult {
        crate::HResult::WU_E_INVALIDINDEX
    }
}

impl FromIterator<Update> for UpdateCollection {
    fn from_iter<I: IntoIterator<Item = Update>>(iter: I) -> Self {
        UpdateCollection(Arc::new(iter.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a UpdateCollection {
    type Item = &'a Update;
    type IntoIter = std::slice::Iter<'a, Update>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Extend<Update> for UpdateCollection {
    fn extend<I: IntoIterator<Item = Update>>(&mut self, iter: I) {
        Arc::make_mut(&mut self.0).extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(n: u128) -> Update {
        let id = Uuid::from_u128(n);
        Update::new(
            UpdateMetadata::new(id, format!("u{n}"), format!("updates/{id}/p.tar")),
            vec![],
            None,
            None,
            UpdateState::default(),
        )
    }

    #[test]
    fn collection_is_copy_on_write() {
        let mut a: UpdateCollection = (1..=3).map(upd).collect();
        let b = a.clone();
        assert_eq!(a.push(upd(4)), 3);
        assert_eq!(a.len(), 4);
        assert_eq!(b.len(), 3);
        a.insert(0, upd(9)).unwrap();
        assert_eq!(a.get(0).unwrap().title(), "u9");
        assert_eq!(a.remove(1).unwrap().title(), "u1");
        assert_eq!(
            a.insert(99, upd(5)).unwrap_err().hresult(),
            crate::HResult::WU_E_INVALIDINDEX
        );
        assert!(a.remove(4).is_err());
        a.clear();
        assert!(a.is_empty());
        assert_eq!(
            b.iter().map(|u| u.title()).collect::<Vec<_>>(),
            ["u1", "u2", "u3"]
        );
    }

    #[test]
    fn metadata_ignores_unknown_fields_and_rejects_bad_paths() {
        let m = UpdateMetadata::new(Uuid::from_u128(1), "t", "a/b.tar");
        // A newer publisher's fields, at the top, in nested records and in the rules.
        let mut v = serde_json::to_value(&m).unwrap();
        v["colour"] = "blue".into();
        v["handler"]["future"] = 1.into();
        v["installation_behavior"] = serde_json::json!({"impact": "Minor", "new": true});
        v["applicability"] = serde_json::json!({"architectures": ["x86_64"], "gpu": "any"});
        let read: UpdateMetadata = serde_json::from_value(v).unwrap();
        assert_eq!(read.applicability.architectures, ["x86_64"]);
        assert_eq!(read.handler, Handler::Files);

        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a\\b"] {
            let mut m2 = m.clone();
            m2.content = vec![bad.to_string()];
            assert_eq!(m2.validate().unwrap_err().field, "content", "{bad:?}");
        }
        let mut m3 = m.clone();
        m3.supersedes = vec![m.id];
        assert_eq!(m3.validate().unwrap_err().field, "supersedes");
        assert!(m.validate().is_ok());
    }

    #[test]
    fn metadata_defaults_are_documented_ones() {
        let json = r#"{"schema":1,"id":"00000000-0000-0000-0000-000000000001","revision":2,
            "title":"x","handler":{"kind":"command","arguments":["-q"]},"content":["a"]}"#;
        let m: UpdateMetadata = serde_json::from_str(json).unwrap();
        assert!(m.uninstallable && m.is_assigned && !m.mandatory);
        assert_eq!(m.update_type, UpdateType::Software);
        assert_eq!(m.deployment_action, DeploymentAction::Installation);
        match m.handler {
            Handler::Command {
                timeout_secs,
                uninstall_arguments,
                success_exit_codes,
                reboot_exit_codes,
                ..
            } => {
                assert_eq!(timeout_secs, 3600);
                assert_eq!(uninstall_arguments, None);
                assert_eq!(success_exit_codes, [0]);
                assert_eq!(reboot_exit_codes, [3010, 1641]);
            }
            _ => panic!("wrong handler"),
        }
    }
}
