//! The update catalog: every update record found in verified targets metadata, with its
//! content files resolved. Records that do not make sense become warnings, not failures.

pub(crate) mod index;

use std::collections::{BTreeMap, HashMap};

use upkeep_tuf::metadata::Custom;
use upkeep_tuf::CatalogTargets;
use upkeep_types::{ContentFile, HResult, Update, UpdateMetadata, UpdateState};
use uuid::Uuid;

/// A non-fatal problem found while reading the catalog or searching (WUA's
/// `IUpdateException`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateException {
    /// What happened.
    pub message: String,
    /// Its code.
    pub hresult: HResult,
}

/// All updates of one repository state.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Every entry, ordered and indexed: built from verified metadata, or read from the
    /// catalog index all at once the first time something needs every entry.
    full: std::sync::OnceLock<Full>,
    /// The catalog index this catalog reads entries from one by one until then.
    lazy: Option<crate::catalog::index::Lazy>,
    /// Merged from a catalog whose index was found tampered.
    tainted: bool,
    warnings: Vec<UpdateException>,
}

#[derive(Debug, Default)]
struct Full {
    entries: Vec<Update>,
    by_id: HashMap<Uuid, usize>,
    /// Indices of the entries with applicability rules (found once, so that a search of a
    /// catalog without rules does not touch every record for them).
    with_rules: Vec<usize>,
}

impl Catalog {
    /// Builds the catalog from every trusted target. Records are parsed on all cores, and
    /// each record's text is freed once the catalog is built.
    pub fn build(all: CatalogTargets, service: &str) -> Catalog {
        Catalog::build_indexed(all, service, None)
    }

    /// [`Catalog::build`], also writing the catalog index of the result to `index` (built
    /// under its key): the record texts are written and hashed on a thread of their own
    /// while the catalog is put together, and the rest once it is. An index that cannot be
    /// written is a logged warning; the catalog is the same either way.
    pub(crate) fn build_indexed(
        mut all: CatalogTargets,
        service: &str,
        index: Option<(&std::path::Path, &crate::catalog::index::Key)>,
    ) -> Catalog {
        let service: std::sync::Arc<str> = service.into();
        let mut cat = Catalog::default();
        for (role, e) in &all.warnings {
            cat.warnings.push(UpdateException {
                message: format!("role {role} left out: {e}"),
                hresult: crate::error::tuf_hresult(e),
            });
        }
        // Move the custom texts out; the targets stay for resolving content paths.
        let records: Vec<(String, Custom)> = all
            .targets
            .iter_mut()
            .filter_map(|(path, t)| t.custom.take().map(|c| (path.clone(), c)))
            .collect();
        let (parsed, texts) = parse_records(records);
        let mut chosen: BTreeMap<Uuid, (Update, usize)> = BTreeMap::new();
        // Content files are moved out of `all.targets` on their last use (copied before
        // that when updates share one), so nothing is held twice.
        let mut uses: HashMap<String, u32> = HashMap::new();
        for m in parsed
            .iter()
            .flatten()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flatten()
        {
            for p in m
                .content
                .iter()
                .chain(m.eula.iter())
                .chain(m.bootstrapper.iter())
            {
                *uses.entry(p.clone()).or_default() += 1;
            }
        }
        let (cat, written, text_of) = std::thread::scope(|sc| {
            let writer = index.map(|(path, _)| {
                let texts = &texts;
                std::thread::Builder::new()
                    .name("upkeep-index".into())
                    .spawn_scoped(sc, move || {
                        crate::catalog::index::write_texts(
                            path,
                            texts.iter().flatten().map(Custom::as_str),
                        )
                    })
            });
            for (k, (path, result)) in parsed.into_iter().flatten().enumerate() {
                let warn = |cat: &mut Catalog, msg: String| {
                    cat.warnings.push(UpdateException {
                        message: format!("target {path}: {msg}"),
                        hresult: HResult::WU_E_INVALID_UPDATE,
                    })
                };
                let m = match result {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => {
                        warn(&mut cat, format!("update record does not parse: {e}"));
                        continue;
                    }
                };
                if let Err(e) = m.validate() {
                    warn(&mut cat, e.to_string());
                    continue;
                }
                if m.content.first().map(String::as_str) != Some(path.as_str()) {
                    warn(
                        &mut cat,
                        "the record must sit on its update's first content target".into(),
                    );
                    continue;
                }
                let missing = m
                    .content
                    .iter()
                    .chain(m.eula.iter())
                    .chain(m.bootstrapper.iter())
                    .find(|p| !all.targets.contains_key(*p));
                if let Some(p) = missing {
                    warn(
                        &mut cat,
                        format!("update {} refers to {p}, which no trusted role lists", m.id),
                    );
                    continue;
                }
                let mut resolve = |p: &String| {
                    let left = uses.get_mut(p).map(|n| {
                        *n -= 1;
                        *n
                    });
                    let (length, hashes) = if left == Some(0) {
                        let t = all.targets.remove(p).expect("checked above");
                        (t.length, t.hashes)
                    } else {
                        let t = &all.targets[p];
                        (t.length, t.hashes.clone())
                    };
                    ContentFile {
                        path: p.clone(),
                        length,
                        hashes,
                    }
                };
                let content = m.content.iter().map(&mut resolve).collect();
                let eula = m.eula.as_ref().map(&mut resolve);
                let boot = m.bootstrapper.as_ref().map(&mut resolve);
                let (id, rev) = (m.id, m.revision);
                let entry = Update::signed(
                    m,
                    content,
                    eula,
                    boot,
                    Some(service.clone()),
                    UpdateState::default(),
                );
                match chosen.get(&id) {
                    Some((old, _)) if old.identity().revision_number >= rev => {
                        if old.identity().revision_number == rev {
                            warn(
                                &mut cat,
                                format!("update {id} revision {rev} is published twice"),
                            );
                        }
                    }
                    _ => {
                        chosen.insert(id, (entry, k));
                    }
                }
            }
            // 100,000 targets take a while to free; nobody waits for that.
            let _ = std::thread::Builder::new()
                .name("upkeep-free".into())
                .spawn(move || drop(all));
            let mut pairs: Vec<(Update, usize)> = chosen.into_values().collect();
            pairs.sort_by(|a, b| order(&a.0, &b.0));
            let (entries, text_of): (Vec<Update>, Vec<usize>) = pairs.into_iter().unzip();
            cat.full = Full::of(entries).into();
            let written = writer.map(|w| match w {
                Ok(h) => h.join().expect("writing the index's texts does not panic"),
                Err(e) => Err(e),
            });
            (cat, written, text_of)
        });
        if let (Some(written), Some((path, key))) = (written, index) {
            match written.and_then(|t| crate::catalog::index::finish(t, key, &cat, &text_of)) {
                Ok(()) => tracing::debug!(index = %path.display(), "catalog index written"),
                Err(e) => {
                    tracing::warn!(index = %path.display(), "writing the catalog index: {e}")
                }
            }
        }
        // The texts are freed once the index has them (nobody waits for that either).
        let _ = std::thread::Builder::new()
            .name("upkeep-free".into())
            .spawn(move || drop(texts));
        cat
    }

    /// Orders the entries — newest release first, then title, so output is stable — and
    /// indexes them.
    fn set_entries(&mut self, mut entries: Vec<Update>) {
        entries.sort_by(order);
        self.full = Full::of(entries).into();
    }

    /// A catalog whose entries are read from a catalog index as they are needed.
    pub(crate) fn from_index(
        lazy: crate::catalog::index::Lazy,
        warnings: Vec<UpdateException>,
    ) -> Catalog {
        Catalog {
            full: std::sync::OnceLock::new(),
            lazy: Some(lazy),
            tainted: false,
            warnings,
        }
    }

    fn full(&self) -> &Full {
        self.full.get_or_init(|| match &self.lazy {
            Some(l) => Full::of(l.all()),
            None => Full::default(),
        })
    }

    /// An entry read from the catalog index was not what the index recorded (the file was
    /// changed): the catalog cannot be trusted, and the index must be rebuilt.
    pub(crate) fn is_tampered(&self) -> bool {
        self.tainted || self.lazy.as_ref().is_some_and(|l| l.is_tampered())
    }

    /// The catalogs of several services as one, in the order given: an update id offered
    /// by two services is taken from the first and the other is a warning
    /// (`WU_E_DUPLICATE_ITEM`) — each service's trust covers only what it signs, and one
    /// cannot replace another's update. `failed` are warnings for services left out.
    pub fn merge(
        parts: Vec<(String, std::sync::Arc<Catalog>)>,
        failed: Vec<UpdateException>,
    ) -> Catalog {
        let mut cat = Catalog {
            warnings: failed,
            ..Catalog::default()
        };
        let mut from: HashMap<Uuid, String> = HashMap::new();
        let mut entries = Vec::new();
        for (name, part) in &parts {
            for w in part.warnings() {
                cat.warnings.push(UpdateException {
                    message: format!("service {name}: {}", w.message),
                    hresult: w.hresult,
                });
            }
            for u in part.entries() {
                let id = u.identity().update_id;
                match from.get(&id) {
                    Some(first) => cat.warnings.push(UpdateException {
                        message: format!(
                            "update {id} ({}) is offered by service {first} and by service {name}: {name}'s is ignored",
                            u.title()
                        ),
                        hresult: HResult::WU_E_DUPLICATE_ITEM,
                    }),
                    None => {
                        from.insert(id, name.clone());
                        entries.push(u.clone());
                    }
                }
            }
        }
        cat.tainted = parts.iter().any(|(_, p)| p.is_tampered());
        cat.set_entries(entries);
        cat
    }

    /// The entries that have applicability rules.
    pub fn with_rules(&self) -> Box<dyn Iterator<Item = &Update> + '_> {
        match (&self.lazy, self.full.get()) {
            (Some(l), None) => Box::new(l.with_rules()),
            _ => {
                let f = self.full();
                Box::new(f.with_rules.iter().map(|&i| &f.entries[i]))
            }
        }
    }

    /// Every entry (read from the catalog index at once, the first time, when there is
    /// one).
    pub fn entries(&self) -> &[Update] {
        &self.full().entries
    }
    /// The entry for an id (from the catalog index alone when every entry is not needed).
    pub fn get(&self, id: &Uuid) -> Option<&Update> {
        match (&self.lazy, self.full.get()) {
            (Some(l), None) => l.get(id),
            _ => {
                let f = self.full();
                f.by_id.get(id).map(|&i| &f.entries[i])
            }
        }
    }
    /// Whether every entry is in memory (a search then looks at them all).
    pub(crate) fn is_loaded(&self) -> bool {
        self.lazy.is_none() || self.full.get().is_some()
    }
    /// Problems found while building.
    pub fn warnings(&self) -> &[UpdateException] {
        &self.warnings
    }
    /// Number of updates.
    pub fn len(&self) -> usize {
        match (&self.lazy, self.full.get()) {
            (Some(l), None) => l.len(),
            _ => self.full().entries.len(),
        }
    }
    /// True when there are no updates.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Full {
    fn of(entries: Vec<Update>) -> Full {
        Full {
            by_id: entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.identity().update_id, i))
                .collect(),
            with_rules: entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.metadata().applicability.is_empty())
                .map(|(i, _)| i)
                .collect(),
            entries,
        }
    }
}

/// The catalog's order: newest release first, then title, then identity.
pub(crate) fn order(a: &Update, b: &Update) -> std::cmp::Ordering {
    b.release_date()
        .cmp(&a.release_date())
        .then_with(|| a.title().cmp(b.title()))
        .then_with(|| a.identity().cmp(&b.identity()))
}

/// `custom` with an optional upkeep record; other members are the publisher's business.
#[derive(serde::Deserialize)]
struct WithRecord {
    upkeep: Option<UpdateMetadata>,
}

/// The upkeep record in a target's `custom` text, if it has one (the one parser of
/// records, for verified metadata and for the catalog index alike).
pub(crate) fn parse_record(custom: &str) -> Result<Option<UpdateMetadata>, String> {
    serde_json::from_str::<WithRecord>(custom)
        .map(|w| w.upkeep)
        .map_err(|e| e.to_string())
}

type Parsed = (String, Result<Option<UpdateMetadata>, String>);

/// Parses records on up to four threads, keeping their order; their texts come back
/// beside them, in the same order (the catalog index is written from them). The parts
/// stay as the threads made them: joining them into one vector would copy every parsed
/// record once more.
fn parse_records(records: Vec<(String, Custom)>) -> (Vec<Vec<Parsed>>, Vec<Vec<Custom>>) {
    let parse_part = |part: Vec<(String, Custom)>| -> (Vec<Parsed>, Vec<Custom>) {
        let mut texts = Vec::with_capacity(part.len());
        let parsed = part
            .into_iter()
            .map(|(path, custom)| {
                let r = parse_record(custom.as_str());
                texts.push(custom);
                (path, r)
            })
            .collect();
        (parsed, texts)
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if threads < 2 || records.len() < 1024 {
        let (p, t) = parse_part(records);
        return (vec![p], vec![t]);
    }
    let chunk = records.len().div_ceil(threads);
    let mut chunks: Vec<Vec<(String, Custom)>> = Vec::with_capacity(threads);
    let mut rest = records;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || parse_part(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("parsing a record does not panic"))
            .unzip()
    })
}
