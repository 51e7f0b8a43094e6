//! Applicability on this machine: the facts rules are evaluated against (`uname -m`,
//! `os-release`, this agent's version, files inside the install root), read once per
//! search or install, and the prerequisite checks that need to know what is installed.
//!
//! The rules and their evaluation are `upkeep_types::applicability`'s; this module only
//! supplies the facts.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use sha2::Digest;
use upkeep_install::root::RootDir;
use upkeep_types::applicability::{self, FileFact, FileRule, Verdict};
use upkeep_types::{Applicability, Machine, RuleCheck};
use uuid::Uuid;

use crate::config::ResolvedConfig;

/// This build's version, as `min_agent_version` is compared with it.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The facts of the machine being updated.
pub(crate) struct Facts {
    machine: Machine,
    /// The install root, when it exists (file rules read inside it).
    root: Option<RootDir>,
}

/// The machine's facts as `cfg` describes them: its architecture (`architecture`, else
/// `uname -m`) and `os-release` (`os_release`, else the install root's `etc/os-release`
/// or `usr/lib/os-release`, else the host's).
pub fn machine(cfg: &ResolvedConfig) -> Machine {
    let architecture = cfg.architecture.clone().unwrap_or_else(uname_machine);
    let root = &cfg.install_root;
    let text = match &cfg.os_release {
        Some(p) => upkeep_fs::read_to_string(p).unwrap_or_else(|e| {
            tracing::warn!(path = %p.display(), "os_release cannot be read: {e}");
            String::new()
        }),
        None => [
            root.join("etc/os-release"),
            root.join("usr/lib/os-release"),
            "/etc/os-release".into(),
            "/usr/lib/os-release".into(),
        ]
        .iter()
        .find_map(|p| upkeep_fs::read_to_string(p).ok())
        .unwrap_or_default(),
    };
    Machine {
        architecture,
        agent_version: AGENT_VERSION.to_string(),
        ..Machine::default()
    }
    .with_os_release(&text)
}

fn uname_machine() -> String {
    // SAFETY: uname fills the struct it is given; the fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.machine.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

impl Facts {
    pub(crate) fn read(cfg: &ResolvedConfig) -> Facts {
        Facts {
            machine: machine(cfg),
            root: RootDir::open(&cfg.install_root).ok(),
        }
    }

    /// The rules of `rules` on this machine (prerequisites aside).
    pub(crate) fn verdict(&self, rules: &Applicability) -> Verdict {
        if rules.is_empty() {
            return Verdict::default();
        }
        applicability::evaluate(rules, &self.machine, &mut |r| self.file_fact(r))
    }

    /// Reads the file a rule names, inside the install root (symlinks followed as the
    /// machine would, never out of the root).
    fn file_fact(&self, r: &FileRule) -> FileFact {
        let Some(root) = &self.root else {
            return FileFact::Missing;
        };
        let rel = r.path.trim_start_matches('/');
        let found = root
            .canonical(rel, true)
            .and_then(|c| match root.stat(&c)? {
                Some(st) if st.is_file() => root.open_file(&c).map(Some),
                _ => Ok(None),
            });
        let mut f = match found {
            Ok(Some(f)) => f,
            Ok(None) => return FileFact::Missing,
            Err(e) => return FileFact::Unreadable(e.message),
        };
        if r.sha256.is_some() {
            let mut h = sha2::Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) => return FileFact::Unreadable(e.to_string()),
                }
            }
            return FileFact::Present {
                sha256: Some(hex::encode(h.finalize())),
                version: None,
            };
        }
        if r.version.is_some() {
            // A version file is small; more than 64 KiB is not read.
            let mut text = String::new();
            if let Err(e) = (&mut f).take(64 << 10).read_to_string(&mut text) {
                return FileFact::Unreadable(e.to_string());
            }
            return FileFact::Present {
                sha256: None,
                version: applicability::version_in(&text, r.key.as_deref()),
            };
        }
        FileFact::Present {
            sha256: None,
            version: None,
        }
    }
}

/// What the catalog offers for an id: the update's title, its prerequisites, and whether it
/// applies by its own rules.
pub(crate) type Offered<'a> = dyn Fn(&Uuid) -> Option<(String, Vec<Uuid>, bool)> + 'a;

/// Whether each update's prerequisites can be met: an update can be installed when every
/// prerequisite is installed, or could itself be installed first (it applies, and its own
/// prerequisites can be met). Cycles cannot be met.
pub(crate) struct Prerequisites<'a> {
    /// Installed (by the agent, or detected).
    pub installed: &'a dyn Fn(&Uuid) -> bool,
    /// An update the catalog has: its title, its prerequisites, and whether it applies by
    /// its own rules.
    pub available: &'a Offered<'a>,
    memo: HashMap<Uuid, bool>,
}

impl<'a> Prerequisites<'a> {
    pub(crate) fn new(installed: &'a dyn Fn(&Uuid) -> bool, available: &'a Offered<'a>) -> Self {
        Prerequisites {
            installed,
            available,
            memo: HashMap::new(),
        }
    }

    /// The checks of `prereqs`, the first failure in words.
    pub(crate) fn check(&mut self, prereqs: &[Uuid]) -> (Vec<RuleCheck>, Option<String>) {
        let mut checks = Vec::new();
        let mut failed = None;
        for p in prereqs {
            let (holds, words) = if (self.installed)(p) {
                (true, format!("prerequisite {p} is installed"))
            } else if let Some((title, _, applies)) = (self.available)(p) {
                let ok = self.can_meet(p, &mut HashSet::new());
                let w = if ok {
                    format!("prerequisite {p} ({title}) is not installed; it is installed first in the same job")
                } else if !applies {
                    format!("prerequisite {p} ({title}) is not installed and does not apply to this machine")
                } else {
                    format!("prerequisite {p} ({title}) is not installed and cannot be (its own prerequisites cannot be met)")
                };
                (ok, w)
            } else {
                (
                    false,
                    format!(
                        "prerequisite {p} is not installed, and no trusted repository offers it"
                    ),
                )
            };
            if !holds && failed.is_none() {
                failed = Some(words.clone());
            }
            checks.push(RuleCheck { rule: words, holds });
        }
        (checks, failed)
    }

    fn can_meet(&mut self, id: &Uuid, visiting: &mut HashSet<Uuid>) -> bool {
        if (self.installed)(id) {
            return true;
        }
        if let Some(&m) = self.memo.get(id) {
            return m;
        }
        if !visiting.insert(*id) {
            return false; // a cycle
        }
        let ok = match (self.available)(id) {
            Some((_, pre, true)) => pre.iter().all(|p| self.can_meet(p, visiting)),
            _ => false,
        };
        visiting.remove(id);
        self.memo.insert(*id, ok);
        ok
    }
}

/// The order an install job runs its updates in: the collection's order, except that an
/// update's prerequisites in the same collection come before it. Indices into `ids`.
pub fn install_order(ids: &[(Uuid, Vec<Uuid>)]) -> Vec<usize> {
    let index: HashMap<Uuid, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let mut order = Vec::with_capacity(ids.len());
    let mut state = vec![0u8; ids.len()]; // 0 new, 1 visiting, 2 done
    fn visit(
        i: usize,
        ids: &[(Uuid, Vec<Uuid>)],
        index: &HashMap<Uuid, usize>,
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) {
        if state[i] != 0 {
            return; // done, or a cycle (left in collection order)
        }
        state[i] = 1;
        for p in &ids[i].1 {
            if let Some(&j) = index.get(p) {
                visit(j, ids, index, state, order);
            }
        }
        state[i] = 2;
        order.push(i);
    }
    for i in 0..ids.len() {
        visit(i, ids, &index, &mut state, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prerequisites_come_first_and_the_rest_keeps_its_order() {
        let (a, b, c, d) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        // c needs a, a needs b; d is free.
        let ids = vec![(c, vec![a]), (d, vec![]), (a, vec![b]), (b, vec![])];
        assert_eq!(install_order(&ids), vec![3, 2, 0, 1]);
        // A cycle does not loop.
        let cyc = vec![(a, vec![b]), (b, vec![a])];
        assert_eq!(install_order(&cyc).len(), 2);
    }

    #[test]
    fn prerequisite_chains_and_cycles() {
        let (a, b, c, x) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(9),
        );
        let installed = |id: &Uuid| *id == c;
        let graph: HashMap<Uuid, Vec<Uuid>> = [(a, vec![b]), (b, vec![c]), (x, vec![x])]
            .into_iter()
            .collect();
        let available = |id: &Uuid| graph.get(id).map(|p| ("t".to_string(), p.clone(), true));
        let mut p = Prerequisites::new(&installed, &available);
        assert!(p.check(&[a]).1.is_none());
        assert!(p.check(&[c]).1.is_none());
        assert!(p.check(&[x]).1.unwrap().contains("cannot be"));
        assert!(p
            .check(&[Uuid::from_u128(77)])
            .1
            .unwrap()
            .contains("no trusted repository offers it"));
    }
}
