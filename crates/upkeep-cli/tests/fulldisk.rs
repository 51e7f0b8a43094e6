//! A full disk under the state directory: reading commands (`list`, `history`, `status`,
//! offline `search` and `show`, `cache list`) still answer from the state database, and
//! writing ones fail with `E_DISK_FULL` naming the directory, changing nothing.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use common::{ok, tar_of, upkeep};

const ID: &str = "e0000000-0000-4000-8000-000000000001";

#[test]
fn reading_commands_work_on_a_full_disk_and_writing_ones_say_it_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let payload = tmp.path().join("p.tar");
    std::fs::write(&payload, tar_of(&[("opt/full/f", b"kept", 0o644)])).unwrap();
    ok(&upkeep(&[
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--id",
        ID,
        "--title",
        "On a full disk",
        "--payload",
        payload.to_str().unwrap(),
        "--handler",
        "files",
    ]));
    let fs = upkeep_testkit::mounts::Tmpfs::mount("16m");
    let state = fs.path().join("state");
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let trusted = repo.join("metadata/1.root.json");
    let run = |args: &[&str]| common::on(&repo, &trusted, &state, &root, args);
    ok(&run(&["install", ID]));
    fs.fill("filler");
    let list = ok(&run(&["list"]));
    assert!(list.contains("On a full disk"), "{list}");
    assert!(ok(&run(&["history"])).contains("On a full disk"));
    assert!(ok(&run(&["status"])).contains("On a full disk"));
    let v: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "search",
        "IsInstalled=1",
        "--offline",
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["updates"][0]["id"], ID, "{v}");
    assert!(ok(&run(&["show", ID, "--offline"])).contains("installed:        yes"));
    ok(&run(&["cache", "list"]));
    // A change needs room: refused with E_DISK_FULL, naming the directory, nothing lost.
    let o = run(&["uninstall", ID, "--json"]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = &v["updates"][0]["error"];
    assert_eq!(err["name"], "E_DISK_FULL", "{v}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(state.to_str().unwrap()),
        "{v}"
    );
    assert_eq!(std::fs::read(root.join("opt/full/f")).unwrap(), b"kept");
    let o = run(&["hide", ID]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("E_DISK_FULL"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Room again: everything as it was, and changes work.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    assert!(ok(&run(&["list"])).contains("On a full disk"));
    ok(&run(&["uninstall", ID]));
    assert!(!root.join("opt/full/f").exists());
}
