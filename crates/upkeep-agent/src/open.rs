//! Opening the agent: the configuration, the state directory, trusted roots, recovery.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use upkeep_tuf::{Client, Limits, Transport};
use upkeep_types::HResult;

use crate::catalog::Catalog;
use crate::config::{Config, ResolvedConfig};
use crate::error::{Error, Result};
use crate::Agent;

/// Opens an [`Agent`]: the machine's update agent (configuration, services and their
/// trusted metadata, catalogs, the transfer queue, the state database, the install lock).
/// Settings come from, in rising precedence: the configuration file (`config_file` or
/// `UPKEEP_CONFIG`), `UPKEEP_*` environment variables (unless `env(false)`), and the
/// builder's own calls.
///
/// ```no_run
/// let agent = upkeep_agent::Agent::builder()
///     .repository("http://127.0.0.1:8080/")
///     .trusted_root("root.json")
///     .state_dir("state")
///     .install_root("root")
///     .open()?;
/// let req = agent.request("example");
/// let found = agent.search(&req, "IsInstalled=0", &upkeep_agent::SearchOptions::default())?;
/// println!("{} updates", found.updates().len());
/// # Ok::<(), upkeep_agent::Error>(())
/// ```
#[derive(Default)]
pub struct AgentBuilder {
    over: Config,
    config_file: Option<PathBuf>,
    no_env: bool,
    pub(crate) transport: Option<Arc<dyn Transport>>,
    pub(crate) limits: Option<Limits>,
    default_client_id: Option<String>,
    no_recovery: bool,
    runtime: Option<tokio::runtime::Handle>,
}

impl AgentBuilder {
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
    /// The caller name recorded in history for sessions that set none (default
    /// "Unknown").
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
    /// The host's tokio runtime, for every transfer and every request of the TUF client
    /// (a daemon's; driven by threads of its own: multi-thread, or a current-thread one run
    /// by another thread). Without it the agent starts one current-thread runtime on a
    /// thread of its own when it first needs the network.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Whether opening the agent recovers install transactions a crash interrupted
    /// (default true). An agent opened only to read (a read-only session's) does not.
    pub fn recover(mut self, recover: bool) -> Self {
        self.no_recovery = !recover;
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

    /// Opens the agent: resolves the configuration, creates the state directory, and
    /// installs each service's trusted root there if it has none yet (verifying it is
    /// self-signed). With no service at all — no repository, no trusted root, nothing
    /// configured or registered — it is `WU_E_NOT_INITIALIZED` and nothing is created.
    pub fn open(mut self) -> Result<Agent> {
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
            let given = upkeep_fs::read(tr).ok();
            let held = upkeep_fs::read(md.join("root.json")).ok();
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
            upkeep_fs::create_dir_all(&md)
                .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
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
            let bytes =
                upkeep_fs::read(tr).map_err(|e| Error::fs(HResult::WU_E_INVALID_FILE, e))?;
            upkeep_fs::create_dir_all(&svc.metadata_dir)
                .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
            Client::init_trusted_root(&svc.metadata_dir, &bytes, true).map_err(|e| {
                Error::new(
                    HResult::WU_E_INVALID_FILE,
                    format!("trusted root {}: {e}", tr.display()),
                )
            })?;
        }
        let agent = Agent {
            inner: Arc::new(AgentInner {
                cfg,
                transport: self.transport,
                http: std::sync::OnceLock::new(),
                limits: self.limits.unwrap_or_default(),
                catalogs: Mutex::new(std::collections::HashMap::new()),
                merged: Mutex::new(None),
                engine: std::sync::OnceLock::new(),
                runtime: match self.runtime.take() {
                    Some(h) => std::sync::OnceLock::from(upkeep_transfer::Runtime::from_handle(h)),
                    None => std::sync::OnceLock::new(),
                },
                foreign_root,
            }),
        };
        if !self.no_recovery {
            agent.recover()?;
        }
        tracing::debug!(state_dir = %agent.config().state_dir.display(), "agent opened");
        Ok(agent)
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fail = |e: upkeep_fs::PathError| Error::fs(HResult::WU_E_DS_UNEXPECTED, e);
    if let Some(parent) = dir.parent() {
        upkeep_fs::create_dir_all(parent).map_err(fail)?;
    }
    match upkeep_fs::create_dir_mode(dir, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let m = upkeep_fs::symlink_metadata(dir).map_err(fail)?;
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
        upkeep_fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

pub(crate) type CatalogKey = (u64, u64);

/// Each service's name and catalog key: what a merged catalog was built from.
pub(crate) type ServiceKeys = Vec<(String, CatalogKey)>;

pub(crate) struct AgentInner {
    pub(crate) cfg: ResolvedConfig,
    /// A transport given to the builder (tests, custom schemes), for every service.
    pub(crate) transport: Option<Arc<dyn Transport>>,
    /// The HTTP transport, made when a service first needs it.
    pub(crate) http: std::sync::OnceLock<Arc<dyn Transport>>,
    pub(crate) limits: Limits,
    /// Each service's catalog, reused while its trusted snapshot is unchanged. Held while
    /// refreshing, so the agent refreshes one service at a time.
    pub(crate) catalogs: Mutex<std::collections::HashMap<String, (CatalogKey, Arc<Catalog>)>>,
    /// The last catalog of every service together (what supersedence and installs look
    /// up), and the keys it was merged from.
    pub(crate) merged: Mutex<Option<(ServiceKeys, Arc<Catalog>)>>,
    /// The transfer engine (one pooled HTTP client and transfer queue for every session
    /// and job of the agent), started by the first download.
    pub(crate) engine: std::sync::OnceLock<upkeep_transfer::Engine>,
    /// The one runtime of the agent: transfers and TUF's HTTP requests (the host's, or a
    /// thread of its own started on first use).
    pub(crate) runtime: std::sync::OnceLock<upkeep_transfer::Runtime>,
    /// A `--trusted-root` was given that shares no root key with the root the state
    /// directory already trusts (it was not used): said when a refresh is refused.
    pub(crate) foreign_root: Option<String>,
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
