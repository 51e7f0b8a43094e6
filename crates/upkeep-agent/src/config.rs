//! Configuration: a TOML file, `UPKEEP_*` environment variables, and builder calls, in
//! rising precedence.
//!
//! ```toml
//! repository = "http://127.0.0.1:8080/"   # <base>/metadata/ and <base>/targets/
//! trusted_root = "/etc/upkeep/root.json"  # seeds state_dir/metadata/root.json once
//! state_dir = "/var/lib/upkeep"
//! install_root = "/"
//! client_application_id = "my-app"
//! mirrors = ["http://mirror.example/upkeep/"]  # same targets/, tried in turn
//! parallel_downloads = 8                   # transfers at once
//! low_priority_bytes_per_second = 1000000  # cap shared by Low priority downloads
//! min_transfer_rate = 1024                 # slower for min_transfer_rate_seconds: retried
//! min_transfer_rate_seconds = 30
//! connect_timeout_seconds = 10             # a server that does not accept by then fails
//! response_timeout_seconds = 30            # nor answer (or go silent) for this long
//! keep_downloads = false                   # keep content in the cache after installing
//! cache_max_bytes = 2000000000             # least recently used content goes beyond it
//! partial_max_age_days = 7                 # unfinished downloads older than this go
//! architecture = "aarch64"                 # instead of `uname -m` (an image of another machine)
//! os_release = "/mnt/image/etc/os-release" # instead of the install root's os-release
//!
//! [[services]]                             # more update services, each with its own trust
//! name = "internal"
//! url = "https://updates.internal.example/"
//! trusted_root = "/etc/upkeep/internal-root.json"
//! ```
//! Environment: `UPKEEP_REPOSITORY`, `UPKEEP_TRUSTED_ROOT`, `UPKEEP_STATE_DIR`,
//! `UPKEEP_INSTALL_ROOT`, `UPKEEP_CLIENT_APPLICATION_ID`, `UPKEEP_MIRRORS` (comma-separated),
//! `UPKEEP_PARALLEL_DOWNLOADS`, `UPKEEP_LOW_PRIORITY_BYTES_PER_SECOND`,
//! `UPKEEP_MIN_TRANSFER_RATE`, `UPKEEP_MIN_TRANSFER_RATE_SECONDS`,
//! `UPKEEP_CONNECT_TIMEOUT_SECONDS`, `UPKEEP_RESPONSE_TIMEOUT_SECONDS`, `UPKEEP_KEEP_DOWNLOADS`
//! (`1`/`true`), `UPKEEP_CACHE_MAX_BYTES`, `UPKEEP_PARTIAL_MAX_AGE_DAYS`,
//! `UPKEEP_ARCHITECTURE`, `UPKEEP_OS_RELEASE`; `UPKEEP_CONFIG` names the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use upkeep_types::HResult;

use crate::error::{Error, Result};

/// Settings of a session. Every field is optional until [`Config::resolve`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Repository base URL.
    pub repository: Option<String>,
    /// File with the initially trusted root metadata.
    pub trusted_root: Option<PathBuf>,
    /// Directory for trusted metadata, the content cache and the state database.
    pub state_dir: Option<PathBuf>,
    /// Directory updates are installed under.
    pub install_root: Option<PathBuf>,
    /// Names the caller in history.
    pub client_application_id: Option<String>,
    /// Further repository base URLs whose `targets/` serve the same content (untrusted:
    /// every byte is verified), tried after the repository when it fails.
    pub mirrors: Option<Vec<String>>,
    /// Transfers running at once (default 8).
    pub parallel_downloads: Option<usize>,
    /// Bandwidth cap shared by `Low` priority downloads, bytes per second (default none).
    pub low_priority_bytes_per_second: Option<u64>,
    /// The slowest acceptable metadata or content transfer, bytes per second averaged
    /// over `min_transfer_rate_seconds` (default 1024; 0 disables): a slower one is
    /// dropped (content is retried, resuming).
    pub min_transfer_rate: Option<u64>,
    /// The window of `min_transfer_rate`, seconds (default 30, at least 1).
    pub min_transfer_rate_seconds: Option<u64>,
    /// Seconds to establish a connection to a repository or mirror (default 10, 1 to 600).
    pub connect_timeout_seconds: Option<u64>,
    /// Seconds a connected server may take to answer a request, or stay silent within a
    /// body (default 30, 1 to 3600): a server that accepts and never answers fails then.
    pub response_timeout_seconds: Option<u64>,
    /// Keep downloaded content in the cache after a successful install (default false:
    /// it is removed, except what an installed `command` update needs to uninstall).
    pub keep_downloads: Option<bool>,
    /// The most bytes of content the cache keeps; beyond it the least recently used
    /// objects are removed (default: no cap).
    pub cache_max_bytes: Option<u64>,
    /// Unfinished downloads older than this many days are removed (default 7).
    pub partial_max_age_days: Option<u64>,
    /// The architecture applicability rules see, instead of `uname -m`.
    pub architecture: Option<String>,
    /// The `os-release` file applicability rules read, instead of the install root's
    /// (`etc/os-release`, then `usr/lib/os-release`; the host's when the root has none).
    pub os_release: Option<PathBuf>,
    /// More update services beside `repository` (the default service), each with its own
    /// trust: `[[services]]` tables with `name`, `url`, `trusted_root`, `mirrors`.
    pub services: Option<Vec<ServiceConfig>>,
}

/// An update service of the configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Its name (`service list`, `search --service`).
    pub name: String,
    /// Base URL (`http(s)://`, `file://`) or a local directory.
    pub url: String,
    /// File with its initially trusted root (copied into the state directory once).
    pub trusted_root: Option<PathBuf>,
    /// Its content mirrors.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

impl Config {
    /// Reads a TOML configuration file. Unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = upkeep_fs::read_to_string(path)
            .map_err(|e| Error::fs(HResult::WU_E_INVALID_FILE, e))?;
        toml::from_str(&text).map_err(|e| {
            Error::new(
                HResult::WU_E_INVALID_FILE,
                format!("{}: {}", path.display(), e.to_string().trim_end()),
            )
        })
    }

    /// Reads `UPKEEP_*` variables through `get` (so tests need not touch the process
    /// environment). A number that does not parse is an error naming the variable.
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<Config> {
        fn number<T: std::str::FromStr>(name: &str, v: Option<String>) -> Result<Option<T>> {
            v.map(|v| {
                v.trim().parse::<T>().map_err(|_| {
                    Error::new(
                        HResult::E_INVALIDARG,
                        format!("{name}={v:?} is not a whole number"),
                    )
                })
            })
            .transpose()
        }
        Ok(Config {
            repository: get("UPKEEP_REPOSITORY"),
            trusted_root: get("UPKEEP_TRUSTED_ROOT").map(PathBuf::from),
            state_dir: get("UPKEEP_STATE_DIR").map(PathBuf::from),
            install_root: get("UPKEEP_INSTALL_ROOT").map(PathBuf::from),
            client_application_id: get("UPKEEP_CLIENT_APPLICATION_ID"),
            mirrors: get("UPKEEP_MIRRORS").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }),
            parallel_downloads: number(
                "UPKEEP_PARALLEL_DOWNLOADS",
                get("UPKEEP_PARALLEL_DOWNLOADS"),
            )?,
            low_priority_bytes_per_second: number(
                "UPKEEP_LOW_PRIORITY_BYTES_PER_SECOND",
                get("UPKEEP_LOW_PRIORITY_BYTES_PER_SECOND"),
            )?,
            min_transfer_rate: number("UPKEEP_MIN_TRANSFER_RATE", get("UPKEEP_MIN_TRANSFER_RATE"))?,
            min_transfer_rate_seconds: number(
                "UPKEEP_MIN_TRANSFER_RATE_SECONDS",
                get("UPKEEP_MIN_TRANSFER_RATE_SECONDS"),
            )?,
            connect_timeout_seconds: number(
                "UPKEEP_CONNECT_TIMEOUT_SECONDS",
                get("UPKEEP_CONNECT_TIMEOUT_SECONDS"),
            )?,
            response_timeout_seconds: number(
                "UPKEEP_RESPONSE_TIMEOUT_SECONDS",
                get("UPKEEP_RESPONSE_TIMEOUT_SECONDS"),
            )?,
            keep_downloads: get("UPKEEP_KEEP_DOWNLOADS")
                .map(|v| match v.trim() {
                    "1" | "true" | "yes" => Ok(true),
                    "0" | "false" | "no" => Ok(false),
                    _ => Err(Error::new(
                        HResult::E_INVALIDARG,
                        format!("UPKEEP_KEEP_DOWNLOADS={v:?} is not 1/true/yes or 0/false/no"),
                    )),
                })
                .transpose()?,
            cache_max_bytes: number("UPKEEP_CACHE_MAX_BYTES", get("UPKEEP_CACHE_MAX_BYTES"))?,
            partial_max_age_days: number(
                "UPKEEP_PARTIAL_MAX_AGE_DAYS",
                get("UPKEEP_PARTIAL_MAX_AGE_DAYS"),
            )?,
            architecture: get("UPKEEP_ARCHITECTURE"),
            os_release: get("UPKEEP_OS_RELEASE").map(PathBuf::from),
            services: None,
        })
    }

    /// Reads `UPKEEP_*` variables of this process.
    pub fn from_env() -> Result<Config> {
        Self::from_env_with(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Fields of `over` replace fields of `self`.
    pub fn merge(self, over: Config) -> Config {
        Config {
            repository: over.repository.or(self.repository),
            trusted_root: over.trusted_root.or(self.trusted_root),
            state_dir: over.state_dir.or(self.state_dir),
            install_root: over.install_root.or(self.install_root),
            client_application_id: over.client_application_id.or(self.client_application_id),
            mirrors: over.mirrors.or(self.mirrors),
            parallel_downloads: over.parallel_downloads.or(self.parallel_downloads),
            low_priority_bytes_per_second: over
                .low_priority_bytes_per_second
                .or(self.low_priority_bytes_per_second),
            min_transfer_rate: over.min_transfer_rate.or(self.min_transfer_rate),
            min_transfer_rate_seconds: over
                .min_transfer_rate_seconds
                .or(self.min_transfer_rate_seconds),
            connect_timeout_seconds: over
                .connect_timeout_seconds
                .or(self.connect_timeout_seconds),
            response_timeout_seconds: over
                .response_timeout_seconds
                .or(self.response_timeout_seconds),
            keep_downloads: over.keep_downloads.or(self.keep_downloads),
            cache_max_bytes: over.cache_max_bytes.or(self.cache_max_bytes),
            partial_max_age_days: over.partial_max_age_days.or(self.partial_max_age_days),
            architecture: over.architecture.or(self.architecture),
            os_release: over.os_release.or(self.os_release),
            services: over.services.or(self.services),
        }
    }

    /// Fills defaults: state in `/var/lib/upkeep` for root, else
    /// `$XDG_STATE_HOME/upkeep` or `~/.local/state/upkeep`; install root `/`. Relative
    /// state and install paths are made absolute against the current directory, so that
    /// what a `command` update is told is the same wherever it runs. A value out of its
    /// range (`parallel_downloads` 1 to 64, `low_priority_bytes_per_second` at least 1) is
    /// `E_INVALIDARG`, not silently changed.
    pub fn resolve(self) -> Result<ResolvedConfig> {
        if let Some(n) = self.parallel_downloads {
            if !(1..=64).contains(&n) {
                return Err(Error::new(
                    HResult::E_INVALIDARG,
                    format!("parallel_downloads = {n}: it must be from 1 to 64"),
                ));
            }
        }
        if self.low_priority_bytes_per_second == Some(0) {
            return Err(Error::new(
                HResult::E_INVALIDARG,
                "low_priority_bytes_per_second = 0: leave it unset for no cap",
            ));
        }
        if let Some(n) = self.min_transfer_rate_seconds {
            if !(1..=3600).contains(&n) {
                return Err(Error::new(
                    HResult::E_INVALIDARG,
                    format!("min_transfer_rate_seconds = {n}: it must be from 1 to 3600"),
                ));
            }
        }
        for (name, v, max) in [
            ("connect_timeout_seconds", self.connect_timeout_seconds, 600),
            (
                "response_timeout_seconds",
                self.response_timeout_seconds,
                3600,
            ),
        ] {
            if let Some(n) = v {
                if !(1..=max).contains(&n) {
                    return Err(Error::new(
                        HResult::E_INVALIDARG,
                        format!("{name} = {n}: it must be from 1 to {max}"),
                    ));
                }
            }
        }
        if self.cache_max_bytes == Some(0) {
            return Err(Error::new(
                HResult::E_INVALIDARG,
                "cache_max_bytes = 0: leave it unset for no cap (content is removed after install unless keep_downloads is set)",
            ));
        }
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let state_dir = absolute(self.state_dir.unwrap_or_else(default_state_dir));
        Ok(ResolvedConfig {
            repository: self.repository,
            trusted_root: self.trusted_root,
            state_dir,
            install_root: absolute(self.install_root.unwrap_or_else(|| PathBuf::from("/"))),
            client_application_id: self
                .client_application_id
                .unwrap_or_else(|| "Unknown".to_string()),
            mirrors: self.mirrors.unwrap_or_default(),
            parallel_downloads: self.parallel_downloads.unwrap_or(8),
            low_priority_bytes_per_second: self.low_priority_bytes_per_second,
            min_transfer_rate: self.min_transfer_rate.unwrap_or(1024),
            min_transfer_rate_seconds: self.min_transfer_rate_seconds.unwrap_or(30),
            connect_timeout_seconds: self.connect_timeout_seconds.unwrap_or(10),
            response_timeout_seconds: self.response_timeout_seconds.unwrap_or(30),
            keep_downloads: self.keep_downloads.unwrap_or(false),
            cache_max_bytes: self.cache_max_bytes,
            partial_max_age_days: self.partial_max_age_days.unwrap_or(7),
            architecture: self.architecture,
            os_release: self.os_release.map(absolute),
            services: self.services.unwrap_or_default(),
        })
    }
}

fn default_state_dir() -> PathBuf {
    let is_root = upkeep_fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/lib/upkeep");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("upkeep");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/upkeep"),
        None => PathBuf::from("/var/lib/upkeep"),
    }
}

/// Configuration with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedConfig {
    /// Repository base URL, if one is configured (needed for online searches).
    pub repository: Option<String>,
    /// Initial trusted root.
    pub trusted_root: Option<PathBuf>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Install root.
    pub install_root: PathBuf,
    /// Caller name for history.
    pub client_application_id: String,
    /// Content mirrors (base URLs), tried after the repository.
    pub mirrors: Vec<String>,
    /// Transfers at once, 1 to 64.
    pub parallel_downloads: usize,
    /// Bandwidth cap of `Low` priority downloads.
    pub low_priority_bytes_per_second: Option<u64>,
    /// Slowest acceptable transfer, bytes per second (0: no minimum).
    pub min_transfer_rate: u64,
    /// Its window, seconds.
    pub min_transfer_rate_seconds: u64,
    /// Seconds to connect.
    pub connect_timeout_seconds: u64,
    /// Seconds for an answer, or of silence within a body.
    pub response_timeout_seconds: u64,
    /// Keep content after installing.
    pub keep_downloads: bool,
    /// Cache cap, bytes.
    pub cache_max_bytes: Option<u64>,
    /// Age in days after which unfinished downloads are removed.
    pub partial_max_age_days: u64,
    /// Architecture override.
    pub architecture: Option<String>,
    /// `os-release` override.
    pub os_release: Option<PathBuf>,
    /// Services of the configuration file.
    pub services: Vec<ServiceConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_file_then_env_then_builder() {
        let file: Config = toml::from_str("repository = 'http://a/'\nstate_dir = '/s'").unwrap();
        let env = Config::from_env_with(|k| (k == "UPKEEP_REPOSITORY").then(|| "http://b/".into()))
            .unwrap();
        let builder = Config {
            install_root: Some("/r".into()),
            ..Default::default()
        };
        let c = file.merge(env).merge(builder).resolve().unwrap();
        assert_eq!(c.repository.as_deref(), Some("http://b/"));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.install_root, PathBuf::from("/r"));
        assert_eq!(c.client_application_id, "Unknown");
    }

    #[test]
    fn relative_state_and_install_paths_become_absolute() {
        let c = Config {
            state_dir: Some("state".into()),
            install_root: Some("./root".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.state_dir, cwd.join("state"));
        assert!(c.install_root.is_absolute() && c.install_root.ends_with("root"));
    }

    #[test]
    fn out_of_range_and_unparsable_values_are_errors() {
        for n in [0usize, 65, 100_000_000_000] {
            let c = Config {
                parallel_downloads: Some(n),
                ..Default::default()
            };
            assert_eq!(
                c.resolve().unwrap_err().hresult(),
                HResult::E_INVALIDARG,
                "{n}"
            );
        }
        let e =
            Config::from_env_with(|k| (k == "UPKEEP_PARALLEL_DOWNLOADS").then(|| "eight".into()))
                .unwrap_err();
        assert_eq!(e.hresult(), HResult::E_INVALIDARG);
        assert!(
            e.message().contains("UPKEEP_PARALLEL_DOWNLOADS"),
            "{}",
            e.message()
        );
        let zero = Config {
            low_priority_bytes_per_second: Some(0),
            ..Default::default()
        };
        assert!(zero.resolve().is_err());
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        upkeep_fs::write(&p, "repositry = 'x'").unwrap();
        let e = Config::from_file(&p).unwrap_err();
        assert_eq!(e.hresult(), HResult::WU_E_INVALID_FILE);
        assert!(e.message().contains("repositry"), "{}", e.message());
    }
}
