//! The search: every service's catalog (refreshed or loaded), the machine's state
//! (installed, hidden, downloaded, accepted licenses), applicability, supersedence within a
//! service, and WUA's criteria.

use std::collections::HashSet;

use upkeep_types::{HResult, OperationResultCode, Update, UpdateCollection};

use crate::catalog::{Catalog, UpdateException};
use crate::criteria::Criteria;
use crate::error::{Error, Result};
use crate::{Agent, Request};

/// What a search covers beyond its criteria (`IUpdateSearcher`'s properties).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchOptions {
    /// Refresh the trusted metadata from the network (WUA's `Online`); offline, only what
    /// is trusted on disk.
    pub offline: bool,
    /// Keep updates another update in the result (or an installed one) supersedes
    /// (`IncludePotentiallySupersededUpdates`).
    pub include_superseded: bool,
    /// Keep updates that do not apply to this machine.
    pub include_not_applicable: bool,
    /// Only this update service (by name); every service when `None`.
    pub service: Option<String>,
}

impl Agent {
    /// `Search`: parses `criteria` (an invalid string fails with `WU_E_INVALID_CRITERIA`
    /// before any request), refreshes the metadata (unless offline), and returns the
    /// matching updates with this machine's state. Updates superseded by another update in
    /// the result are left out unless `include_superseded`. A record of the catalog index
    /// that was changed on disk is a warning and a rebuild from the verified metadata.
    pub fn search(
        &self,
        req: &Request,
        criteria: &str,
        opts: &SearchOptions,
    ) -> Result<SearchResult> {
        let _ = req; // searching changes nothing: any caller may
        let parsed = Criteria::parse(criteria)?;
        let (result, tampered) = self.search_in(&parsed, opts)?;
        if !tampered {
            return Ok(result);
        }
        tracing::warn!("a record of the catalog index was changed on disk: the index was removed and the catalog rebuilt from the verified metadata");
        self.forget_catalogs();
        Ok(self.search_in(&parsed, opts)?.0)
    }

    fn search_in(&self, criteria: &Criteria, opts: &SearchOptions) -> Result<(SearchResult, bool)> {
        let catalog = self
            .catalog_for(opts.service.as_deref(), !opts.offline)
            .map_err(|e| match (&self.inner.foreign_root, e.kind()) {
                (Some(hint), crate::ErrorKind::Threshold | crate::ErrorKind::VersionMismatch) => {
                    let kind = e.kind();
                    Error::new(e.hresult(), format!("{}; {hint}", e.message())).with_kind(kind)
                }
                _ => e,
            })?;
        let local = self.local_state()?;
        let mut warnings = catalog.warnings().to_vec();
        let applies = Applies::evaluate(self, &catalog, &local, &mut warnings);
        // Per-machine state first (installed, hidden, downloaded…), so criteria see it. An
        // installed update is shown at its installed revision, from its own record — also
        // when the repository has a newer revision (shown as well, as an upgrade) or no
        // longer has it at all.
        // Who is superseded — by an installed update, or by one in the result — is
        // gathered while each update is at hand; the result keeps each one's id and
        // whether it is installed beside it, so the filter below touches no update again.
        // An update supersedes only updates of its own service.
        // Service → the ids its updates supersede (looked up by `&str`: no allocation per
        // update).
        let mut superseded: std::collections::HashMap<String, HashSet<uuid::Uuid>> =
            std::collections::HashMap::new();
        let mut updates: Vec<(uuid::Uuid, bool, Update)> = Vec::with_capacity(catalog.len());
        let mut seen: HashSet<uuid::Uuid> = HashSet::new();
        let include_superseded = opts.include_superseded;
        let include_not_applicable = opts.include_not_applicable;
        let mut consider = |u: Update, updates: &mut Vec<(uuid::Uuid, bool, Update)>| {
            if !include_not_applicable && !u.is_applicable() {
                return;
            }
            let installed = u.is_installed();
            let matches = criteria.matches(&u);
            let supersedes = u.superseded_update_ids();
            if !include_superseded && (installed || matches) && !supersedes.is_empty() {
                let service = u.service().unwrap_or(crate::DEFAULT_SERVICE);
                if let Some(ids) = superseded.get_mut(service) {
                    ids.extend(supersedes.iter().copied());
                } else {
                    superseded
                        .entry(service.to_string())
                        .or_default()
                        .extend(supersedes.iter().copied());
                }
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
                if from != u.service().unwrap_or(crate::DEFAULT_SERVICE) {
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
            let published = u.with_state(st);
            match local.installed.get(&id) {
                Some(i) => {
                    seen.insert(id);
                    let mine = local.installed_update(i);
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
                consider(m, &mut updates);
            }
        }
        if !superseded.is_empty() {
            // Updates not installed that another update in the result, or an installed
            // one, supersedes. Installed updates stay in view.
            updates.retain(|(id, installed, u)| {
                *installed
                    || !superseded
                        .get(u.service().unwrap_or(crate::DEFAULT_SERVICE))
                        .is_some_and(|ids| ids.contains(id))
            });
        }
        // An id offered by two services is a standing condition of the configuration:
        // said once (the first search that meets it), not on every search.
        if warnings
            .iter()
            .any(|w| w.hresult == HResult::WU_E_DUPLICATE_ITEM)
        {
            if let Ok(store) = self.store() {
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

/// Per-machine state read once per search: installed and hidden updates, accepted
/// licenses, cached content.
pub(crate) struct LocalState {
    pub(crate) installed: std::collections::HashMap<uuid::Uuid, upkeep_store::Installed>,
    pub(crate) hidden: HashSet<uuid::Uuid>,
    pub(crate) eulas: HashSet<(uuid::Uuid, u32)>,
    pub(crate) cached: HashSet<String>,
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
    pub(crate) fn installed_update(&self, i: &upkeep_store::Installed) -> Option<Update> {
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
pub fn installed_service(i: &upkeep_store::Installed) -> &str {
    i.record
        .as_ref()
        .and_then(|r| r.service.as_deref())
        .unwrap_or(crate::DEFAULT_SERVICE)
}

/// Applicability of every catalog entry on this machine, evaluated once per search.
struct Applies {
    /// Verdicts of the entries that have rules, prerequisites included.
    verdicts: std::collections::HashMap<uuid::Uuid, upkeep_types::applicability::Verdict>,
}

impl Applies {
    fn evaluate(
        agent: &Agent,
        catalog: &Catalog,
        local: &LocalState,
        warnings: &mut Vec<UpdateException>,
    ) -> Applies {
        let with_rules: Vec<&Update> = catalog.with_rules().collect();
        let mut verdicts = std::collections::HashMap::new();
        if with_rules.is_empty() {
            return Applies { verdicts };
        }
        let facts = crate::applicable::Facts::read(agent.config());
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

/// WUA's `ISearchResult`: plain data (it serialises).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SearchResult {
    result_code: OperationResultCode,
    updates: UpdateCollection,
    warnings: Vec<UpdateException>,
}

impl SearchResult {
    /// A result made of its parts.
    pub fn new(
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
