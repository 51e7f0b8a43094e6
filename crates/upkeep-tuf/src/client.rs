//! The TUF client workflow (specification §5): refresh of the top-level roles, lazy pre-order
//! delegation search, enumeration of every target for a catalog, and verified target reads.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{Error, Result, TransportError};
use crate::metadata::{Envelope, MetaFile, TargetFile, Targets};
use crate::reader::TargetReader;
use crate::trusted::TrustedSet;

/// Limits against endless data, endless rotation and endless delegation graphs. Every
/// default is generous for real repositories and small enough to stop an attack.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Root versions accepted in one refresh (stops a repository that serves root versions
    /// forever). Default 32.
    pub max_root_rotations: u64,
    /// Delegated roles visited while looking up one target (stops cyclic and very deep
    /// graphs). Default 32.
    pub max_delegations: usize,
    /// Roles loaded while enumerating the whole catalog (hashed bins count one each).
    /// Default 100,000.
    pub max_catalog_roles: usize,
    /// Bytes read for a root version (stops an endless root). Default 512 KiB.
    pub root_max_length: u64,
    /// Bytes read for the timestamp, which has no signed length. Default 16 KiB.
    pub timestamp_max_length: u64,
    /// Bytes read for a snapshot without a signed length. Default 32 MiB.
    pub snapshot_max_length: u64,
    /// Bytes read for a targets role without a signed length. Default 64 MiB.
    pub targets_max_length: u64,
    /// Sibling roles (hashed bins) fetched and verified at once while enumerating the
    /// catalog. Default 4; 1 loads them one by one.
    pub parallel_fetches: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: 32,
            max_delegations: 32,
            max_catalog_roles: 100_000,
            root_max_length: 512 * 1024,
            timestamp_max_length: 16 * 1024,
            snapshot_max_length: 32 << 20,
            targets_max_length: 64 << 20,
            parallel_fetches: 4,
        }
    }
}

/// Fetches files from a repository. Object-safe, so sessions can share one.
pub trait Transport: Send + Sync {
    /// Opens `url` for reading. A missing file must be [`TransportError::NotFound`]: root
    /// rotation stops there.
    fn fetch(&self, url: &str) -> std::result::Result<Box<dyn Read + Send + '_>, TransportError>;
}

/// Characters escaped in URL path segments and in local file names (everything but
/// `A-Za-z0-9-._~`, as Python's `quote(s, safe='')`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes a role name for a URL or a file name; `/`, `?`, `#` and `%` are escaped, so a name
/// can never leave its directory.
pub fn encode_role(name: &str) -> String {
    let enc = utf8_percent_encode(name, SEGMENT).to_string();
    // "." and ".." are unreserved but must not be a whole file name.
    match enc.as_str() {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => enc,
    }
}

/// How a [`Client`] reaches its repository and where it keeps trusted metadata.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Directory of trusted metadata (`root.json`, `timestamp.json`, …). It must already hold
    /// a trusted `root.json`.
    pub metadata_dir: PathBuf,
    /// Base URL of the metadata (a trailing `/` is added if missing).
    pub metadata_url: String,
    /// Limits.
    pub limits: Limits,
    /// Use only local metadata: no request is made, and missing or expired local metadata
    /// is an error.
    pub offline: bool,
    /// Fetch the timestamp first; when it is byte-identical to the trusted one, nothing has
    /// been published since the last refresh, so the root walk is skipped and a refresh of an
    /// unchanged repository is one request. Publishers must publish a new timestamp with every
    /// new root (upkeep's publisher always does). Off, the specification's exact order is
    /// used (root versions first), as the conformance suite expects.
    pub timestamp_first: bool,
}

/// A TUF client for one repository and one update cycle.
pub struct Client {
    cfg: ClientConfig,
    transport: Arc<dyn Transport>,
    trusted: TrustedSet,
    refreshed: bool,
    failed_roles: HashSet<String>,
}

/// Every target of the repository, each from the role the delegation rules trust for it.
#[derive(Debug, Default)]
pub struct CatalogTargets {
    /// Target path → signed description.
    pub targets: BTreeMap<String, TargetFile>,
    /// Roles that could not be loaded; their targets are left out.
    pub warnings: Vec<(String, Error)>,
    /// Number of targets roles loaded.
    pub roles_loaded: usize,
}

impl Client {
    /// Writes `root_bytes` as the trusted root of `metadata_dir`. With `verify`, the root
    /// must parse and be signed by its own threshold.
    pub fn init_trusted_root(metadata_dir: &Path, root_bytes: &[u8], verify: bool) -> Result<()> {
        if verify {
            TrustedSet::new(root_bytes, jiff::Timestamp::now())?;
        }
        upkeep_fs::create_dir_all(metadata_dir)?;
        write_atomic(&metadata_dir.join("root.json"), root_bytes)
    }

    /// Opens the client on the trusted root in `cfg.metadata_dir`. The reference time for
    /// expiry is now.
    pub fn new(cfg: ClientConfig, transport: Arc<dyn Transport>) -> Result<Client> {
        Self::with_time(cfg, transport, jiff::Timestamp::now())
    }

    /// As [`Client::new`] with an explicit reference time.
    pub fn with_time(
        mut cfg: ClientConfig,
        transport: Arc<dyn Transport>,
        now: jiff::Timestamp,
    ) -> Result<Client> {
        if !cfg.metadata_url.ends_with('/') {
            cfg.metadata_url.push('/');
        }
        let path = cfg.metadata_dir.join("root.json");
        let root = upkeep_fs::read(&path)?;
        let trusted = TrustedSet::new(&root, now)?;
        Ok(Client {
            cfg,
            transport,
            trusted,
            refreshed: false,
            failed_roles: HashSet::new(),
        })
    }

    /// The trusted metadata so far.
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Runs the top-level workflow: root rotation, timestamp, snapshot, targets. Can run once
    /// per client; later calls do nothing.
    pub fn refresh(&mut self) -> Result<()> {
        if self.refreshed {
            return Ok(());
        }
        let mut prefetched = None;
        if !self.cfg.offline && self.cfg.timestamp_first {
            let remote =
                self.fetch_metadata("timestamp", self.cfg.limits.timestamp_max_length, None)?;
            if self.read_local("timestamp").as_deref() == Some(remote.as_slice()) {
                tracing::debug!("timestamp unchanged: skipping the root walk");
            } else {
                self.load_root()?;
            }
            prefetched = Some(remote);
        } else if !self.cfg.offline {
            self.load_root()?;
        }
        self.load_timestamp(prefetched)?;
        self.load_snapshot()?;
        self.load_targets("targets", "root")?;
        self.refreshed = true;
        Ok(())
    }

    fn fetch_metadata(&self, role: &str, max_len: u64, version: Option<u64>) -> Result<Vec<u8>> {
        if self.cfg.offline {
            return Err(Error::State(format!(
                "{role}: no valid local copy, and the search is offline"
            )));
        }
        let name = encode_role(role);
        let url = match version {
            Some(v) => format!("{}{v}.{name}.json", self.cfg.metadata_url),
            None => format!("{}{name}.json", self.cfg.metadata_url),
        };
        tracing::debug!(%url, "fetching metadata");
        let reader = self.transport.fetch(&url)?;
        read_limited(reader, max_len, &url)
    }

    /// Fetches a role listed in the timestamp or snapshot: `V.ROLE.json` with consistent
    /// snapshots, at most its signed length (or `default_max` when none is signed).
    fn fetch_listed(&self, role: &str, meta: &MetaFile, default_max: u64) -> Result<Vec<u8>> {
        let max = meta.length.unwrap_or(default_max);
        let version = self
            .trusted
            .root()
            .consistent_snapshot
            .then_some(meta.version);
        signed_length(self.fetch_metadata(role, max, version), meta.length)
    }

    fn local_path(&self, role: &str) -> PathBuf {
        self.cfg
            .metadata_dir
            .join(format!("{}.json", encode_role(role)))
    }

    fn read_local(&self, role: &str) -> Option<Vec<u8>> {
        upkeep_fs::read(self.local_path(role)).ok()
    }

    /// Stores verified metadata by rename. Root and timestamp are also flushed: a lost root
    /// would strand the client, a lost timestamp would weaken rollback protection. Other roles
    /// are not flushed; one lost to a power cut is fetched again.
    fn persist(&self, role: &str, data: &[u8]) -> Result<()> {
        if role == "root" || role == "timestamp" {
            write_atomic(&self.local_path(role), data)
        } else {
            write_file(&self.local_path(role), data)
        }
    }

    fn load_root(&mut self) -> Result<()> {
        let lower = self.trusted.root().common.version + 1;
        let upper = lower + self.cfg.limits.max_root_rotations;
        for version in lower..upper {
            let data =
                match self.fetch_metadata("root", self.cfg.limits.root_max_length, Some(version)) {
                    Ok(d) => d,
                    Err(Error::Transport(TransportError::NotFound { .. })) => return Ok(()),
                    Err(e) => return Err(e),
                };
            self.trusted.update_root(&data)?;
            self.persist("root", &data)?;
        }
        Ok(())
    }

    fn load_timestamp(&mut self, prefetched: Option<Vec<u8>>) -> Result<()> {
        if let Some(local) = self.read_local("timestamp") {
            if let Err(e) = self.trusted.update_timestamp(&local) {
                tracing::debug!("local timestamp not valid as final: {e}");
            }
        }
        if self.cfg.offline {
            return match self.trusted.timestamp() {
                Some(ts) => {
                    let common = ts.common.clone();
                    let expires = common
                        .expires_at()
                        .map_err(|e| Error::parse("timestamp", e))?;
                    if expires <= self.trusted.reference_time() {
                        return Err(Error::Expired {
                            role: "timestamp".into(),
                            expires,
                        });
                    }
                    Ok(())
                }
                None => Err(Error::State(
                    "no trusted local timestamp for an offline search".into(),
                )),
            };
        }
        let data = match prefetched {
            Some(d) => d,
            None => self.fetch_metadata("timestamp", self.cfg.limits.timestamp_max_length, None)?,
        };
        match self.trusted.update_timestamp(&data) {
            Ok(()) => {}
            Err(Error::EqualVersion { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.persist("timestamp", &data)
    }

    fn load_snapshot(&mut self) -> Result<()> {
        if let Some(local) = self.read_local("snapshot") {
            match self.trusted.update_snapshot(&local, true) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::debug!("local snapshot not valid as final: {e}"),
            }
        }
        let ts = self
            .trusted
            .timestamp()
            .ok_or_else(|| Error::State("timestamp not loaded".into()))?;
        let meta = ts.snapshot_meta().clone();
        let data = self.fetch_listed("snapshot", &meta, self.cfg.limits.snapshot_max_length)?;
        self.trusted.update_snapshot(&data, false)?;
        self.persist("snapshot", &data)
    }

    fn load_targets(&mut self, role: &str, delegator: &str) -> Result<()> {
        let path = self.local_path(role);
        if self
            .trusted
            .check_loaded_through(role, delegator, || upkeep_fs::read(&path).ok())?
        {
            return Ok(());
        }
        if self.failed_roles.contains(role) {
            return Err(Error::State(format!("{role} failed to load earlier")));
        }
        let (env, digest) = self.fetch_and_verify(role, delegator)?;
        self.trusted.insert_verified(role, delegator, env, digest);
        Ok(())
    }

    /// The local copy of `role` if it is still valid, otherwise the remote one (persisted
    /// once verified). Changes nothing in the trusted set, so it can run on several threads.
    fn fetch_and_verify(&self, role: &str, delegator: &str) -> Result<Verified> {
        if let Some(local) = self.read_local(role) {
            match self.trusted.verify_targets(&local, role, delegator) {
                Ok(mut env) => {
                    env.release_raw();
                    return Ok((env, crate::trusted::digest(&local)));
                }
                Err(e) => tracing::debug!("local {role} not usable: {e}"),
            }
        }
        let meta = self.trusted.meta_for(role)?;
        let data = self.fetch_listed(role, &meta, self.cfg.limits.targets_max_length)?;
        let mut env = self.trusted.verify_targets(&data, role, delegator)?;
        env.release_raw();
        self.persist(role, &data)?;
        Ok((env, crate::trusted::digest(&data)))
    }

    /// Loads many sibling roles at once (hashed bins) on a few threads: fetching overlaps
    /// and verification uses both cores. Failures are left for the in-order walk to meet
    /// and report, so errors and their order do not depend on this.
    fn prefetch(&mut self, delegator: &str, children: &[String]) {
        let todo: Vec<&String> = children
            .iter()
            .filter(|c| self.trusted.targets(c).is_none() && !self.failed_roles.contains(*c))
            .collect();
        if todo.len() < 2 || self.cfg.limits.parallel_fetches < 2 {
            return;
        }
        let workers = self.cfg.limits.parallel_fetches.min(todo.len());
        let this = &*self;
        let loaded: Vec<(String, Verified)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let todo = &todo;
                    s.spawn(move || {
                        todo.iter()
                            .skip(w)
                            .step_by(workers)
                            .filter_map(|role| {
                                this.fetch_and_verify(role, delegator)
                                    .ok()
                                    .map(|env| (role.to_string(), env))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (role, (env, digest)) in loaded {
            self.trusted.insert_verified(&role, delegator, env, digest);
        }
    }

    /// Finds the signed description of `path` by the lazy pre-order delegation search,
    /// refreshing first if needed. `None` if no trusted role lists it.
    pub fn target_info(&mut self, path: &str) -> Result<Option<TargetFile>> {
        self.refresh()?;
        let Some(role) = self.walk(path)? else {
            return Ok(None);
        };
        Ok(self
            .trusted
            .targets(&role)
            .and_then(|t| t.targets.get(path))
            .cloned())
    }

    /// The pre-order walk; returns the role trusted for `path` that lists it. The walk runs
    /// on the trusted set as it is ([`Client::walk_loaded`]); when it reaches a role not
    /// loaded yet (or reached through a delegator that has not verified it), that role is
    /// loaded and the walk starts over — the same walk, which now gets further.
    fn walk(&mut self, path: &str) -> Result<Option<String>> {
        // Each start over loads one more role (or fails), and a walk visits at most
        // max_delegations + 1 roles.
        for _ in 0..self.cfg.limits.max_delegations + 2 {
            match self.walk_loaded(path) {
                Walk::Found(role) => return Ok(role),
                Walk::Load(role, parent) => self.load_targets(&role, &parent)?,
            }
        }
        Err(Error::State(format!(
            "the delegation walk for {path} did not settle"
        )))
    }

    /// The pre-order walk over the roles loaded now, changing nothing (so it can run on
    /// several threads): the role that lists `path`, or the first role it would need loaded.
    fn walk_loaded(&self, path: &str) -> Walk {
        let mut stack: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: HashSet<String> = HashSet::new();
        while visited.len() <= self.cfg.limits.max_delegations {
            let Some((role, parent)) = stack.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            if !self.trusted.is_loaded_through(&role, &parent) {
                return Walk::Load(role, parent);
            }
            let targets = self.trusted.targets(&role).expect("loaded");
            if targets.targets.contains_key(path) {
                return Walk::Found(Some(role));
            }
            if let Some(d) = &targets.delegations {
                let mut children = Vec::new();
                for (child, terminating) in d.roles_for_target(path) {
                    children.push((child, role.clone()));
                    if terminating {
                        stack.clear();
                        break;
                    }
                }
                stack.extend(children.into_iter().rev());
            }
            visited.insert(role);
        }
        if !stack.is_empty() {
            tracing::debug!(
                "{} roles left unvisited for {path}: max_delegations {} reached",
                stack.len(),
                self.cfg.limits.max_delegations
            );
        }
        Walk::Found(None)
    }

    /// Loads every targets role reachable from the top-level targets (pre-order, each bin of
    /// a hashed-bin delegation included) and returns every target from the role trusted for
    /// it. A role that fails to load is reported in `warnings` and its targets — and any
    /// target whose lookup passes through it — are left out; a failure of the top-level
    /// roles is an error. Consumes the client: the targets are moved out of the trusted set,
    /// not copied, which matters for catalogs of 100,000 updates.
    pub fn all_targets(mut self) -> Result<CatalogTargets> {
        self.refresh()?;
        let mut out = CatalogTargets::default();
        let mut stack: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut candidates: HashSet<String> = HashSet::new();
        while let Some((role, parent)) = stack.pop() {
            if !seen.insert((role.clone(), parent.clone())) {
                continue;
            }
            if seen.len() > self.cfg.limits.max_catalog_roles {
                return Err(Error::Limit(format!(
                    "more than {} delegated roles (Limits::max_catalog_roles)",
                    self.cfg.limits.max_catalog_roles
                )));
            }
            if let Err(e) = self.load_targets(&role, &parent) {
                if role == "targets" {
                    return Err(e);
                }
                if self.failed_roles.insert(role.clone()) {
                    out.warnings.push((role.clone(), e));
                }
                continue;
            }
            let t = self.trusted.targets(&role).expect("just loaded");
            candidates.extend(t.targets.keys().cloned());
            if let Some(d) = &t.delegations {
                if d.role_count() > (self.cfg.limits.max_catalog_roles - seen.len()) as u64 {
                    out.warnings.push((
                        role.clone(),
                        Error::Limit(format!(
                            "{role} delegates to {} roles, more than Limits::max_catalog_roles allows",
                            d.role_count()
                        )),
                    ));
                    continue;
                }
                let names = d.all_role_names();
                self.prefetch(&role, &names);
                stack.extend(names.into_iter().rev().map(|c| (c, role.clone())));
            }
        }
        tracing::debug!(
            roles = self.trusted.loaded_targets_count(),
            "every role loaded; resolving paths"
        );
        let mut paths: Vec<String> = candidates.into_iter().collect();
        paths.sort_unstable();
        // Every reachable role is loaded: the paths are resolved on a few threads over the
        // trusted set as it is, and the rare path whose walk needs a role loaded (reached
        // through a second delegator, or one that failed) is walked again here, in order.
        let walked = self.walk_all_loaded(&paths);
        let mut chosen: Vec<(String, String)> = Vec::with_capacity(paths.len());
        for (path, walk) in paths.into_iter().zip(walked) {
            let found = match walk {
                Walk::Found(role) => Ok(role),
                Walk::Load(..) => self.walk(&path),
            };
            match found {
                Ok(Some(role)) => chosen.push((path, role)),
                Ok(None) => {}
                Err(e) => tracing::debug!("{path} left out of the catalog: {e}"),
            }
        }
        out.roles_loaded = self.trusted.loaded_targets_count();
        tracing::debug!(targets = chosen.len(), "paths resolved");
        // In path order, so the map is built in one pass rather than by 100,000 inserts.
        out.targets = chosen
            .into_iter()
            .filter_map(|(path, role)| {
                let t = self.trusted.take_target(&role, &path)?;
                Some((path, t))
            })
            .collect();
        Ok(out)
    }

    /// [`Client::walk_loaded`] for each of `paths`, in order, on up to four threads.
    fn walk_all_loaded(&self, paths: &[String]) -> Vec<Walk> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        if threads < 2 || paths.len() < 1024 {
            return paths.iter().map(|p| self.walk_loaded(p)).collect();
        }
        let chunk = paths.len().div_ceil(threads);
        std::thread::scope(|s| {
            let hs: Vec<_> = paths
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || part.iter().map(|p| self.walk_loaded(p)).collect::<Vec<_>>())
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().expect("walking the delegations does not panic"))
                .collect()
        })
    }

    /// The URL of a target under `base`, with the hash prefix of consistent snapshots.
    pub fn target_url(&self, base: &str, path: &str, info: &TargetFile) -> String {
        target_url(
            base,
            path,
            &info.hashes,
            self.trusted.root().consistent_snapshot,
        )
    }

    /// Opens a target for a verified read: the reader stops at the signed length and fails
    /// at the end if the hashes do not match. Do not use data from a reader that failed.
    pub fn open_target(
        &self,
        base: &str,
        path: &str,
        info: &TargetFile,
    ) -> Result<TargetReader<Box<dyn Read + Send + '_>>> {
        let url = self.target_url(base, path, info);
        let inner = self.transport.fetch(&url)?;
        TargetReader::new(path, info, inner)
    }

    /// Downloads a target into `dest` (written to a temporary file, verified, then renamed).
    pub fn download_target(
        &self,
        base: &str,
        path: &str,
        info: &TargetFile,
        dest: &Path,
    ) -> Result<()> {
        let mut reader = self.open_target(base, path, info)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.part",
            dest.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("target")
        ));
        let result = (|| {
            let mut f = upkeep_fs::create(&tmp)?;
            reader.copy_to(&mut f)?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            Ok(upkeep_fs::rename(&tmp, dest)?)
        })();
        if result.is_err() {
            let _ = upkeep_fs::remove_file(&tmp);
        }
        result
    }
}

/// Where a walk over the loaded roles ended.
enum Walk {
    /// The role that lists the path, or none.
    Found(Option<String>),
    /// The walk needs this role loaded (or verified) through this delegator first.
    Load(String, String),
}

/// The URL of target `path` under `base`; with consistent snapshots the file name carries
/// the first signed hash (`dir/HASH.name`).
pub fn target_url(
    base: &str,
    path: &str,
    hashes: &crate::metadata::Hashes,
    consistent: bool,
) -> String {
    let mut url = base.to_string();
    if !url.ends_with('/') {
        url.push('/');
    }
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, path),
    };
    if let Some(d) = dir {
        for seg in d.split('/') {
            url.push_str(&utf8_percent_encode(seg, SEGMENT).to_string());
            url.push('/');
        }
    }
    if consistent {
        if let Some((_, h)) = hashes.iter().next() {
            url.push_str(h);
            url.push('.');
        }
    }
    url.push_str(&utf8_percent_encode(name, SEGMENT).to_string());
    url
}

/// A verified targets role and the SHA-256 of the bytes it was verified from.
type Verified = (Envelope<Targets>, [u8; 32]);

/// Data longer than a signed length is a length mismatch, not endless data.
fn signed_length(r: Result<Vec<u8>>, signed: Option<u64>) -> Result<Vec<u8>> {
    match (r, signed) {
        (Err(Error::TooLarge { what, limit }), Some(_)) => Err(Error::Length {
            what,
            reason: format!("longer than the signed length {limit}"),
        }),
        (r, _) => r,
    }
}

/// Reads at most `max` bytes; more is an error, so endless data cannot exhaust memory.
pub fn read_limited(mut reader: impl Read, max: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    (&mut reader)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            Error::Transport(TransportError::Connection {
                url: what.to_string(),
                message: e.to_string(),
            })
        })?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge {
            what: what.to_string(),
            limit: max,
        });
    }
    Ok(buf)
}

/// Writes a file by temporary file, `fsync`, rename and `fsync` of the directory
/// ([`upkeep_fs::write_atomic`]), so readers see the old or the new bytes, and the new
/// bytes survive a power cut.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Ok(upkeep_fs::write_atomic(path, data)?)
}

/// Replaces `path` by rename, without flushing (a role lost to a power cut is fetched
/// again).
fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    Ok(upkeep_fs::write_replace(path, |w| w.write_all(data))?)
}
