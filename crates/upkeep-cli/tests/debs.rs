//! Real Debian packages as they are: `apt-get download` fetches sudo and hello, `repo add
//! --from-deb` publishes them, and they install into a sandbox root byte for byte as
//! `dpkg-deb -x` extracts them — sudo's masked unit `sudo.service -> /dev/null` and its
//! set-user-id binary included — then uninstall to nothing.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, upkeep};

/// Downloads `pkgs` into `dir` with apt-get (updating the package lists first if they
/// are missing); every package must come.
fn download(dir: &Path, pkgs: &[&str]) -> Vec<PathBuf> {
    let get = || {
        Command::new("apt-get")
            .arg("download")
            .args(pkgs)
            .current_dir(dir)
            .output()
            .expect("apt-get runs")
    };
    let mut o = get();
    if !o.status.success() {
        let u = Command::new("apt-get")
            .args(["update", "-qq"])
            .output()
            .unwrap();
        assert!(
            u.status.success(),
            "apt-get update: {}",
            String::from_utf8_lossy(&u.stderr)
        );
        o = get();
    }
    assert!(
        o.status.success(),
        "apt-get download: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    pkgs.iter()
        .map(|p| {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|f| {
                    f.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{p}_"))
                })
                .unwrap_or_else(|| panic!("{p} was downloaded"))
        })
        .collect()
}

/// Every entry under `root`: kind, mode bits, and content or link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                let data = std::fs::read(&p).unwrap();
                format!(
                    "file {:o} {} {:x}",
                    m.mode() & 0o7777,
                    data.len(),
                    data.iter().fold(0u64, |h, b| h.rotate_left(5) ^ *b as u64)
                )
            };
            out.insert(rel, v);
        }
    }
    out
}

#[test]
fn real_debian_packages_install_byte_for_byte_and_uninstall_to_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let debs = download(tmp.path(), &["sudo", "hello"]);
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let ids = [
        "f0000000-0000-4000-8000-000000000001",
        "f0000000-0000-4000-8000-000000000002",
    ];
    for (deb, id) in debs.iter().zip(ids) {
        let o = upkeep(&[
            "repo",
            "add",
            repo.to_str().unwrap(),
            "--from-deb",
            deb.to_str().unwrap(),
            "--id",
            id,
        ]);
        ok(&o);
        if deb.to_string_lossy().contains("sudo") {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                e.contains("maintainer scripts") && e.contains("postinst"),
                "{e}"
            );
            assert!(e.contains("usr/bin/sudo"), "{e}");
        }
    }
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let trusted = repo.join("metadata/1.root.json");
    let state = tmp.path().join("state");
    let run = |args: &[&str]| common::on(&repo, &trusted, &state, &root, args);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&run(&["show", ids[0], "--json"]))).unwrap();
    assert_eq!(v["title"], "sudo");
    assert!(v["version"].as_str().unwrap().starts_with("1."), "{v}");
    assert!(v["description"]
        .as_str()
        .unwrap()
        .contains("maintainer scripts"));
    assert_eq!(
        v["applicability"]["architectures"][0],
        String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout)
            .unwrap()
            .trim()
    );
    ok(&run(&["install", ids[0], ids[1]]));
    // What dpkg-deb extracts, into a tree of its own.
    let want = tmp.path().join("want");
    for deb in &debs {
        let x = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&want)
            .status()
            .unwrap();
        assert!(x.success());
    }
    let (got, want) = (tree(&root), tree(&want));
    assert_eq!(got, want);
    assert_eq!(got["lib/systemd/system/sudo.service"], "link /dev/null");
    assert!(
        got["usr/bin/sudo"].starts_with("file 4755"),
        "{}",
        got["usr/bin/sudo"]
    );
    ok(&run(&["uninstall", ids[0], ids[1]]));
    assert!(tree(&root).is_empty(), "{:?}", tree(&root));
}
