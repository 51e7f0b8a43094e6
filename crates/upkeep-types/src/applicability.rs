//! Applicability rules (WUA's "is installable" and "is installed" rules): which machines an
//! update is for, and how software installed without the agent is detected.
//!
//! The rules are part of the signed record ([`crate::UpdateMetadata::applicability`]); this
//! module holds their schema, the version ranges they use, and their evaluation against the
//! facts of one machine ([`Machine`]). Reading those facts (`uname`, `os-release`, the files
//! that detection rules name) is the agent's business: evaluation takes them as values and
//! a function that answers for files, so it does no I/O itself.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which machines an update applies to. Every part is optional; an empty value applies
/// everywhere. Unknown fields are ignored (an older agent reading a newer record), so a
/// rule kind that an older agent must not ignore comes with `min_agent_version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Applicability {
    /// Architectures as `uname -m` names them (`x86_64`, `aarch64`, …); empty = any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Operating systems from `os-release`; the update applies when any entry matches;
    /// empty = any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub os: Vec<OsRule>,
    /// The oldest agent that can install it (`upkeep --version`); an older agent reports
    /// the update as not applicable, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_agent_version: Option<String>,
    /// Updates that must be installed first (any revision). Within one install job they
    /// are installed before this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<Uuid>,
    /// Software installed without the agent: when any of these holds, the update is
    /// reported installed (`IsInstalled=1`) and is not installed again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub installed_if: Vec<FileRule>,
    /// The update applies only when every one of these holds (a product it patches is
    /// there, at a version it patches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applicable_if: Vec<FileRule>,
}

/// An operating system: `id` matches `ID`, or any word of `ID_LIKE`; `version`, a
/// [`VersionRange`] over `VERSION_ID`, is compared only when `id` is the machine's own `ID`
/// (Ubuntu's `ID_LIKE=debian` makes it a Debian-like system, not Debian 24.04).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRule {
    /// An `os-release` `ID` (`debian`, `ubuntu`, `rhel`, …).
    pub id: String,
    /// A range of `VERSION_ID`s, e.g. `>=12, <13`; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A fact about one file of the machine (an absolute path, resolved inside the install
/// root): it exists; or it exists with this SHA-256; or the version it holds is in a range.
/// The version is the file's first non-empty line, or with `key` the value of the line
/// `key=value` (quotes removed), as in `os-release`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRule {
    /// Absolute path on the machine.
    pub path: String,
    /// Lowercase hex SHA-256 the file must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A [`VersionRange`] the version read from the file must be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Read the version from the line `key=value` instead of the first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Applicability {
    /// True when there is no rule at all.
    pub fn is_empty(&self) -> bool {
        self.architectures.is_empty()
            && self.os.is_empty()
            && self.min_agent_version.is_none()
            && self.prerequisites.is_empty()
            && self.installed_if.is_empty()
            && self.applicable_if.is_empty()
    }

    /// Checks every rule's syntax; `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for a in &self.architectures {
            if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((
                    "applicability.architectures",
                    format!("{a:?} is not an architecture name as `uname -m` prints it"),
                ));
            }
        }
        for o in &self.os {
            if o.id.is_empty()
                || !o
                    .id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            {
                return Err((
                    "applicability.os",
                    format!(
                        "{:?} is not an os-release ID (lowercase letters, digits, `._-`)",
                        o.id
                    ),
                ));
            }
            if let Some(v) = &o.version {
                VersionRange::parse(v).map_err(|e| ("applicability.os", e))?;
            }
        }
        if let Some(v) = &self.min_agent_version {
            if Version::parse(v).is_none() {
                return Err((
                    "applicability.min_agent_version",
                    format!("{v:?} is not a version"),
                ));
            }
        }
        for (field, rules) in [
            ("applicability.installed_if", &self.installed_if),
            ("applicability.applicable_if", &self.applicable_if),
        ] {
            for r in rules {
                r.validate().map_err(|e| (field, e))?;
            }
        }
        Ok(())
    }
}

impl FileRule {
    fn validate(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/')
            || p.contains('\0')
            || p.split('/').any(|s| s == "." || s == "..")
            || p == "/"
        {
            return Err(format!("{p:?} is not an absolute path without `.` or `..`"));
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64
                || !h
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            {
                return Err(format!("{p}: sha256 {h:?} is not 64 lowercase hex digits"));
            }
        }
        if self.sha256.is_some() && self.version.is_some() {
            return Err(format!(
                "{p}: a rule checks a sha256 or a version, not both"
            ));
        }
        if let Some(v) = &self.version {
            VersionRange::parse(v).map_err(|e| format!("{p}: {e}"))?;
        }
        if self.key.is_some() && self.version.is_none() {
            return Err(format!("{p}: `key` goes with `version`"));
        }
        Ok(())
    }
}

impl fmt::Display for FileRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.sha256, &self.version) {
            (Some(h), _) => write!(f, "{} has sha256 {}…", self.path, &h[..h.len().min(12)]),
            (_, Some(v)) => match &self.key {
                Some(k) => write!(f, "{} {k} is {v}", self.path),
                None => write!(f, "version in {} is {v}", self.path),
            },
            _ => write!(f, "{} exists", self.path),
        }
    }
}

/// A version, compared the way package versions usually are: split into runs of digits and
/// runs of letters (other characters only separate), digit runs compared as numbers, letter
/// runs as text, a missing part lower than any present one (`1.2 < 1.2.1`), except that a
/// letter run right after the common part makes a pre-release (`1.2~rc1`, `1.2rc1` and
/// `1.2-rc1` sort below `1.2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(Vec<Part>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Num(u64),
    Text(String),
}

impl Version {
    /// Parses a version; `None` when it has no digit or letter, or a number too large.
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = Vec::new();
        let mut chars = s.trim().chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() {
                let mut n = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    chars.next();
                }
                parts.push(Part::Num(n.parse().ok()?));
            } else if c.is_alphabetic() {
                let mut t = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_alphabetic()) {
                    t.push(d);
                    chars.next();
                }
                parts.push(Part::Text(t.to_lowercase()));
            } else {
                chars.next();
            }
        }
        (!parts.is_empty()).then_some(Version(parts))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        for i in 0..self.0.len().max(other.0.len()) {
            let o = match (self.0.get(i), other.0.get(i)) {
                (Some(Part::Num(a)), Some(Part::Num(b))) => a.cmp(b),
                (Some(Part::Text(a)), Some(Part::Text(b))) => a.cmp(b),
                (Some(Part::Num(_)), Some(Part::Text(_))) => Ordering::Greater,
                (Some(Part::Text(_)), Some(Part::Num(_))) => Ordering::Less,
                // A trailing letter run is a pre-release: lower than the bare version.
                (Some(Part::Text(_)), None) => Ordering::Less,
                (None, Some(Part::Text(_))) => Ordering::Greater,
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A range of versions: comparisons separated by commas, all of which must hold —
/// `>=12, <13`, `=24.04`, `!=2.1`; a bare version means `=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRange(Vec<(Op, Version)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
    Ne,
}

impl VersionRange {
    /// Parses a range, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<VersionRange, String> {
        let mut out = Vec::new();
        for c in s.split(',') {
            let c = c.trim();
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                ("==", Op::Eq),
                ("!=", Op::Ne),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| c.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, c));
            let v = Version::parse(rest)
                .ok_or_else(|| format!("version range {s:?}: {c:?} has no version"))?;
            out.push((op, v));
        }
        Ok(VersionRange(out))
    }

    /// Whether `v` is in the range.
    pub fn contains(&self, v: &Version) -> bool {
        self.0.iter().all(|(op, w)| {
            let o = v.cmp(w);
            match op {
                Op::Ge => o != Ordering::Less,
                Op::Gt => o == Ordering::Greater,
                Op::Le => o != Ordering::Greater,
                Op::Lt => o == Ordering::Less,
                Op::Eq => o == Ordering::Equal,
                Op::Ne => o != Ordering::Equal,
            }
        })
    }

    /// Whether the version written `v` is in the range (false when `v` is no version).
    pub fn contains_str(&self, v: &str) -> bool {
        Version::parse(v).is_some_and(|v| self.contains(&v))
    }
}

/// The facts about one machine that applicability rules are evaluated against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `uname -m`.
    pub architecture: String,
    /// `os-release` `ID` (empty when unknown).
    pub os_id: String,
    /// `os-release` `ID_LIKE`, split into words.
    pub os_id_like: Vec<String>,
    /// `os-release` `VERSION_ID`.
    pub os_version_id: String,
    /// This agent's version.
    pub agent_version: String,
}

impl Machine {
    /// Sets the `os-release` facts from the text of an `os-release` file.
    pub fn with_os_release(mut self, text: &str) -> Machine {
        let get = |key: &str| os_release_value(text, key).unwrap_or_default();
        self.os_id = get("ID");
        self.os_id_like = get("ID_LIKE")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        self.os_version_id = get("VERSION_ID");
        self
    }
}

/// The value of `key` in a `KEY=value` file such as `os-release` (quotes removed), the last
/// assignment winning.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v)
                .to_string()
        })
        .next_back()
}

/// What the machine says about the file of a [`FileRule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileFact {
    /// No such file (or not a regular file).
    Missing,
    /// The file, with its SHA-256 (when the rule asked for it) and the version the rule
    /// reads (when it asked for one; `None` when the file holds none).
    Present {
        /// Lowercase hex SHA-256.
        sha256: Option<String>,
        /// The version text read.
        version: Option<String>,
    },
    /// The file could not be read.
    Unreadable(String),
}

/// One rule as it was checked, for `show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCheck {
    /// The rule and what the machine has, in words.
    pub rule: String,
    /// Whether it held.
    pub holds: bool,
}

/// The outcome of evaluating an update's rules on a machine (prerequisites are left to the
/// caller, who knows what is installed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Every rule checked, in order.
    pub checks: Vec<RuleCheck>,
    /// The first rule that failed, in words; `None` when the update applies.
    pub not_applicable: Option<String>,
    /// An `installed_if` rule held.
    pub detected_installed: bool,
    /// The record needs a newer agent (also in `not_applicable`).
    pub needs_newer_agent: bool,
}

/// Evaluates `rules` on `machine`; `file` answers for the files rules name.
pub fn evaluate(
    rules: &Applicability,
    machine: &Machine,
    file: &mut dyn FnMut(&FileRule) -> FileFact,
) -> Verdict {
    let mut v = Verdict::default();
    let check = |v: &mut Verdict, rule: String, holds: bool| {
        if !holds && v.not_applicable.is_none() {
            v.not_applicable = Some(rule.clone());
        }
        v.checks.push(RuleCheck { rule, holds });
    };
    if let Some(min) = &rules.min_agent_version {
        let holds = match (Version::parse(min), Version::parse(&machine.agent_version)) {
            (Some(min), Some(me)) => me >= min,
            _ => false,
        };
        v.needs_newer_agent = !holds;
        check(
            &mut v,
            format!(
                "agent version {} is {} {min}",
                machine.agent_version,
                if holds { "at least" } else { "older than" }
            ),
            holds,
        );
    }
    if !rules.architectures.is_empty() {
        let holds = rules.architectures.contains(&machine.architecture);
        check(
            &mut v,
            format!(
                "architecture {} is {}one of {}",
                machine.architecture,
                if holds { "" } else { "not " },
                rules.architectures.join(", ")
            ),
            holds,
        );
    }
    if !rules.os.is_empty() {
        let holds = rules.os.iter().any(|o| os_matches(o, machine));
        let wanted: Vec<String> = rules
            .os
            .iter()
            .map(|o| match &o.version {
                Some(r) => format!("{} {r}", o.id),
                None => o.id.clone(),
            })
            .collect();
        let have = if machine.os_id.is_empty() {
            "unknown (no os-release)".to_string()
        } else {
            format!("{} {}", machine.os_id, machine.os_version_id)
                .trim_end()
                .to_string()
        };
        check(
            &mut v,
            format!(
                "operating system {have} is {}one of: {}",
                if holds { "" } else { "not " },
                wanted.join("; ")
            ),
            holds,
        );
    }
    for r in &rules.applicable_if {
        let (holds, have) = file_holds(r, file(r));
        check(&mut v, format!("{r} ({have})"), holds);
    }
    // Detection is asked only of an update that applies: it cannot make a foreign one
    // installed.
    if v.not_applicable.is_none() {
        for r in &rules.installed_if {
            let (holds, have) = file_holds(r, file(r));
            v.checks.push(RuleCheck {
                rule: format!("installed if {r} ({have})"),
                holds,
            });
            if holds {
                v.detected_installed = true;
                break;
            }
        }
    }
    v
}

fn os_matches(o: &OsRule, m: &Machine) -> bool {
    if o.id == m.os_id {
        match &o.version {
            Some(r) => VersionRange::parse(r).is_ok_and(|r| r.contains_str(&m.os_version_id)),
            None => true,
        }
    } else {
        o.version.is_none() && m.os_id_like.contains(&o.id)
    }
}

fn file_holds(r: &FileRule, fact: FileFact) -> (bool, String) {
    match fact {
        FileFact::Missing => (false, "missing".into()),
        FileFact::Unreadable(e) => (false, format!("unreadable: {e}")),
        FileFact::Present { sha256, version } => match (&r.sha256, &r.version) {
            (Some(want), _) => {
                let have = sha256.unwrap_or_default();
                let holds = have == *want;
                (
                    holds,
                    if holds {
                        "matches".into()
                    } else {
                        format!("has {}…", &have[..have.len().min(12)])
                    },
                )
            }
            (_, Some(range)) => match version {
                Some(have) => (
                    VersionRange::parse(range).is_ok_and(|r| r.contains_str(&have)),
                    format!("found {have}"),
                ),
                None => (false, "holds no version".into()),
            },
            _ => (true, "present".into()),
        },
    }
}

/// The version a [`FileRule`] reads from a file's text.
pub fn version_in(text: &str, key: Option<&str>) -> Option<String> {
    match key {
        Some(k) => os_release_value(text, k),
        None => text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string),
    }
    .filter(|v| Version::parse(v).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_compare_like_package_versions() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.2.1") > v("1.2"));
        assert!(v("1.2") > v("1.2rc1"));
        assert!(v("1.2") > v("1.2~rc1"));
        assert!(v("24.04") > v("22.04"));
        assert_eq!(v("12"), v("12"));
        assert!(v("2.0a") < v("2.0"));
        assert!(v("2.0.a") < v("2.0.1"));
        assert!(Version::parse("..").is_none());
    }

    #[test]
    fn ranges() {
        let r = VersionRange::parse(">=12, <13").unwrap();
        assert!(r.contains_str("12"));
        assert!(r.contains_str("12.5"));
        assert!(!r.contains_str("13"));
        assert!(!r.contains_str("11"));
        assert!(!r.contains_str(""));
        assert!(VersionRange::parse("24.04").unwrap().contains_str("24.04"));
        assert!(!VersionRange::parse("!=2").unwrap().contains_str("2"));
        assert!(VersionRange::parse(">=").is_err());
        assert!(VersionRange::parse("").is_err());
    }

    fn machine() -> Machine {
        Machine {
            architecture: "x86_64".into(),
            agent_version: "0.1.0".into(),
            ..Default::default()
        }
        .with_os_release("ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n")
    }

    fn none(_: &FileRule) -> FileFact {
        FileFact::Missing
    }

    #[test]
    fn os_rules_use_id_like_only_without_a_version() {
        let m = machine();
        let rule = |id: &str, ver: Option<&str>| Applicability {
            os: vec![OsRule {
                id: id.into(),
                version: ver.map(str::to_string),
            }],
            ..Default::default()
        };
        assert!(evaluate(&rule("ubuntu", Some(">=24.04")), &m, &mut none)
            .not_applicable
            .is_none());
        assert!(evaluate(&rule("debian", None), &m, &mut none)
            .not_applicable
            .is_none());
        let no = evaluate(&rule("debian", Some(">=12")), &m, &mut none);
        assert!(no.not_applicable.unwrap().contains("ubuntu 24.04"));
        assert!(evaluate(&rule("ubuntu", Some("<24")), &m, &mut none)
            .not_applicable
            .is_some());
    }

    #[test]
    fn agent_version_and_architecture() {
        let m = machine();
        let a = Applicability {
            min_agent_version: Some("0.2".into()),
            architectures: vec!["aarch64".into()],
            ..Default::default()
        };
        let v = evaluate(&a, &m, &mut none);
        assert!(v.needs_newer_agent);
        assert!(v.not_applicable.unwrap().contains("agent version"));
        assert_eq!(v.checks.len(), 2);
        assert!(!v.checks[1].holds);
    }

    #[test]
    fn detection_only_for_applicable_updates() {
        let m = machine();
        let rule = FileRule {
            path: "/opt/app/VERSION".into(),
            sha256: None,
            version: Some(">=2".into()),
            key: None,
        };
        let a = Applicability {
            installed_if: vec![rule.clone()],
            ..Default::default()
        };
        let present = |ver: &'static str| {
            move |_: &FileRule| FileFact::Present {
                sha256: None,
                version: Some(ver.into()),
            }
        };
        assert!(evaluate(&a, &m, &mut present("2.1")).detected_installed);
        assert!(!evaluate(&a, &m, &mut present("1.9")).detected_installed);
        let b = Applicability {
            architectures: vec!["riscv64".into()],
            ..a
        };
        assert!(!evaluate(&b, &m, &mut present("2.1")).detected_installed);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = Applicability {
            installed_if: vec![FileRule {
                path: "opt/x".into(),
                sha256: None,
                version: None,
                key: None,
            }],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "applicability.installed_if");
        let bad = Applicability {
            os: vec![OsRule {
                id: "debian".into(),
                version: Some(">=".into()),
            }],
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "applicability.os");
    }

    #[test]
    fn os_release_values() {
        let t = "NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID='12'\n# c\n";
        assert_eq!(os_release_value(t, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_value(t, "VERSION_ID").as_deref(), Some("12"));
        assert_eq!(
            os_release_value(t, "NAME").as_deref(),
            Some("Debian GNU/Linux")
        );
        assert_eq!(version_in("\n 2.3.1 \nx", None).as_deref(), Some("2.3.1"));
        assert_eq!(
            version_in("VERSION=7\n", Some("VERSION")).as_deref(),
            Some("7")
        );
    }
}
