//! Applicability over a real loopback repository, with machines faked through the session
//! builder (architecture, `os-release`) and files in real install roots: each rule kind,
//! positive and negative, through search, the update's checks (what `show` prints) and
//! install; prerequisites ordered within a job; detection; unknown fields ignored; and this
//! machine's own facts.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeSet;

use sha2::Digest;
use upkeep::{
    Applicability, FileRule, HResult, OperationResultCode, OsRule, UpdateCollection,
    UpdateMetadata, UpdateSession,
};
use upkeep_testkit::{tar_zst, RepoSim};
use uuid::Uuid;

const TOOL_BYTES: &[u8] = b"#!/bin/sh\necho tool 1.0\n";

fn rule(path: &str) -> FileRule {
    FileRule {
        path: path.into(),
        sha256: None,
        version: None,
        key: None,
    }
}

fn with(n: u128, title: &str, a: Applicability) -> UpdateMetadata {
    let mut m = RepoSim::update(n, title);
    m.applicability = a;
    m
}

fn os(id: &str, version: Option<&str>) -> OsRule {
    OsRule {
        id: id.into(),
        version: version.map(str::to_string),
    }
}

/// The catalog every machine sees: one update per rule kind and outcome.
fn catalog() -> Vec<UpdateMetadata> {
    let none = Applicability::default;
    vec![
        with(
            1,
            "x86_64 only",
            Applicability {
                architectures: vec!["x86_64".into()],
                ..none()
            },
        ),
        with(
            2,
            "aarch64 only",
            Applicability {
                architectures: vec!["aarch64".into()],
                ..none()
            },
        ),
        with(
            3,
            "Debian 12",
            Applicability {
                os: vec![os("debian", Some(">=12, <13"))],
                ..none()
            },
        ),
        with(
            4,
            "Ubuntu 24.04 or later",
            Applicability {
                os: vec![os("ubuntu", Some(">=24.04"))],
                ..none()
            },
        ),
        with(
            5,
            "Debian-like",
            Applicability {
                os: vec![os("debian", None)],
                ..none()
            },
        ),
        with(
            6,
            "Needs a future agent",
            Applicability {
                min_agent_version: Some("999.0".into()),
                ..none()
            },
        ),
        with(
            7,
            "Patch for app 2.x",
            Applicability {
                applicable_if: vec![FileRule {
                    version: Some(">=2, <3".into()),
                    ..rule("/opt/app/VERSION")
                }],
                ..none()
            },
        ),
        with(
            8,
            "Tool (maybe installed by hand)",
            Applicability {
                installed_if: vec![FileRule {
                    sha256: Some(hex::encode(sha2::Sha256::digest(TOOL_BYTES))),
                    ..rule("/usr/local/bin/tool")
                }],
                ..none()
            },
        ),
        with(
            9,
            "App config 5",
            Applicability {
                installed_if: vec![FileRule {
                    version: Some(">=5".into()),
                    key: Some("VERSION".into()),
                    ..rule("/etc/app.conf")
                }],
                ..none()
            },
        ),
        with(
            10,
            "Needs x86_64 only",
            Applicability {
                prerequisites: vec![Uuid::from_u128(1)],
                ..none()
            },
        ),
        with(
            11,
            "Needs aarch64 only",
            Applicability {
                prerequisites: vec![Uuid::from_u128(2)],
                ..none()
            },
        ),
        RepoSim::update(12, "For everyone"),
    ]
}

struct Fleet {
    _sim: RepoSim,
    _server: upkeep_publish::serve::Server,
    dir: tempfile::TempDir,
    url: String,
    root_file: std::path::PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let mut sim = RepoSim::new();
        for m in catalog() {
            let n = m.id.as_u128();
            let payload = tar_zst(&[(&format!("opt/u{n}/file"), format!("{n}").as_bytes())]);
            sim.add_update("targets", m, &payload);
        }
        sim.publish();
        let server = sim.serve();
        Fleet {
            url: server.base_url(),
            root_file: sim.trusted_root_file(),
            _sim: sim,
            _server: server,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A machine: its own state and root, its architecture and os-release.
    fn machine(&self, name: &str, arch: &str, os_release: &str) -> Machine {
        let base = self.dir.path().join(name);
        std::fs::create_dir_all(base.join("root")).unwrap();
        let osr = base.join("os-release");
        std::fs::write(&osr, os_release).unwrap();
        let session = UpdateSession::builder()
            .env(false)
            .repository(&self.url)
            .trusted_root(&self.root_file)
            .state_dir(base.join("state"))
            .install_root(base.join("root"))
            .architecture(arch)
            .os_release(&osr)
            .build()
            .unwrap();
        Machine {
            session,
            root: base.join("root"),
        }
    }
}

struct Machine {
    session: UpdateSession,
    root: std::path::PathBuf,
}

impl Machine {
    fn put(&self, path: &str, data: &[u8]) {
        let p = self.root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn search(&self, criteria: &str, all: bool) -> upkeep::SearchResult {
        let mut s = self.session.create_update_searcher();
        s.set_include_not_applicable(all);
        s.search(criteria).unwrap()
    }

    fn ids(&self, criteria: &str) -> BTreeSet<u128> {
        self.search(criteria, false)
            .updates()
            .iter()
            .map(|u| u.identity().update_id.as_u128())
            .collect()
    }

    fn update(&self, n: u128) -> upkeep::Update {
        self.search(&format!("UpdateID='{}'", Uuid::from_u128(n)), true)
            .updates()
            .iter()
            .next()
            .unwrap()
            .clone()
    }

    fn install(&self, ns: &[u128]) -> upkeep::InstallationResult {
        let updates: UpdateCollection = ns.iter().map(|n| self.update(*n)).collect();
        let mut d = self.session.create_update_downloader();
        d.set_updates(updates.clone());
        d.download().unwrap();
        let mut i = self.session.create_update_installer();
        i.set_updates(updates);
        i.install().unwrap()
    }
}

fn set(ns: &[u128]) -> BTreeSet<u128> {
    ns.iter().copied().collect()
}

const UBUNTU: &str = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n";
const DEBIAN: &str = "NAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\n";

#[test]
fn each_machine_finds_exactly_the_updates_that_apply_to_it() {
    let fleet = Fleet::new();
    let amd = fleet.machine("amd", "x86_64", UBUNTU);
    amd.put("opt/app/VERSION", b"2.4.1\n");
    amd.put("usr/local/bin/tool", TOOL_BYTES);
    amd.put("etc/app.conf", b"# app\nVERSION=\"4\"\n");
    let arm = fleet.machine("arm", "aarch64", DEBIAN);
    // The same tool, another build: no detection.
    arm.put("usr/local/bin/tool", b"#!/bin/sh\necho tool 0.9\n");
    arm.put("opt/app/VERSION", b"3.0\n");
    arm.put("etc/app.conf", b"VERSION=5\n");

    // Not installed and applicable.
    assert_eq!(amd.ids("IsInstalled=0"), set(&[1, 4, 5, 7, 9, 10, 12]));
    assert_eq!(arm.ids("IsInstalled=0"), set(&[2, 3, 5, 8, 11, 12]));
    // Installed: found by its detection rules.
    assert_eq!(amd.ids("IsInstalled=1"), set(&[8]));
    assert_eq!(arm.ids("IsInstalled=1"), set(&[9]));
    let tool = amd.update(8);
    assert!(tool.is_installed() && tool.is_detected() && tool.is_applicable());

    // A record that needs a newer agent is a warning, never a silent skip.
    let r = amd.search("IsInstalled=0", false);
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    let w = &r.warnings()[0];
    assert_eq!(w.hresult, HResult::WU_E_NOT_APPLICABLE);
    assert!(w.message.contains("999.0"), "{}", w.message);

    // Why each one does not apply (what `show` prints), naming the machine's facts.
    let why = |m: &Machine, n: u128| m.update(n).not_applicable_reason().map(str::to_string);
    assert!(why(&amd, 2)
        .unwrap()
        .contains("architecture x86_64 is not one of aarch64"));
    assert!(why(&amd, 3).unwrap().contains("ubuntu 24.04"));
    assert!(why(&arm, 4).unwrap().contains("debian 12"));
    assert!(why(&amd, 6).unwrap().contains("is older than 999.0"));
    assert!(
        why(&arm, 7).unwrap().contains("found 3.0"),
        "{:?}",
        why(&arm, 7)
    );
    assert!(why(&arm, 10).unwrap().contains("prerequisite"));
    assert!(why(&amd, 11)
        .unwrap()
        .contains("does not apply to this machine"));
    assert_eq!(why(&amd, 12), None);
    let checks = amd.update(7).applicability_checks().to_vec();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].holds && checks[0].rule.contains("found 2.4.1"));
    let checks = amd.update(9).applicability_checks().to_vec();
    assert!(
        !checks[0].holds && checks[0].rule.contains("found 4"),
        "{checks:?}"
    );

    // The machine changes: the app is upgraded to 3.x and the patch no longer applies.
    amd.put("opt/app/VERSION", b"3.0\n");
    assert!(!amd.ids("IsInstalled=0").contains(&7));
}

#[test]
fn installing_what_does_not_apply_is_refused_with_the_rule_and_changes_nothing() {
    let fleet = Fleet::new();
    let amd = fleet.machine("amd", "x86_64", UBUNTU);
    let r = amd.install(&[2, 3]);
    for i in 0..2 {
        let u = r.update_result(i).unwrap();
        assert_eq!(u.result_code(), OperationResultCode::Failed);
        assert_eq!(u.hresult(), HResult::WU_E_NOT_APPLICABLE);
    }
    let m = r.update_result(0).unwrap().message().unwrap().to_string();
    assert!(
        m.contains("does not apply") && m.contains("architecture"),
        "{m}"
    );
    assert!(!amd.root.join("opt").exists());
    assert!(amd.session.installed_updates().unwrap().is_empty());
    // History names the rule.
    let h = amd
        .session
        .create_update_searcher()
        .query_history(0, 2)
        .unwrap();
    assert!(h.iter().all(|e| e.hresult == HResult::WU_E_NOT_APPLICABLE));
    assert!(h
        .iter()
        .any(|e| e.message.as_deref().unwrap_or("").contains("ubuntu 24.04")));
}

#[test]
fn prerequisites_are_installed_first_within_a_job_and_required_outside_one() {
    let fleet = Fleet::new();
    let amd = fleet.machine("amd", "x86_64", UBUNTU);
    // Alone, without its prerequisite installed: refused, nothing changed.
    let r = amd.install(&[10]);
    let u = r.update_result(0).unwrap();
    assert_eq!(u.hresult(), HResult::WU_E_NOT_APPLICABLE);
    assert!(u
        .message()
        .unwrap()
        .contains(&Uuid::from_u128(1).to_string()));
    assert!(!amd.root.join("opt/u10").exists());
    // In one job, dependent first in the collection: the prerequisite runs first; the
    // results stay at the caller's indices.
    let r = amd.install(&[10, 12, 1]);
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    for i in 0..3 {
        assert_eq!(
            r.update_result(i).unwrap().result_code(),
            OperationResultCode::Succeeded
        );
    }
    let h = amd
        .session
        .create_update_searcher()
        .query_history(0, 3)
        .unwrap();
    let order: Vec<&str> = h.iter().rev().map(|e| e.title.as_str()).collect();
    assert_eq!(order, ["x86_64 only", "Needs x86_64 only", "For everyone"]);
    assert!(amd.root.join("opt/u10/file").exists() && amd.root.join("opt/u1/file").exists());
}

#[test]
fn a_detected_update_is_not_installed_again_and_cannot_be_uninstalled_by_the_agent() {
    let fleet = Fleet::new();
    let amd = fleet.machine("amd", "x86_64", UBUNTU);
    amd.put("usr/local/bin/tool", TOOL_BYTES);
    let r = amd.install(&[8]);
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert!(!amd.root.join("opt/u8").exists(), "nothing was written");
    assert!(amd.session.installed_updates().unwrap().is_empty());
    let mut i = amd.session.create_update_installer();
    i.set_updates(std::iter::once(amd.update(8)).collect());
    let r = i.uninstall().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Failed);
    assert_eq!(
        std::fs::read(amd.root.join("usr/local/bin/tool")).unwrap(),
        TOOL_BYTES
    );
    // The hand-installed tool is removed: the update applies and installs.
    std::fs::remove_file(amd.root.join("usr/local/bin/tool")).unwrap();
    assert!(!amd.update(8).is_installed());
    assert_eq!(
        amd.install(&[8]).result_code(),
        OperationResultCode::Succeeded
    );
    assert!(amd.root.join("opt/u8/file").exists());
}

#[test]
fn a_record_with_fields_this_agent_does_not_know_is_read() {
    let mut sim = RepoSim::new();
    let m = RepoSim::update(1, "From a newer publisher");
    let path = format!("updates/{}/1/payload.tar", m.id);
    let mut rec = serde_json::to_value(&m).unwrap();
    rec["content"] = serde_json::json!([path]);
    rec["rollout"] = serde_json::json!({"percent": 10});
    rec["applicability"] =
        serde_json::json!({"architectures": ["x86_64", "aarch64"], "gpu": "any"});
    sim.add_target(
        "targets",
        &path,
        &tar_zst(&[("a", b"a")]),
        Some(serde_json::json!({ "upkeep": rec })),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let s = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(dir.path().join("state"))
        .install_root(dir.path().join("root"))
        .architecture("aarch64")
        .build()
        .unwrap();
    let r = s.create_update_searcher().search("IsInstalled=0").unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(r.updates().len(), 1);
    assert_eq!(
        r.updates().iter().next().unwrap().title(),
        "From a newer publisher"
    );
}

#[test]
fn without_overrides_the_facts_are_this_machines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = upkeep::Config {
        state_dir: Some(dir.path().join("state")),
        install_root: Some(dir.path().join("root")),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let m = upkeep::applicable::machine(&cfg);
    let uname = std::process::Command::new("uname")
        .arg("-m")
        .output()
        .unwrap();
    assert_eq!(
        m.architecture,
        String::from_utf8_lossy(&uname.stdout).trim()
    );
    let osr = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap();
    assert_eq!(
        Some(m.os_id.clone()),
        upkeep::applicability::os_release_value(&osr, "ID")
    );
    assert!(!m.os_id.is_empty());
    assert_eq!(m.agent_version, env!("CARGO_PKG_VERSION"));
    // An install root with its own os-release (an image of another system) wins.
    std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
    std::fs::write(
        dir.path().join("root/etc/os-release"),
        "ID=alpine\nVERSION_ID=3.20\n",
    )
    .unwrap();
    let m = upkeep::applicable::machine(&cfg);
    assert_eq!(
        (m.os_id.as_str(), m.os_version_id.as_str()),
        ("alpine", "3.20")
    );
}
