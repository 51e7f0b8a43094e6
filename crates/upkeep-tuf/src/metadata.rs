//! The TUF metadata model: envelopes, the four top-level roles, delegations, file info.
//!
//! Parsing is strict where the specification is (types, versions, expiry format, required
//! fields) and lenient where it asks to be (unknown fields are kept and signed over, unknown
//! key types parse but never verify). Signatures are verified over the bytes of `signed`
//! exactly as received when they are already canonical — the common case, and the fast one —
//! and otherwise over their canonical re-serialisation.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256, Sha512};

use crate::canonical::to_canonical;
use crate::error::{Error, Result};
use crate::keys::{Key, SigningKey};
pub use upkeep_types::Hashes;

/// The specification version this implementation writes.
pub const SPEC_VERSION: &str = "1.0.31";

/// The four top-level role names.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// A signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The id of the signing key.
    pub keyid: String,
    /// The signature, hex.
    pub sig: String,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    signed: &'a RawValue,
    signatures: Vec<Signature>,
}

/// A parsed but not yet verified metadata file.
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// The payload.
    pub signed: T,
    /// The signatures, as received.
    pub signatures: Vec<Signature>,
    /// The bytes of `signed` as received.
    raw_signed: Vec<u8>,
    raw_released: bool,
}

/// What a role payload must provide for the generic checks.
pub trait Role: DeserializeOwned {
    /// The `_type` value.
    const TYPE: &'static str;
    /// The common header.
    fn common(&self) -> &Common;
    /// Structural checks beyond serde.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Fields every role has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Common {
    /// The role type.
    #[serde(rename = "_type")]
    pub role_type: String,
    /// The specification version, `1.x` or `1.x.y`.
    pub spec_version: String,
    /// The metadata version, at least 1.
    pub version: u64,
    /// Expiry, `YYYY-MM-DDTHH:MM:SSZ`.
    pub expires: String,
}

impl Common {
    /// The expiry as a timestamp.
    pub fn expires_at(&self) -> Result<jiff::Timestamp, String> {
        parse_expires(&self.expires)
    }

    fn check(&self, expected_type: &str) -> std::result::Result<(), String> {
        if self.role_type != expected_type {
            return Err(format!(
                "type is {:?}, expected {expected_type:?}",
                self.role_type
            ));
        }
        let parts: Vec<&str> = self.spec_version.split('.').collect();
        let numeric = parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != "1" {
            return Err(format!("unsupported spec_version {:?}", self.spec_version));
        }
        if self.version == 0 {
            return Err("version must be at least 1".into());
        }
        self.expires_at()?;
        Ok(())
    }
}

/// Parses the one expiry format TUF allows: `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_expires(s: &str) -> std::result::Result<jiff::Timestamp, String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit());
    if !shape_ok {
        return Err(format!("expires {s:?} is not YYYY-MM-DDTHH:MM:SSZ"));
    }
    s.parse::<jiff::Timestamp>()
        .map_err(|e| format!("expires {s:?}: {e}"))
}

/// Formats a timestamp as TUF's expiry format (whole seconds).
pub fn format_expires(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A role's keys and threshold (in root, and in each delegation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Authorised key ids.
    pub keyids: Vec<String>,
    /// How many distinct authorised keys must sign.
    pub threshold: u64,
}

fn check_role_keys(name: &str, r: &RoleKeys) -> std::result::Result<(), String> {
    if r.threshold == 0 {
        return Err(format!("role {name:?} has threshold 0"));
    }
    let unique: HashSet<&String> = r.keyids.iter().collect();
    if unique.len() != r.keyids.len() {
        return Err(format!("role {name:?} lists a key id twice"));
    }
    Ok(())
}

/// Root metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Root {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Whether consistent snapshots are used.
    pub consistent_snapshot: bool,
    /// Keys by id.
    pub keys: HashMap<String, Key>,
    /// Keys and thresholds of the top-level roles.
    pub roles: HashMap<String, RoleKeys>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl Role for Root {
    const TYPE: &'static str = "root";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self) -> std::result::Result<(), String> {
        let names: HashSet<&str> = self.roles.keys().map(|s| s.as_str()).collect();
        let expected: HashSet<&str> = TOP_LEVEL_ROLES.into_iter().collect();
        if names != expected {
            return Err("roles must be exactly root, timestamp, snapshot and targets".into());
        }
        for (name, r) in &self.roles {
            check_role_keys(name, r)?;
        }
        Ok(())
    }
}

/// Length, hashes and version of a metadata file (`METAFILES`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The file's version.
    pub version: u64,
    /// Its length, if listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes, if listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl MetaFile {
    fn check(&self, name: &str) -> std::result::Result<(), String> {
        if self.version == 0 {
            return Err(format!("meta {name:?}: version must be at least 1"));
        }
        if matches!(&self.hashes, Some(h) if h.is_empty()) {
            return Err(format!("meta {name:?}: hashes must not be empty"));
        }
        Ok(())
    }

    /// Checks `data` against the listed length and hashes (when listed).
    pub fn verify(&self, what: &str, data: &[u8]) -> Result<()> {
        if let Some(len) = self.length {
            if data.len() as u64 != len {
                return Err(Error::Length {
                    what: what.into(),
                    reason: format!("length {} does not match signed length {len}", data.len()),
                });
            }
        }
        if let Some(hashes) = &self.hashes {
            verify_hashes(what, hashes, |alg| digest_bytes(alg, data))?;
        }
        Ok(())
    }
}

/// Hex digest of `data` with a supported algorithm.
pub fn digest_bytes(alg: &str, data: &[u8]) -> Option<String> {
    match alg {
        "sha256" => Some(hex::encode(Sha256::digest(data))),
        "sha512" => Some(hex::encode(Sha512::digest(data))),
        _ => None,
    }
}

/// Checks every listed hash; an algorithm this build does not support fails the check.
pub fn verify_hashes(
    what: &str,
    hashes: &Hashes,
    mut digest: impl FnMut(&str) -> Option<String>,
) -> Result<()> {
    for (alg, expected) in hashes.iter() {
        match digest(alg) {
            None => {
                return Err(Error::Hash {
                    what: what.into(),
                    reason: format!("unsupported hash algorithm {alg:?}"),
                })
            }
            Some(actual) if !actual.eq_ignore_ascii_case(expected) => {
                return Err(Error::Hash {
                    what: what.into(),
                    reason: format!("{alg} {actual} does not match signed {expected}"),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Timestamp metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timestamp {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Exactly `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl Timestamp {
    /// The snapshot's file info.
    pub fn snapshot_meta(&self) -> &MetaFile {
        &self.meta["snapshot.json"]
    }
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self) -> std::result::Result<(), String> {
        if self.meta.len() != 1 || !self.meta.contains_key("snapshot.json") {
            return Err("meta must hold exactly snapshot.json".into());
        }
        self.meta["snapshot.json"].check("snapshot.json")
    }
}

/// Snapshot metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// `ROLE.json` → file info, for targets and every delegated role.
    pub meta: BTreeMap<String, MetaFile>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self) -> std::result::Result<(), String> {
        for (name, m) in &self.meta {
            m.check(name)?;
        }
        Ok(())
    }
}

/// A target's `custom` object, kept as the JSON text received: big catalogs carry a record
/// per target, and text is a fraction of the memory of a parsed tree. It serialises as the
/// JSON value it holds (so canonical output stays canonical).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Custom(Box<str>);

impl Custom {
    /// Wraps a JSON value.
    pub fn from_value(v: &serde_json::Value) -> Custom {
        Custom(v.to_string().into_boxed_str())
    }
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The parsed value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
    /// The raw JSON of member `name`, if `custom` is an object that has it.
    pub fn member(&self, name: &str) -> Option<&RawValue> {
        let map: HashMap<&str, &RawValue> = serde_json::from_str(&self.0).ok()?;
        map.get(name).copied()
    }
}

impl Serialize for Custom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v: serde_json::Value =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Custom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(Custom(raw.get().into()))
    }
}

/// A target file's signed description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Length in bytes.
    pub length: u64,
    /// Hashes, algorithm → hex.
    pub hashes: Hashes,
    /// Application data (upkeep keeps update metadata here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Custom>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl TargetFile {
    /// A description of `data` with its sha256 hash. One hash: clients verify every listed
    /// hash, and a second one (sha512 runs at half sha256's speed on CPUs with SHA
    /// extensions) would cost download throughput and add no security.
    pub fn from_data(data: &[u8], custom: Option<serde_json::Value>) -> TargetFile {
        let custom = custom.as_ref().map(Custom::from_value);
        let mut hashes = Hashes::new();
        hashes.insert("sha256", hex::encode(Sha256::digest(data)));
        TargetFile {
            length: data.len() as u64,
            hashes,
            custom,
            unrecognized: BTreeMap::new(),
        }
    }
}

/// Targets metadata (top-level or delegated).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Targets {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Target path → file info.
    pub targets: BTreeMap<String, TargetFile>,
    /// Delegations to other roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl Role for Targets {
    const TYPE: &'static str = "targets";
    fn common(&self) -> &Common {
        &self.common
    }
    fn validate(&self) -> std::result::Result<(), String> {
        for t in self.targets.values() {
            if t.hashes.is_empty() {
                return Err("a target has no hashes".into());
            }
        }
        if let Some(d) = &self.delegations {
            d.validate()?;
        }
        Ok(())
    }
}

/// Delegations from a targets role.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys by id.
    pub keys: HashMap<String, Key>,
    /// Ordered delegated roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    /// Hashed bins in the compact form of TAP 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succinct_roles: Option<SuccinctRoles>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

/// One delegated role.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// Role name.
    pub name: String,
    /// Authorised keys.
    pub keyids: Vec<String>,
    /// Threshold.
    pub threshold: u64,
    /// If true and the role matches a path, no later role is consulted for it.
    pub terminating: bool,
    /// Path patterns (`*` and `?` within one segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Prefixes of the hex SHA-256 of target paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

/// Hashed-bin delegation in compact form (TAP 15).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuccinctRoles {
    /// Keys for every bin.
    pub keyids: Vec<String>,
    /// Threshold for every bin.
    pub threshold: u64,
    /// Number of leading hash bits that select the bin (1–32).
    pub bit_length: u32,
    /// Bin names are `{name_prefix}-{hex}`.
    pub name_prefix: String,
    /// Other fields.
    #[serde(flatten)]
    pub unrecognized: BTreeMap<String, serde_json::Value>,
}

impl SuccinctRoles {
    fn suffix_len(&self) -> usize {
        self.bit_length.div_ceil(4) as usize
    }

    /// Number of bins.
    pub fn bin_count(&self) -> u64 {
        1u64 << self.bit_length
    }

    /// The name of bin `n`.
    pub fn bin_name(&self, n: u64) -> String {
        format!(
            "{}-{:0width$x}",
            self.name_prefix,
            n,
            width = self.suffix_len()
        )
    }

    /// The bin a target path belongs to.
    pub fn role_for_target(&self, path: &str) -> String {
        let h = Sha256::digest(path.as_bytes());
        let first = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let bin = if self.bit_length >= 32 {
            first as u64
        } else {
            (first >> (32 - self.bit_length)) as u64
        };
        self.bin_name(bin)
    }

    /// True if `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < self.bin_count())
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl DelegatedRole {
    /// True if this role is trusted for `path`.
    pub fn is_delegated_path(&self, path: &str) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let h = hex::encode(Sha256::digest(path.as_bytes()));
            return prefixes.iter().any(|p| h.starts_with(p.as_str()));
        }
        false
    }
}

impl Delegations {
    fn validate(&self) -> std::result::Result<(), String> {
        match (&self.roles, &self.succinct_roles) {
            (Some(_), Some(_)) => return Err("roles and succinct_roles are exclusive".into()),
            (None, None) => return Err("delegations need roles or succinct_roles".into()),
            _ => {}
        }
        if let Some(roles) = &self.roles {
            let mut seen = HashSet::new();
            for r in roles {
                if TOP_LEVEL_ROLES.contains(&r.name.as_str()) {
                    return Err(format!("delegated role may not be named {:?}", r.name));
                }
                if !seen.insert(r.name.as_str()) {
                    return Err(format!("delegated role {:?} appears twice", r.name));
                }
                if r.paths.is_some() == r.path_hash_prefixes.is_some() {
                    return Err(format!(
                        "delegated role {:?} needs exactly one of paths and path_hash_prefixes",
                        r.name
                    ));
                }
                check_role_keys(
                    &r.name,
                    &RoleKeys {
                        keyids: r.keyids.clone(),
                        threshold: r.threshold,
                    },
                )?;
            }
        }
        if let Some(s) = &self.succinct_roles {
            if !(1..=32).contains(&s.bit_length) {
                return Err(format!(
                    "succinct_roles bit_length {} is not 1–32",
                    s.bit_length
                ));
            }
            check_role_keys(
                &s.name_prefix,
                &RoleKeys {
                    keyids: s.keyids.clone(),
                    threshold: s.threshold,
                },
            )?;
        }
        Ok(())
    }

    /// Keys and threshold for a delegated role name, if this delegates to it.
    pub fn role_keys(&self, name: &str) -> Option<RoleKeys> {
        if let Some(roles) = &self.roles {
            return roles.iter().find(|r| r.name == name).map(|r| RoleKeys {
                keyids: r.keyids.clone(),
                threshold: r.threshold,
            });
        }
        if let Some(s) = &self.succinct_roles {
            if s.is_bin(name) {
                return Some(RoleKeys {
                    keyids: s.keyids.clone(),
                    threshold: s.threshold,
                });
            }
        }
        None
    }

    /// Roles trusted for `path`, in order, with their `terminating` flag.
    pub fn roles_for_target(&self, path: &str) -> Vec<(String, bool)> {
        if let Some(roles) = &self.roles {
            return roles
                .iter()
                .filter(|r| r.is_delegated_path(path))
                .map(|r| (r.name.clone(), r.terminating))
                .collect();
        }
        if let Some(s) = &self.succinct_roles {
            return vec![(s.role_for_target(path), true)];
        }
        Vec::new()
    }

    /// How many roles this delegates to (bins count one each), without listing them.
    pub fn role_count(&self) -> u64 {
        match (&self.roles, &self.succinct_roles) {
            (Some(r), _) => r.len() as u64,
            (None, Some(s)) => s.bin_count(),
            (None, None) => 0,
        }
    }

    /// Every role this delegates to, in order (all bins for succinct roles). Check
    /// [`Delegations::role_count`] first: a hostile `bit_length` asks for 2^32 names.
    pub fn all_role_names(&self) -> Vec<String> {
        if let Some(roles) = &self.roles {
            return roles.iter().map(|r| r.name.clone()).collect();
        }
        if let Some(s) = &self.succinct_roles {
            return (0..s.bin_count()).map(|n| s.bin_name(n)).collect();
        }
        Vec::new()
    }
}

/// Matches a delegation path pattern against a target path: both are split on `/`, must have
/// the same number of segments, and each segment matches as a shell glob (`*`, `?`,
/// `[set]`, `[!set]`), so `*` never matches `/`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let ps: Vec<&str> = pattern.split('/').collect();
    let ts: Vec<&str> = path.split('/').collect();
    ps.len() == ts.len()
        && ps
            .iter()
            .zip(&ts)
            .all(|(p, t)| glob_segment(p.as_bytes(), t.as_bytes()))
}

fn glob_segment(p: &[u8], t: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking: linear memory, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(&p[pi..], t[ti]) {
                        if matched {
                            pi += next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches a `[...]` class at the start of `p`; returns (matched, class length) or `None`
/// when the class is unterminated (then `[` is literal).
fn match_class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = i < p.len() && p[i] == b'!';
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == b']' && i > start {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Parses an envelope and its payload of type `T`, checking structure but not signatures.
pub fn parse<T: Role>(role: &str, data: &[u8]) -> Result<Envelope<T>> {
    let env: RawEnvelope =
        serde_json::from_slice(data).map_err(|e| Error::parse(role, e.to_string()))?;
    let mut keyids = HashSet::new();
    if !env
        .signatures
        .iter()
        .all(|s| keyids.insert(s.keyid.as_str()))
    {
        return Err(Error::parse(role, "two signatures carry the same key id"));
    }
    let raw = env.signed.get().as_bytes();
    let signed: T = match serde_json::from_slice(raw) {
        Ok(s) => s,
        Err(e) => {
            // Explain a wrong type or header before a field-level error (one more scan,
            // only on failure).
            let common: Common =
                serde_json::from_slice(raw).map_err(|_| Error::parse(role, e.to_string()))?;
            common.check(T::TYPE).map_err(|c| Error::parse(role, c))?;
            return Err(Error::parse(role, e.to_string()));
        }
    };
    signed
        .common()
        .check(T::TYPE)
        .map_err(|e| Error::parse(role, e))?;
    signed.validate().map_err(|e| Error::parse(role, e))?;
    Ok(Envelope {
        signed,
        signatures: env.signatures,
        raw_signed: raw.to_vec(),
        raw_released: false,
    })
}

impl<T> Envelope<T> {
    /// Frees the received bytes once they are verified (large catalogs hold thousands of
    /// roles). A released envelope can no longer be verified.
    pub fn release_raw(&mut self) {
        self.raw_signed = Vec::new();
        self.raw_released = true;
    }

    /// Verifies that at least `threshold` distinct keys of `role_keys` signed this payload.
    pub fn verify(
        &self,
        role: &str,
        keys: &HashMap<String, Key>,
        role_keys: &RoleKeys,
    ) -> Result<()> {
        if self.raw_released {
            return Err(Error::State(format!(
                "{role}: received bytes were released"
            )));
        }
        // Fast path: the received bytes are what was signed (true for canonical encoders).
        let valid = count_valid(&self.raw_signed, &self.signatures, keys, role_keys);
        if valid >= role_keys.threshold as usize {
            return Ok(());
        }
        let value: serde_json::Value = serde_json::from_slice(&self.raw_signed)
            .map_err(|e| Error::parse(role, e.to_string()))?;
        let canonical = to_canonical(&value).map_err(|e| Error::parse(role, e))?;
        let valid = if canonical == self.raw_signed {
            valid
        } else {
            count_valid(&canonical, &self.signatures, keys, role_keys)
        };
        if valid >= role_keys.threshold as usize {
            Ok(())
        } else {
            Err(Error::Threshold {
                role: role.to_string(),
                valid,
                threshold: role_keys.threshold,
            })
        }
    }
}

fn count_valid(
    msg: &[u8],
    signatures: &[Signature],
    keys: &HashMap<String, Key>,
    role_keys: &RoleKeys,
) -> usize {
    let mut counted: HashSet<&str> = HashSet::new();
    for sig in signatures {
        if counted.contains(sig.keyid.as_str()) || !role_keys.keyids.contains(&sig.keyid) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            continue;
        };
        if key.verify(msg, &sig.sig) {
            counted.insert(sig.keyid.as_str());
        }
    }
    counted.len()
}

/// Serialises a payload and signs it with `keys`, producing canonical metadata bytes
/// (so clients can verify them without re-serialising).
pub fn sign<T: Serialize>(signed: &T, keys: &[&SigningKey]) -> Result<Vec<u8>, String> {
    sign_bytes(crate::canonical::to_canonical_file(signed)?, keys)
}

/// Signs `payload` as it is — the `signed` member of the envelope, byte for byte — with
/// `keys`. [`sign`] passes canonical JSON; tests pass what other encoders write.
pub fn sign_bytes(payload: Vec<u8>, keys: &[&SigningKey]) -> Result<Vec<u8>, String> {
    let signatures: Vec<Signature> = keys
        .iter()
        .map(|k| Signature {
            keyid: k.key_id().to_string(),
            sig: k.sign(&payload),
        })
        .collect();
    let sigs = crate::canonical::to_canonical_file(&signatures)?;
    let mut out = Vec::with_capacity(payload.len() + sigs.len() + 32);
    out.extend_from_slice(b"{\"signatures\":");
    out.extend_from_slice(&sigs);
    out.extend_from_slice(b",\"signed\":");
    out.extend_from_slice(&payload);
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_segments_follow_fnmatch() {
        assert!(path_matches("*", "a.txt"));
        assert!(!path_matches("*", "dir/a.txt"));
        assert!(path_matches("dir/*", "dir/a.txt"));
        assert!(path_matches("dir/*.txt", "dir/a.txt"));
        assert!(!path_matches("dir/*.txt", "dir/a.tar"));
        assert!(path_matches("a?c", "abc"));
        assert!(path_matches("[ab]*", "beta"));
        assert!(!path_matches("[!ab]*", "beta"));
        assert!(path_matches("f[0-9]", "f7"));
        assert!(path_matches("*/*/*", "a/b/c"));
        assert!(!path_matches("*/*", "a/b/c"));
        assert!(path_matches("**", ""));
        assert!(path_matches("[", "["));
    }

    #[test]
    fn expires_format_is_strict() {
        assert!(parse_expires("2030-01-01T00:00:00Z").is_ok());
        assert!(parse_expires("2030-01-01T00:00:00.5Z").is_err());
        assert!(parse_expires("2030-01-01 00:00:00Z").is_err());
        assert!(parse_expires("2030-13-01T00:00:00Z").is_err());
        let t = parse_expires("2031-02-03T04:05:06Z").unwrap();
        assert_eq!(format_expires(t), "2031-02-03T04:05:06Z");
    }

    #[test]
    fn succinct_bins_cover_all_names() {
        let s = SuccinctRoles {
            keyids: vec![],
            threshold: 1,
            bit_length: 10,
            name_prefix: "bin".into(),
            unrecognized: BTreeMap::new(),
        };
        assert_eq!(s.bin_name(0), "bin-000");
        assert_eq!(s.bin_name(1023), "bin-3ff");
        assert!(s.is_bin("bin-3ff"));
        assert!(!s.is_bin("bin-400"));
        assert!(!s.is_bin("bin-3FF"));
        assert!(s.is_bin(&s.role_for_target("some/path")));
    }

    #[test]
    fn signed_bytes_verify_and_tampering_is_caught() {
        let k = SigningKey::from_seed([1; 32]);
        let common = Common {
            role_type: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: 3,
            expires: "2040-01-01T00:00:00Z".into(),
        };
        let snap = Snapshot {
            common,
            meta: BTreeMap::new(),
            unrecognized: BTreeMap::new(),
        };
        let bytes = sign(&snap, &[&k]).unwrap();
        let env = parse::<Snapshot>("snapshot", &bytes).unwrap();
        let mut keys = HashMap::new();
        keys.insert(k.key_id().to_string(), k.public().clone());
        let rk = RoleKeys {
            keyids: vec![k.key_id().into()],
            threshold: 1,
        };
        env.verify("snapshot", &keys, &rk).unwrap();
        let tampered = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\":3", "\"version\":4");
        let env = parse::<Snapshot>("snapshot", tampered.as_bytes()).unwrap();
        assert!(matches!(
            env.verify("snapshot", &keys, &rk),
            Err(Error::Threshold { valid: 0, .. })
        ));
        // Pretty-printed (non-canonical) bytes still verify through re-canonicalisation.
        let v: serde_json::Value = serde_json::from_slice(&sign(&snap, &[&k]).unwrap()).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        parse::<Snapshot>("snapshot", &pretty)
            .unwrap()
            .verify("snapshot", &keys, &rk)
            .unwrap();
        assert!(parse::<Timestamp>("timestamp", &pretty).is_err());
    }
}
