//! The publisher: `Repository::init`, `add_updates`, `remove_update`, `publish`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use upkeep_tuf::keys::SigningKey;
use upkeep_tuf::metadata::{
    self, Common, Delegations, MetaFile, RoleKeys, Root, Snapshot, SuccinctRoles, TargetFile,
    Targets, Timestamp, SPEC_VERSION,
};
use upkeep_types::{is_valid_target_path, UpdateMetadata};
use uuid::Uuid;

/// What went wrong while publishing. Nothing visible to clients has changed when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A file could not be read or written.
    /// (The path and its cause are said in the message; not a `source()`, so that they
    /// are said once.)
    #[error("{0}")]
    Io(upkeep_fs::PathError),
    /// The repository directory is not in the expected shape.
    #[error("{path}: {reason}")]
    Repository {
        /// The offending file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The update or manifest is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The update id is not in the repository.
    #[error("update {0} is not in the repository")]
    UnknownUpdate(Uuid),
    /// Another publisher holds the lock.
    #[error("{0}: another publisher is working on this repository")]
    Locked(PathBuf),
}

fn io(path: &Path, cause: std::io::Error) -> PublishError {
    PublishError::Io(upkeep_fs::at(path)(cause))
}

impl From<upkeep_fs::PathError> for PublishError {
    fn from(e: upkeep_fs::PathError) -> PublishError {
        PublishError::Io(e)
    }
}

fn repo_err(path: &Path, reason: impl Into<String>) -> PublishError {
    PublishError::Repository {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Expiry periods in seconds and the hashed-bin setting, kept in `repository.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Number of hashed bins (a power of two, 2–65536), or 0 for one flat targets role.
    #[serde(default)]
    pub bins: u32,
    /// Root lifetime, seconds.
    pub root_expiry_secs: u64,
    /// Targets (and bins) lifetime, seconds.
    pub targets_expiry_secs: u64,
    /// Snapshot lifetime, seconds.
    pub snapshot_expiry_secs: u64,
    /// Timestamp lifetime, seconds.
    pub timestamp_expiry_secs: u64,
}

const DAY: u64 = 86_400;

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            bins: 0,
            root_expiry_secs: 365 * DAY,
            targets_expiry_secs: 90 * DAY,
            snapshot_expiry_secs: 30 * DAY,
            timestamp_expiry_secs: 7 * DAY,
        }
    }
}

/// Options for [`Repository::init`].
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Settings to write.
    pub config: RepositoryConfig,
}

/// Where a content file comes from.
#[derive(Clone, Debug)]
pub enum ContentSource {
    /// A file on disk; the target takes its file name.
    File(PathBuf),
    /// Bytes in memory with a file name.
    Bytes {
        /// File name of the target.
        name: String,
        /// The content.
        data: Vec<u8>,
    },
}

impl ContentSource {
    fn name(&self) -> Result<String, PublishError> {
        let name = match self {
            ContentSource::File(p) => p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    PublishError::Invalid(format!("{}: no usable file name", p.display()))
                })?
                .to_string(),
            ContentSource::Bytes { name, .. } => name.clone(),
        };
        if name.contains('/') || !is_valid_target_path(&name) {
            return Err(PublishError::Invalid(format!(
                "{name:?} is not a usable file name"
            )));
        }
        Ok(name)
    }

    fn read(&self) -> Result<Vec<u8>, PublishError> {
        match self {
            ContentSource::File(p) => upkeep_fs::read(p).map_err(PublishError::from),
            ContentSource::Bytes { data, .. } => Ok(data.clone()),
        }
    }
}

/// An update to add: its metadata (content paths are filled in by the publisher) and its
/// files.
#[derive(Clone, Debug)]
pub struct NewUpdate {
    /// The record; `content`, `eula` and `bootstrapper` are overwritten with target paths.
    pub metadata: UpdateMetadata,
    /// The payload (first content file; it carries the record).
    pub payload: ContentSource,
    /// More content files.
    pub extra_content: Vec<ContentSource>,
    /// The license text.
    pub eula: Option<ContentSource>,
    /// A bootstrapper.
    pub bootstrapper: Option<ContentSource>,
}

/// An update manifest (`update.toml`): every field of the metadata schema plus the files.
/// Relative file paths are relative to the manifest. Unknown keys are an error, naming
/// them (agents ignore unknown fields of a record; a publisher's manifest has typos).
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The metadata fields, as in `docs/repository-format.md` (without `schema` and
    /// `content`, which the publisher fills in).
    #[serde(flatten)]
    pub fields: toml::Table,
    /// The payload file.
    pub payload: PathBuf,
    /// More content files.
    #[serde(default)]
    pub extra_content: Vec<PathBuf>,
    /// The license text file.
    #[serde(default)]
    pub eula_file: Option<PathBuf>,
    /// The bootstrapper file.
    #[serde(default)]
    pub bootstrapper_file: Option<PathBuf>,
}

impl Manifest {
    /// Reads a manifest and turns it into a [`NewUpdate`].
    pub fn load(path: &Path) -> Result<NewUpdate, PublishError> {
        let text = upkeep_fs::read_to_string(path).map_err(PublishError::from)?;
        let m: Manifest = toml::from_str(&text)
            .map_err(|e| PublishError::Invalid(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut fields = m.fields.clone();
        for reserved in ["schema", "content", "eula", "bootstrapper"] {
            if fields.contains_key(reserved) {
                return Err(PublishError::Invalid(format!(
                    "{}: `{reserved}` is filled in by the publisher; use payload, eula_file, bootstrapper_file",
                    path.display()
                )));
            }
        }
        fields.insert(
            "schema".into(),
            (upkeep_types::SCHEMA_VERSION as i64).into(),
        );
        fields.insert(
            "content".into(),
            toml::Value::Array(vec!["placeholder".into()]),
        );
        let json = serde_json::to_value(&fields)
            .map_err(|e| PublishError::Invalid(format!("{}: {e}", path.display())))?;
        // Agents ignore fields they do not know (records from newer publishers); here an
        // unknown key is a typo, and refused.
        let mut unknown = Vec::new();
        let metadata: UpdateMetadata =
            serde_ignored::deserialize(json, |p| unknown.push(p.to_string()))
                .map_err(|e| PublishError::Invalid(format!("{}: {e}", path.display())))?;
        if !unknown.is_empty() {
            return Err(PublishError::Invalid(format!(
                "{}: unknown key{} {} (see docs/repository-format.md)",
                path.display(),
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            )));
        }
        let file = |p: &PathBuf| ContentSource::File(base.join(p));
        Ok(NewUpdate {
            metadata,
            payload: file(&m.payload),
            extra_content: m.extra_content.iter().map(file).collect(),
            eula: m.eula_file.as_ref().map(file),
            bootstrapper: m.bootstrapper_file.as_ref().map(file),
        })
    }
}

/// What a publish changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PublishReport {
    /// Roles re-signed, with their new versions.
    pub roles: Vec<(String, u64)>,
    /// Number of targets in the repository.
    pub targets: usize,
    /// Number of updates in the repository.
    pub updates: usize,
    /// What the publisher did but wants the operator to know (a forced republish).
    pub warnings: Vec<String>,
    /// After a key rotation: the file the replaced key was kept in (beside the key it
    /// replaced, so an offline key stays offline).
    pub retired_key: Option<PathBuf>,
}

const TOP_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];
const BINS_ROLE: &str = "bins";
const BIN_PREFIX: &str = "bin";

/// A repository directory opened for publishing.
pub struct Repository {
    dir: PathBuf,
    config: RepositoryConfig,
    /// Signing keys by role; the root key (and the targets key) may be missing when they
    /// are kept offline: operations that need one fail before writing anything.
    keys: HashMap<String, SigningKey>,
    /// Where offline keys were looked for, for messages.
    offline_keys: Option<PathBuf>,
    _lock: File,
}

/// What [`Repository::prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Metadata files.
    pub metadata_removed: usize,
    /// Content files.
    pub targets_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
}

/// A role's state, as `repo status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleStatus {
    /// `root`, `timestamp`, `snapshot`, `targets`, or `bins` (every hashed bin: the
    /// highest version and the earliest expiry).
    pub role: String,
    /// The current version.
    pub version: u64,
    /// Key ids the root (or, for bins, the targets role) trusts for it.
    pub keyids: Vec<String>,
    /// Signatures needed.
    pub threshold: u64,
    /// When it expires.
    pub expires: jiff::Timestamp,
    /// From when a publish renews it (a quarter of its lifetime before it expires).
    pub renew_from: jiff::Timestamp,
    /// The renewal is due: it expires within its margin.
    pub due: bool,
    /// It has expired: clients refuse the repository until it is renewed.
    pub expired: bool,
    /// Whether this publisher holds its signing key.
    pub key_present: bool,
}

/// What to do with the root in a commit.
enum RootPlan {
    /// Renew it (the next version, same keys) if it expires within its margin.
    IfDue,
    /// Write the next version with the current keys; when the root key itself was
    /// replaced, the old one signs too (clients verify the new root with the old one).
    Rotate(Option<Box<SigningKey>>),
    /// Leave it as it is (an offline bundle carries the published root versions).
    Keep,
}

/// Where a commit writes its metadata.
enum Out {
    /// The repository's `metadata/`, with the configured lifetimes.
    Repository,
    /// An offline bundle's `metadata/` being assembled, every role valid for `expires_secs`.
    Bundle {
        metadata_dir: PathBuf,
        expires_secs: u64,
    },
}

/// The margin before expiry within which a role is renewed: a quarter of its lifetime.
fn margin(lifetime_secs: u64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs((lifetime_secs / 4) as i64)
}

#[derive(Clone)]
struct Current {
    timestamp_version: u64,
    snapshot_version: u64,
    targets: Targets,
    bins: BTreeMap<String, Targets>,
    /// Targets roles that were unreadable as written (raw control characters, from an
    /// earlier publisher) and were read leniently and repaired: they are signed again.
    repaired: std::collections::BTreeSet<String>,
    /// What the repair changed, for the report.
    repairs: Vec<String>,
}

impl Repository {
    /// Creates a repository in `dir` (which must not exist or be empty): keys, settings,
    /// root version 1 and an empty, signed catalog.
    pub fn init(dir: &Path, opts: InitOptions) -> Result<Repository, PublishError> {
        let c = &opts.config;
        if c.bins != 0 && (!c.bins.is_power_of_two() || !(2..=65536).contains(&c.bins)) {
            return Err(PublishError::Invalid(format!(
                "bins must be a power of two from 2 to 65536, not {}",
                c.bins
            )));
        }
        if let Ok(mut entries) = upkeep_fs::read_dir(dir) {
            if entries.next().is_some() {
                return Err(repo_err(dir, "exists and is not empty"));
            }
        }
        for sub in ["keys", "metadata", "targets"] {
            let p = dir.join(sub);
            upkeep_fs::create_dir_all(&p).map_err(PublishError::from)?;
        }
        set_mode(&dir.join("keys"), 0o700)?;
        let mut keys = HashMap::new();
        let mut roles: Vec<&str> = TOP_ROLES.to_vec();
        if c.bins != 0 {
            roles.push(BINS_ROLE);
        }
        for role in roles {
            let k = SigningKey::generate();
            let path = dir.join("keys").join(format!("{role}.json"));
            write_private(&path, k.to_json().as_bytes())?;
            keys.insert(role.to_string(), k);
        }
        let cfg_path = dir.join("repository.toml");
        let cfg_text =
            toml::to_string_pretty(c).map_err(|e| PublishError::Invalid(e.to_string()))?;
        upkeep_fs::write(&cfg_path, cfg_text).map_err(PublishError::from)?;
        let lock = lock(dir)?;
        let mut repo = Repository {
            dir: dir.to_path_buf(),
            config: c.clone(),
            keys,
            offline_keys: None,
            _lock: lock,
        };
        let root = repo.new_root(1)?;
        let bytes = repo.sign_role(&root, "root")?;
        let md = repo.metadata_dir();
        write_file(&md.join("1.root.json"), &bytes)?;
        write_file(&md.join("root.json"), &bytes)?;
        repo.commit(None, BTreeMap::new(), true)?;
        Ok(repo)
    }

    /// Opens an existing repository for publishing, taking its lock.
    pub fn open(dir: &Path) -> Result<Repository, PublishError> {
        Repository::open_with_keys(dir, None)
    }

    /// Opens a repository whose root (and possibly targets) key is kept offline, in
    /// `offline_keys` (as `root.json`, `targets.json`). Operations that do not need an
    /// offline key never read it; one that needs a missing key fails before writing.
    pub fn open_with_keys(
        dir: &Path,
        offline_keys: Option<&Path>,
    ) -> Result<Repository, PublishError> {
        let cfg_path = dir.join("repository.toml");
        let text = upkeep_fs::read_to_string(&cfg_path).map_err(PublishError::from)?;
        let config: RepositoryConfig =
            toml::from_str(&text).map_err(|e| repo_err(&cfg_path, e.to_string()))?;
        let lock = lock(dir)?;
        let mut keys = HashMap::new();
        let mut roles: Vec<&str> = TOP_ROLES.to_vec();
        if config.bins != 0 {
            roles.push(BINS_ROLE);
        }
        for role in roles {
            let mut path = dir.join("keys").join(format!("{role}.json"));
            if !path.exists() {
                match offline_keys.map(|d| d.join(format!("{role}.json"))) {
                    Some(p) if p.exists() => path = p,
                    // The root and targets keys may be kept offline.
                    _ if role == "root" || role == "targets" => continue,
                    _ => {}
                }
            }
            let text = upkeep_fs::read_to_string(&path).map_err(PublishError::from)?;
            let k = SigningKey::from_json(&text).map_err(|e| repo_err(&path, e))?;
            keys.insert(role.to_string(), k);
        }
        Ok(Repository {
            dir: dir.to_path_buf(),
            config,
            keys,
            offline_keys: offline_keys.map(Path::to_path_buf),
            _lock: lock,
        })
    }

    /// Changes the settings (`repository.toml`); the hashed-bin setting cannot change.
    /// Lifetimes take effect at the next signing of each role.
    pub fn set_config(&mut self, config: RepositoryConfig) -> Result<(), PublishError> {
        if config.bins != self.config.bins {
            return Err(PublishError::Invalid(
                "the number of hashed bins of a repository cannot change".into(),
            ));
        }
        for (name, secs) in [
            ("root", config.root_expiry_secs),
            ("targets", config.targets_expiry_secs),
            ("snapshot", config.snapshot_expiry_secs),
            ("timestamp", config.timestamp_expiry_secs),
        ] {
            if secs < 60 {
                return Err(PublishError::Invalid(format!(
                    "the {name} lifetime of {secs} s is too short (at least 60 s)"
                )));
            }
        }
        let path = self.dir.join("repository.toml");
        let text =
            toml::to_string_pretty(&config).map_err(|e| PublishError::Invalid(e.to_string()))?;
        write_file(&path, text.as_bytes())?;
        self.config = config;
        Ok(())
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The settings.
    pub fn config(&self) -> &RepositoryConfig {
        &self.config
    }
    /// The metadata directory (served at `<base>/metadata/`).
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }
    /// The content directory (served at `<base>/targets/`).
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }
    /// The current root, to hand to clients as their trusted root.
    pub fn root_path(&self) -> PathBuf {
        self.metadata_dir().join("root.json")
    }

    fn key(&self, role: &str) -> Result<&SigningKey, PublishError> {
        self.keys.get(role).ok_or_else(|| {
            PublishError::Invalid(format!(
                "the {role} key is needed for this and is not in {}{}: pass the directory that holds it with --root-keys DIR",
                self.dir.join("keys").display(),
                self.offline_keys
                    .as_ref()
                    .map(|d| format!(" or {}", d.display()))
                    .unwrap_or_default()
            ))
        })
    }

    /// Fails, naming the key, unless every key the next commit needs is at hand — checked
    /// before anything (content included) is written. `renew`: every role is signed again.
    fn check_keys(&self, renew: bool) -> Result<(), PublishError> {
        self.key("snapshot")?;
        self.key("timestamp")?;
        let cur = self.current()?;
        if self.config.bins == 0 {
            self.key("targets")?;
        } else {
            self.key(BINS_ROLE)?;
            if renew || self.due("targets", &cur.targets.common.expires) {
                self.key("targets")?;
            }
        }
        if self.due("root", &self.root()?.common.expires) {
            self.key("root")?;
        }
        Ok(())
    }

    /// The lifetime of `role`, seconds.
    fn lifetime(&self, role: &str) -> u64 {
        match role {
            "root" => self.config.root_expiry_secs,
            "timestamp" => self.config.timestamp_expiry_secs,
            "snapshot" => self.config.snapshot_expiry_secs,
            _ => self.config.targets_expiry_secs,
        }
    }

    /// Whether metadata of `role` expiring at `expires` is due for renewal.
    fn due(&self, role: &str, expires: &str) -> bool {
        metadata::parse_expires(expires).map_or(true, |t| {
            t.duration_since(jiff::Timestamp::now()) < margin(self.lifetime(role))
        })
    }

    /// The current root.
    fn root(&self) -> Result<Root, PublishError> {
        self.read_meta("root.json")
    }

    /// Each role's version, keys, threshold and expiry, and whether it is due.
    pub fn status(&self) -> Result<Vec<RoleStatus>, PublishError> {
        let root = self.root()?;
        let cur = self.current()?;
        let ts: Timestamp = self.read_meta("timestamp.json")?;
        let snap: Snapshot = self.read_meta(&format!("{}.snapshot.json", cur.snapshot_version))?;
        let now = jiff::Timestamp::now();
        let mut out = Vec::new();
        let mut push = |role: &str, common: &Common, keyids: Vec<String>, threshold: u64| {
            let expires =
                metadata::parse_expires(&common.expires).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
            let key_role = if role == "bins" { BINS_ROLE } else { role };
            out.push(RoleStatus {
                role: role.to_string(),
                version: common.version,
                keyids,
                threshold,
                expires,
                renew_from: expires
                    .checked_sub(margin(self.lifetime(role)))
                    .unwrap_or(expires),
                due: self.due(role, &common.expires),
                expired: expires <= now,
                key_present: self.keys.contains_key(key_role),
            });
        };
        for (role, common) in [
            ("root", &root.common),
            ("timestamp", &ts.common),
            ("snapshot", &snap.common),
            ("targets", &cur.targets.common),
        ] {
            let rk = root.roles.get(role);
            push(
                role,
                common,
                rk.map(|r| r.keyids.clone()).unwrap_or_default(),
                rk.map_or(0, |r| r.threshold),
            );
        }
        if let Some(first) = cur
            .bins
            .values()
            .min_by_key(|b| metadata::parse_expires(&b.common.expires).ok())
        {
            let succinct = cur
                .targets
                .delegations
                .as_ref()
                .and_then(|d| d.succinct_roles.as_ref());
            let mut common = first.common.clone();
            common.version = cur
                .bins
                .values()
                .map(|b| b.common.version)
                .max()
                .unwrap_or(0);
            push(
                "bins",
                &common,
                succinct.map(|s| s.keyids.clone()).unwrap_or_default(),
                succinct.map_or(0, |s| s.threshold),
            );
        }
        Ok(out)
    }

    /// Removes metadata versions and content files that none of the newest `keep`
    /// snapshots references (at least the current one), so that a client mid-refresh —
    /// which read a timestamp a moment ago — still finds what it was told about. Root
    /// versions are never removed (clients walk them), nor `timestamp.json`/`root.json`.
    pub fn prune(&mut self, keep: usize) -> Result<PruneReport, PublishError> {
        let keep = keep.max(1);
        let md = self.metadata_dir();
        let listing = |d: &Path| -> Result<Vec<String>, PublishError> {
            let mut v = Vec::new();
            for e in upkeep_fs::read_dir(d).map_err(PublishError::from)? {
                let e = e.map_err(|e| io(d, e))?;
                if let Ok(n) = e.file_name().into_string() {
                    v.push(n);
                }
            }
            Ok(v)
        };
        let versioned = |n: &str| -> Option<(u64, String)> {
            let (v, rest) = n.split_once('.')?;
            Some((v.parse().ok()?, rest.to_string()))
        };
        let current = self.current()?.snapshot_version;
        let mut snaps: Vec<u64> = listing(&md)?
            .iter()
            .filter_map(|n| versioned(n))
            .filter(|(v, r)| r == "snapshot.json" && *v <= current)
            .map(|(v, _)| v)
            .collect();
        snaps.sort_unstable_by(|a, b| b.cmp(a));
        snaps.truncate(keep);
        // What the kept snapshots reference: metadata files, then content files.
        let mut keep_md: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut keep_content: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
        for v in &snaps {
            let name = format!("{v}.snapshot.json");
            let snap: Snapshot = self.read_meta(&name)?;
            keep_md.insert(name);
            for (role_file, info) in &snap.meta {
                let role = role_file.strip_suffix(".json").unwrap_or(role_file);
                let file = format!("{}.{}.json", info.version, upkeep_tuf::encode_role(role));
                let t: Targets = self.read_meta(&file)?;
                for (path, tf) in &t.targets {
                    let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
                    if let Some(h) = tf.hashes.get("sha256") {
                        keep_content
                            .insert(self.targets_dir().join(dir).join(format!("{h}.{base}")));
                    }
                }
                keep_md.insert(file);
            }
        }
        let mut report = PruneReport::default();
        for n in listing(&md)? {
            let Some((_, rest)) = versioned(&n) else {
                continue; // timestamp.json, root.json
            };
            if rest == "root.json" || keep_md.contains(&n) || !n.ends_with(".json") {
                continue;
            }
            let p = md.join(&n);
            upkeep_fs::remove_file(&p).map_err(PublishError::from)?;
            report.metadata_removed += 1;
        }
        // Content: every file under targets/ that no kept role lists.
        let mut stack = vec![self.targets_dir()];
        let mut dirs = Vec::new();
        while let Some(d) = stack.pop() {
            for e in upkeep_fs::read_dir(&d).map_err(PublishError::from)? {
                let e = e.map_err(|e| io(&d, e))?;
                let p = e.path();
                let ft = e.file_type().map_err(|e| io(&p, e))?;
                if ft.is_dir() {
                    stack.push(p.clone());
                    dirs.push(p);
                } else if !keep_content.contains(&p) {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    upkeep_fs::remove_file(&p).map_err(PublishError::from)?;
                    report.targets_removed += 1;
                    report.bytes_removed += len;
                }
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = upkeep_fs::remove_dir(d); // only the empty ones go
        }
        syncfs(&md)?;
        Ok(report)
    }

    /// Replaces `role`'s signing key (root, targets, snapshot, timestamp, or bins) and
    /// publishes so that clients follow: the next root lists the new key (signed by the
    /// old root key too when the root key is the one replaced), and every role is signed
    /// again. The old key is kept in `retired/` beside it (in `keys/`, or in the offline
    /// directory) until the operator removes it.
    pub fn rotate_key(&mut self, role: &str) -> Result<PublishReport, PublishError> {
        let known = TOP_ROLES.contains(&role) || (role == BINS_ROLE && self.config.bins != 0);
        if !known {
            return Err(PublishError::Invalid(format!(
                "no role {role:?} to rotate: root, targets, snapshot, timestamp{}",
                if self.config.bins != 0 {
                    " or bins"
                } else {
                    ""
                }
            )));
        }
        // Every key the publish needs, before anything is written.
        self.key("root")?;
        self.key(role)?;
        let cur = self.current()?;
        let targets = self.targets()?;
        let key_path = self.key_path(role);
        let old = self.keys.remove(role).expect("checked above");
        // Beside the key it replaces: an offline key stays offline when retired.
        let retired = key_path
            .parent()
            .map_or_else(|| self.dir.join("keys"), Path::to_path_buf)
            .join("retired");
        upkeep_fs::create_dir_all(&retired).map_err(PublishError::from)?;
        set_mode(&retired, 0o700)?;
        let kept = retired.join(format!("{role}-{}.json", &old.key_id()[..16]));
        if !kept.exists() {
            write_private(&kept, old.to_json().as_bytes())?;
        }
        let new = SigningKey::generate();
        let tmp = key_path.with_extension("json.new");
        let _ = upkeep_fs::remove_file(&tmp);
        write_private(&tmp, new.to_json().as_bytes())?;
        upkeep_fs::rename(&tmp, &key_path).map_err(PublishError::from)?;
        self.keys.insert(role.to_string(), new);
        let plan = match role {
            BINS_ROLE => RootPlan::IfDue,
            "root" => RootPlan::Rotate(Some(Box::new(old))),
            _ => RootPlan::Rotate(None),
        };
        let mut report = self.commit_with(Some(&cur), targets, true, plan, &Out::Repository)?;
        report.retired_key = Some(kept);
        Ok(report)
    }

    /// Where `role`'s key lives: `keys/<role>.json`, or the offline directory when it is
    /// there instead.
    fn key_path(&self, role: &str) -> PathBuf {
        let local = self.dir.join("keys").join(format!("{role}.json"));
        match &self.offline_keys {
            Some(d) if !local.exists() && d.join(format!("{role}.json")).exists() => {
                d.join(format!("{role}.json"))
            }
            _ => local,
        }
    }

    fn new_root(&self, version: u64) -> Result<Root, PublishError> {
        let mut keys = HashMap::new();
        let mut roles = HashMap::new();
        for role in TOP_ROLES {
            let k = self.key(role)?;
            keys.insert(k.key_id().to_string(), k.public().clone());
            roles.insert(
                role.to_string(),
                RoleKeys {
                    keyids: vec![k.key_id().to_string()],
                    threshold: 1,
                },
            );
        }
        Ok(Root {
            common: self.common("root", version, self.config.root_expiry_secs)?,
            consistent_snapshot: true,
            keys,
            roles,
            unrecognized: BTreeMap::new(),
        })
    }

    fn common(&self, role: &str, version: u64, secs: u64) -> Result<Common, PublishError> {
        let now = jiff::Timestamp::now();
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(secs as i64))
            .map_err(|e| PublishError::Invalid(format!("expiry of {secs} s: {e}")))?;
        Ok(Common {
            role_type: role.to_string(),
            spec_version: SPEC_VERSION.to_string(),
            version,
            expires: metadata::format_expires(expires),
        })
    }

    fn sign_role<T: Serialize>(
        &self,
        payload: &T,
        key_role: &str,
    ) -> Result<Vec<u8>, PublishError> {
        metadata::sign(payload, &[self.key(key_role)?]).map_err(PublishError::Invalid)
    }

    fn read_meta<T: metadata::Role>(&self, name: &str) -> Result<T, PublishError> {
        let path = self.metadata_dir().join(name);
        let data = upkeep_fs::read(&path).map_err(PublishError::from)?;
        let env = metadata::parse::<T>(name, &data).map_err(|e| repo_err(&path, e.to_string()))?;
        Ok(env.signed)
    }

    fn current(&self) -> Result<Current, PublishError> {
        let ts: Timestamp = self.read_meta("timestamp.json")?;
        let snap_v = ts.snapshot_meta().version;
        let snap: Snapshot = self.read_meta(&format!("{snap_v}.snapshot.json"))?;
        let tv = snap
            .meta
            .get("targets.json")
            .ok_or_else(|| repo_err(&self.metadata_dir(), "snapshot does not list targets"))?
            .version;
        let mut repaired = std::collections::BTreeSet::new();
        let mut repairs = Vec::new();
        let mut read_targets = |file: &str, role: &str| -> Result<Targets, PublishError> {
            let (mut t, lenient) = self.read_targets(file)?;
            if lenient {
                repair_records(&mut t, &mut repairs);
                repaired.insert(role.to_string());
            }
            Ok(t)
        };
        let targets = read_targets(&format!("{tv}.targets.json"), "targets")?;
        let mut bins = BTreeMap::new();
        for (name, info) in &snap.meta {
            if let Some(role) = name.strip_suffix(".json") {
                if role != "targets" {
                    let t = read_targets(&format!("{}.{name}", info.version), role)?;
                    bins.insert(role.to_string(), t);
                }
            }
        }
        Ok(Current {
            timestamp_version: ts.common.version,
            snapshot_version: snap_v,
            targets,
            bins,
            repaired,
            repairs,
        })
    }

    /// A targets role of this repository; one that only raw control characters in its
    /// strings make unreadable (an earlier publisher wrote them) is read with those
    /// characters taken as escaped, and `true` says so. Its signature is not checked:
    /// these are the publisher's own files, about to be signed again.
    fn read_targets(&self, name: &str) -> Result<(Targets, bool), PublishError> {
        let path = self.metadata_dir().join(name);
        let data = upkeep_fs::read(&path).map_err(PublishError::from)?;
        match metadata::parse::<Targets>(name, &data) {
            Ok(env) => Ok((env.signed, false)),
            Err(e) => {
                let escaped =
                    escape_raw_controls(&data).ok_or_else(|| repo_err(&path, e.to_string()))?;
                let env = metadata::parse::<Targets>(name, &escaped)
                    .map_err(|_| repo_err(&path, e.to_string()))?;
                Ok((env.signed, true))
            }
        }
    }

    /// Every target currently published.
    pub fn targets(&self) -> Result<BTreeMap<String, TargetFile>, PublishError> {
        let cur = self.current()?;
        let mut all = cur.targets.targets.clone();
        for b in cur.bins.values() {
            all.extend(b.targets.clone());
        }
        Ok(all)
    }

    /// Every update record currently published, by id.
    pub fn updates(&self) -> Result<BTreeMap<Uuid, UpdateMetadata>, PublishError> {
        let mut out = BTreeMap::new();
        for t in self.targets()?.values() {
            if let Some(m) = record_of(t) {
                out.insert(m.id, m);
            }
        }
        Ok(out)
    }

    /// Adds (or replaces by id) updates and publishes once. Content files are copied into
    /// `targets/` under `updates/<id>/<revision>/`.
    ///
    /// A revision lower than the published one is refused (devices would never see it),
    /// and so is the published revision with other content (devices holding it would not
    /// update) unless `force` — then with a warning in the report.
    pub fn add_updates(&mut self, updates: Vec<NewUpdate>) -> Result<PublishReport, PublishError> {
        self.add_updates_with(updates, false)
    }

    /// [`add_updates`](Self::add_updates), `force` allowing the published revision to be
    /// replaced with other content.
    pub fn add_updates_with(
        &mut self,
        mut updates: Vec<NewUpdate>,
        force: bool,
    ) -> Result<PublishReport, PublishError> {
        for u in &mut updates {
            let m = &mut u.metadata;
            m.description = upkeep_types::text::normalize_newlines(&m.description);
            m.release_notes = upkeep_types::text::normalize_newlines(&m.release_notes);
        }
        self.check_keys(false)?;
        let cur = self.current()?;
        let mut targets = self.targets()?;
        let published = self.updates()?;
        let mut warnings = Vec::new();
        for u in &updates {
            let m = &u.metadata;
            // Everything a record will say is checked before any content is written.
            m.validate_text()
                .map_err(|e| PublishError::Invalid(e.to_string()))?;
            m.applicability.validate().map_err(|(field, why)| {
                PublishError::Invalid(format!("update {}: {field}: {why}", m.id))
            })?;
            for p in &m.applicability.prerequisites {
                if !published.contains_key(p) && !updates.iter().any(|o| o.metadata.id == *p) {
                    warnings.push(format!(
                        "update {}: prerequisite {p} is not in this repository; devices without it installed will find the update not applicable",
                        m.id
                    ));
                }
            }
            let Some(old) = published.get(&m.id) else {
                continue;
            };
            if m.revision < old.revision {
                return Err(PublishError::Invalid(format!(
                    "update {}: revision {} is lower than the published revision {}; devices would never install it (publish revision {} or later)",
                    m.id, m.revision, old.revision, old.revision + 1
                )));
            }
            if m.revision == old.revision {
                let new_hash = metadata::digest_bytes("sha256", &u.payload.read()?)
                    .expect("sha256 is supported");
                let old_hash = old
                    .content
                    .first()
                    .and_then(|p| targets.get(p))
                    .and_then(|t| t.hashes.get("sha256"))
                    .map(str::to_string);
                if old_hash.as_deref() != Some(new_hash.as_str()) {
                    let why = format!(
                        "update {}: revision {} is published with other content; devices that hold it will not update to this one",
                        m.id, m.revision
                    );
                    if !force {
                        return Err(PublishError::Invalid(format!(
                            "{why} (publish revision {}, or --force)",
                            m.revision + 1
                        )));
                    }
                    warnings.push(why);
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for u in &updates {
            if !ids.insert(u.metadata.id.to_string()) {
                return Err(PublishError::Invalid(format!(
                    "update {} is given twice",
                    u.metadata.id
                )));
            }
        }
        // Drop every earlier revision of the updates being replaced, in one pass.
        targets.retain(|path, _| update_id_of(path).is_none_or(|id| !ids.contains(id)));
        for u in updates {
            for (path, info) in self.stage_update(u)? {
                targets.insert(path, info);
            }
        }
        let mut report = self.commit(Some(&cur), targets, false)?;
        report.warnings.extend(warnings);
        Ok(report)
    }

    /// Adds one update; see [`Repository::add_updates`].
    pub fn add_update(&mut self, update: NewUpdate) -> Result<PublishReport, PublishError> {
        self.add_updates(vec![update])
    }

    fn stage_update(&self, u: NewUpdate) -> Result<Vec<(String, TargetFile)>, PublishError> {
        let mut m = u.metadata;
        let prefix = format!("updates/{}/{}", m.id, m.revision);
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut content = Vec::new();
        for src in std::iter::once(&u.payload).chain(&u.extra_content) {
            let path = format!("{prefix}/{}", src.name()?);
            if content.contains(&path) {
                return Err(PublishError::Invalid(format!(
                    "two content files are named {path}"
                )));
            }
            content.push(path.clone());
            files.push((path, src.read()?));
        }
        m.content = content;
        if let Some(e) = &u.eula {
            let path = format!("{prefix}/eula/{}", e.name()?);
            let text = e.read()?;
            if std::str::from_utf8(&text).is_err() {
                return Err(PublishError::Invalid("the EULA must be UTF-8 text".into()));
            }
            m.eula = Some(path.clone());
            files.push((path, text));
        }
        if let Some(b) = &u.bootstrapper {
            let path = format!("{prefix}/bootstrapper/{}", b.name()?);
            m.bootstrapper = Some(path.clone());
            files.push((path, b.read()?));
        }
        m.validate()
            .map_err(|e| PublishError::Invalid(e.to_string()))?;
        let custom = serde_json::json!({ "upkeep": m });
        let mut out = Vec::new();
        for (i, (path, data)) in files.into_iter().enumerate() {
            let info = TargetFile::from_data(&data, (i == 0).then(|| custom.clone()));
            self.write_content(&path, &info, &data)?;
            out.push((path, info));
        }
        Ok(out)
    }

    fn write_content(
        &self,
        path: &str,
        info: &TargetFile,
        data: &[u8],
    ) -> Result<(), PublishError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let d = self.targets_dir().join(dir);
        upkeep_fs::create_dir_all(&d).map_err(PublishError::from)?;
        let file = d.join(format!("{}.{name}", &info.hashes["sha256"]));
        if file.exists() {
            return Ok(()); // content-addressed: same name, same bytes
        }
        write_file(&file, data)
    }

    /// Removes an update (every revision) and publishes. Its content files stay on disk for
    /// clients that are mid-download; nothing refers to them any more.
    pub fn remove_update(&mut self, id: Uuid) -> Result<PublishReport, PublishError> {
        self.check_keys(false)?;
        let cur = self.current()?;
        let mut targets = self.targets()?;
        let before = targets.len();
        targets.retain(|path, _| !path.starts_with(&format!("updates/{id}/")));
        if targets.len() == before {
            return Err(PublishError::UnknownUpdate(id));
        }
        self.commit(Some(&cur), targets, false)
    }

    /// Re-signs every role with renewed expiry and new versions.
    pub fn publish(&mut self) -> Result<PublishReport, PublishError> {
        self.check_keys(true)?;
        let cur = self.current()?;
        let targets = self.targets()?;
        self.commit(Some(&cur), targets, true)
    }

    /// Writes new metadata for `targets`: changed (or, with `renew`, all) targets roles, then
    /// snapshot, then — after everything is on disk — the timestamp.
    fn commit(
        &mut self,
        cur: Option<&Current>,
        targets: BTreeMap<String, TargetFile>,
        renew: bool,
    ) -> Result<PublishReport, PublishError> {
        self.commit_with(cur, targets, renew, RootPlan::IfDue, &Out::Repository)
    }

    /// [`commit`](Self::commit), with what to do with the root. Every key it will need
    /// is checked before anything is written. Roles that expire within their margin are
    /// signed again even when their content is unchanged.
    fn commit_with(
        &mut self,
        cur: Option<&Current>,
        targets: BTreeMap<String, TargetFile>,
        renew: bool,
        root_plan: RootPlan,
        out: &Out,
    ) -> Result<PublishReport, PublishError> {
        let md = match out {
            Out::Repository => self.metadata_dir(),
            Out::Bundle { metadata_dir, .. } => metadata_dir.clone(),
        };
        let lifetime = |configured: u64| match out {
            Out::Repository => configured,
            Out::Bundle { expires_secs, .. } => *expires_secs,
        };
        // The root: renewed when due, or rotated.
        let new_root = match (&root_plan, cur) {
            (_, None) => None, // `init` wrote version 1
            (RootPlan::Keep, _) => None,
            (RootPlan::Rotate(old), Some(_)) => {
                Some((self.root()?.common.version + 1, old.as_deref()))
            }
            (RootPlan::IfDue, Some(_)) => {
                let root = self.root()?;
                self.due("root", &root.common.expires)
                    .then_some((root.common.version + 1, None))
            }
        };
        let new_root_bytes = match new_root {
            Some((version, old_root_key)) => {
                let root = self.new_root(version)?;
                let mut signers = vec![self.key("root")?];
                signers.extend(old_root_key);
                Some((
                    version,
                    metadata::sign(&root, &signers).map_err(PublishError::Invalid)?,
                ))
            }
            None => None,
        };
        let mut report = PublishReport {
            targets: targets.len(),
            updates: targets.values().filter(|t| record_of(t).is_some()).count(),
            warnings: cur.map(|c| c.repairs.clone()).unwrap_or_default(),
            ..Default::default()
        };
        let mut snapshot_meta = BTreeMap::new();
        // Work out the roles' contents.
        let mut roles: Vec<PlannedRole> = Vec::new();
        if self.config.bins == 0 {
            roles.push(PlannedRole::new("targets", targets, None, "targets"));
        } else {
            let bits = self.config.bins.trailing_zeros();
            let bins_key = self.key(BINS_ROLE)?;
            let succinct = SuccinctRoles {
                keyids: vec![bins_key.key_id().to_string()],
                threshold: 1,
                bit_length: bits,
                name_prefix: BIN_PREFIX.into(),
                unrecognized: BTreeMap::new(),
            };
            let mut per_bin: BTreeMap<String, BTreeMap<String, TargetFile>> = (0..succinct
                .bin_count())
                .map(|n| (succinct.bin_name(n), BTreeMap::new()))
                .collect();
            for (path, info) in targets {
                let bin = succinct.role_for_target(&path);
                per_bin
                    .get_mut(&bin)
                    .expect("every bin exists")
                    .insert(path, info);
            }
            let mut dkeys = HashMap::new();
            dkeys.insert(bins_key.key_id().to_string(), bins_key.public().clone());
            let delegations = Delegations {
                keys: dkeys,
                roles: None,
                succinct_roles: Some(succinct),
                unrecognized: BTreeMap::new(),
            };
            roles.push(PlannedRole::new(
                "targets",
                BTreeMap::new(),
                Some(delegations),
                "targets",
            ));
            for (name, t) in per_bin {
                roles.push(PlannedRole::new(&name, t, None, BINS_ROLE));
            }
        }
        for PlannedRole {
            name,
            content,
            delegations,
            key_role,
        } in roles
        {
            let old: Option<&Targets> = cur.and_then(|c| {
                if name == "targets" {
                    Some(&c.targets)
                } else {
                    c.bins.get(&name)
                }
            });
            let repaired = cur.is_some_and(|c| c.repaired.contains(&name));
            let unchanged = !repaired
                && old.is_some_and(|o| {
                    o.targets == content
                        && delegations_equal(o.delegations.as_ref(), delegations.as_ref())
                        && !self.due("targets", &o.common.expires)
                });
            if unchanged && !renew {
                let v = old.expect("unchanged implies old").common.version;
                snapshot_meta.insert(format!("{name}.json"), meta_version(v));
                continue;
            }
            let version = old.map_or(1, |o| o.common.version + 1);
            let t = Targets {
                common: self.common(
                    "targets",
                    version,
                    lifetime(self.config.targets_expiry_secs),
                )?,
                targets: content,
                delegations,
                unrecognized: BTreeMap::new(),
            };
            let bytes = self.sign_role(&t, key_role)?;
            write_file(
                &md.join(format!("{version}.{}.json", upkeep_tuf::encode_role(&name))),
                &bytes,
            )?;
            snapshot_meta.insert(format!("{name}.json"), meta_version(version));
            report.roles.push((name, version));
        }
        let snap_v = cur.map_or(1, |c| c.snapshot_version + 1);
        let snap = Snapshot {
            common: self.common(
                "snapshot",
                snap_v,
                lifetime(self.config.snapshot_expiry_secs),
            )?,
            meta: snapshot_meta,
            unrecognized: BTreeMap::new(),
        };
        let snap_bytes = self.sign_role(&snap, "snapshot")?;
        write_file(&md.join(format!("{snap_v}.snapshot.json")), &snap_bytes)?;
        report.roles.push(("snapshot".into(), snap_v));
        let ts_v = cur.map_or(1, |c| c.timestamp_version + 1);
        let ts_bytes = self.signed_timestamp(
            ts_v,
            snap_v,
            &snap_bytes,
            lifetime(self.config.timestamp_expiry_secs),
        )?;
        // The next root goes last before the timestamp: a client that sees it finds
        // metadata signed with its keys.
        if let Some((version, bytes)) = &new_root_bytes {
            write_file(&md.join(format!("{version}.root.json")), bytes)?;
            write_file(&md.join("root.json"), bytes)?;
            report.roles.push(("root".into(), *version));
        }
        // Everything the new timestamp refers to must be durable before it appears.
        syncfs(&md)?;
        upkeep_tuf::write_atomic(&md.join("timestamp.json"), &ts_bytes)
            .map_err(|e| repo_err(&md, e.to_string()))?;
        report.roles.push(("timestamp".into(), ts_v));
        Ok(report)
    }
}

impl Repository {
    /// A signed timestamp of `version` for the snapshot `snap_bytes` (version `snap_v`),
    /// with its length and SHA-256, valid for `secs`.
    fn signed_timestamp(
        &self,
        version: u64,
        snap_v: u64,
        snap_bytes: &[u8],
        secs: u64,
    ) -> Result<Vec<u8>, PublishError> {
        let mut hashes = metadata::Hashes::new();
        hashes.insert(
            "sha256",
            metadata::digest_bytes("sha256", snap_bytes).expect("sha256 is supported"),
        );
        let mut ts_meta = BTreeMap::new();
        ts_meta.insert(
            "snapshot.json".to_string(),
            MetaFile {
                version: snap_v,
                length: Some(snap_bytes.len() as u64),
                hashes: Some(hashes),
                unrecognized: BTreeMap::new(),
            },
        );
        let ts = Timestamp {
            common: self.common("timestamp", version, secs)?,
            meta: ts_meta,
            unrecognized: BTreeMap::new(),
        };
        self.sign_role(&ts, "timestamp")
    }

    /// Writes an offline bundle to `out` (a tar file): a self-contained TUF repository
    /// signed with this repository's own keys — every root version, and targets roles (in
    /// this repository's layout) listing the chosen updates' targets, a snapshot and a
    /// timestamp all valid for `expires_secs` — with their content, so that a device with
    /// no network verifies it exactly as it verifies the repository (no check is relaxed;
    /// only the lifetimes are an offline medium's).
    ///
    /// Versions: every role of the bundle is one version past what the repository served,
    /// and the repository itself is published again two versions on, before the bundle is
    /// written. So a bundle is newer than what devices held when it was made, older than
    /// what the repository serves from then on (a device that used it goes back online
    /// without a rollback), and each later bundle is newer than every earlier one; a stale
    /// bundle given to a device that has seen newer metadata is refused as a rollback.
    /// Needs the targets, snapshot and timestamp keys (and the bins key with hashed bins).
    /// `ids` must all be published (else `UnknownUpdate`); nothing is written on failure
    /// but the repository's own publish, which stands on its own.
    pub fn bundle(
        &mut self,
        out: &Path,
        ids: &std::collections::BTreeSet<Uuid>,
        expires_secs: u64,
    ) -> Result<BundleReport, PublishError> {
        self.check_keys(false)?;
        let cur = self.current()?;
        let all = self.targets()?;
        let records: BTreeMap<Uuid, UpdateMetadata> = self
            .updates()?
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .collect();
        if let Some(missing) = ids.iter().find(|id| !records.contains_key(id)) {
            return Err(PublishError::UnknownUpdate(*missing));
        }
        let mut chosen = BTreeMap::new();
        for m in records.values() {
            for p in m.content.iter().chain(&m.eula).chain(&m.bootstrapper) {
                let t = all.get(p).ok_or_else(|| {
                    repo_err(
                        &self.targets_dir(),
                        format!("update {} refers to {p}, which is not published", m.id),
                    )
                })?;
                chosen.insert(p.clone(), t.clone());
            }
        }
        // The repository moves two versions on first.
        let mut skipped = cur.clone();
        skipped.timestamp_version += 1;
        skipped.snapshot_version += 1;
        skipped.targets.common.version += 1;
        for b in skipped.bins.values_mut() {
            b.common.version += 1;
        }
        let mut report = BundleReport {
            updates: records.len(),
            published: self
                .commit_with(Some(&skipped), all, true, RootPlan::IfDue, &Out::Repository)?
                .roles,
            ..BundleReport::default()
        };
        // The bundle's metadata, one version on, assembled beside the output.
        let work = out.with_extension("tmp-bundle.d");
        let _ = upkeep_fs::remove_dir_all(&work);
        let md = work.join("metadata");
        upkeep_fs::create_dir_all(&md).map_err(PublishError::from)?;
        let written = self.write_bundle(out, &work, &cur, chosen, expires_secs, &mut report);
        let _ = upkeep_fs::remove_dir_all(&work);
        written?;
        Ok(report)
    }

    fn write_bundle(
        &mut self,
        out: &Path,
        work: &Path,
        cur: &Current,
        chosen: BTreeMap<String, TargetFile>,
        expires_secs: u64,
        report: &mut BundleReport,
    ) -> Result<(), PublishError> {
        let md = work.join("metadata");
        let signed = self.commit_with(
            Some(cur),
            chosen.clone(),
            true,
            RootPlan::Keep,
            &Out::Bundle {
                metadata_dir: md.clone(),
                expires_secs,
            },
        )?;
        report.roles = signed.roles;
        let ts: Timestamp = {
            let data = upkeep_fs::read(md.join("timestamp.json")).map_err(PublishError::from)?;
            metadata::parse::<Timestamp>("timestamp", &data)
                .map_err(|e| repo_err(&md, e.to_string()))?
                .signed
        };
        report.version = ts.common.version;
        report.expires = ts.common.expires.clone();
        let root = self.root()?;
        if root.common.expires < report.expires {
            report.warnings.push(format!(
                "the root expires {} — before the bundle ({}): devices refuse the bundle from then on (renew the root with `repo publish` first)",
                root.common.expires, report.expires
            ));
        }
        let mtime = jiff::Timestamp::now().as_second().max(0) as u64;
        let tmp = out.with_extension("tmp-bundle");
        let written = (|| {
            let f = upkeep_fs::create(&tmp)?;
            let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
            let mut add = |name: &str, data: &[u8], report: &mut BundleReport| {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                h.set_mtime(mtime);
                tar.append_data(&mut h, name, data)
                    .map_err(|e| io(&tmp, e))?;
                report.files += 1;
                report.bytes += data.len() as u64;
                Ok::<(), PublishError>(())
            };
            for v in 1..=root.common.version {
                let name = format!("{v}.root.json");
                let path = self.metadata_dir().join(&name);
                let data = upkeep_fs::read(&path).map_err(PublishError::from)?;
                add(&format!("metadata/{name}"), &data, report)?;
                if v == root.common.version {
                    add("metadata/root.json", &data, report)?;
                }
            }
            let mut names: Vec<String> = upkeep_fs::read_dir(&md)
                .map_err(PublishError::from)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()
                .map_err(|e| io(&md, e))?;
            names.sort();
            for name in names {
                let path = md.join(&name);
                let data = upkeep_fs::read(&path).map_err(PublishError::from)?;
                add(&format!("metadata/{name}"), &data, report)?;
            }
            for (path, t) in &chosen {
                let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
                let stored = format!("{}.{name}", &t.hashes["sha256"]);
                let src = self.targets_dir().join(dir).join(&stored);
                let data = upkeep_fs::read(&src).map_err(PublishError::from)?;
                let inner = if dir.is_empty() {
                    stored
                } else {
                    format!("{dir}/{stored}")
                };
                add(&format!("targets/{inner}"), &data, report)?;
            }
            let w = tar.into_inner().map_err(|e| io(&tmp, e))?;
            let f = w.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
            upkeep_fs::rename(&tmp, out).map_err(PublishError::from)
        })();
        if written.is_err() {
            let _ = upkeep_fs::remove_file(&tmp);
        }
        written
    }
}

/// What [`Repository::bundle`] wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BundleReport {
    /// Updates in it.
    pub updates: usize,
    /// Files in the tar (metadata and content).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// When its metadata expires (RFC 3339).
    pub expires: String,
    /// Its timestamp's version (one past what the repository served before).
    pub version: u64,
    /// Its roles, with their versions.
    pub roles: Vec<(String, u64)>,
    /// The roles the repository published first, two versions on.
    pub published: Vec<(String, u64)>,
    /// What the operator should know (a root expiring before the bundle).
    pub warnings: Vec<String>,
}

/// A targets role as the next publish will write it.
struct PlannedRole {
    name: String,
    content: BTreeMap<String, TargetFile>,
    delegations: Option<Delegations>,
    key_role: &'static str,
}

impl PlannedRole {
    fn new(
        name: &str,
        content: BTreeMap<String, TargetFile>,
        delegations: Option<Delegations>,
        key_role: &'static str,
    ) -> Self {
        PlannedRole {
            name: name.to_string(),
            content,
            delegations,
            key_role,
        }
    }
}

fn delegations_equal(a: Option<&Delegations>, b: Option<&Delegations>) -> bool {
    let to_v = |d: Option<&Delegations>| d.map(|d| serde_json::to_value(d).ok());
    to_v(a) == to_v(b)
}

fn meta_version(version: u64) -> MetaFile {
    MetaFile {
        version,
        length: None,
        hashes: None,
        unrecognized: BTreeMap::new(),
    }
}

/// The update id of a path under `updates/<id>/…`.
/// `data` with every raw control character inside a JSON string written as a `\u00XX`
/// escape, or `None` when it has none there (so escaping cannot be what makes it readable).
fn escape_raw_controls(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    for &b in data {
        if in_string && b < 0x20 {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            changed = true;
            escaped = false;
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        }
        out.push(b);
    }
    changed.then_some(out)
}

/// Rewrites every update record of `t` that canonical JSON cannot carry: a multi-line
/// description or release notes become lines (`\r\n` as `\n`), any other control
/// character a space. Each record changed is named in `repairs`.
fn repair_records(t: &mut Targets, repairs: &mut Vec<String>) {
    use upkeep_types::text::{first_control, normalize_newlines};
    let one_line = |s: &mut String| {
        if first_control(s).is_some() {
            *s = s
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
        }
    };
    let text = |s: &mut String| {
        let n = normalize_newlines(s);
        *s = n
            .split('\n')
            .map(|l| {
                l.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n");
    };
    for (path, info) in t.targets.iter_mut() {
        let Some(custom) = info.custom.as_ref() else {
            continue;
        };
        if upkeep_tuf::canonical::to_canonical_file(custom).is_ok() {
            continue;
        }
        let Some(mut m) = record_of(info) else {
            continue; // not ours to rewrite; signing reports it
        };
        one_line(&mut m.title);
        one_line(&mut m.severity);
        m.kb_article_ids.iter_mut().for_each(one_line);
        m.categories.iter_mut().for_each(|c| one_line(&mut c.name));
        m.more_info_urls.iter_mut().for_each(one_line);
        text(&mut m.description);
        text(&mut m.release_notes);
        let mut value = custom.to_value();
        value["upkeep"] = serde_json::to_value(&m).expect("a record serialises");
        info.custom = Some(metadata::Custom::from_value(&value));
        repairs.push(format!(
            "target {path}: update {} held control characters that made its role unreadable; rewritten (multi-line text as lines, other control characters as spaces)",
            m.id
        ));
    }
}

fn update_id_of(path: &str) -> Option<&str> {
    path.strip_prefix("updates/")?.split('/').next()
}

/// The update record carried by a target, if it carries one.
pub(crate) fn record_of(t: &TargetFile) -> Option<UpdateMetadata> {
    let raw = t.custom.as_ref()?.member("upkeep")?;
    serde_json::from_str(raw.get()).ok()
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), PublishError> {
    Ok(upkeep_fs::write_replace(path, |w| w.write_all(data))?)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), PublishError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = upkeep_fs::open_with(
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600),
        path,
    )?;
    f.write_all(data).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PublishError> {
    use std::os::unix::fs::PermissionsExt;
    upkeep_fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(PublishError::from)
}

fn lock(dir: &Path) -> Result<File, PublishError> {
    match upkeep_fs::try_lock(&dir.join(".lock")) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(PublishError::Locked(dir.to_path_buf())),
        Err(e) => Err(e.into()),
    }
}

fn syncfs(dir: &Path) -> Result<(), PublishError> {
    upkeep_fs::syncfs(dir).map_err(PublishError::from)
}
