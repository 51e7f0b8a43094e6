//! A repository over years, with real processes under `faketime`: root renewal by `repo
//! publish`, key rotation of every role followed by clients, offline root keys, `repo
//! status`, and the publisher's refusals of revisions devices would not take.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ok, upkeep, Serve};

const ID: &str = "11111111-1111-4111-8111-111111111111";

/// Runs the agent at `at` (RFC 3339, the clock then ticking on) with `faketime`.
fn at(when: jiff::Timestamp, args: &[&str]) -> Output {
    Command::new("faketime")
        .arg("-f")
        .arg(format!("@{}", when.strftime("%Y-%m-%d %H:%M:%S")))
        .arg(env!("CARGO_BIN_EXE_upkeep"))
        .args(args)
        .env_remove("UPKEEP_CONFIG")
        .env_remove("UPKEEP_REPOSITORY")
        .output()
        .expect("faketime runs (apt-get install faketime; .ci/run installs it)")
}

fn day(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(24 * n)
}

fn t0() -> jiff::Timestamp {
    "2027-01-01T00:00:00Z".parse().unwrap()
}

struct Repo {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The root clients were given first (version 1), kept aside.
    root_v1: PathBuf,
}

impl Repo {
    /// A repository made at `when` with one `command` update; `{tmp}` in `init_args` is
    /// the test's temporary directory.
    fn new(when: jiff::Timestamp, init_args: &[&str]) -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let d = dir.to_str().unwrap();
        let t = tmp.path().to_str().unwrap();
        let init: Vec<String> = init_args.iter().map(|a| a.replace("{tmp}", t)).collect();
        let init: Vec<&str> = init.iter().map(String::as_str).collect();
        ok(&at(when, &[&["repo", "init", d][..], &init[..]].concat()));
        let root_v1 = tmp.path().join("root-v1.json");
        std::fs::copy(dir.join("metadata/1.root.json"), &root_v1).unwrap();
        let p = tmp.path().join("setup.sh");
        std::fs::write(&p, b"#!/bin/sh\nexit 0\n").unwrap();
        ok(&at(when, &strs(&add_args(d, "1", &p, &[]))));
        Repo { tmp, dir, root_v1 }
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// A client with state `name`, trusting root version 1, refreshes at `when`; its
    /// search must succeed and find the update.
    fn client_refreshes(&self, serve: &Serve, name: &str, when: jiff::Timestamp) {
        let state = self.tmp.path().join(name);
        let o = at(
            when,
            &[
                "--repo",
                &serve.1,
                "--trusted-root",
                self.root_v1.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "search",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap_or_else(|e| {
            panic!(
                "{name} at {when}: {e}: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        assert_eq!(v["result_code"], "Succeeded", "{name} at {when}: {v}");
        assert_eq!(v["updates"][0]["id"], ID, "{name} at {when}: {v}");
    }

    fn root_versions(&self) -> usize {
        std::fs::read_dir(self.dir.join("metadata"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().into_string().unwrap();
                n.ends_with(".root.json") && n.split('.').next().unwrap().parse::<u32>().is_ok()
            })
            .count()
    }

    /// Every metadata file's name and bytes: "nothing was written" is this, unchanged.
    fn metadata(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(self.dir.join("metadata"))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// `repo add DIR` of the `command` update at `revision` with `payload`, then `extra`.
fn add_args(dir: &str, revision: &str, payload: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "repo",
        "add",
        dir,
        "--id",
        ID,
        "--title",
        "Agent",
        "--revision",
        revision,
        "--payload",
        payload.to_str().unwrap(),
        "--handler",
        "command",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn refused(o: &Output, why: &str) {
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(why), "{err}");
}

#[test]
fn a_repository_published_monthly_for_two_years_stays_valid() {
    let repo = Repo::new(t0(), &[]);
    let serve = Serve::start(&repo.dir);
    repo.client_refreshes(&serve, "monthly", t0());
    for month in 1..=24 {
        let when = t0() + day(30 * month);
        ok(&at(when, &["repo", "publish", repo.d()]));
        repo.client_refreshes(&serve, "monthly", when);
        // Nothing is due right after a publish.
        assert_eq!(
            at(when, &["repo", "status", repo.d()]).status.code(),
            Some(0),
            "month {month}"
        );
    }
    // The root (365 days) was renewed a quarter of its lifetime before each expiry.
    assert!(repo.root_versions() >= 3, "{} roots", repo.root_versions());
    // A device that has trusted root version 1 all along follows every renewal.
    repo.client_refreshes(&serve, "since-day-one", t0() + day(30 * 24 + 1));
}

#[test]
fn every_role_rotated_in_turn_is_followed_by_clients() {
    let repo = Repo::new(t0(), &["--bins", "4"]);
    let serve = Serve::start(&repo.dir);
    repo.client_refreshes(&serve, "follower", t0());
    let roles = ["timestamp", "snapshot", "targets", "bins", "root", "root"];
    for (i, role) in roles.iter().enumerate() {
        let when = t0() + day(1 + i as i64);
        let before = at(when, &["repo", "status", repo.d(), "--json"]);
        let before: serde_json::Value = serde_json::from_str(&ok(&before)).unwrap();
        ok(&at(when, &["repo", "rotate-key", repo.d(), role]));
        let after = at(when, &["repo", "status", repo.d(), "--json"]);
        let after: serde_json::Value = serde_json::from_str(&ok(&after)).unwrap();
        let keys = |v: &serde_json::Value| {
            v["roles"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["role"] == *role)
                .unwrap()["keyids"]
                .clone()
        };
        assert_ne!(keys(&before), keys(&after), "{role}: a new key is trusted");
        repo.client_refreshes(&serve, "follower", when);
    }
    // The old keys are kept apart, not deleted.
    assert_eq!(
        std::fs::read_dir(repo.dir.join("keys/retired"))
            .unwrap()
            .count(),
        roles.len()
    );
    // A device still trusting root version 1 follows all six rotations at once.
    repo.client_refreshes(&serve, "late", t0() + day(10));
}

#[test]
fn an_offline_root_key_is_needed_only_to_renew_or_rotate_and_its_absence_writes_nothing() {
    let repo = Repo::new(t0(), &["--root-keys", "{tmp}/offline"]);
    let off = repo.tmp.path().join("offline");
    assert!(off.join("root.json").exists());
    assert!(!repo.dir.join("keys/root.json").exists());
    let serve = Serve::start(&repo.dir);
    // Routine publishing needs no root key.
    ok(&at(t0() + day(2), &["repo", "publish", repo.d()]));
    repo.client_refreshes(&serve, "device", t0() + day(2));
    // Rotating a key, or renewing a root that is due, needs it: refused before writing.
    let before = repo.metadata();
    let o = at(
        t0() + day(3),
        &["repo", "rotate-key", repo.d(), "timestamp"],
    );
    refused(&o, "the root key is needed");
    let late = t0() + day(300);
    let o = at(late, &["repo", "publish", repo.d()]);
    refused(&o, "--root-keys DIR");
    assert!(repo.metadata() == before, "nothing was written");
    assert!(!repo.dir.join("keys/retired").exists());
    // With the offline directory at hand both work, and the device follows.
    let off_s = off.to_str().unwrap();
    ok(&at(
        late,
        &["repo", "publish", repo.d(), "--root-keys", off_s],
    ));
    assert_eq!(repo.root_versions(), 2);
    repo.client_refreshes(&serve, "device", late);
    let said = ok(&at(
        late,
        &["repo", "rotate-key", repo.d(), "root", "--root-keys", off_s],
    ));
    assert!(
        off.join("retired").read_dir().unwrap().count() == 1,
        "retired offline"
    );
    // The message names where the old key went: the offline directory, not keys/.
    assert!(
        said.contains(off.join("retired").to_str().unwrap()),
        "{said}"
    );
    assert!(
        !repo.dir.join("keys/root.json").exists(),
        "the new key stays offline"
    );
    repo.client_refreshes(&serve, "device", late);
}

#[test]
fn status_says_what_is_due_and_what_expired_with_exit_codes() {
    let repo = Repo::new(t0(), &["--timestamp-expiry", "7d"]);
    let code = |when| at(when, &["repo", "status", repo.d()]).status.code();
    assert_eq!(code(t0() + day(1)), Some(0));
    // The timestamp lives 7 days and is renewed from 1.75 days before it expires.
    assert_eq!(code(t0() + day(6)), Some(3));
    assert_eq!(code(t0() + day(8)), Some(1));
    let v: serde_json::Value = serde_json::from_str(
        &String::from_utf8(at(t0() + day(8), &["repo", "status", repo.d(), "--json"]).stdout)
            .unwrap(),
    )
    .unwrap();
    let ts = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "timestamp")
        .unwrap()
        .clone();
    assert_eq!(ts["expired"], true, "{ts}");
    assert_eq!(v["expired"], true);
    // A publish renews it.
    ok(&at(t0() + day(8), &["repo", "publish", repo.d()]));
    assert_eq!(code(t0() + day(8)), Some(0));
}

#[test]
fn the_publisher_refuses_revisions_devices_would_not_take() {
    let repo = Repo::new(t0(), &[]);
    let file = |name: &str, body: &[u8]| -> PathBuf {
        let p = repo.tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let add = |rev: &str, payload: &Path, extra: &[&str]| {
        upkeep(&strs(&add_args(repo.d(), rev, payload, extra)))
    };
    let v2 = file("v2.sh", b"#!/bin/sh\necho two\n");
    let text = file("notes.txt", b"just some text\n");
    refused(&add("2", &text, &[]), "the command handler cannot run it");
    ok(&add("2", &v2, &[]));
    let before = repo.metadata();
    refused(&add("1", &v2, &[]), "lower than the published revision 2");
    let other = file("other.sh", b"#!/bin/sh\necho other\n");
    refused(&add("2", &other, &[]), "--force");
    assert!(repo.metadata() == before, "nothing was published");
    // The same revision with the same bytes is harmless.
    ok(&add("2", &v2, &[]));
    // Forced: published, with a warning.
    let o = add("2", &other, &["--force"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("will not update"));
}

/// The files a timestamp leads to: the snapshot, every role it lists, and the content of
/// every target those list.
fn reachable_from(dir: &Path, timestamp: &[u8]) -> Vec<PathBuf> {
    let json = |b: &[u8]| -> serde_json::Value { serde_json::from_slice(b).unwrap() };
    let md = dir.join("metadata");
    let ts = json(timestamp);
    let snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let snap_file = md.join(format!("{snap_v}.snapshot.json"));
    let mut out = vec![snap_file.clone()];
    let snap = json(&std::fs::read(&snap_file).unwrap());
    for (role, info) in snap["signed"]["meta"].as_object().unwrap() {
        let f = md.join(format!("{}.{role}", info["version"]));
        let t = json(&std::fs::read(&f).unwrap());
        out.push(f);
        for (path, tf) in t["signed"]["targets"].as_object().unwrap() {
            let (d, base) = path.rsplit_once('/').unwrap();
            let h = tf["hashes"]["sha256"].as_str().unwrap();
            out.push(dir.join("targets").join(d).join(format!("{h}.{base}")));
        }
    }
    out
}

#[test]
fn prune_keeps_what_a_client_mid_refresh_was_told_about() {
    let repo = Repo::new(t0(), &[]);
    let revision = |rev: &str, body: &[u8]| {
        let p = repo.tmp.path().join(format!("v{rev}.sh"));
        std::fs::write(&p, body).unwrap();
        ok(&upkeep(&strs(&add_args(repo.d(), rev, &p, &[]))));
    };
    let first = std::fs::read(repo.dir.join("metadata/timestamp.json")).unwrap();
    let first_files = reachable_from(&repo.dir, &first);
    revision("2", b"#!/bin/sh\necho two\n");
    // A client read this timestamp a moment before the next publish and the prune.
    let told = std::fs::read(repo.dir.join("metadata/timestamp.json")).unwrap();
    let told_files = reachable_from(&repo.dir, &told);
    revision("3", b"#!/bin/sh\necho three\n");
    let out = ok(&upkeep(&["repo", "prune", repo.d()]));
    assert!(out.contains("Removed"), "{out}");
    for f in &told_files {
        assert!(f.exists(), "{} was pruned from under a client", f.display());
    }
    // What only older snapshots referred to is gone (revision 1's payload with them).
    let gone: Vec<_> = first_files
        .iter()
        .filter(|f| !told_files.contains(f))
        .collect();
    assert!(!gone.is_empty());
    for f in gone {
        assert!(!f.exists(), "{} was kept", f.display());
    }
    // Every root version stays; a client refreshing now gets revision 3.
    assert!(repo.dir.join("metadata/1.root.json").exists());
    let serve = Serve::start(&repo.dir);
    repo.client_refreshes(&serve, "device", jiff::Timestamp::now());
    // Keeping one snapshot drops revision 2's payload too.
    ok(&upkeep(&["repo", "prune", repo.d(), "--keep", "1"]));
    assert!(told_files.iter().any(|f| !f.exists()));
    let now = std::fs::read(repo.dir.join("metadata/timestamp.json")).unwrap();
    for f in reachable_from(&repo.dir, &now) {
        assert!(f.exists(), "{}", f.display());
    }
}

#[test]
fn an_offline_targets_key_is_asked_for_before_any_content_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let off = tmp.path().join("offline");
    let (d, o) = (dir.to_str().unwrap(), off.to_str().unwrap());
    ok(&upkeep(&[
        "repo",
        "init",
        d,
        "--root-keys",
        o,
        "--offline-targets-key",
    ]));
    assert!(off.join("targets.json").exists() && !dir.join("keys/targets.json").exists());
    let p = tmp.path().join("setup.sh");
    std::fs::write(&p, b"#!/bin/sh\nexit 0\n").unwrap();
    let add = |extra: &[&str]| upkeep(&strs(&add_args(d, "1", &p, extra)));
    let content = || walk_files(&dir.join("targets"));
    refused(&add(&[]), "the targets key is needed");
    assert!(content().is_empty(), "no content was written");
    ok(&add(&["--root-keys", o]));
    assert_eq!(content().len(), 1);
}

fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// An offline bundle, written at t0 and carried to a machine that never had a network:
/// used 60 days later (the repository's own timestamp expired after 7), with no server
/// running; the same bundle refused once it expires; a repository read directly at day 60
/// refused as the freeze attack it would be.
#[test]
fn an_offline_bundle_installs_60_days_later_with_no_server() {
    let repo = Repo::new(t0(), &[]);
    let tmp = repo.tmp.path();
    let bundle = tmp.join("bundle.tar");
    let none = at(
        t0(),
        &[
            "repo",
            "bundle",
            repo.d(),
            "--out",
            bundle.to_str().unwrap(),
            "--criteria",
            "Type='Driver'",
        ],
    );
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no update matches"));
    let r: serde_json::Value = serde_json::from_str(&ok(&at(
        t0(),
        &[
            "repo",
            "bundle",
            repo.d(),
            "--out",
            bundle.to_str().unwrap(),
            "--expires",
            "90d",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(r["updates"], 1);
    assert!(
        r["expires"].as_str().unwrap().starts_with("2027-04-01"),
        "{r}"
    );
    let device = |name: &str, when: jiff::Timestamp, args: &[&str]| {
        let (state, root) = (tmp.join(name).join("state"), tmp.join(name).join("root"));
        let base = [
            "--state-dir",
            state.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ];
        at(when, &[&base[..], args].concat())
    };
    let day60 = t0() + day(60);
    ok(&device(
        "usb",
        day60,
        &[
            "service",
            "add",
            "usb",
            bundle.to_str().unwrap(),
            "--trusted-root",
            repo.root_v1.to_str().unwrap(),
        ],
    ));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&device("usb", day60, &["search", "--json"]))).unwrap();
    assert_eq!(v["result_code"], "Succeeded", "{v}");
    assert_eq!(v["updates"][0]["id"], ID);
    assert_eq!(v["updates"][0]["service"], "usb");
    let o = ok(&device("usb", day60, &["install", ID, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["result_code"], "Succeeded", "{v}");
    // The repository itself at day 60: its timestamp expired at day 7.
    let direct = device(
        "direct",
        day60,
        &[
            "--repo",
            repo.d(),
            "--trusted-root",
            repo.root_v1.to_str().unwrap(),
            "search",
            "--json",
        ],
    );
    assert!(!direct.status.success());
    assert!(
        String::from_utf8_lossy(&direct.stderr).contains("Expired"),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    // The bundle past its own expiry: refused the same way, nothing relaxed.
    let day91 = t0() + day(91);
    ok(&device(
        "late",
        day91,
        &[
            "service",
            "add",
            "usb",
            bundle.to_str().unwrap(),
            "--trusted-root",
            repo.root_v1.to_str().unwrap(),
        ],
    ));
    let late = device("late", day91, &["search", "--json"]);
    assert!(!late.status.success());
    let e =
        String::from_utf8_lossy(&late.stdout).into_owned() + &String::from_utf8_lossy(&late.stderr);
    assert!(e.contains("Expired"), "{e}");
    // The error names the service and the fix.
    assert!(
        e.contains("service usb") && e.contains("upkeep service update usb FILE"),
        "{e}"
    );
}
