//! `UpdateSession` and its builder, and `UpdateSearcher` (WUA's `IUpdateSession` and
//! `IUpdateSearcher`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use upkeep_tuf::{Client, ClientConfig, HttpTransport, Limits, Transport};
use upkeep_types::{HResult, OperationResultCode, Update, UpdateCollection};

use crate::catalog::{Catalog, UpdateException};
use crate::config::{Config, ResolvedConfig};
use crate::criteria::{self, Criteria};
use crate::error::{Error, Result};

/// Builds an [`UpdateSession`]. Settings come from, in rising precedence: the configuration
/// file (`config_file` or `UPKEEP_CONFIG`), `UPKEEP_*` environment variables (unless
/// `env(false)`), and the builder's own calls.
///
/// ```no_run
/// use upkeep::UpdateSession;
/// let session = UpdateSession::builder()
///     .repository("http://127.0.0.1:8080/")
///     .trusted_root("root.json")
///     .state_dir("state")
///     .install_root("root")
///     .build()?;
/// let result = session.create_update_searcher().search("IsInstalled=0 and Type='Software'")?;
/// for u in result.updates() {
///     println!("{} {}", u.identity(), u.title());
/// }
/// # Ok::<(), upkeep::Error>(())
/// ```
#[derive(Default)]
pub struct UpdateSessionBuilder {
    over: Config,
    config_file: Option<PathBuf>,
    no_env: bool,
    transport: Option<Arc<dyn Transport>>,
    limits: Option<Limits>,
    default_client_id: Option<String>,
    read_only: bool,
}

impl UpdateSessionBuilder {
    /// Repository base URL (`<base>/metadata/`, `<base>/targets/`).
    pub fn repository(mut self, url: impl Into<String>) -> Self {
        self.over.repository = Some(url.into());
        self
    }
    /// File with the initially trusted root; copied into the state directory the first time.
    pub fn trusted_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.over.trusted_root = Some(path.into());
        self
    }
    /// State directory.
    pub fn state_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.over.state_dir = Some(path.into());
        self
    }
    /// Install root.
    pub fn install_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.over.install_root = Some(path.into());
        self
    }
    /// Caller name recorded in history (default "Unknown").
    pub fn client_application_id(mut self, id: impl Into<String>) -> Self {
        self.over.client_application_id = Some(id.into());
        self
    }

    /// Content mirrors: repository base URLs tried after the repository.
    pub fn mirrors(mut self, urls: Vec<String>) -> Self {
        self.over.mirrors = Some(urls);
        self
    }

    /// Transfers running at once (1 to 64; default 8).
    pub fn parallel_downloads(mut self, n: usize) -> Self {
        self.over.parallel_downloads = Some(n);
        self
    }

    /// Bandwidth cap shared by `Low` priority downloads, bytes per second.
    pub fn low_priority_bytes_per_second(mut self, rate: u64) -> Self {
        self.over.low_priority_bytes_per_second = Some(rate);
        self
    }

    /// The slowest acceptable transfer: `bytes_per_second` averaged over `seconds`
    /// (default 1024 over 30; 0 bytes disables it).
    pub fn min_transfer_rate(mut self, bytes_per_second: u64, seconds: u64) -> Self {
        self.over.min_transfer_rate = Some(bytes_per_second);
        self.over.min_transfer_rate_seconds = Some(seconds);
        self
    }
    /// Keep downloaded content in the cache after a successful install (default false).
    pub fn keep_downloads(mut self, keep: bool) -> Self {
        self.over.keep_downloads = Some(keep);
        self
    }
    /// The most bytes of content the cache keeps (least recently used removed beyond it).
    pub fn cache_max_bytes(mut self, bytes: u64) -> Self {
        self.over.cache_max_bytes = Some(bytes);
        self
    }
    /// The architecture applicability rules see, instead of `uname -m`.
    pub fn architecture(mut self, arch: impl Into<String>) -> Self {
        self.over.architecture = Some(arch.into());
        self
    }
    /// The `os-release` file applicability rules read, instead of the install root's.
    pub fn os_release(mut self, path: impl Into<PathBuf>) -> Self {
        self.over.os_release = Some(path.into());
        self
    }
    /// The caller's name when neither the builder, the environment nor the configuration
    /// file gives one (a tool's own name, below the user's settings).
    pub fn default_client_application_id(mut self, id: impl Into<String>) -> Self {
        self.default_client_id = Some(id.into());
        self
    }
    /// A TOML configuration file.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }
    /// Whether to read `UPKEEP_*` environment variables (default true).
    pub fn env(mut self, read: bool) -> Self {
        self.no_env = !read;
        self
    }
    /// A transport other than HTTP (tests, custom schemes).
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.transport = Some(t);
        self
    }
    /// TUF limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }
    /// A read-only session (WUA's `ReadOnly`, "locked down"): it searches, reads history
    /// and the cache, but every change — download, install, uninstall, accepting a
    /// license, hiding, cache import and clean — is `WU_E_INVALID_OPERATION`, and it does
    /// not recover an interrupted transaction (a writing session does). The daemon hands
    /// such sessions to callers it does not trust to change the machine.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The configuration these settings resolve to (file, environment, builder).
    fn resolved(&mut self) -> Result<ResolvedConfig> {
        let env_file = if self.no_env {
            None
        } else {
            std::env::var_os("UPKEEP_CONFIG").map(PathBuf::from)
        };
        let mut cfg = match self.config_file.clone().or(env_file) {
            Some(p) => Config::from_file(&p)?,
            None => Config::default(),
        };
        if !self.no_env {
            cfg = cfg.merge(Config::from_env()?);
        }
        let mut cfg = cfg.merge(std::mem::take(&mut self.over));
        if cfg.client_application_id.is_none() {
            cfg.client_application_id = self.default_client_id.take();
        }
        let mut cfg = cfg.resolve()?;
        if let Some(url) = &cfg.repository {
            cfg.repository = Some(crate::services::normalize_url(url)?);
        }
        Ok(cfg)
    }

    /// An `UpdateServiceManager` for these settings' state directory (WUA's
    /// `CreateUpdateServiceManager`), usable before any service is trusted: `upkeep
    /// service add` on a new machine.
    pub fn build_service_manager(mut self) -> Result<crate::UpdateServiceManager> {
        let cfg = self.resolved()?;
        secure_state_dir(&cfg.state_dir)?;
        Ok(crate::UpdateServiceManager::new(cfg))
    }

    /// Builds the session: resolves the configuration, creates the state directory, and
    /// installs each service's trusted root there if it has none yet (verifying it is
    /// self-signed). With no service at all — no repository, no trusted root, nothing
    /// configured or registered — it is `WU_E_NOT_INITIALIZED` and nothing is created.
    pub fn build(mut self) -> Result<UpdateSession> {
        let cfg = self.resolved()?;
        let md = cfg.state_dir.join("metadata");
        let others = !cfg.services.is_empty() || cfg.state_dir.join("services").is_dir();
        if !md.join("root.json").exists() && cfg.trusted_root.is_none() && !others {
            // Nothing to trust yet: say so, and create nothing.
            return Err(Error::new(
                HResult::WU_E_NOT_INITIALIZED,
                format!(
                    "{} has no trusted root yet: give one with --trusted-root or trusted_root (and the repository with --repo or repository)",
                    md.display()
                ),
            )
            .with_kind(crate::ErrorKind::NotInitialized));
        }
        secure_state_dir(&cfg.state_dir)?;
        let mut foreign_root = None;
        if let (true, Some(tr)) = (md.join("root.json").exists(), &cfg.trusted_root) {
            // The state already trusts a root: the given one is not used. If it shares no
            // root key with that one, it is probably another repository's.
            let given = std::fs::read(tr).ok();
            let held = std::fs::read(md.join("root.json")).ok();
            match (
                given.as_deref().and_then(root_keys_of),
                held.as_deref().and_then(root_keys_of),
            ) {
                (Some((gv, gk)), Some((hv, hk))) if !gk.iter().any(|k| hk.contains(k)) => {
                    foreign_root = Some(format!(
                        "the state directory {} already trusts a root (version {hv}) that shares no key with --trusted-root {} (version {gv}), which was not used: if this is another repository, use another --state-dir (or remove {} to trust the new root)",
                        cfg.state_dir.display(),
                        tr.display(),
                        md.display()
                    ));
                }
                (None, _) => tracing::warn!(
                    "--trusted-root {} is not readable root metadata; it was not used (the state directory already trusts a root)",
                    tr.display()
                ),
                _ => {}
            }
            // Never ignored silently: said now, and again with a refusal it explains.
            if let Some(hint) = &foreign_root {
                tracing::warn!("{hint}");
            }
        }
        // A default service needs the repository or a trusted root; given a root alone,
        // it is the default service's.
        if cfg.repository.is_some() || cfg.trusted_root.is_some() {
            std::fs::create_dir_all(&md).map_err(|e| {
                Error::new(
                    HResult::WU_E_DS_UNEXPECTED,
                    format!("{}: {e}", md.display()),
                )
            })?;
        }
        for svc in crate::services::list(&cfg)? {
            if svc.trusted {
                continue;
            }
            let Some(tr) = &svc.trusted_root else {
                return Err(Error::new(
                    HResult::WU_E_NOT_INITIALIZED,
                    format!(
                        "{} has no trusted root yet: give one with {}",
                        svc.metadata_dir.display(),
                        if svc.is_default() {
                            "--trusted-root or trusted_root"
                        } else {
                            "trusted_root in its [[services]] entry"
                        }
                    ),
                )
                .with_kind(crate::ErrorKind::NotInitialized));
            };
            let bytes = std::fs::read(tr).map_err(|e| {
                Error::new(HResult::WU_E_INVALID_FILE, format!("{}: {e}", tr.display()))
            })?;
            std::fs::create_dir_all(&svc.metadata_dir).map_err(|e| {
                Error::new(
                    HResult::WU_E_DS_UNEXPECTED,
                    format!("{}: {e}", svc.metadata_dir.display()),
                )
            })?;
            Client::init_trusted_root(&svc.metadata_dir, &bytes, true).map_err(|e| {
                Error::new(
                    HResult::WU_E_INVALID_FILE,
                    format!("trusted root {}: {e}", tr.display()),
                )
            })?;
        }
        let session = UpdateSession {
            inner: Arc::new(SessionInner {
                client_application_id: Mutex::new(cfg.client_application_id.clone()),
                cfg,
                transport: self.transport,
                http: std::sync::OnceLock::new(),
                limits: self.limits.unwrap_or_default(),
                catalogs: Mutex::new(std::collections::HashMap::new()),
                merged: Mutex::new(None),
                engine: std::sync::OnceLock::new(),
                foreign_root,
                read_only: self.read_only,
            }),
        };
        if !session.read_only() {
            session.recover()?;
        }
        Ok(session)
    }
}

/// Makes the state directory the one gate that keeps other local users out of everything
/// the agent keeps there (trusted metadata, the cache and its partial files, staged files,
/// backups of replaced files — setuid ones too —, pinned content, the state database, the
/// install lock): created `0700` whatever the umask (its parents as usual), an existing one
/// that others could only read (as older agents made it) tightened to `0700`; one that
/// other users could write, that belongs to another user, or that is a symlink, is refused
/// with `E_ACCESSDENIED`: nothing in it could be trusted.
fn secure_state_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fail = |what: String| Error::new(HResult::WU_E_DS_UNEXPECTED, what);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("{}: {e}", parent.display())))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(format!("{}: {e}", dir.display()))),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let denied = |why: &str| {
        Err(Error::new(
            HResult::E_ACCESSDENIED,
            format!(
                "state directory {}: {why}; fix it or choose another with --state-dir",
                dir.display()
            ),
        ))
    };
    if !m.is_dir() {
        return denied("not a directory (a symlink or a file is where it must be)");
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return denied(&format!(
            "owned by uid {}, not by this user (uid {me})",
            m.uid()
        ));
    }
    if m.mode() & 0o022 != 0 {
        return denied(&format!(
            "other users can write to it (mode {:o})",
            m.mode() & 0o7777
        ));
    }
    if m.mode() & 0o077 != 0 {
        tracing::info!(dir = %dir.display(), mode = format!("{:o}", m.mode() & 0o7777), "making the state directory private (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

type CatalogKey = (u64, u64);

/// Each service's name and catalog key: what a merged catalog was built from.
type ServiceKeys = Vec<(String, CatalogKey)>;

struct SessionInner {
    cfg: ResolvedConfig,
    /// A transport given to the builder (tests, custom schemes), for every service.
    transport: Option<Arc<dyn Transport>>,
    /// The HTTP transport, made when a service first needs it.
    http: std::sync::OnceLock<Arc<dyn Transport>>,
    limits: Limits,
    client_application_id: Mutex<String>,
    /// Each service's catalog, reused while its trusted snapshot is unchanged. Held while
    /// refreshing, so one session refreshes one service at a time.
    catalogs: Mutex<std::collections::HashMap<String, (CatalogKey, Arc<Catalog>)>>,
    /// The last catalog of every service together (what supersedence and installs look
    /// up), and the keys it was merged from.
    merged: Mutex<Option<(ServiceKeys, Arc<Catalog>)>>,
    /// The transfer engine (one pooled HTTP client and transfer queue per session),
    /// started by the first download.
    engine: std::sync::OnceLock<upkeep_transfer::Engine>,
    /// A `--trusted-root` was given that shares no root key with the root the state
    /// directory already trusts (it was not used): said when a refresh is refused.
    foreign_root: Option<String>,
    /// `ReadOnly`.
    read_only: bool,
}

/// The root role's key ids and the version of root metadata `bytes`.
fn root_keys_of(bytes: &[u8]) -> Option<(u64, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let signed = &v["signed"];
    let ids = signed["roles"]["root"]["keyids"]
        .as_array()?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    Some((signed["version"].as_u64()?, ids))
}

/// WUA's `IUpdateSession`: the entry point that creates searchers, downloaders and
/// installers. Cheap to clone; clones share the catalog cache and the transfer engine.
/// Building one recovers install transactions a crash interrupted.
#[derive(Clone)]
pub struct UpdateSession {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for UpdateSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateSession")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl UpdateSession {
    /// A builder.
    pub fn builder() -> UpdateSessionBuilder {
        UpdateSessionBuilder::default()
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ResolvedConfig {
        &self.inner.cfg
    }

    /// `ClientApplicationID` ("Unknown" unless set).
    pub fn client_application_id(&self) -> String {
        self.inner
            .client_application_id
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// Sets `ClientApplicationID`.
    pub fn set_client_application_id(&self, id: impl Into<String>) {
        *self
            .inner
            .client_application_id
            .lock()
            .expect("not poisoned") = id.into();
    }

    /// `ReadOnly`: made read-only by [`UpdateSessionBuilder::read_only`]; every change
    /// through it is `WU_E_INVALID_OPERATION`.
    pub fn read_only(&self) -> bool {
        self.inner.read_only
    }

    /// `WU_E_INVALID_OPERATION` naming `what`, when the session is read-only.
    pub(crate) fn check_writable(&self, what: &str) -> Result<()> {
        if self.read_only() {
            return Err(Error::new(
                HResult::WU_E_INVALID_OPERATION,
                format!("the session is read-only: it cannot {what}"),
            ));
        }
        Ok(())
    }

    /// `CreateUpdateSearcher`.
    pub fn create_update_searcher(&self) -> UpdateSearcher {
        UpdateSearcher {
            session: self.clone(),
            online: true,
            include_superseded: false,
            include_not_applicable: false,
            server_selection: ServerSelection::Default,
            service_id: None,
        }
    }

    /// The catalog of every service (`only`: of one), its trusted metadata refreshed
    /// (online) or loaded (offline); a service's catalog is reused while its snapshot has
    /// not changed. With several services, one that fails is a warning of the result
    /// (unless all fail); the same update id from two services is taken from the first and
    /// is a warning.
    pub(crate) fn catalog_for(&self, only: Option<&str>, online: bool) -> Result<Arc<Catalog>> {
        let mut services = crate::services::list(&self.inner.cfg)?;
        if let Some(name) = only {
            services.retain(|s| s.name == name);
            if services.is_empty() {
                return Err(Error::new(
                    HResult::WU_E_UNKNOWN_SERVICE,
                    format!("no update service is named {name:?} (see `upkeep service list`)"),
                ));
            }
        }
        if services.is_empty() {
            return Err(Error::new(
                HResult::WU_E_NOT_INITIALIZED,
                "no repository configured: give one with --repo or repository, or add a service",
            ));
        }
        let mut cache = self.inner.catalogs.lock().expect("not poisoned");
        if services.len() == 1 {
            let (_, cat) = self.service_catalog(&mut cache, &services[0], online)?;
            if only.is_none() {
                *self.inner.merged.lock().expect("not poisoned") = Some((Vec::new(), cat.clone()));
            }
            return Ok(cat);
        }
        let mut parts = Vec::new();
        let mut failures = Vec::new();
        for svc in &services {
            match self.service_catalog(&mut cache, svc, online) {
                Ok((key, cat)) => parts.push((svc.name.clone(), key, cat)),
                Err(e) => failures.push((svc.name.clone(), e)),
            }
        }
        if parts.is_empty() {
            let (_, e) = failures.remove(0);
            return Err(e);
        }
        let keys: ServiceKeys = parts.iter().map(|(n, k, _)| (n.clone(), *k)).collect();
        let mut merged = self.inner.merged.lock().expect("not poisoned");
        let cat = match merged.as_ref() {
            Some((k, cat)) if failures.is_empty() && *k == keys => cat.clone(),
            _ => {
                let failed = failures
                    .iter()
                    .map(|(n, e)| UpdateException {
                        message: format!("service {n} left out: {}", e.message()),
                        hresult: e.hresult(),
                    })
                    .collect();
                let cat = Arc::new(Catalog::merge(
                    parts.into_iter().map(|(n, _, c)| (n, c)).collect(),
                    failed,
                ));
                if only.is_none() && failures.is_empty() {
                    *merged = Some((keys, cat.clone()));
                }
                cat
            }
        };
        Ok(cat)
    }

    /// [`catalog_for`](Self::catalog_for) every service.
    pub(crate) fn catalog(&self, online: bool) -> Result<Arc<Catalog>> {
        self.catalog_for(None, online)
    }

    /// The transport for a service's URL.
    fn transport_for(&self, url: Option<&str>) -> Result<Arc<dyn Transport>> {
        if let Some(t) = &self.inner.transport {
            return Ok(t.clone());
        }
        if url.is_none_or(|u| u.starts_with("file://")) {
            return Ok(Arc::new(upkeep_tuf::FileTransport));
        }
        if let Some(t) = self.inner.http.get() {
            return Ok(t.clone());
        }
        let cfg = &self.inner.cfg;
        let t: Arc<dyn Transport> = Arc::new(
            HttpTransport::with_timeouts(
                std::time::Duration::from_secs(cfg.connect_timeout_seconds),
                std::time::Duration::from_secs(cfg.response_timeout_seconds),
            )
            .map_err(upkeep_tuf::Error::from)?
            .with_min_rate(
                cfg.min_transfer_rate,
                std::time::Duration::from_secs(cfg.min_transfer_rate_seconds),
            ),
        );
        Ok(self.inner.http.get_or_init(|| t).clone())
    }

    /// One service's catalog, refreshed or loaded, from the cache when its snapshot has
    /// not changed.
    fn service_catalog(
        &self,
        cache: &mut std::collections::HashMap<String, (CatalogKey, Arc<Catalog>)>,
        svc: &crate::UpdateService,
        online: bool,
    ) -> Result<(CatalogKey, Arc<Catalog>)> {
        let url = match (&svc.url, online) {
            (Some(r), _) => metadata_url(r),
            (None, false) => String::from("offline:"),
            (None, true) => {
                return Err(Error::new(
                    HResult::WU_E_NOT_INITIALIZED,
                    "no repository configured: give one with --repo or repository",
                ))
            }
        };
        let cfg = ClientConfig {
            metadata_dir: svc.metadata_dir.clone(),
            metadata_url: url,
            limits: self.inner.limits.clone(),
            offline: !online,
            timestamp_first: true,
        };
        let started = std::time::Instant::now();
        let mut client = Client::new(cfg, self.transport_for(svc.url.as_deref())?)?;
        client
            .refresh()
            .map_err(|e| explain_refresh(svc, Error::from(e)))?;
        tracing::debug!(service = %svc.name, elapsed = ?started.elapsed(), "top-level metadata refreshed");
        let t = client.trusted();
        let key = (
            t.root().common.version,
            t.snapshot().map_or(0, |s| s.common.version),
        );
        if let Some((k, cat)) = cache.get(&svc.name) {
            if *k == key && !cat.is_tampered() {
                return Ok((key, cat.clone()));
            }
        }
        // A new process: the catalog index of this very metadata, when there is one.
        let index = svc.metadata_dir.join(crate::catalog_index::FILE);
        let index_key = crate::catalog_index::Key::of(&svc.metadata_dir);
        if let Some(cat) = index_key
            .as_ref()
            .and_then(|k| crate::catalog_index::open(&index, k))
        {
            tracing::debug!(service = %svc.name, updates = cat.len(), elapsed = ?started.elapsed(), "catalog index opened");
            let cat = Arc::new(cat);
            cache.insert(svc.name.clone(), (key, cat.clone()));
            return Ok((key, cat));
        }
        let all = client.all_targets()?;
        tracing::debug!(
            service = %svc.name,
            targets = all.targets.len(),
            roles = all.roles_loaded,
            elapsed = ?started.elapsed(),
            "every targets role loaded"
        );
        // The index is written beside the build, under the key of the metadata just used.
        let index_key = crate::catalog_index::Key::of(&svc.metadata_dir);
        let cat = Catalog::build_indexed(
            all,
            &svc.name,
            index_key.as_ref().map(|k| (index.as_path(), k)),
        );
        tracing::debug!(service = %svc.name, updates = cat.len(), elapsed = ?started.elapsed(), "catalog built");
        let cat = Arc::new(cat);
        cache.insert(svc.name.clone(), (key, cat.clone()));
        Ok((key, cat))
    }
}

impl UpdateSession {
    /// The session's transfer engine, started on first use.
    pub(crate) fn engine(&self) -> Result<upkeep_transfer::Engine> {
        if let Some(e) = self.inner.engine.get() {
            return Ok(e.clone());
        }
        let cfg = &self.inner.cfg;
        let opts = upkeep_transfer::TransferOptions {
            parallel: cfg.parallel_downloads,
            low_priority_bytes_per_second: cfg.low_priority_bytes_per_second,
            min_rate: cfg.min_transfer_rate,
            min_rate_window: std::time::Duration::from_secs(cfg.min_transfer_rate_seconds),
            connect_timeout: std::time::Duration::from_secs(cfg.connect_timeout_seconds),
            stall_timeout: std::time::Duration::from_secs(cfg.response_timeout_seconds),
            ..Default::default()
        };
        let engine = upkeep_transfer::Engine::new(self.content_cache()?, opts)
            .map_err(|e| Error::new(e.hresult(), e.to_string()))?;
        // A racing first download may have set one already; use whichever won.
        Ok(self.inner.engine.get_or_init(|| engine).clone())
    }

    /// The base URLs of content of the service `name` (`None`: the default service) — its
    /// `targets/`, then each mirror's — and whether its trusted root uses consistent
    /// snapshots; `WU_E_NOT_INITIALIZED` without a URL or trusted metadata.
    pub(crate) fn content_bases(&self, name: Option<&str>) -> Result<(Vec<String>, bool)> {
        let name = name.unwrap_or(crate::services::DEFAULT_SERVICE);
        let Some(svc) = crate::services::list(&self.inner.cfg)?
            .into_iter()
            .find(|s| s.name == name)
        else {
            return Err(Error::new(
                HResult::WU_E_UNKNOWN_SERVICE,
                format!("update service {name:?} is not configured or registered any more"),
            ));
        };
        let Some(repo) = &svc.url else {
            return Err(Error::new(
                HResult::WU_E_NOT_INITIALIZED,
                "no repository configured: give one with --repo or repository",
            ));
        };
        let md = &svc.metadata_dir;
        if !md.join("timestamp.json").exists() {
            return Err(Error::new(
                HResult::WU_E_NOT_INITIALIZED,
                format!("no metadata of service {name} is trusted yet: search first"),
            ));
        }
        let root = std::fs::read(md.join("root.json")).map_err(|e| {
            Error::new(
                HResult::WU_E_NOT_INITIALIZED,
                format!("{}: {e}", md.display()),
            )
        })?;
        let root = upkeep_tuf::metadata::parse::<upkeep_tuf::metadata::Root>("root", &root)?;
        let mut bases = Vec::new();
        for b in std::iter::once(repo).chain(&svc.mirrors) {
            let mut b = b.clone();
            if !b.ends_with('/') {
                b.push('/');
            }
            b.push_str("targets/");
            bases.push(b);
        }
        Ok((bases, root.signed.consistent_snapshot))
    }
}

/// Per-machine state read once per search: installed and hidden updates, accepted
/// licenses, cached content.
pub(crate) struct LocalState {
    installed: std::collections::HashMap<uuid::Uuid, upkeep_store::Installed>,
    hidden: HashSet<uuid::Uuid>,
    eulas: HashSet<(uuid::Uuid, u32)>,
    cached: HashSet<String>,
}

impl LocalState {
    /// The state of a published update: installed when this revision (or a later one) is;
    /// an upgrade (not installed, with `installed_revision` set) when an earlier one is.
    pub(crate) fn state_of(&self, u: &Update) -> upkeep_types::UpdateState {
        let id = u.identity().update_id;
        let rev = u.identity().revision_number;
        let any = self.installed.get(&id);
        let inst = any.filter(|i| i.revision >= rev);
        upkeep_types::UpdateState {
            is_installed: inst.is_some(),
            is_present: inst.is_some(),
            is_hidden: self.hidden.contains(&id),
            is_downloaded: self.is_cached(u),
            eula_accepted: self.eulas.contains(&(id, rev)),
            reboot_required: inst.is_some_and(|i| i.reboot_required),
            installed_revision: any.map(|i| i.revision),
            ..Default::default()
        }
    }

    fn is_cached(&self, u: &Update) -> bool {
        !self.cached.is_empty()
            && u.download_contents()
                .iter()
                .all(|f| upkeep_transfer::cache_key(f).is_some_and(|k| self.cached.contains(&k)))
    }

    /// An installed update as the agent recorded it at install, when it has the record.
    fn installed_update(&self, i: &upkeep_store::Installed) -> Option<Update> {
        let record = i.record.clone()?;
        let id = record.metadata.id;
        let u = Update::from_record(record, upkeep_types::UpdateState::default());
        let st = upkeep_types::UpdateState {
            is_installed: true,
            is_present: true,
            is_hidden: self.hidden.contains(&id),
            is_downloaded: self.is_cached(&u),
            eula_accepted: self.eulas.contains(&(id, i.revision)),
            reboot_required: i.reboot_required,
            installed_revision: Some(i.revision),
            ..Default::default()
        };
        Some(u.with_state(st))
    }
}

/// The service an installed update came from (the default one for records kept before
/// services existed).
/// A refresh that failed as expired or as a rollback, with the service it concerns and
/// what fixes it: an offline bundle expires by design and a newer one is the fix; older
/// metadata than the machine trusts is what a stale bundle or a rolled-back mirror offers.
fn explain_refresh(svc: &crate::UpdateService, e: Error) -> Error {
    let kind = e.kind();
    let bundle = svc
        .url
        .as_deref()
        .is_some_and(|u| u.ends_with("/bundle/") && u.contains("/services/"));
    let fix = match (kind, bundle) {
        (crate::ErrorKind::Expired, true) => format!(
            "its offline bundle has expired: make a new one (`upkeep repo bundle`) and run `upkeep service update {} FILE`",
            svc.name
        ),
        (crate::ErrorKind::Expired, false) => {
            "its metadata has expired: the publisher renews it with `upkeep repo publish`".into()
        }
        (crate::ErrorKind::Rollback, _) => format!(
            "it offers metadata older than this machine already trusts (a stale offline bundle or a rolled-back mirror); nothing was replaced — use the repository itself{}",
            if bundle {
                format!(", or `upkeep service update {}` with a bundle made later", svc.name)
            } else {
                String::new()
            }
        ),
        _ => return e,
    };
    Error::new(
        e.hresult(),
        format!("service {}: {}; {fix}", svc.name, e.message()),
    )
    .with_kind(kind)
}

pub(crate) fn installed_service(i: &upkeep_store::Installed) -> &str {
    i.record
        .as_ref()
        .and_then(|r| r.service.as_deref())
        .unwrap_or(crate::services::DEFAULT_SERVICE)
}

/// Applicability of every catalog entry on this machine, evaluated once per search.
struct Applies {
    /// Verdicts of the entries that have rules, prerequisites included.
    verdicts: std::collections::HashMap<uuid::Uuid, upkeep_types::applicability::Verdict>,
}

impl Applies {
    fn evaluate(
        session: &UpdateSession,
        catalog: &Catalog,
        local: &LocalState,
        warnings: &mut Vec<UpdateException>,
    ) -> Applies {
        let with_rules: Vec<&Update> = catalog.with_rules().collect();
        let mut verdicts = std::collections::HashMap::new();
        if with_rules.is_empty() {
            return Applies { verdicts };
        }
        let facts = crate::applicable::Facts::read(session.config());
        for u in &with_rules {
            let v = facts.verdict(&u.metadata().applicability);
            if v.needs_newer_agent {
                warnings.push(UpdateException {
                    message: format!(
                        "update {} ({}) needs agent version {} or later (this is {}): not applicable here until the agent is updated",
                        u.identity().update_id,
                        u.title(),
                        u.metadata().applicability.min_agent_version.as_deref().unwrap_or("?"),
                        crate::applicable::AGENT_VERSION
                    ),
                    hresult: HResult::WU_E_NOT_APPLICABLE,
                });
            }
            verdicts.insert(u.identity().update_id, v);
        }
        let installed = |id: &uuid::Uuid| {
            local.installed.contains_key(id)
                || verdicts.get(id).is_some_and(|v| v.detected_installed)
        };
        let available = |id: &uuid::Uuid| {
            let u = catalog.get(id)?;
            let applies = verdicts.get(id).is_none_or(|v| v.not_applicable.is_none());
            Some((u.title().to_string(), u.prerequisites().to_vec(), applies))
        };
        let mut pre = crate::applicable::Prerequisites::new(&installed, &available);
        let mut outcome = Vec::new();
        for u in with_rules.iter().filter(|u| !u.prerequisites().is_empty()) {
            outcome.push((u.identity().update_id, pre.check(u.prerequisites())));
        }
        drop(pre);
        for (id, (checks, failed)) in outcome {
            let v = verdicts.get_mut(&id).expect("evaluated above");
            v.checks.extend(checks);
            if v.not_applicable.is_none() {
                v.not_applicable = failed;
            }
        }
        Applies { verdicts }
    }

    /// Sets the applicability part of a published update's state.
    fn apply(&self, u: &Update, st: &mut upkeep_types::UpdateState) {
        if self.verdicts.is_empty() {
            return; // a catalog without rules: nothing to look up, 100,000 times
        }
        let Some(v) = self.verdicts.get(&u.identity().update_id) else {
            return;
        };
        let detected = v.detected_installed && !st.is_installed;
        if detected {
            st.is_installed = true;
            st.is_present = true;
        }
        st.applicability = Some(Box::new(upkeep_types::Applied {
            not_applicable: v.not_applicable.clone(),
            detected,
            checks: v.checks.clone(),
        }));
    }
}

/// Records `accept_eula` / `set_is_hidden` of searched updates in the session's state.
#[derive(Debug)]
pub(crate) struct SessionSink(pub(crate) UpdateSession);

fn state_err(e: Error) -> upkeep_types::StateError {
    upkeep_types::StateError {
        hresult: e.hresult(),
        message: e.message().to_string(),
    }
}

impl upkeep_types::StateSink for SessionSink {
    fn accept_eula(
        &self,
        id: &uuid::Uuid,
        revision: u32,
    ) -> std::result::Result<(), upkeep_types::StateError> {
        self.0
            .check_writable("accept license terms")
            .and_then(|()| self.0.store())
            .and_then(|s| Ok(s.accept_eula(&id.to_string(), revision)?))
            .map_err(state_err)
    }
    fn set_hidden(
        &self,
        id: &uuid::Uuid,
        hidden: bool,
    ) -> std::result::Result<(), upkeep_types::StateError> {
        self.0
            .check_writable("hide or show updates")
            .and_then(|()| self.0.store())
            .and_then(|s| Ok(s.set_hidden(&id.to_string(), hidden)?))
            .map_err(state_err)
    }
    fn eula_text(
        &self,
        file: &upkeep_types::ContentFile,
        service: Option<&str>,
    ) -> std::result::Result<String, upkeep_types::StateError> {
        let path = match self.0.content_cache().map_err(state_err)?.get(file) {
            Some(p) => p,
            None => {
                let engine = self.0.engine().map_err(state_err)?;
                let (bases, consistent) = self.0.content_bases(service).map_err(state_err)?;
                let urls: Vec<String> = bases
                    .iter()
                    .map(|b| upkeep_tuf::target_url(b, &file.path, &file.hashes, consistent))
                    .collect();
                engine
                    .fetch_blocking(
                        file,
                        &urls,
                        upkeep_types::DownloadPriority::High,
                        |_| {},
                        || false,
                    )
                    .map_err(|e| upkeep_types::StateError {
                        hresult: upkeep_types::HResult::WU_E_EULA_UNAVAILABLE,
                        message: e.to_string(),
                    })?
            }
        };
        let bytes = std::fs::read(&path).map_err(|e| upkeep_types::StateError {
            hresult: upkeep_types::HResult::WU_E_EULA_UNAVAILABLE,
            message: format!("{}: {e}", path.display()),
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl UpdateSession {
    /// The state database (one connection; cheap to open).
    pub(crate) fn store(&self) -> Result<upkeep_store::Store> {
        Ok(upkeep_store::Store::open(&self.inner.cfg.state_dir)?)
    }

    pub(crate) fn local_state(&self) -> Result<LocalState> {
        let store = self.store()?;
        let cached = self
            .content_cache()
            .map(|c| c.object_keys())
            .unwrap_or_default();
        // Keyed by UUID: a search looks every catalog entry up here.
        let uuid = |s: &str| s.parse::<uuid::Uuid>().ok();
        Ok(LocalState {
            installed: store
                .installed()?
                .into_iter()
                .filter_map(|i| Some((uuid(&i.update_id)?, i)))
                .collect(),
            hidden: store.hidden()?.iter().filter_map(|h| uuid(h)).collect(),
            eulas: store
                .accepted_eulas()?
                .iter()
                .filter_map(|(id, r)| Some((uuid(id)?, *r)))
                .collect(),
            cached,
        })
    }

    /// Forgets every catalog in memory (the next search reads or rebuilds them).
    pub(crate) fn forget_catalogs(&self) {
        self.inner.catalogs.lock().expect("not poisoned").clear();
        *self.inner.merged.lock().expect("not poisoned") = None;
    }

    /// An update of the catalog in memory (no refresh).
    pub(crate) fn cached_update(&self, id: &uuid::Uuid) -> Option<Update> {
        let cache = self.inner.merged.lock().expect("not poisoned");
        cache.as_ref().and_then(|(_, cat)| cat.get(id).cloned())
    }

    /// Who supersedes whom, as the catalog in memory knows it (no refresh): id → its
    /// service and the ids it supersedes.
    pub(crate) fn supersedence(&self) -> crate::installer::Supersedence {
        let cache = self.inner.merged.lock().expect("not poisoned");
        cache
            .as_ref()
            .map(|(_, cat)| {
                cat.entries()
                    .iter()
                    .filter(|u| !u.superseded_update_ids().is_empty())
                    .map(|u| {
                        (
                            u.identity().update_id,
                            (
                                u.service().unwrap_or(crate::DEFAULT_SERVICE).to_string(),
                                u.superseded_update_ids().to_vec(),
                            ),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks every path the installed updates `ids` own (all installed updates when
    /// `ids` is empty) against what was installed there: kind, size, content, mode,
    /// symlink target (as `dpkg --verify` does). Reads only. An id that is not installed
    /// is `WU_E_NOT_APPLICABLE`.
    pub fn verify(&self, ids: &[String]) -> Result<Vec<VerifiedUpdate>> {
        let store = self.store()?;
        let layout = self.layout()?;
        let installed = store.installed()?;
        if let Some(missing) = ids
            .iter()
            .find(|id| !installed.iter().any(|i| &i.update_id == *id))
        {
            return Err(Error::new(
                HResult::WU_E_NOT_APPLICABLE,
                format!("update {missing} is not installed"),
            ));
        }
        let mut out = Vec::new();
        for i in installed
            .iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.update_id))
        {
            let owned = store.owned(&i.update_id)?;
            let mut changed = Vec::new();
            for o in &owned {
                let state = upkeep_install::verify::check(&layout.dir, o)?;
                if state != upkeep_install::verify::PathState::Intact {
                    changed.push((o.path.clone(), state));
                }
            }
            out.push(VerifiedUpdate {
                update_id: i.update_id.clone(),
                title: i.title.clone(),
                paths_checked: owned.len(),
                changed,
            });
        }
        Ok(out)
    }

    /// Every installed update, from the records the agent keeps (no repository needed),
    /// oldest install first.
    pub fn installed_updates(&self) -> Result<Vec<InstalledUpdate>> {
        let store = self.store()?;
        let local = self.local_state()?;
        let mut out = Vec::new();
        for i in store.installed()? {
            let size_on_disk = store.owned_size(&i.update_id)?;
            let update = local.installed_update(&i).map(|u| {
                u.with_state_and_sink(
                    u.state().clone(),
                    Some(Arc::new(SessionSink(self.clone())) as Arc<dyn upkeep_types::StateSink>),
                )
            });
            out.push(InstalledUpdate {
                update_id: i.update_id,
                revision: i.revision,
                title: i.title,
                handler: i.handler,
                installed_at: i.installed_at,
                reboot_required: i.reboot_required,
                size_on_disk,
                update,
            });
        }
        Ok(out)
    }

    /// Applies `cache_max_bytes`: removes the least recently used content beyond it,
    /// never the objects of `keep`.
    pub(crate) fn trim_cache(&self, keep: &HashSet<String>) {
        let Some(max) = self.inner.cfg.cache_max_bytes else {
            return;
        };
        if let Ok(cache) = self.content_cache() {
            let (n, bytes) = cache.enforce_cap(max, keep);
            if n > 0 {
                tracing::info!(
                    objects = n,
                    bytes,
                    "cache over cache_max_bytes ({max}): least recently used content removed"
                );
            }
        }
    }

    /// After an install job: removes the content of the updates it installed (unless
    /// `keep_downloads`; a `command` update's uninstall runs from the copy the install
    /// engine pinned, not from the cache), except what `still_needed` (updates of the job
    /// that did not install) uses; then applies the cap.
    pub(crate) fn after_install(&self, installed: &[&Update], still_needed: &HashSet<String>) {
        if !self.inner.cfg.keep_downloads && !installed.is_empty() {
            if let Ok(cache) = self.content_cache() {
                let mut freed = 0;
                for k in content_keys(installed.iter().copied()) {
                    if !still_needed.contains(&k) {
                        freed += cache.remove_key(&k);
                    }
                }
                for u in installed {
                    u.mark_not_downloaded();
                }
                tracing::debug!(bytes = freed, "installed content removed from the cache");
            }
        }
        self.trim_cache(still_needed);
    }

    /// Removes every object and unfinished download from the content cache (`upkeep cache
    /// clean`); pinned copies of installed `command` updates are not in it.
    pub fn clean_cache(&self) -> Result<CacheReport> {
        self.check_writable("clean the cache")?;
        let cache = self.content_cache()?;
        let mut report = CacheReport::default();
        for e in cache.entries() {
            let freed = cache.remove_key(&e.key);
            if freed > 0 {
                report.objects += 1;
                report.bytes += freed;
            }
        }
        let (n, bytes) = cache.remove_partials(None);
        report.partial_files = n;
        report.bytes += bytes;
        Ok(report)
    }

    /// WUA's `CopyToCache`, for a whole directory: every regular file under `paths`
    /// (directories walked, symlinks not followed) whose SHA-256 is that of a content file
    /// of the trusted metadata (loaded from disk: no network) is copied into the cache —
    /// read up to its signed length, every signed hash checked — and counts as downloaded.
    /// A file that matches nothing is reported, not copied.
    pub fn copy_to_cache(&self, paths: &[PathBuf]) -> Result<CacheImport> {
        self.check_writable("import into the cache")?;
        let catalog = self.catalog(false)?;
        let mut by_len: std::collections::HashMap<u64, Vec<(String, upkeep_types::ContentFile)>> =
            Default::default();
        for u in catalog.entries() {
            let files = u
                .download_contents()
                .iter()
                .chain(u.eula_file())
                .chain(u.bootstrapper());
            for f in files {
                if let Some(k) = upkeep_transfer::cache_key(f) {
                    let list = by_len.entry(f.length).or_default();
                    if !list.iter().any(|(key, _)| *key == k) {
                        list.push((k, f.clone()));
                    }
                }
            }
        }
        let cache = self.content_cache()?;
        let mut report = CacheImport::default();
        // The paths named must be there; what vanishes or cannot be read below them while
        // the walk runs is a report of that file, not the end of the import.
        for p in paths {
            std::fs::symlink_metadata(p).map_err(|e| {
                Error::new(HResult::WU_E_INVALID_FILE, format!("{}: {e}", p.display()))
            })?;
        }
        let mut todo: Vec<PathBuf> = paths.to_vec();
        let mut seen_files = 0usize;
        while let Some(p) = todo.pop() {
            let shown = p.display().to_string();
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    report.failed.push((shown, format!("cannot be read: {e}")));
                    continue;
                }
            };
            if m.is_dir() {
                match std::fs::read_dir(&p) {
                    Ok(rd) => {
                        for e in rd {
                            match e {
                                Ok(e) => todo.push(e.path()),
                                Err(e) => report
                                    .failed
                                    .push((shown.clone(), format!("cannot be listed: {e}"))),
                            }
                        }
                    }
                    Err(e) => report
                        .failed
                        .push((shown, format!("cannot be listed: {e}"))),
                }
                continue;
            }
            if !m.is_file() {
                continue;
            }
            seen_files += 1;
            if seen_files > 1_000_000 {
                return Err(Error::new(
                    HResult::E_INVALIDARG,
                    "more than 1,000,000 files to import: name the directory of the content",
                ));
            }
            let Some(cands) = by_len.get(&m.len()) else {
                report.unmatched.push(shown);
                continue;
            };
            let files: Vec<upkeep_types::ContentFile> =
                cands.iter().map(|(_, f)| f.clone()).collect();
            match cache.import_candidate(&p, &files) {
                Ok(upkeep_transfer::Imported::New(file, _)) => {
                    report.bytes += file.length;
                    report.imported.push((shown, file.path));
                }
                Ok(upkeep_transfer::Imported::Already(file)) => report.already.push(file.path),
                Ok(upkeep_transfer::Imported::Unmatched) => report.unmatched.push(shown),
                Ok(upkeep_transfer::Imported::NotRegular(what)) => report
                    .failed
                    .push((shown, format!("is {what} now, not a regular file"))),
                Err(e) => report.failed.push((shown, e.to_string())),
            }
        }
        report.imported.sort();
        report.unmatched.sort();
        Ok(report)
    }

    /// WUA's `CopyFromCache`: copies the cached content of `updates` (content files, and
    /// the license text and bootstrapper when cached) to `dir/<target path>`, for another
    /// machine's `copy_to_cache`. An update whose content is not all cached is
    /// `WU_E_DM_NOTDOWNLOADED`, naming it, before anything is copied.
    pub fn copy_from_cache(
        &self,
        updates: &UpdateCollection,
        dir: &std::path::Path,
    ) -> Result<Vec<PathBuf>> {
        let cache = self.content_cache()?;
        let mut plan = Vec::new();
        for u in updates {
            for f in u.download_contents() {
                let Some(src) = cache.get(f) else {
                    return Err(Error::new(
                        HResult::WU_E_DM_NOTDOWNLOADED,
                        format!(
                            "update {} ({}): {} is not in the cache; download it first",
                            u.identity().update_id,
                            u.title(),
                            f.path
                        ),
                    ));
                };
                plan.push((src, f.path.clone()));
            }
            for f in u.eula_file().into_iter().chain(u.bootstrapper()) {
                if let Some(src) = cache.get(f) {
                    plan.push((src, f.path.clone()));
                }
            }
        }
        let mut out = Vec::new();
        for (src, rel) in plan {
            if !upkeep_types::is_valid_target_path(&rel) {
                continue; // validated with the record; never a path out of `dir`
            }
            let to = dir.join(&rel);
            let fail = |e: std::io::Error| {
                Error::new(
                    HResult::WU_E_DM_UNEXPECTED,
                    format!("{}: {e}", to.display()),
                )
            };
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(fail)?;
            }
            std::fs::copy(&src, &to).map_err(fail)?;
            out.push(to);
        }
        Ok(out)
    }

    /// What the content cache holds, least recently used first, each object with the
    /// updates of the catalog in memory (or of the installed records) whose content it is.
    pub fn cache_entries(&self) -> Result<(Vec<CacheObject>, Vec<CachePartial>)> {
        let cache = self.content_cache()?;
        let mut owners: std::collections::HashMap<String, Vec<String>> = Default::default();
        {
            let cat = self.inner.merged.lock().expect("not poisoned");
            if let Some((_, cat)) = cat.as_ref() {
                for u in cat.entries() {
                    for k in content_keys(std::iter::once(u)) {
                        owners.entry(k).or_default().push(format!(
                            "{} ({})",
                            u.title(),
                            u.identity()
                        ));
                    }
                }
            }
        }
        let objects = cache
            .entries()
            .into_iter()
            .map(|e| CacheObject {
                updates: owners.remove(&e.key).unwrap_or_default(),
                key: e.key,
                bytes: e.bytes,
                last_used: jiff::Timestamp::try_from(e.last_used).unwrap_or_default(),
                verified: e.verified,
            })
            .collect();
        let partials = cache
            .partials()
            .into_iter()
            .map(|(name, bytes, modified)| CachePartial {
                name,
                bytes,
                modified: jiff::Timestamp::try_from(modified).unwrap_or_default(),
            })
            .collect();
        Ok((objects, partials))
    }

    /// The install root and its work directory.
    pub(crate) fn layout(&self) -> Result<upkeep_install::Layout> {
        Ok(upkeep_install::Layout::new(
            &self.inner.cfg.install_root,
            &self.inner.cfg.state_dir,
        )?)
    }

    /// Tries to take the machine-wide install lock (`<state_dir>/install.lock`); `None`
    /// when another installer, in this process or another, holds it.
    pub(crate) fn try_install_lock(&self) -> Result<Option<std::fs::File>> {
        upkeep_fs::try_lock(&self.inner.cfg.state_dir.join("install.lock"))
            .map_err(|e| Error::new(HResult::WU_E_DS_UNEXPECTED, e.to_string()))
    }

    /// Recovery: rolls back or finishes install transactions a crash interrupted. Runs
    /// when the session is built, unless another installer holds the lock (then that one
    /// owns the transaction).
    fn recover(&self) -> Result<()> {
        let store = self.store()?;
        if store.unfinished_txs()?.is_empty() {
            return Ok(());
        }
        if let Some(_lock) = self.try_install_lock()? {
            let n = upkeep_install::tx::recover(&store, &self.layout()?)?;
            tracing::info!("recovered {n} interrupted transaction(s)");
        }
        Ok(())
    }

    /// `UpdateSearcher::QueryHistory` and `GetTotalHistoryCount` share this.
    pub(crate) fn history(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Vec<upkeep_store::HistoryEntry>> {
        Ok(self.store()?.history(start, count)?)
    }
}

/// The cache keys of the content files of `updates`.
pub(crate) fn content_keys<'a>(updates: impl Iterator<Item = &'a Update>) -> HashSet<String> {
    updates
        .flat_map(|u| u.download_contents().iter())
        .filter_map(upkeep_transfer::cache_key)
        .collect()
}

/// One installed update as [`UpdateSession::verify`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUpdate {
    /// Its id.
    pub update_id: String,
    /// Its title at install time.
    pub title: String,
    /// How many paths it owns.
    pub paths_checked: usize,
    /// The paths that are not as installed, and how.
    pub changed: Vec<(String, upkeep_install::verify::PathState)>,
}

/// What `copy_to_cache` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheImport {
    /// (file, the target it was imported as).
    pub imported: Vec<(String, String)>,
    /// Targets that were in the cache already.
    pub already: Vec<String>,
    /// Files matching no content file of the trusted metadata.
    pub unmatched: Vec<String>,
    /// (file, why) for files that matched but could not be imported.
    pub failed: Vec<(String, String)>,
    /// Bytes imported.
    pub bytes: u64,
}

/// What `clean_cache` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheReport {
    /// Verified (or unverified) objects.
    pub objects: usize,
    /// Unfinished downloads.
    pub partial_files: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// An object of the content cache.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheObject {
    /// Its key (SHA-256 of the content).
    pub key: String,
    /// Its size.
    pub bytes: u64,
    /// When it was downloaded or last used.
    pub last_used: jiff::Timestamp,
    /// It counts as downloaded (its stamp matches).
    pub verified: bool,
    /// The updates (title and identity) whose content it is, as far as the session's
    /// catalog knows.
    pub updates: Vec<String>,
}

/// An unfinished download kept for resuming.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CachePartial {
    /// Its file name in `cache/partial/`.
    pub name: String,
    /// Bytes so far.
    pub bytes: u64,
    /// Last written.
    pub modified: jiff::Timestamp,
}

/// An installed update as the agent keeps it (not WUA's: WUA answers `IsInstalled=1`
/// searches only; this also works with no repository at all).
#[derive(Clone, Debug)]
pub struct InstalledUpdate {
    /// The update id.
    pub update_id: String,
    /// The installed revision.
    pub revision: u32,
    /// Its title.
    pub title: String,
    /// Its handler id.
    pub handler: String,
    /// When it was installed (or last upgraded).
    pub installed_at: jiff::Timestamp,
    /// Its install asked for a restart that has not happened yet.
    pub reboot_required: bool,
    /// Bytes of the files it owns.
    pub size_on_disk: u64,
    /// The update from its installed record (`None` for one installed by an agent that
    /// kept no record).
    pub update: Option<Update>,
}

fn metadata_url(repo: &str) -> String {
    let mut u = repo.to_string();
    if !u.ends_with('/') {
        u.push('/');
    }
    u.push_str("metadata/");
    u
}

/// WUA's `IUpdateSearcher`.
#[derive(Clone, Debug)]
pub struct UpdateSearcher {
    session: UpdateSession,
    online: bool,
    include_superseded: bool,
    include_not_applicable: bool,
    server_selection: ServerSelection,
    service_id: Option<String>,
}

/// WUA's `ServerSelection`: which update services a search covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[repr(i32)]
pub enum ServerSelection {
    /// `ssDefault` (0): every service.
    #[default]
    Default = 0,
    /// `ssManagedServer` (1): the default service (the `repository` setting).
    ManagedServer = 1,
    /// `ssWindowsUpdate` (2): the default service, as `ManagedServer`.
    WindowsUpdate = 2,
    /// `ssOthers` (3): the service named by `service_id`.
    Others = 3,
}

impl UpdateSearcher {
    /// `Online` (default true). Offline searches use only metadata already trusted locally
    /// and make no request; missing or expired local metadata is `WU_E_NOT_INITIALIZED` or
    /// `WU_E_INVALID_UPDATE`.
    pub fn online(&self) -> bool {
        self.online
    }
    /// Sets `Online`.
    pub fn set_online(&mut self, online: bool) {
        self.online = online;
    }
    /// `IncludePotentiallySupersededUpdates` (default false).
    pub fn include_potentially_superseded_updates(&self) -> bool {
        self.include_superseded
    }
    /// Sets `IncludePotentiallySupersededUpdates`.
    pub fn set_include_potentially_superseded_updates(&mut self, include: bool) {
        self.include_superseded = include;
    }
    /// Whether searches also return updates that do not apply to this machine (an upkeep
    /// extension, default false as in WUA; `show` uses it to say why one does not apply:
    /// [`Update::not_applicable_reason`], [`Update::applicability_checks`]).
    pub fn include_not_applicable(&self) -> bool {
        self.include_not_applicable
    }
    /// Sets [`include_not_applicable`](Self::include_not_applicable).
    pub fn set_include_not_applicable(&mut self, include: bool) {
        self.include_not_applicable = include;
    }
    /// `ServerSelection` (default `Default`: every service).
    pub fn server_selection(&self) -> ServerSelection {
        self.server_selection
    }
    /// Sets `ServerSelection`.
    pub fn set_server_selection(&mut self, s: ServerSelection) {
        self.server_selection = s;
    }
    /// `ServiceID`: the service searched when `ServerSelection` is `Others` (its name).
    pub fn service_id(&self) -> Option<&str> {
        self.service_id.as_deref()
    }
    /// Sets `ServiceID`; searching only that service also needs
    /// `set_server_selection(ServerSelection::Others)`.
    pub fn set_service_id(&mut self, name: impl Into<String>) {
        self.service_id = Some(name.into());
    }
    /// The one service this searcher's selection names, if any.
    fn selected_service(&self) -> Result<Option<&str>> {
        Ok(match self.server_selection {
            ServerSelection::Default => None,
            ServerSelection::ManagedServer | ServerSelection::WindowsUpdate => {
                Some(crate::services::DEFAULT_SERVICE)
            }
            ServerSelection::Others => Some(self.service_id.as_deref().ok_or_else(|| {
                Error::new(
                    HResult::E_INVALIDARG,
                    "ServerSelection is Others but no ServiceID is set",
                )
            })?),
        })
    }
    /// `QueryHistory`: up to `count` entries, newest first, from `start` (0 = newest).
    /// `count` 0 is `WU_E_INVALIDINDEX`.
    pub fn query_history(
        &self,
        start: usize,
        count: usize,
    ) -> Result<Vec<upkeep_store::HistoryEntry>> {
        if count == 0 {
            return Err(Error::new(
                HResult::WU_E_INVALIDINDEX,
                "query_history: count must be at least 1",
            ));
        }
        self.session.history(start, count)
    }

    /// `GetTotalHistoryCount`.
    pub fn total_history_count(&self) -> Result<usize> {
        Ok(self.session.store()?.history_count()?)
    }

    /// `EscapeString`.
    pub fn escape_string(&self, s: &str) -> String {
        criteria::escape_string(s)
    }

    /// `Search`: parses `criteria` (an invalid string fails with `WU_E_INVALID_CRITERIA`
    /// before any request), refreshes the metadata, and returns the matching updates.
    /// Updates superseded by another update in the result are left out unless
    /// [`set_include_potentially_superseded_updates`](Self::set_include_potentially_superseded_updates)
    /// is set.
    pub fn search(&self, criteria: &str) -> Result<SearchResult> {
        let parsed = Criteria::parse(criteria)?;
        let (result, tampered) = self.search_in(&parsed)?;
        if !tampered {
            return Ok(result);
        }
        // A record of a catalog index was changed: the index is gone; search again on the
        // catalog rebuilt from the verified metadata.
        self.session.forget_catalogs();
        Ok(self.search_in(&parsed)?.0)
    }

    fn search_in(&self, criteria: &Criteria) -> Result<(SearchResult, bool)> {
        let catalog = self
            .session
            .catalog_for(self.selected_service()?, self.online)
            .map_err(|e| match (&self.session.inner.foreign_root, e.kind()) {
                (Some(hint), crate::ErrorKind::Threshold | crate::ErrorKind::VersionMismatch) => {
                    let kind = e.kind();
                    Error::new(e.hresult(), format!("{}; {hint}", e.message())).with_kind(kind)
                }
                _ => e,
            })?;
        let local = self.session.local_state()?;
        let mut warnings = catalog.warnings().to_vec();
        let applies = Applies::evaluate(&self.session, &catalog, &local, &mut warnings);
        let sink: Arc<dyn upkeep_types::StateSink> = Arc::new(SessionSink(self.session.clone()));
        // Per-machine state first (installed, hidden, downloaded…), so criteria see it. An
        // installed update is shown at its installed revision, from its own record — also
        // when the repository has a newer revision (shown as well, as an upgrade) or no
        // longer has it at all.
        // Who is superseded — by an installed update, or by one in the result — is
        // gathered while each update is at hand; the result keeps each one's id and
        // whether it is installed beside it, so the filter below touches no update again.
        // An update supersedes only updates of its own service.
        let mut superseded: HashSet<(String, uuid::Uuid)> = HashSet::new();
        let mut updates: Vec<(uuid::Uuid, bool, Update)> = Vec::new();
        let mut seen: HashSet<uuid::Uuid> = HashSet::new();
        let include_superseded = self.include_superseded;
        let include_not_applicable = self.include_not_applicable;
        let mut consider = |u: Update, updates: &mut Vec<(uuid::Uuid, bool, Update)>| {
            if !include_not_applicable && !u.is_applicable() {
                return;
            }
            let installed = u.is_installed();
            let matches = criteria.matches(&u);
            if !include_superseded && (installed || matches) {
                let service = u.service().unwrap_or(crate::DEFAULT_SERVICE);
                superseded.extend(
                    u.superseded_update_ids()
                        .iter()
                        .map(|id| (service.to_string(), *id)),
                );
            }
            if matches {
                updates.push((u.identity().update_id, installed, u));
            }
        };
        // Criteria that name their updates, on a catalog read from its index: only those
        // entries are read (in catalog order).
        let pinned: Vec<&Update>;
        let candidates: &mut dyn Iterator<Item = &Update> = match criteria.pinned_ids() {
            Some(ids) if !catalog.is_loaded() => {
                let mut v: Vec<&Update> = ids.iter().filter_map(|id| catalog.get(id)).collect();
                v.sort_by(|a, b| crate::catalog::order(a, b));
                pinned = v;
                &mut pinned.iter().copied()
            }
            _ => &mut catalog.entries().iter(),
        };
        for u in candidates {
            let id = u.identity().update_id;
            if let Some(i) = local.installed.get(&id) {
                // Installed from one service, offered by another: not an upgrade of it
                // (one service cannot sign for another's updates).
                let from = installed_service(i);
                if from != u.service().unwrap_or(crate::services::DEFAULT_SERVICE) {
                    warnings.push(UpdateException {
                        message: format!(
                            "update {id} ({}) is installed from service {from}; service {}'s update of the same id is ignored",
                            u.title(),
                            u.service().unwrap_or("?")
                        ),
                        hresult: HResult::WU_E_DUPLICATE_ITEM,
                    });
                    continue;
                }
            }
            let mut st = local.state_of(u);
            applies.apply(u, &mut st);
            let published = u.with_state_and_sink(st, Some(sink.clone()));
            match local.installed.get(&id) {
                Some(i) => {
                    seen.insert(id);
                    let mine = local
                        .installed_update(i)
                        .map(|m| m.with_state_and_sink(m.state().clone(), Some(sink.clone())));
                    match mine {
                        // This revision is installed: one entry, from the record.
                        Some(m) if i.revision >= u.identity().revision_number => {
                            consider(m, &mut updates)
                        }
                        // An earlier one: both, the published one as an upgrade.
                        Some(m) => {
                            consider(m, &mut updates);
                            consider(published, &mut updates);
                        }
                        // Installed by an agent that kept no record: the published one
                        // stands for it.
                        None => consider(published, &mut updates),
                    }
                }
                None => consider(published, &mut updates),
            }
        }
        for (id, i) in &local.installed {
            if seen.contains(id) {
                continue;
            }
            if let Some(m) = local.installed_update(i) {
                consider(
                    m.with_state_and_sink(m.state().clone(), Some(sink.clone())),
                    &mut updates,
                );
            }
        }
        if !superseded.is_empty() {
            // Updates not installed that another update in the result, or an installed
            // one, supersedes. Installed updates stay in view.
            updates.retain(|(id, installed, u)| {
                *installed
                    || !superseded.contains(&(
                        u.service().unwrap_or(crate::DEFAULT_SERVICE).to_string(),
                        *id,
                    ))
            });
        }
        // An id offered by two services is a standing condition of the configuration:
        // said once (the first search that meets it), not on every search.
        if warnings
            .iter()
            .any(|w| w.hresult == HResult::WU_E_DUPLICATE_ITEM)
        {
            if let Ok(store) = self.session.store() {
                warnings.retain(|w| {
                    w.hresult != HResult::WU_E_DUPLICATE_ITEM
                        || store.first_notice(&w.message).unwrap_or(true)
                });
            }
        }
        Ok((
            SearchResult {
                result_code: if warnings.is_empty() {
                    OperationResultCode::Succeeded
                } else {
                    OperationResultCode::SucceededWithErrors
                },
                updates: updates.into_iter().map(|(_, _, u)| u).collect(),
                warnings,
            },
            catalog.is_tampered(),
        ))
    }
}

/// WUA's `ISearchResult`.
#[derive(Clone, Debug)]
pub struct SearchResult {
    result_code: OperationResultCode,
    updates: UpdateCollection,
    warnings: Vec<UpdateException>,
}

impl SearchResult {
    pub(crate) fn new(
        result_code: OperationResultCode,
        updates: UpdateCollection,
        warnings: Vec<UpdateException>,
    ) -> SearchResult {
        SearchResult {
            result_code,
            updates,
            warnings,
        }
    }

    /// `ResultCode`: `Succeeded`, or `SucceededWithErrors` when parts of the catalog could
    /// not be read (see `warnings`).
    pub fn result_code(&self) -> OperationResultCode {
        self.result_code
    }
    /// `Updates`.
    pub fn updates(&self) -> &UpdateCollection {
        &self.updates
    }
    /// `Warnings`.
    pub fn warnings(&self) -> &[UpdateException] {
        &self.warnings
    }
    /// `RootCategories`: the distinct categories of the updates found, in first-seen order.
    pub fn root_categories(&self) -> Vec<upkeep_types::Category> {
        let mut seen = HashSet::new();
        self.updates
            .iter()
            .flat_map(|u| u.categories().iter())
            .filter(|c| seen.insert(c.id))
            .cloned()
            .collect()
    }
}
