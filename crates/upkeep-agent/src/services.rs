//! Update services (WUA's `IUpdateServiceManager` and `IUpdateService`): the repositories a
//! machine takes updates from, each with its own TUF trust and metadata.
//!
//! - The `repository` setting is the **default** service, named `default`; its trusted
//!   metadata stays in `<state_dir>/metadata` as before services existed.
//! - The configuration file lists more (`[[services]]`).
//! - `UpdateServiceManager::add_service` registers one at run time (`upkeep service add`):
//!   `<state_dir>/services/<name>/service.json` and its own `metadata/` with the trusted root,
//!   checked to be self-signed before anything is written.
//!
//! Every service's metadata is verified against its own root only, so one service's keys
//! can never sign for another's updates; an update id offered by two services is taken from
//! the first (default, configured, registered by name) and reported as a warning.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use upkeep_tuf::Client;
use upkeep_types::HResult;

use crate::config::ResolvedConfig;
use crate::error::{Error, Result};

/// The service that the `repository` setting configures.
pub use upkeep_types::DEFAULT_SERVICE;

/// Where a service is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceOrigin {
    /// The `repository` setting.
    Repository,
    /// `[[services]]` of the configuration file.
    Configuration,
    /// Registered with `add_service` (`upkeep service add`).
    Registered,
}

/// One update service (WUA's `IUpdateService`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpdateService {
    /// Its name: WUA's `ServiceID` here.
    pub name: String,
    /// Its base URL (`http(s)://` or `file://`); `None` for a default service known only
    /// from metadata trusted earlier (offline searches).
    pub url: Option<String>,
    /// Content mirrors.
    pub mirrors: Vec<String>,
    /// Where it is defined.
    pub origin: ServiceOrigin,
    /// Its trusted metadata.
    pub metadata_dir: PathBuf,
    /// A root is trusted for it (it can be searched).
    pub trusted: bool,
    /// Where its initial root comes from when none is trusted yet.
    #[serde(skip)]
    pub(crate) trusted_root: Option<PathBuf>,
}

impl UpdateService {
    /// `IsDefaultAUService`: the `repository` setting's.
    pub fn is_default(&self) -> bool {
        self.origin == ServiceOrigin::Repository
    }
}

/// What `service.json` of a registered service holds.
#[derive(Serialize, Deserialize)]
struct Registration {
    url: String,
    #[serde(default)]
    mirrors: Vec<String>,
    added_at: jiff::Timestamp,
}

/// A plain path is a local repository: `file://` + its absolute path, ending in `/`; other
/// schemes than http(s) and file are `WU_E_PT_INVALID_URL`.
pub fn normalize_url(url: &str) -> Result<String> {
    let mut u = if url.contains("://") {
        url.to_string()
    } else {
        let p = std::path::absolute(url).unwrap_or_else(|_| PathBuf::from(url));
        format!("file://{}", p.display())
    };
    if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("file://")) {
        return Err(Error::new(
            HResult::WU_E_PT_INVALID_URL,
            format!("repository {url:?} is not an http(s):// or file:// URL, nor a directory"),
        ));
    }
    if !u.ends_with('/') {
        u.push('/');
    }
    Ok(u)
}

/// Every service of a configuration, in the order searches take them: the default, the
/// configured ones, the registered ones by name.
pub(crate) fn list(cfg: &ResolvedConfig) -> Result<Vec<UpdateService>> {
    let mut out = Vec::new();
    let default_md = cfg.state_dir.join("metadata");
    if cfg.repository.is_some()
        || cfg.trusted_root.is_some()
        || default_md.join("root.json").exists()
    {
        out.push(UpdateService {
            name: DEFAULT_SERVICE.into(),
            url: cfg.repository.clone(),
            mirrors: cfg.mirrors.clone(),
            origin: ServiceOrigin::Repository,
            trusted: default_md.join("root.json").exists(),
            metadata_dir: default_md,
            trusted_root: cfg.trusted_root.clone(),
        });
    }
    for s in &cfg.services {
        check_name(&s.name)?;
        if out.iter().any(|o| o.name == s.name) {
            return Err(Error::new(
                HResult::WU_E_DUPLICATE_ITEM,
                format!("service {:?} is defined twice in the configuration", s.name),
            ));
        }
        let md = service_dir(&cfg.state_dir, &s.name).join("metadata");
        out.push(UpdateService {
            name: s.name.clone(),
            url: Some(normalize_url(&s.url)?),
            mirrors: s.mirrors.clone(),
            origin: ServiceOrigin::Configuration,
            trusted: md.join("root.json").exists(),
            metadata_dir: md,
            trusted_root: s.trusted_root.clone(),
        });
    }
    let mut registered = Vec::new();
    if let Ok(rd) = upkeep_fs::read_dir(cfg.state_dir.join("services")) {
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let file = e.path().join("service.json");
            let Ok(text) = upkeep_fs::read(&file) else {
                continue; // not registered (a configured service's metadata only)
            };
            if out.iter().any(|o| o.name == name) {
                continue; // the configuration's definition wins
            }
            let r: Registration = serde_json::from_slice(&text).map_err(|e| {
                Error::new(
                    HResult::WU_E_DS_UNEXPECTED,
                    format!("{}: {e}", file.display()),
                )
            })?;
            let md = e.path().join("metadata");
            registered.push(UpdateService {
                name,
                url: Some(r.url),
                mirrors: r.mirrors,
                origin: ServiceOrigin::Registered,
                trusted: md.join("root.json").exists(),
                metadata_dir: md,
                trusted_root: None,
            });
        }
    }
    registered.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(registered);
    Ok(out)
}

fn service_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("services").join(name)
}

/// A service name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            HResult::E_INVALIDARG,
            format!("{name:?} is not a service name (1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit)"),
        ))
    }
}

/// Unpacks an offline bundle into `to`: only regular files and directories under
/// `metadata/` and `targets/`, with plain relative names; room for it is checked first.
fn unpack_bundle(file: &Path, to: &Path) -> Result<()> {
    let bad = |why: String| {
        Error::new(
            HResult::WU_E_INVALID_FILE,
            format!("bundle {}: {why}", file.display()),
        )
    };
    let len = upkeep_fs::metadata(file)
        .map_err(|e| Error::fs(HResult::WU_E_INVALID_FILE, e))?
        .len();
    upkeep_fs::create_dir_all(to).map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
    let free = upkeep_fs::free_space(to).map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
    if free < len + (64 << 20) {
        return Err(Error::new(
            HResult::E_DISK_FULL,
            format!(
                "bundle {} needs {len} bytes (and 64 MiB kept free); {} has {free}",
                file.display(),
                to.display()
            ),
        ));
    }
    let f = upkeep_fs::open(file).map_err(|e| Error::fs(HResult::WU_E_INVALID_FILE, e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let mut written = 0u64;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?;
        let name = path.to_string_lossy().trim_end_matches('/').to_string();
        let kind = entry.header().entry_type();
        if !upkeep_types::is_valid_target_path(&name)
            || !(name.starts_with("metadata/")
                || name.starts_with("targets/")
                || name == "metadata"
                || name == "targets")
        {
            return Err(bad(format!(
                "{name:?} is not a bundle path (metadata/…, targets/…)"
            )));
        }
        let dest = to.join(&name);
        if kind.is_dir() {
            upkeep_fs::create_dir_all(&dest).map_err(|e| bad(e.to_string()))?;
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("{name:?} is not a regular file")));
        }
        written += entry.size();
        if written > len {
            return Err(bad("its entries are larger than the file".into()));
        }
        if let Some(parent) = dest.parent() {
            upkeep_fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
        }
        let mut out = upkeep_fs::open_with(
            std::fs::OpenOptions::new().write(true).create_new(true),
            &dest,
        )
        .map_err(|e| bad(e.to_string()))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("{}: {e}", dest.display())))?;
    }
    upkeep_fs::syncfs(to).map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
    Ok(())
}

/// WUA's `IUpdateServiceManager`: lists, registers and removes update services.
#[derive(Clone, Debug)]
pub struct UpdateServiceManager {
    cfg: ResolvedConfig,
}

impl UpdateServiceManager {
    pub(crate) fn new(cfg: ResolvedConfig) -> UpdateServiceManager {
        UpdateServiceManager { cfg }
    }

    /// `Services`: every service, in search order.
    pub fn services(&self) -> Result<Vec<UpdateService>> {
        list(&self.cfg)
    }

    /// `AddService2`: registers `name` at `url` (an `http(s)://` or `file://` URL, or a
    /// local directory), trusting the root in `trusted_root` (which must be self-signed).
    /// Nothing is fetched: the first search does that. A name already used is
    /// `WU_E_DUPLICATE_ITEM`; a bad name `E_INVALIDARG`; a root that does not verify
    /// `WU_E_INVALID_FILE`. On failure nothing is left behind.
    pub fn add_service(&self, name: &str, url: &str, trusted_root: &Path) -> Result<UpdateService> {
        check_name(name)?;
        let dir = service_dir(&self.cfg.state_dir, name);
        // An offline bundle (`repo bundle`): unpacked into the service's directory and read
        // from there like a local repository — verified by the first search like any other.
        let bundle = (!url.contains("://") && Path::new(url).is_file()).then(|| PathBuf::from(url));
        let url = match &bundle {
            Some(_) => normalize_url(&dir.join("bundle").display().to_string())?,
            None => normalize_url(url)?,
        };
        if list(&self.cfg)?.iter().any(|s| s.name == name) || name == DEFAULT_SERVICE {
            return Err(Error::new(
                HResult::WU_E_DUPLICATE_ITEM,
                format!("a service named {name:?} exists already (remove it first)"),
            ));
        }
        let bytes =
            upkeep_fs::read(trusted_root).map_err(|e| Error::fs(HResult::WU_E_INVALID_FILE, e))?;
        if dir.exists() {
            // Metadata left by a removed configuration entry of the same name: its trust
            // is not this registration's.
            upkeep_fs::remove_dir_all(&dir)
                .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
        }
        let result = (|| {
            if let Some(b) = &bundle {
                unpack_bundle(b, &dir.join("bundle"))?;
            }
            let md = dir.join("metadata");
            upkeep_fs::create_dir_all(&md)
                .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
            Client::init_trusted_root(&md, &bytes, true).map_err(|e| {
                Error::new(
                    HResult::WU_E_INVALID_FILE,
                    format!("trusted root {}: {e}", trusted_root.display()),
                )
            })?;
            let reg = Registration {
                url: url.clone(),
                mirrors: Vec::new(),
                added_at: jiff::Timestamp::now(),
            };
            let file = dir.join("service.json");
            upkeep_fs::write_atomic(
                &file,
                &serde_json::to_vec_pretty(&reg).expect("a registration serialises"),
            )
            .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))
        })();
        if let Err(e) = result {
            let _ = upkeep_fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(service = name, url = %url, "update service registered");
        list(&self.cfg)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::new(HResult::E_UNEXPECTED, "the new service is not listed"))
    }

    /// Replaces the offline bundle of a service that `add_service` registered from one
    /// with a newer bundle (`upkeep service update NAME FILE`), keeping the service's
    /// trusted metadata: the new bundle is unpacked beside the old one and verified with
    /// TUF against what the service already trusts — a bundle older than that is a
    /// rollback (`WU_E_INVALID_FILE`, naming both versions), an expired one says so —
    /// and only then swapped in, atomically. On failure nothing has changed. (Removing
    /// and adding the service again would reset its trust, so a stale bundle would be
    /// accepted again.)
    pub fn update_service(&self, name: &str, bundle: &Path) -> Result<UpdateService> {
        let Some(s) = list(&self.cfg)?.into_iter().find(|s| s.name == name) else {
            return Err(Error::new(
                HResult::WU_E_UNKNOWN_SERVICE,
                format!("no update service is named {name:?}"),
            ));
        };
        let dir = service_dir(&self.cfg.state_dir, name);
        let current = dir.join("bundle");
        let bundle_url = normalize_url(&current.display().to_string())?;
        if s.origin != ServiceOrigin::Registered || s.url.as_deref() != Some(bundle_url.as_str()) {
            return Err(Error::new(
                HResult::E_INVALIDARG,
                format!(
                    "service {name:?} was not added from an offline bundle (its repository is {}); only a bundle service takes a newer bundle",
                    s.url.as_deref().unwrap_or("-")
                ),
            ));
        }
        if !bundle.is_file() {
            return Err(Error::new(
                HResult::WU_E_INVALID_FILE,
                format!("bundle {}: not a file", bundle.display()),
            ));
        }
        let (next, check) = (dir.join("bundle.next"), dir.join("metadata.check"));
        let io = |e: upkeep_fs::PathError| Error::fs(HResult::WU_E_DS_UNEXPECTED, e);
        for stale in [&next, &check] {
            if stale.exists() {
                upkeep_fs::remove_dir_all(stale).map_err(io)?;
            }
        }
        let result = (|| {
            unpack_bundle(bundle, &next)?;
            // A copy of what the service trusts, refreshed from the new bundle.
            upkeep_fs::create_dir_all(&check).map_err(io)?;
            for e in upkeep_fs::read_dir(&s.metadata_dir).map_err(io)? {
                let e = e.map_err(|e| io(upkeep_fs::at(&s.metadata_dir)(e)))?;
                let name = e.file_name();
                let n = name.to_string_lossy();
                if e.file_type()
                    .map_err(|x| io(upkeep_fs::at(&e.path())(x)))?
                    .is_file()
                    && n.ends_with(".json")
                {
                    upkeep_fs::copy(e.path(), check.join(&name)).map_err(io)?;
                }
            }
            let cfg = upkeep_tuf::ClientConfig {
                metadata_dir: check.clone(),
                metadata_url: format!("{}metadata/", normalize_url(&next.display().to_string())?),
                limits: upkeep_tuf::Limits::default(),
                offline: false,
                timestamp_first: false,
            };
            let mut client = Client::new(cfg, std::sync::Arc::new(upkeep_tuf::FileTransport))
                .map_err(Error::from)?;
            client.refresh().map_err(|e| {
                let kind = crate::error::tuf_kind(&e);
                let why = match kind {
                    crate::ErrorKind::Rollback => format!(
                        "it is older than what service {name} already trusts ({e}); use a bundle made later"
                    ),
                    crate::ErrorKind::Expired => format!(
                        "it has expired ({e}); make a new one with `upkeep repo bundle`"
                    ),
                    _ => e.to_string(),
                };
                Error::new(
                    HResult::WU_E_INVALID_FILE,
                    format!("bundle {}: {why}; service {name} is unchanged", bundle.display()),
                )
                .with_kind(kind)
            })?;
            upkeep_fs::exchange(&next, &current)
                .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
            // The verified metadata becomes the trusted one; a crash before this leaves
            // the old trust, which the next search refreshes from the new bundle.
            upkeep_fs::exchange(&check, &s.metadata_dir)
                .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))
        })();
        // `next` and `check` hold the old bundle and trust now, or the refused new ones.
        let _ = upkeep_fs::remove_dir_all(&next);
        let _ = upkeep_fs::remove_dir_all(&check);
        result?;
        tracing::info!(service = name, bundle = %bundle.display(), "offline bundle updated");
        list(&self.cfg)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::new(HResult::E_UNEXPECTED, "the service is not listed"))
    }

    /// `RemoveService`: unregisters a service added with `add_service`, with its trusted
    /// metadata. Installed updates from it stay installed (and uninstallable). One defined
    /// by the configuration is `E_INVALIDARG`; an unknown one `WU_E_UNKNOWN_SERVICE`.
    pub fn remove_service(&self, name: &str) -> Result<()> {
        let Some(s) = list(&self.cfg)?.into_iter().find(|s| s.name == name) else {
            return Err(Error::new(
                HResult::WU_E_UNKNOWN_SERVICE,
                format!("no update service is named {name:?}"),
            ));
        };
        if s.origin != ServiceOrigin::Registered {
            return Err(Error::new(
                HResult::E_INVALIDARG,
                format!("service {name:?} is defined by the configuration; change it there"),
            ));
        }
        let dir = service_dir(&self.cfg.state_dir, name);
        // The registration goes first: a crash after it leaves only unused metadata.
        upkeep_fs::remove_file(dir.join("service.json"))
            .and_then(|()| upkeep_fs::remove_dir_all(&dir))
            .map_err(|e| Error::fs(HResult::WU_E_DS_UNEXPECTED, e))?;
        tracing::info!(service = name, "update service removed");
        Ok(())
    }
}
