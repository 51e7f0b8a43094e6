//! Dev-only helpers for upkeep's tests and benchmarks.
//!
//! [`RepoSim`] is a repository whose every field a test can change — versions, expiry,
//! keys, thresholds, delegations, raw bytes — before writing it to disk, so a test can build
//! exactly the attack it is about (rollback, freeze, mix-and-match, …). Serve it over real
//! HTTP on loopback with [`RepoSim::serve`]. [`faults::FaultServer`] serves content with
//! scripted faults for download tests. [`bus`] starts a private system bus and a real
//! `polkitd` on it for the daemon's tests.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

pub mod bus;
pub mod faults;
pub mod mounts;
pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use upkeep_publish::serve::{repository_mounts, Server};
use upkeep_tuf::keys::SigningKey;
use upkeep_tuf::metadata::{
    self, Common, DelegatedRole, Delegations, MetaFile, RoleKeys, Root, Snapshot, TargetFile,
    Targets, Timestamp, SPEC_VERSION,
};
use upkeep_types::UpdateMetadata;
use uuid::Uuid;

/// A time `secs` from now (negative: in the past) in TUF's expiry format.
pub fn expires_in(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    metadata::format_expires(t)
}

fn common(role: &str, version: u64) -> Common {
    Common {
        role_type: role.into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: expires_in(86_400),
    }
}

/// A simulated repository on disk.
pub struct RepoSim {
    dir: tempfile::TempDir,
    /// Signing keys by role name (top-level and delegated).
    pub signers: HashMap<String, Vec<SigningKey>>,
    /// Root metadata (`publish_root` signs and writes it).
    pub root: Root,
    /// Timestamp metadata.
    pub timestamp: Timestamp,
    /// Snapshot metadata.
    pub snapshot: Snapshot,
    /// Top-level targets.
    pub targets: Targets,
    /// Delegated targets roles by name.
    pub delegated: BTreeMap<String, Targets>,
    /// Content by target path.
    pub artifacts: BTreeMap<String, Vec<u8>>,
    /// The bytes of root version 1, for clients to trust.
    pub initial_root: Vec<u8>,
    /// Sign every role over plain `serde_json` bytes instead of canonical JSON: a
    /// non-canonical encoder, which writes control characters as escapes (`\u001b`), as a
    /// careless or hostile publisher may. Clients verify the bytes as received.
    pub plain_json: bool,
}

impl Default for RepoSim {
    fn default() -> Self {
        Self::new()
    }
}

impl RepoSim {
    /// A repository with one key per top-level role, consistent snapshots, no targets,
    /// published once (root v1, targets/snapshot/timestamp v1).
    pub fn new() -> RepoSim {
        RepoSim::with_seed(1)
    }

    /// [`new`](Self::new) with keys of their own: the roles' keys are seeded from `seed`,
    /// `seed + 1`, … (another publisher than `new`'s, which uses 1).
    pub fn with_seed(seed: u8) -> RepoSim {
        let dir = tempfile::Builder::new()
            .prefix("upkeep-sim-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("metadata")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("targets")).expect("mkdir");
        let mut signers = HashMap::new();
        let mut keys = HashMap::new();
        let mut roles = HashMap::new();
        for (i, role) in ["root", "timestamp", "snapshot", "targets"]
            .into_iter()
            .enumerate()
        {
            let k = SigningKey::from_seed([seed.wrapping_add(i as u8); 32]);
            keys.insert(k.key_id().to_string(), k.public().clone());
            roles.insert(
                role.to_string(),
                RoleKeys {
                    keyids: vec![k.key_id().to_string()],
                    threshold: 1,
                },
            );
            signers.insert(role.to_string(), vec![k]);
        }
        let root = Root {
            common: common("root", 1),
            consistent_snapshot: true,
            keys,
            roles,
            unrecognized: BTreeMap::new(),
        };
        let mut sim = RepoSim {
            dir,
            signers,
            root,
            timestamp: Timestamp {
                common: common("timestamp", 0),
                meta: BTreeMap::new(),
                unrecognized: BTreeMap::new(),
            },
            snapshot: Snapshot {
                common: common("snapshot", 0),
                meta: BTreeMap::new(),
                unrecognized: BTreeMap::new(),
            },
            targets: Targets {
                common: common("targets", 0),
                targets: BTreeMap::new(),
                delegations: None,
                unrecognized: BTreeMap::new(),
            },
            delegated: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            initial_root: Vec::new(),
            plain_json: false,
        };
        sim.initial_root = sim.write_root();
        sim.publish();
        sim
    }

    /// The repository directory (`metadata/`, `targets/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the initially trusted root to a file and returns its path.
    pub fn trusted_root_file(&self) -> PathBuf {
        let p = self.dir.path().join("trusted-root.json");
        std::fs::write(&p, &self.initial_root).expect("write trusted root");
        p
    }

    /// Serves `metadata/` and `targets/` on 127.0.0.1 at a free port.
    pub fn serve(&self) -> Server {
        Server::start(
            "127.0.0.1:0".parse().expect("addr"),
            repository_mounts(self.dir.path()),
        )
        .expect("start server")
    }

    /// Signs a payload with the keys of `role`.
    pub fn sign<T: serde::Serialize>(&self, role: &str, payload: &T) -> Vec<u8> {
        let keys: Vec<&SigningKey> = self
            .signers
            .get(role)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        if self.plain_json {
            let bytes = serde_json::to_vec(payload).expect("serialise");
            return metadata::sign_bytes(bytes, &keys).expect("sign");
        }
        metadata::sign(payload, &keys).expect("sign")
    }

    /// Writes raw bytes as a metadata file name (e.g. `timestamp.json`, `3.snapshot.json`).
    pub fn write_raw(&self, name: &str, data: &[u8]) {
        std::fs::write(self.dir.path().join("metadata").join(name), data).expect("write metadata");
    }

    /// Signs and writes the current root as `N.root.json` (and `root.json`); returns the bytes.
    pub fn write_root(&self) -> Vec<u8> {
        let b = self.sign("root", &self.root);
        self.write_raw(&format!("{}.root.json", self.root.common.version), &b);
        self.write_raw("root.json", &b);
        b
    }

    /// A new root version signed by the current root keys and `extra` (old keys during a
    /// rotation).
    pub fn publish_root_signed_by(&mut self, extra: &[&SigningKey]) -> Vec<u8> {
        self.root.common.version += 1;
        let mut keys: Vec<&SigningKey> = self.signers["root"].iter().collect();
        keys.extend_from_slice(extra);
        let b = metadata::sign(&self.root, &keys).expect("sign");
        self.write_raw(&format!("{}.root.json", self.root.common.version), &b);
        self.write_raw("root.json", &b);
        b
    }

    /// Replaces the key of a top-level `role` with a new one in root. The caller then
    /// publishes root (and, for `root`, signs with the old key too).
    pub fn rotate_key(&mut self, role: &str, seed: u8) -> SigningKey {
        let k = SigningKey::from_seed([seed; 32]);
        self.root
            .keys
            .insert(k.key_id().to_string(), k.public().clone());
        self.root.roles.insert(
            role.into(),
            RoleKeys {
                keyids: vec![k.key_id().to_string()],
                threshold: 1,
            },
        );
        let old = self
            .signers
            .insert(role.into(), vec![SigningKey::from_seed([seed; 32])]);
        old.and_then(|mut v| v.pop()).expect("role had a key")
    }

    /// Adds a target to `role` (`"targets"` or a delegated role) with its content.
    pub fn add_target(
        &mut self,
        role: &str,
        path: &str,
        data: &[u8],
        custom: Option<serde_json::Value>,
    ) {
        let info = TargetFile::from_data(data, custom);
        self.artifacts.insert(path.to_string(), data.to_vec());
        self.role_mut(role).targets.insert(path.to_string(), info);
    }

    /// Adds an update: its record on a payload target `updates/<id>/<rev>/payload.tar`.
    pub fn add_update(&mut self, role: &str, mut meta: UpdateMetadata, payload: &[u8]) -> String {
        let path = format!("updates/{}/{}/payload.tar", meta.id, meta.revision);
        meta.content = vec![path.clone()];
        self.add_target(
            role,
            &path,
            payload,
            Some(serde_json::json!({ "upkeep": meta })),
        );
        path
    }

    /// A plain update record with the given id number and title.
    pub fn update(n: u128, title: &str) -> UpdateMetadata {
        UpdateMetadata::new(Uuid::from_u128(n), title, "placeholder")
    }

    /// The targets role `name` (top-level or delegated).
    pub fn role_mut(&mut self, name: &str) -> &mut Targets {
        if name == "targets" {
            &mut self.targets
        } else {
            self.delegated.get_mut(name).expect("delegated role exists")
        }
    }

    /// Delegates from `delegator` to a new role `name` for `paths`, with its own key.
    pub fn delegate(
        &mut self,
        delegator: &str,
        name: &str,
        paths: &[&str],
        terminating: bool,
        seed: u8,
    ) {
        let k = SigningKey::from_seed([seed; 32]);
        let parent = self.role_mut(delegator);
        let d = parent.delegations.get_or_insert_with(|| Delegations {
            keys: HashMap::new(),
            roles: Some(Vec::new()),
            succinct_roles: None,
            unrecognized: BTreeMap::new(),
        });
        d.keys.insert(k.key_id().to_string(), k.public().clone());
        d.roles.get_or_insert_with(Vec::new).push(DelegatedRole {
            name: name.into(),
            keyids: vec![k.key_id().to_string()],
            threshold: 1,
            terminating,
            paths: Some(paths.iter().map(|s| s.to_string()).collect()),
            path_hash_prefixes: None,
            unrecognized: BTreeMap::new(),
        });
        self.signers.insert(name.into(), vec![k]);
        self.delegated.insert(
            name.into(),
            Targets {
                common: common("targets", 0),
                targets: BTreeMap::new(),
                delegations: None,
                unrecognized: BTreeMap::new(),
            },
        );
    }

    fn write_content(&self) {
        for (path, data) in &self.artifacts {
            let info = self
                .targets
                .targets
                .get(path)
                .or_else(|| self.delegated.values().find_map(|t| t.targets.get(path)));
            let Some(info) = info else { continue };
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            let d = self.dir.path().join("targets").join(dir);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join(format!("{}.{name}", &info.hashes["sha256"])), data)
                .expect("write");
            std::fs::write(d.join(name), data).expect("write");
        }
    }

    /// Signs and writes a targets role at its current version; returns the bytes.
    pub fn write_targets(&self, name: &str) -> Vec<u8> {
        let t = if name == "targets" {
            &self.targets
        } else {
            &self.delegated[name]
        };
        let b = self.sign(name, t);
        self.write_raw(
            &format!(
                "{}.{}.json",
                t.common.version,
                upkeep_tuf::encode_role(name)
            ),
            &b,
        );
        b
    }

    /// Signs and writes the snapshot at its current version; returns the bytes.
    pub fn write_snapshot(&self) -> Vec<u8> {
        let b = self.sign("snapshot", &self.snapshot);
        self.write_raw(
            &format!("{}.snapshot.json", self.snapshot.common.version),
            &b,
        );
        b
    }

    /// Points the timestamp at `snapshot_bytes`, signs and writes `timestamp.json`.
    pub fn write_timestamp_for(&mut self, snapshot_bytes: &[u8]) -> Vec<u8> {
        let mut hashes = metadata::Hashes::new();
        hashes.insert(
            "sha256",
            metadata::digest_bytes("sha256", snapshot_bytes).expect("sha256"),
        );
        self.timestamp.meta.insert(
            "snapshot.json".into(),
            MetaFile {
                version: self.snapshot.common.version,
                length: Some(snapshot_bytes.len() as u64),
                hashes: Some(hashes),
                unrecognized: BTreeMap::new(),
            },
        );
        self.write_timestamp()
    }

    /// Signs and writes `timestamp.json` as it is.
    pub fn write_timestamp(&self) -> Vec<u8> {
        let b = self.sign("timestamp", &self.timestamp);
        self.write_raw("timestamp.json", &b);
        b
    }

    /// Bumps every targets role, the snapshot and the timestamp, and writes everything.
    pub fn publish(&mut self) {
        self.targets.common.version += 1;
        let names: Vec<String> = self.delegated.keys().cloned().collect();
        for n in &names {
            self.delegated.get_mut(n).expect("exists").common.version += 1;
        }
        self.snapshot.meta.clear();
        self.snapshot.meta.insert(
            "targets.json".into(),
            meta_version(self.targets.common.version),
        );
        for (n, t) in &self.delegated {
            self.snapshot
                .meta
                .insert(format!("{n}.json"), meta_version(t.common.version));
        }
        self.write_targets("targets");
        for n in &names {
            self.write_targets(n);
        }
        self.write_content();
        self.snapshot.common.version += 1;
        let snap = self.write_snapshot();
        self.timestamp.common.version += 1;
        self.write_timestamp_for(&snap);
    }
}

fn meta_version(v: u64) -> MetaFile {
    MetaFile {
        version: v,
        length: None,
        hashes: None,
        unrecognized: BTreeMap::new(),
    }
}

/// A tar.zst payload of `(path, content)` regular files, mode 0644 (compression level 0,
/// zstd's default).
pub fn tar_zst(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, *d).expect("an in-memory tar");
    }
    zstd::encode_all(&b.into_inner().expect("an in-memory tar")[..], 0).expect("zstd")
}
