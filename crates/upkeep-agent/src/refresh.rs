//! Refreshing each service's trusted metadata and building its catalog (reused while
//! the snapshot is unchanged, from its index in a new process); the merged catalog of
//! every service; the transports and the transfer engine; where content is fetched from.

use std::sync::Arc;

use upkeep_tuf::{Client, ClientConfig, HttpTransport, Transport};
use upkeep_types::HResult;

use crate::catalog::{Catalog, UpdateException};
use crate::error::{Error, Result};
use crate::open::{CatalogKey, ServiceKeys};
use crate::Agent;

impl Agent {
    /// The catalog of every service (`only`: of one), its trusted metadata refreshed
    /// (online) or loaded (offline); a service's catalog is reused while its snapshot has
    /// not changed. With several services, one that fails is a warning of the result
    /// (unless all fail); the same update id from two services is taken from the first and
    /// is a warning.
    pub fn catalog_for(&self, only: Option<&str>, online: bool) -> Result<Arc<Catalog>> {
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
    pub fn catalog(&self, online: bool) -> Result<Arc<Catalog>> {
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
            HttpTransport::on(
                self.runtime()?.handle().clone(),
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
        let index = svc.metadata_dir.join(crate::catalog::index::FILE);
        let index_key = crate::catalog::index::Key::of(&svc.metadata_dir);
        if let Some(cat) = index_key
            .as_ref()
            .and_then(|k| crate::catalog::index::open(&index, k))
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
        let index_key = crate::catalog::index::Key::of(&svc.metadata_dir);
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

impl Agent {
    /// The agent's transfer engine (one for every session and job), started on first use.
    pub fn engine(&self) -> Result<upkeep_transfer::Engine> {
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
        let engine =
            upkeep_transfer::Engine::with_runtime(self.content_cache()?, opts, self.runtime()?)
                .map_err(|e| Error::new(e.hresult(), e.to_string()))?;
        // A racing first download may have set one already; use whichever won.
        Ok(self.inner.engine.get_or_init(|| engine).clone())
    }

    /// The agent's one runtime, started on first use unless the host gave its own.
    pub fn runtime(&self) -> Result<upkeep_transfer::Runtime> {
        if let Some(rt) = self.inner.runtime.get() {
            return Ok(rt.clone());
        }
        let rt = upkeep_transfer::Runtime::start().map_err(|e| {
            Error::new(
                HResult::E_FAIL,
                format!("cannot start the agent's runtime thread: {e}"),
            )
        })?;
        Ok(self.inner.runtime.get_or_init(|| rt).clone())
    }

    /// The base URLs of content of the service `name` (`None`: the default service) — its
    /// `targets/`, then each mirror's — and whether its trusted root uses consistent
    /// snapshots; `WU_E_NOT_INITIALIZED` without a URL or trusted metadata.
    pub fn content_bases(&self, name: Option<&str>) -> Result<(Vec<String>, bool)> {
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
        let root = upkeep_fs::read(md.join("root.json"))
            .map_err(|e| Error::fs(HResult::WU_E_NOT_INITIALIZED, e))?;
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

fn metadata_url(repo: &str) -> String {
    let mut u = repo.to_string();
    if !u.ends_with('/') {
        u.push('/');
    }
    u.push_str("metadata/");
    u
}
