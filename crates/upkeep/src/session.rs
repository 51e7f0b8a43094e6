//! `UpdateSession` and its builder, and `UpdateSearcher` (WUA's `IUpdateSession` and
//! `IUpdateSearcher`): one client's view of the machine's [`Agent`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use upkeep_agent::{Agent, AgentBuilder, Request, SearchOptions};

use crate::backend::{not_in_process, Backend};
use upkeep_tuf::{Limits, Transport};
use upkeep_types::{HResult, Update, UpdateCollection};

use crate::criteria;
use crate::error::{Error, Result};
use crate::{
    CacheImport, CacheObject, CachePartial, CacheReport, InstalledUpdate, SearchResult,
    VerifiedUpdate,
};

/// Builds an [`UpdateSession`] over an agent of its own (for a session over an agent that
/// others share, [`UpdateSession::new`]). Settings come from, in rising precedence: the
/// configuration file (`config_file` or `UPKEEP_CONFIG`), `UPKEEP_*` environment variables
/// (unless `env(false)`), and the builder's own calls; each is [`AgentBuilder`]'s.
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
    agent: AgentBuilder,
    read_only: bool,
}

/// Setters that are the agent builder's.
macro_rules! forward {
    ($($(#[$m:meta])* fn $name:ident($($arg:ident: $t:ty),*);)*) => {
        $(
            $(#[$m])*
            pub fn $name(mut self, $($arg: $t),*) -> Self {
                self.agent = self.agent.$name($($arg),*);
                self
            }
        )*
    };
}

impl UpdateSessionBuilder {
    forward! {
        /// Repository base URL (`<base>/metadata/`, `<base>/targets/`).
        fn repository(url: impl Into<String>);
        /// File with the initially trusted root; copied into the state directory the first time.
        fn trusted_root(path: impl Into<PathBuf>);
        /// State directory.
        fn state_dir(path: impl Into<PathBuf>);
        /// Install root.
        fn install_root(path: impl Into<PathBuf>);
        /// Caller name recorded in history (default "Unknown").
        fn client_application_id(id: impl Into<String>);
        /// Content mirrors: repository base URLs tried after the repository.
        fn mirrors(urls: Vec<String>);
        /// Transfers running at once (1 to 64; default 8).
        fn parallel_downloads(n: usize);
        /// Bandwidth cap shared by `Low` priority downloads, bytes per second.
        fn low_priority_bytes_per_second(rate: u64);
        /// The slowest acceptable transfer: `bytes_per_second` averaged over `seconds`
        /// (default 1024 over 30; 0 bytes disables it).
        fn min_transfer_rate(bytes_per_second: u64, seconds: u64);
        /// Keep downloaded content in the cache after a successful install (default false).
        fn keep_downloads(keep: bool);
        /// The most bytes of content the cache keeps (least recently used removed beyond it).
        fn cache_max_bytes(bytes: u64);
        /// The architecture applicability rules see, instead of `uname -m`.
        fn architecture(arch: impl Into<String>);
        /// The `os-release` file applicability rules read, instead of the install root's.
        fn os_release(path: impl Into<PathBuf>);
        /// The caller's name when neither the builder, the environment nor the configuration
        /// file gives one (a tool's own name, below the user's settings).
        fn default_client_application_id(id: impl Into<String>);
        /// A TOML configuration file.
        fn config_file(path: impl Into<PathBuf>);
        /// Whether to read `UPKEEP_*` environment variables (default true).
        fn env(read: bool);
        /// A transport other than HTTP (tests, custom schemes).
        fn transport(t: Arc<dyn Transport>);
        /// TUF limits.
        fn limits(limits: Limits);
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

    /// An `UpdateServiceManager` for these settings' state directory (WUA's
    /// `CreateUpdateServiceManager`), usable before any service is trusted: `upkeep
    /// service add` on a new machine.
    pub fn build_service_manager(self) -> Result<crate::UpdateServiceManager> {
        self.agent.build_service_manager()
    }

    /// Builds the session over an agent of its own: resolves the configuration, creates
    /// the state directory, installs each service's trusted root there if it has none yet
    /// (verifying it is self-signed), and (unless read-only) recovers install transactions
    /// a crash interrupted. With no service at all — no repository, no trusted root,
    /// nothing configured or registered — it is `WU_E_NOT_INITIALIZED` and nothing is
    /// created.
    pub fn build(self) -> Result<UpdateSession> {
        let agent = self.agent.recover(!self.read_only).open()?;
        let mut session = UpdateSession::new(&agent);
        session.read_only = self.read_only;
        Ok(session)
    }
}

/// What a session is beyond its agent: the caller.
#[derive(Debug)]
struct Client {
    client_application_id: Mutex<String>,
    locale: Mutex<Option<String>>,
}

/// WUA's `IUpdateSession`: one client of the machine's [`Agent`], creating searchers,
/// downloaders and installers. Cheap to clone; clones are the same session. Sessions over
/// one agent share its catalogs in memory and its transfer queue.
#[derive(Clone)]
pub struct UpdateSession {
    backend: Arc<dyn Backend>,
    client: Arc<Client>,
    read_only: bool,
}

impl std::fmt::Debug for UpdateSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateSession")
            .field("config", self.backend.config())
            .field("client", &self.client)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl UpdateSession {
    /// A builder.
    pub fn builder() -> UpdateSessionBuilder {
        UpdateSessionBuilder::default()
    }

    /// A new session over `agent` (what a host serving many clients does: each its own
    /// session, one agent), its `ClientApplicationID` the configured one.
    pub fn new(agent: &Agent) -> UpdateSession {
        UpdateSession::over(Arc::new(agent.clone()))
    }

    /// A new session over any [`Backend`]: the in-process agent ([`UpdateSession::new`]),
    /// or one that serves the agent from elsewhere.
    pub fn over(backend: Arc<dyn Backend>) -> UpdateSession {
        UpdateSession {
            client: Arc::new(Client {
                client_application_id: Mutex::new(backend.config().client_application_id.clone()),
                locale: Mutex::new(None),
            }),
            backend,
            read_only: false,
        }
    }

    /// The same session, read-only (WUA's `ReadOnly`).
    pub fn into_read_only(mut self) -> UpdateSession {
        self.read_only = true;
        self
    }

    /// The backend this session is a client of.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The agent this session is a client of, when it runs in this process.
    pub fn agent(&self) -> Option<&Agent> {
        self.backend.in_process()
    }

    /// The request that this session's calls make of the agent.
    pub fn request(&self) -> Request {
        let mut r = self.backend.request(self.client_application_id());
        r.read_only = self.read_only;
        r.locale = self.user_locale();
        r
    }

    /// The resolved configuration.
    pub fn config(&self) -> &upkeep_agent::ResolvedConfig {
        self.backend.config()
    }

    /// `ClientApplicationID` ("Unknown" unless set).
    pub fn client_application_id(&self) -> String {
        lock(&self.client.client_application_id).clone()
    }

    /// Sets `ClientApplicationID`.
    pub fn set_client_application_id(&self, id: impl Into<String>) {
        *lock(&self.client.client_application_id) = id.into();
    }

    /// `UserLocale`, when set.
    pub fn user_locale(&self) -> Option<String> {
        lock(&self.client.locale).clone()
    }

    /// Sets `UserLocale`.
    pub fn set_user_locale(&self, locale: impl Into<String>) {
        *lock(&self.client.locale) = Some(locale.into());
    }

    /// `ReadOnly`: made read-only by [`UpdateSessionBuilder::read_only`]; every change
    /// through it is `WU_E_INVALID_OPERATION`.
    pub fn read_only(&self) -> bool {
        self.read_only
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

    /// `IUpdate::AcceptEula`: records that this caller accepted the license of `update`,
    /// and marks it (every clone). An update without license terms needs nothing.
    pub fn accept_eula(&self, update: &Update) -> Result<()> {
        self.backend.accept_eula(&self.request(), update)
    }

    /// `IUpdate::IsHidden = hidden`, recorded for the machine; hiding a mandatory update is
    /// `WU_E_DS_DECLINENOTALLOWED`.
    pub fn set_hidden(&self, update: &Update, hidden: bool) -> Result<()> {
        self.backend.set_hidden(&self.request(), update, hidden)
    }

    /// `IUpdate::EulaText`: the license text, from the cache or fetched and verified;
    /// `WU_E_EULA_UNAVAILABLE` when the update has none or it cannot be had.
    pub fn eula_text(&self, update: &Update) -> Result<String> {
        self.backend.eula_text(update)
    }

    /// Checks every path the installed updates `ids` own (all installed updates when
    /// `ids` is empty) against what was installed there (as `dpkg --verify` does).
    pub fn verify(&self, ids: &[String]) -> Result<Vec<VerifiedUpdate>> {
        self.backend.verify(ids)
    }

    /// Every installed update, from the records the agent keeps (no repository needed),
    /// oldest install first.
    pub fn installed_updates(&self) -> Result<Vec<InstalledUpdate>> {
        self.backend.installed_updates()
    }

    /// Removes every object and unfinished download from the content cache.
    pub fn clean_cache(&self) -> Result<CacheReport> {
        self.backend.clean_cache(&self.request())
    }

    /// WUA's `CopyToCache`, for whole directories (see [`Agent::copy_to_cache`]).
    pub fn copy_to_cache(&self, paths: &[PathBuf]) -> Result<CacheImport> {
        self.backend.copy_to_cache(&self.request(), paths)
    }

    /// WUA's `CopyFromCache` (see [`Agent::copy_from_cache`]).
    pub fn copy_from_cache(
        &self,
        updates: &UpdateCollection,
        dir: &std::path::Path,
    ) -> Result<Vec<PathBuf>> {
        self.backend.copy_from_cache(updates, dir)
    }

    /// What the content cache holds, least recently used first.
    pub fn cache_entries(&self) -> Result<(Vec<CacheObject>, Vec<CachePartial>)> {
        self.backend.cache_entries()
    }

    /// The content cache (`<state_dir>/cache`).
    pub fn content_cache(&self) -> Result<upkeep_transfer::ContentCache> {
        self.agent()
            .ok_or_else(|| not_in_process("opening the content cache"))?
            .content_cache()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
                Some(crate::DEFAULT_SERVICE)
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
        self.session.backend().history(start, count)
    }

    /// `GetTotalHistoryCount`.
    pub fn total_history_count(&self) -> Result<usize> {
        self.session.backend().history_count()
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
        let opts = SearchOptions {
            offline: !self.online,
            include_superseded: self.include_superseded,
            include_not_applicable: self.include_not_applicable,
            service: self.selected_service()?.map(str::to_string),
        };
        self.session
            .backend()
            .search(&self.session.request(), criteria, &opts)
    }
}
