//! Local changes and other package managers, as a sequence: install, an administrator's
//! edits, `verify`, an upgrade that keeps the edit (the new file beside it), an uninstall
//! that keeps it (the pre-install file beside it), and paths dpkg owns refused unless the
//! update declares it takes them over.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::Path;

use common::{ok, tar_of, upkeep};

const APP: &str = "a1000000-0000-4000-8000-000000000001";
const DPKG: &str = "a1000000-0000-4000-8000-000000000002";

fn add(repo: &Path, payload: &Path, id: &str, rev: &str, extra: &[&str]) -> std::process::Output {
    let base = [
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--id",
        id,
        "--revision",
        rev,
        "--title",
        "App",
        "--payload",
        payload.to_str().unwrap(),
        "--handler",
        "files",
    ];
    upkeep(&[&base[..], extra].concat())
}

#[test]
fn local_changes_survive_upgrade_and_uninstall_and_verify_reports_them() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let p1 = tmp.path().join("v1.tar");
    std::fs::write(
        &p1,
        tar_of(&[
            ("etc/app.conf", b"setting = 1\n", 0o644),
            ("etc/pre.conf", b"ours v1\n", 0o644),
            ("usr/bin/app", b"#!/bin/sh\necho 1\n", 0o755),
        ]),
    )
    .unwrap();
    ok(&add(&repo, &p1, APP, "1", &[]));
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    // A file that was there before the install: the update replaces it, keeping it.
    std::fs::write(root.join("etc/pre.conf"), b"the machine's own\n").unwrap();
    let trusted = repo.join("metadata/1.root.json");
    let state = tmp.path().join("state");
    let run = |args: &[&str]| common::on(&repo, &trusted, &state, &root, args);
    ok(&run(&["install", APP]));
    let v = ok(&run(&["verify"]));
    assert!(
        v.contains(": 3 path(s) intact") || v.contains("path(s) intact"),
        "{v}"
    );

    // The administrator edits two files (one keeping its size: only its content differs).
    std::fs::write(root.join("etc/app.conf"), b"setting = 7\n").unwrap();
    std::fs::write(root.join("etc/pre.conf"), b"edited by the admin\n").unwrap();
    let o = run(&["verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let changed: Vec<&str> = v["updates"][0]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["etc/app.conf", "etc/pre.conf"], "{v}");
    assert_eq!(v["updates"][0]["changed"][0]["state"], "changed");

    // Revision 2 changes the configuration and the program: the program is replaced,
    // the edited configuration kept with the new one beside it, and the result says so.
    let p2 = tmp.path().join("v2.tar");
    std::fs::write(
        &p2,
        tar_of(&[
            ("etc/app.conf", b"setting = 2\n", 0o644),
            ("etc/pre.conf", b"ours v1\n", 0o644),
            ("usr/bin/app", b"#!/bin/sh\necho 2\n", 0o755),
        ]),
    )
    .unwrap();
    ok(&add(&repo, &p2, APP, "2", &[]));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&run(&["install", APP, "--json"]))).unwrap();
    let msg = v["updates"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("kept etc/app.conf") && msg.contains("etc/app.conf.upkeep-new"),
        "{v}"
    );
    assert_eq!(
        std::fs::read(root.join("etc/app.conf")).unwrap(),
        b"setting = 7\n"
    );
    assert_eq!(
        std::fs::read(root.join("etc/app.conf.upkeep-new")).unwrap(),
        b"setting = 2\n"
    );
    assert_eq!(
        std::fs::read(root.join("usr/bin/app")).unwrap(),
        b"#!/bin/sh\necho 2\n"
    );
    let h: serde_json::Value = serde_json::from_str(&ok(&run(&["history", "--json"]))).unwrap();
    assert!(h["entries"][0]["message"]
        .as_str()
        .unwrap()
        .contains("kept etc/app.conf"));

    // Uninstall: the program goes; both edits stay; the machine's own pre-install file
    // is beside the edited one.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&run(&["uninstall", APP, "--json"]))).unwrap();
    let msg = v["updates"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("kept etc/pre.conf") && msg.contains("etc/pre.conf.upkeep-orig"),
        "{v}"
    );
    assert!(!root.join("usr/bin/app").exists());
    assert_eq!(
        std::fs::read(root.join("etc/app.conf")).unwrap(),
        b"setting = 7\n"
    );
    assert_eq!(
        std::fs::read(root.join("etc/pre.conf")).unwrap(),
        b"edited by the admin\n"
    );
    assert_eq!(
        std::fs::read(root.join("etc/pre.conf.upkeep-orig")).unwrap(),
        b"the machine's own\n"
    );
    assert_eq!(ok(&run(&["list"])).trim(), "Nothing is installed.");
}

#[test]
fn a_path_dpkg_owns_is_refused_unless_the_update_takes_it_over() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/tool"), b"dpkg's tool").unwrap();
    std::fs::write(
        root.join("var/lib/dpkg/info/tool:amd64.list"),
        "/.\n/usr\n/usr/bin\n/usr/bin/tool\n",
    )
    .unwrap();
    let p = tmp.path().join("p.tar");
    std::fs::write(
        &p,
        tar_of(&[
            ("usr/bin/tool", b"ours", 0o755),
            ("usr/bin/other", b"x", 0o755),
        ]),
    )
    .unwrap();
    ok(&add(&repo, &p, DPKG, "1", &[]));
    let trusted = repo.join("metadata/1.root.json");
    let state = tmp.path().join("state");
    let run = |args: &[&str]| common::on(&repo, &trusted, &state, &root, args);
    let o = run(&["install", DPKG, "--json"]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["updates"][0]["error"];
    assert_eq!(e["name"], "E_FILE_EXISTS", "{v}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("dpkg package tool owns"),
        "{v}"
    );
    assert_eq!(
        std::fs::read(root.join("usr/bin/tool")).unwrap(),
        b"dpkg's tool"
    );
    assert!(!root.join("usr/bin/other").exists());
    // Declared: taken over (and given back on uninstall).
    ok(&add(&repo, &p, DPKG, "2", &["--takes-over-dpkg", "tool"]));
    ok(&run(&["install", DPKG]));
    assert_eq!(std::fs::read(root.join("usr/bin/tool")).unwrap(), b"ours");
    ok(&run(&["uninstall", DPKG]));
    assert_eq!(
        std::fs::read(root.join("usr/bin/tool")).unwrap(),
        b"dpkg's tool"
    );
}
