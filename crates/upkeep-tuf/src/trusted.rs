//! The set of metadata trusted so far in one update, and the rules that let new metadata in.
//!
//! Every `update_*` method takes unverified bytes and either adds verified metadata or
//! leaves the set as it was. Expiry is judged against the time the update started, fixed when
//! the set is created, so a clock that moves during an update cannot change a decision.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::metadata::{self, Envelope, RoleKeys, Root, Snapshot, Targets, Timestamp};

/// A delegated or top-level targets role that has been verified, with the delegators it was
/// verified against (a role reached through another delegator is verified again, from the
/// same bytes: their SHA-256 is kept instead of the bytes themselves).
#[derive(Debug, Clone)]
pub struct LoadedTargets {
    /// The verified envelope (received bytes released).
    pub envelope: Envelope<Targets>,
    /// Delegators whose keys verified it.
    pub verified_by: HashSet<String>,
    /// SHA-256 of the file the envelope came from.
    pub digest: [u8; 32],
}

/// Trusted metadata of one update.
#[derive(Debug)]
pub struct TrustedSet {
    reference_time: jiff::Timestamp,
    root: Envelope<Root>,
    timestamp: Option<Envelope<Timestamp>>,
    snapshot: Option<Envelope<Snapshot>>,
    targets: HashMap<String, LoadedTargets>,
}

fn expired(role: &str, common: &metadata::Common, now: jiff::Timestamp) -> Result<()> {
    let expires = common.expires_at().map_err(|e| Error::parse(role, e))?;
    if expires <= now {
        return Err(Error::Expired {
            role: role.to_string(),
            expires,
        });
    }
    Ok(())
}

impl TrustedSet {
    /// Starts from trusted root bytes, which must be signed by their own threshold.
    pub fn new(root_bytes: &[u8], reference_time: jiff::Timestamp) -> Result<TrustedSet> {
        let root: Envelope<Root> = metadata::parse("root", root_bytes)?;
        let rk = root_role(&root.signed, "root")?;
        root.verify("root", &root.signed.keys, &rk)?;
        Ok(TrustedSet {
            reference_time,
            root,
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
        })
    }

    /// The time expiry is judged against.
    pub fn reference_time(&self) -> jiff::Timestamp {
        self.reference_time
    }
    /// The trusted root.
    pub fn root(&self) -> &Root {
        &self.root.signed
    }
    /// The trusted timestamp, if loaded.
    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref().map(|e| &e.signed)
    }
    /// The trusted snapshot, if loaded.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref().map(|e| &e.signed)
    }
    /// A loaded targets role.
    pub fn targets(&self, role: &str) -> Option<&Targets> {
        self.targets.get(role).map(|l| &l.envelope.signed)
    }
    /// Moves a target's description out of a loaded role (used once the set is done with,
    /// to build a catalog without copying it).
    pub(crate) fn take_target(&mut self, role: &str, path: &str) -> Option<metadata::TargetFile> {
        self.targets
            .get_mut(role)?
            .envelope
            .signed
            .targets
            .remove(path)
    }

    /// Number of loaded targets roles.
    pub fn loaded_targets_count(&self) -> usize {
        self.targets.len()
    }

    /// Accepts root version N+1, signed by the threshold of both the trusted and the new root.
    /// An expired intermediate root is fine; expiry is checked on the final one.
    pub fn update_root(&mut self, data: &[u8]) -> Result<()> {
        if self.timestamp.is_some() {
            return Err(Error::State("cannot update root after timestamp".into()));
        }
        let new: Envelope<Root> = metadata::parse("root", data)?;
        let old_rk = root_role(&self.root.signed, "root")?;
        new.verify("root", &self.root.signed.keys, &old_rk)?;
        let expected = self.root.signed.common.version + 1;
        if new.signed.common.version != expected {
            return Err(Error::Version {
                role: "root".into(),
                expected,
                got: new.signed.common.version,
            });
        }
        let new_rk = root_role(&new.signed, "root")?;
        new.verify("root", &new.signed.keys, &new_rk)?;
        self.root = new;
        Ok(())
    }

    /// Accepts a timestamp. A version equal to the trusted one yields
    /// [`Error::EqualVersion`] and keeps the trusted one. An expired timestamp is loaded
    /// (for rollback protection) and then reported as expired.
    pub fn update_timestamp(&mut self, data: &[u8]) -> Result<()> {
        if self.snapshot.is_some() {
            return Err(Error::State(
                "cannot update timestamp after snapshot".into(),
            ));
        }
        expired("root", &self.root.signed.common, self.reference_time)?;
        let new: Envelope<Timestamp> = metadata::parse("timestamp", data)?;
        let rk = root_role(&self.root.signed, "timestamp")?;
        new.verify("timestamp", &self.root.signed.keys, &rk)?;
        if let Some(old) = &self.timestamp {
            let (ov, nv) = (old.signed.common.version, new.signed.common.version);
            if nv < ov {
                return Err(Error::Rollback {
                    role: "timestamp".into(),
                    trusted: ov,
                    got: nv,
                });
            }
            if nv == ov {
                return Err(Error::EqualVersion {
                    role: "timestamp".into(),
                });
            }
            let (osv, nsv) = (
                old.signed.snapshot_meta().version,
                new.signed.snapshot_meta().version,
            );
            if nsv < osv {
                return Err(Error::Rollback {
                    role: "snapshot (in timestamp)".into(),
                    trusted: osv,
                    got: nsv,
                });
            }
        }
        self.timestamp = Some(new);
        self.check_final_timestamp()
    }

    fn check_final_timestamp(&self) -> Result<()> {
        let ts = self.timestamp.as_ref().expect("checked by caller");
        expired("timestamp", &ts.signed.common, self.reference_time)
    }

    /// Accepts a snapshot. `trusted` skips the length and hash check for a local copy that
    /// was verified before. Rollback of any listed role's version is refused.
    pub fn update_snapshot(&mut self, data: &[u8], trusted: bool) -> Result<()> {
        let Some(ts) = &self.timestamp else {
            return Err(Error::State(
                "cannot update snapshot before timestamp".into(),
            ));
        };
        if !self.targets.is_empty() {
            return Err(Error::State("cannot update snapshot after targets".into()));
        }
        self.check_final_timestamp()?;
        let meta = ts.signed.snapshot_meta().clone();
        if !trusted {
            meta.verify("snapshot", data)?;
        }
        let new: Envelope<Snapshot> = metadata::parse("snapshot", data)?;
        let rk = root_role(&self.root.signed, "snapshot")?;
        new.verify("snapshot", &self.root.signed.keys, &rk)?;
        if let Some(old) = &self.snapshot {
            for (name, info) in &old.signed.meta {
                match new.signed.meta.get(name) {
                    None => {
                        return Err(Error::parse(
                            "snapshot",
                            format!("new snapshot no longer lists {name}"),
                        ))
                    }
                    Some(n) if n.version < info.version => {
                        return Err(Error::Rollback {
                            role: name.trim_end_matches(".json").to_string(),
                            trusted: info.version,
                            got: n.version,
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        self.snapshot = Some(new);
        self.check_final_snapshot()
    }

    fn check_final_snapshot(&self) -> Result<()> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::State("snapshot not loaded".into()))?;
        expired("snapshot", &snap.signed.common, self.reference_time)?;
        let ts = self.timestamp.as_ref().expect("snapshot implies timestamp");
        let want = ts.signed.snapshot_meta().version;
        if snap.signed.common.version != want {
            return Err(Error::Version {
                role: "snapshot".into(),
                expected: want,
                got: snap.signed.common.version,
            });
        }
        Ok(())
    }

    /// The snapshot's file info for a targets role.
    pub fn meta_for(&self, role: &str) -> Result<metadata::MetaFile> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::State("snapshot not loaded".into()))?;
        snap.signed
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| Error::MissingMeta { role: role.into() })
    }

    /// Keys and threshold `delegator` gives `role`.
    fn delegation_keys(
        &self,
        role: &str,
        delegator: &str,
    ) -> Result<(HashMap<String, crate::keys::Key>, RoleKeys)> {
        if delegator == "root" {
            return Ok((
                self.root.signed.keys.clone(),
                root_role(&self.root.signed, role)?,
            ));
        }
        let parent = self
            .targets(delegator)
            .ok_or_else(|| Error::State(format!("delegator {delegator} not loaded")))?;
        let d = parent
            .delegations
            .as_ref()
            .ok_or_else(|| Error::State(format!("{delegator} delegates nothing")))?;
        let rk = d
            .role_keys(role)
            .ok_or_else(|| Error::State(format!("{delegator} does not delegate to {role}")))?;
        Ok((d.keys.clone(), rk))
    }

    /// Accepts targets metadata for `role`, delegated by `delegator` (`"root"` for the
    /// top-level targets role).
    pub fn update_targets(&mut self, data: &[u8], role: &str, delegator: &str) -> Result<()> {
        let env = self.verify_targets(data, role, delegator)?;
        self.insert_verified(role, delegator, env, digest(data));
        Ok(())
    }

    /// Every check of [`TrustedSet::update_targets`] without changing the set, so several
    /// roles can be verified at once on other threads; add the result with
    /// [`TrustedSet::insert_verified`].
    pub fn verify_targets(
        &self,
        data: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<Envelope<Targets>> {
        if self.snapshot.is_none() {
            return Err(Error::State("cannot load targets before snapshot".into()));
        }
        self.check_final_snapshot()?;
        let meta = self.meta_for(role)?;
        meta.verify(role, data)?;
        let new: Envelope<Targets> = metadata::parse(role, data)?;
        let (keys, rk) = self.delegation_keys(role, delegator)?;
        new.verify(role, &keys, &rk)?;
        if new.signed.common.version != meta.version {
            return Err(Error::Version {
                role: role.into(),
                expected: meta.version,
                got: new.signed.common.version,
            });
        }
        expired(role, &new.signed.common, self.reference_time)?;
        Ok(new)
    }

    /// Adds targets metadata that [`TrustedSet::verify_targets`] accepted for the same role
    /// and delegator; `digest` is the SHA-256 of the bytes it was verified from.
    pub fn insert_verified(
        &mut self,
        role: &str,
        delegator: &str,
        mut envelope: Envelope<Targets>,
        digest: [u8; 32],
    ) {
        envelope.release_raw();
        let mut verified_by = HashSet::new();
        verified_by.insert(delegator.to_string());
        self.targets.insert(
            role.to_string(),
            LoadedTargets {
                envelope,
                verified_by,
                digest,
            },
        );
    }

    /// True if `role` is loaded and already verified through `delegator` (nothing to do).
    pub(crate) fn is_loaded_through(&self, role: &str, delegator: &str) -> bool {
        self.targets
            .get(role)
            .is_some_and(|l| l.verified_by.contains(delegator))
    }

    /// True if `role` is loaded and trusted through `delegator`. The first time it is reached
    /// through another delegator, its bytes (from `reread`, checked against the digest of the
    /// bytes first verified) are verified against that delegator's keys.
    pub fn check_loaded_through(
        &mut self,
        role: &str,
        delegator: &str,
        reread: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<bool> {
        let Some(loaded) = self.targets.get(role) else {
            return Ok(false);
        };
        if loaded.verified_by.contains(delegator) {
            return Ok(true);
        }
        let data = reread()
            .filter(|d| digest(d) == loaded.digest)
            .ok_or_else(|| Error::State(format!("{role} changed on disk since it was verified")))?;
        let env: Envelope<Targets> = metadata::parse(role, &data)?;
        let (keys, rk) = self.delegation_keys(role, delegator)?;
        env.verify(role, &keys, &rk)?;
        self.targets
            .get_mut(role)
            .expect("present")
            .verified_by
            .insert(delegator.to_string());
        Ok(true)
    }
}

/// SHA-256 of a metadata file.
pub fn digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn root_role(root: &Root, role: &str) -> Result<RoleKeys> {
    root.roles
        .get(role)
        .cloned()
        .ok_or_else(|| Error::parse("root", format!("no role {role}")))
}
