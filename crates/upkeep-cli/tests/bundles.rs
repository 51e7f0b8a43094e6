//! Offline bundles against the repository they came from, through the binary: whichever way
//! a bundle reaches a machine (`--repo DIR` over the network repository's trust, or a
//! bundle service), an older one never replaces newer metadata nor locks the machine out
//! of the repository afterwards; `service update` takes a newer bundle and keeps the
//! service's trust, so a stale bundle stays refused.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::{Path, PathBuf};

use common::{ok, tar_of, upkeep};

fn id(n: u32) -> String {
    format!("c0000000-0000-4000-8000-{n:012}")
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }
    fn trusted(&self) -> PathBuf {
        self.repo().join("metadata/1.root.json")
    }
    fn add(&self, n: u32) {
        let p = self.tmp.path().join(format!("p{n}.tar"));
        std::fs::write(&p, tar_of(&[(&format!("opt/b/{n}"), b"x", 0o644)])).unwrap();
        ok(&upkeep(&[
            "repo",
            "add",
            self.repo().to_str().unwrap(),
            "--id",
            &id(n),
            "--title",
            &format!("Update {n}"),
            "--payload",
            p.to_str().unwrap(),
            "--handler",
            "files",
        ]));
    }
    fn bundle(&self, name: &str) -> PathBuf {
        let out = self.tmp.path().join(name);
        ok(&upkeep(&[
            "repo",
            "bundle",
            self.repo().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        out
    }
    /// The bundle unpacked as a plain directory, as someone would serve or mount it.
    fn unpacked(&self, bundle: &Path) -> PathBuf {
        let dir = self.tmp.path().join(format!(
            "{}.d",
            bundle.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        tar::Archive::new(std::fs::File::open(bundle).unwrap())
            .unpack(&dir)
            .unwrap();
        dir
    }
    /// `upkeep --state-dir MACHINE/state … args` (with `--repo` when `repo` is given).
    fn on(&self, machine: &str, repo: Option<&Path>, args: &[&str]) -> std::process::Output {
        let base = self.tmp.path().join(machine);
        let (state, root) = (base.join("state"), base.join("root"));
        let trusted = self.trusted();
        let mut a: Vec<&str> = vec![
            "--state-dir",
            state.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ];
        if let Some(r) = repo {
            a.extend(["--repo", r.to_str().unwrap()]);
            a.extend(["--trusted-root", trusted.to_str().unwrap()]);
        }
        a.extend(args);
        upkeep(&a)
    }
}

fn ids_of(out: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    let mut ids: Vec<String> = v["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn a_stale_bundle_never_rolls_a_machine_back_nor_locks_it_out() {
    let f = Fixture {
        tmp: tempfile::tempdir().unwrap(),
    };
    ok(&upkeep(&["repo", "init", f.repo().to_str().unwrap()]));
    for n in 1..=3 {
        f.add(n);
    }
    let old = f.bundle("old.tar");
    f.add(4);
    let (repo, four) = (f.repo(), vec![id(1), id(2), id(3), id(4)]);
    assert_eq!(
        ids_of(&ok(&f.on("m", Some(&repo), &["search", "--json"]))),
        four
    );
    // The stale bundle as the repository: refused, and said why.
    let stale = f.unpacked(&old);
    let o = f.on("m", Some(&stale), &["search", "--json"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("older than this machine already trusts"),
        "{}",
        text(&o)
    );
    // Nothing was replaced, and the repository is still accepted.
    assert_eq!(
        ids_of(&ok(&f.on(
            "m",
            Some(&repo),
            &["search", "--offline", "--json"]
        ))),
        four
    );
    assert_eq!(
        ids_of(&ok(&f.on("m", Some(&repo), &["search", "--json"]))),
        four
    );
    // A bundle made now is newer than what the machine holds, and the repository stays
    // acceptable after it (it was published again past the bundle).
    let new = f.bundle("new.tar");
    let fresh = f.unpacked(&new);
    assert_eq!(
        ids_of(&ok(&f.on("m", Some(&fresh), &["search", "--json"]))),
        four
    );
    assert_eq!(
        ids_of(&ok(&f.on("m", Some(&repo), &["search", "--json"]))),
        four
    );
    // After the repository, the older of the two bundles is refused too.
    assert!(!f.on("m", Some(&fresh), &["search"]).status.success());

    // A bundle service: added from the old bundle, updated from the new one.
    let trusted = f.trusted();
    let add = f.on(
        "u",
        None,
        &[
            "service",
            "add",
            "usb",
            old.to_str().unwrap(),
            "--trusted-root",
            trusted.to_str().unwrap(),
        ],
    );
    ok(&add);
    let three = vec![id(1), id(2), id(3)];
    assert_eq!(ids_of(&ok(&f.on("u", None, &["search", "--json"]))), three);
    ok(&f.on(
        "u",
        None,
        &["service", "update", "usb", new.to_str().unwrap()],
    ));
    assert_eq!(ids_of(&ok(&f.on("u", None, &["search", "--json"]))), four);
    // The stale one again: refused, the service unchanged (its trust was kept).
    let o = f.on(
        "u",
        None,
        &["service", "update", "usb", old.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("older than what service usb already trusts")
            && text(&o).contains("unchanged"),
        "{}",
        text(&o)
    );
    assert_eq!(ids_of(&ok(&f.on("u", None, &["search", "--json"]))), four);
    let leftovers: Vec<_> = std::fs::read_dir(f.tmp.path().join("u/state/services/usb"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !leftovers
            .iter()
            .any(|n| n.contains("next") || n.contains("check")),
        "{leftovers:?}"
    );
    // Only a bundle service takes a bundle.
    let o = f.on(
        "m",
        Some(&repo),
        &["service", "update", "default", new.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not added from an offline bundle"),
        "{}",
        text(&o)
    );
}
