//! Fleet features through the binary: applicability published with `repo add` flags and
//! evaluated on this machine (its real `uname -m` and `os-release`), shown by `show`,
//! enforced by `install`.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::Path;

use common::{ok, tar_of, upkeep};

const HERE: &str = "a0000000-0000-4000-8000-000000000001";
const OTHER: &str = "a0000000-0000-4000-8000-000000000002";
const NEEDS: &str = "a0000000-0000-4000-8000-000000000003";
const DETECT: &str = "a0000000-0000-4000-8000-000000000004";

fn this_arch() -> String {
    let o = std::process::Command::new("uname")
        .arg("-m")
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn this_os_id() -> String {
    let t = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap();
    upkeep::applicability::os_release_value(&t, "ID").unwrap()
}

fn add(dir: &Path, payload: &Path, id: &str, title: &str, extra: &[&str]) {
    let base = [
        "repo",
        "add",
        dir.to_str().unwrap(),
        "--id",
        id,
        "--title",
        title,
        "--payload",
        payload.to_str().unwrap(),
        "--handler",
        "files",
    ];
    ok(&upkeep(&[&base[..], extra].concat()));
}

/// Runs `upkeep` as one machine: `--repo REPO --trusted-root REPO/metadata/1.root.json
/// --state-dir BASE/state --root BASE/root`, then `args`.
fn machine(repo: &Path, base: &Path) -> impl Fn(&[&str]) -> std::process::Output {
    let (repo, base) = (repo.to_path_buf(), base.to_path_buf());
    move |args: &[&str]| {
        let (trusted, state, root) = (
            repo.join("metadata/1.root.json"),
            base.join("state"),
            base.join("root"),
        );
        let agent = [
            "--repo",
            repo.to_str().unwrap(),
            "--trusted-root",
            trusted.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ];
        upkeep(&[&agent[..], args].concat())
    }
}

#[test]
fn applicability_from_repo_add_flags_on_this_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let payload = |name: &str| {
        let p = tmp.path().join(format!("{name}.tar"));
        std::fs::write(&p, tar_of(&[(&format!("opt/{name}/f"), b"x", 0o644)])).unwrap();
        p
    };
    let (arch, os) = (this_arch(), this_os_id());
    add(
        &repo,
        &payload("here"),
        HERE,
        "For this machine",
        &["--arch", &arch, "--os", &os],
    );
    // Another architecture (a name no machine here has).
    add(
        &repo,
        &payload("other"),
        OTHER,
        "For another machine",
        &["--arch", "riscv64"],
    );
    add(
        &repo,
        &payload("needs"),
        NEEDS,
        "Needs the first",
        &["--requires", HERE],
    );
    add(
        &repo,
        &payload("detect"),
        DETECT,
        "Maybe installed by hand",
        &["--installed-if", "exists:/etc/by-hand.conf"],
    );
    // A malformed rule is refused by the publisher, naming it.
    let bad = upkeep(&[
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--title",
        "x",
        "--payload",
        payload("bad").to_str().unwrap(),
        "--handler",
        "files",
        "--os",
        "debian:>=",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("applicability.os"));

    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/by-hand.conf"), "x").unwrap();
    let run = machine(&repo, tmp.path());
    let ids = |criteria: &str, extra: &[&str]| -> Vec<String> {
        let out = ok(&run(&[&["search", criteria, "--json"][..], extra].concat()));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut ids: Vec<String> = v["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("IsInstalled=0", &[]), [HERE, NEEDS]);
    assert_eq!(ids("IsInstalled=1", &[]), [DETECT]);
    assert_eq!(
        ids("IsInstalled=0", &["--include-not-applicable"]),
        [HERE, OTHER, NEEDS]
    );
    let table = ok(&run(&["search", "--include-not-applicable"]));
    let line = table.lines().find(|l| l.contains(OTHER)).unwrap();
    assert!(line.contains("-----N"), "{line}");

    let show = ok(&run(&["show", OTHER]));
    assert!(
        show.contains(&format!(
            "applies:          no: architecture {arch} is not one of riscv64"
        )),
        "{show}"
    );
    let show = ok(&run(&["show", DETECT]));
    assert!(
        show.contains("without the agent")
            && show.contains("yes installed if /etc/by-hand.conf exists"),
        "{show}"
    );
    let show: serde_json::Value =
        serde_json::from_str(&ok(&run(&["show", HERE, "--json"]))).unwrap();
    assert_eq!(show["applicable"], true);
    assert_eq!(show["applicability"]["architectures"][0], arch.as_str());
    assert_eq!(show["applicability_checks"].as_array().unwrap().len(), 2);

    // Installing what does not apply: refused with its code and rule; nothing changed.
    let o = run(&["install", OTHER, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let u = &v["updates"][0];
    assert_eq!(u["hresult"], "0x80240017");
    assert!(
        u["error"]["message"].as_str().unwrap().contains("riscv64"),
        "{u}"
    );
    assert!(!root.join("opt").exists());
    // A prerequisite named after its dependent is installed first.
    ok(&run(&["install", NEEDS, HERE]));
    assert!(root.join("opt/needs/f").exists() && root.join("opt/here/f").exists());
}

#[test]
fn cache_list_and_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    for (id, name) in [(HERE, "one"), (OTHER, "two")] {
        let p = tmp.path().join(format!("{name}.tar"));
        std::fs::write(
            &p,
            tar_of(&[(&format!("opt/{name}/f"), name.as_bytes(), 0o644)]),
        )
        .unwrap();
        add(&repo, &p, id, name, &[]);
    }
    let run = machine(&repo, tmp.path());
    let listed = || -> serde_json::Value {
        serde_json::from_str(&ok(&run(&["cache", "list", "--json"]))).unwrap()
    };
    assert_eq!(listed()["objects"].as_array().unwrap().len(), 0);
    ok(&run(&["download", "--all"]));
    let v = listed();
    let objects = v["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2);
    assert!(objects.iter().all(|o| o["verified"] == true));
    let owners: Vec<&str> = objects
        .iter()
        .map(|o| o["updates"][0].as_str().unwrap())
        .collect();
    assert!(owners.iter().any(|o| o.starts_with("one (")), "{owners:?}");
    assert!(ok(&run(&["cache", "list"])).contains("2 object(s), 0 partial download(s)"));
    // Installing one removes its content; the other stays until cleaned.
    ok(&run(&["install", HERE]));
    assert_eq!(listed()["objects"].as_array().unwrap().len(), 1);
    let cleaned: serde_json::Value =
        serde_json::from_str(&ok(&run(&["cache", "clean", "--json"]))).unwrap();
    assert_eq!(cleaned["objects"], 1);
    assert_eq!(listed()["objects"].as_array().unwrap().len(), 0);
    assert!(ok(&run(&["cache", "list"])).contains("The cache is empty."));
}

#[test]
fn content_carried_to_a_disconnected_machine_with_cache_export_and_import() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let p = tmp.path().join("one.tar");
    std::fs::write(&p, tar_of(&[("opt/one/f", b"payload one", 0o644)])).unwrap();
    add(&repo, &p, HERE, "one", &[]);
    let (a, b) = (
        machine(&repo, &tmp.path().join("a")),
        machine(&repo, &tmp.path().join("b")),
    );
    // B trusts the repository's metadata (it saw it once), then loses the network.
    ok(&b(&["search"]));
    ok(&a(&["download", HERE]));
    let usb = tmp.path().join("usb");
    let out: serde_json::Value = serde_json::from_str(&ok(&a(&[
        "cache",
        "export",
        usb.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(out["files"].as_array().unwrap().len(), 1);
    // A damaged copy and a stray file beside the good one.
    let exported = std::path::PathBuf::from(out["files"][0].as_str().unwrap());
    let mut bad = std::fs::read(&exported).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(usb.join("damaged.tar"), &bad).unwrap();
    std::fs::write(usb.join("notes.txt"), b"hello").unwrap();
    std::fs::rename(tmp.path().join("repo"), tmp.path().join("repo-away")).unwrap();
    assert!(!b(&["search"]).status.success(), "no repository reachable");
    let r: serde_json::Value = serde_json::from_str(&ok(&b(&[
        "cache",
        "import",
        usb.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(r["imported"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["unmatched"].as_array().unwrap().len(), 2, "{r}");
    let o = ok(&b(&["install", HERE, "--offline", "--no-download"]));
    assert!(o.contains("Succeeded"), "{o}");
    assert_eq!(
        std::fs::read(tmp.path().join("b/root/opt/one/f")).unwrap(),
        b"payload one"
    );
    // Exporting what is not cached says so.
    let e = a(&[
        "cache",
        "export",
        usb.to_str().unwrap(),
        "a0000000-0000-4000-8000-000000000009",
    ]);
    assert_eq!(e.status.code(), Some(2));
}

#[test]
fn service_add_list_search_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let (vendor, internal) = (tmp.path().join("vendor"), tmp.path().join("internal"));
    for (repo, id, name) in [(&vendor, HERE, "vendor"), (&internal, OTHER, "internal")] {
        ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
        let p = tmp.path().join(format!("{name}.tar"));
        std::fs::write(&p, tar_of(&[(&format!("opt/{name}/f"), b"x", 0o644)])).unwrap();
        add(repo, &p, id, name, &[]);
    }
    let run = machine(&vendor, tmp.path());
    let state = tmp.path().join("state");
    let svc = |args: &[&str]| {
        upkeep(
            &[
                &["service"][..],
                args,
                &["--state-dir", state.to_str().unwrap()],
            ]
            .concat(),
        )
    };
    let root = internal.join("metadata/1.root.json");
    ok(&svc(&[
        "add",
        "internal",
        internal.to_str().unwrap(),
        "--trusted-root",
        root.to_str().unwrap(),
    ]));
    // The same name again: its WUA code, exit 2.
    let again = svc(&[
        "add",
        "internal",
        internal.to_str().unwrap(),
        "--trusted-root",
        root.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("WU_E_DUPLICATE_ITEM"));
    let ids = |extra: &[&str]| -> Vec<(String, String)> {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&run(&[&["search", "--json"][..], extra].concat()))).unwrap();
        let mut out: Vec<_> = v["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["title"].as_str().unwrap().to_string(),
                    u["service"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        ids(&[]),
        [
            ("internal".to_string(), "internal".to_string()),
            ("vendor".to_string(), "default".to_string())
        ]
    );
    assert_eq!(
        ids(&["--service", "internal"]),
        [("internal".to_string(), "internal".to_string())]
    );
    ok(&run(&["install", "--all"]));
    assert!(tmp.path().join("root/opt/internal/f").exists());
    let list: serde_json::Value = serde_json::from_str(&ok(&svc(&["list", "--json"]))).unwrap();
    let names: Vec<&str> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "internal"]);
    ok(&svc(&["remove", "internal"]));
    // Nothing is offered by it any more; what it installed stays in view, from its record.
    ok(&upkeep(&[
        "repo",
        "add",
        internal.to_str().unwrap(),
        "--title",
        "internal 2",
        "--payload",
        tmp.path().join("internal.tar").to_str().unwrap(),
        "--handler",
        "files",
    ]));
    assert!(ids(&[]).is_empty());
    assert_eq!(
        ids(&["IsInstalled=1"]),
        [
            ("internal".to_string(), "internal".to_string()),
            ("vendor".to_string(), "default".to_string())
        ]
    );
    // What it installed stays installed, and uninstalls.
    ok(&run(&["uninstall", OTHER]));
    assert!(!tmp.path().join("root/opt/internal/f").exists());
    let unknown = svc(&["remove", "internal"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("WU_E_UNKNOWN_SERVICE"));
}

/// `cache import` killed with SIGKILL while it copies: the temporary copy it leaves is
/// listed by `cache list` and removed by `cache clean`, and a vanished or non-regular
/// candidate is a report of that file, not the end of the import.
#[test]
fn a_killed_cache_import_leaves_nothing_that_cache_clean_does_not_remove() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let big = tmp.path().join("import/big.bin");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::write(&big, b"#!/bin/sh\nexit 0\n").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    ok(&upkeep(&[
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--id",
        HERE,
        "--title",
        "Big",
        "--payload",
        big.to_str().unwrap(),
        "--handler",
        "command",
    ]));
    let m = machine(&repo, tmp.path());
    ok(&m(&["search"]));
    let state = tmp.path().join("state");
    let partial = state.join("cache/partial");
    let tmps = || -> Vec<String> {
        std::fs::read_dir(&partial)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let trusted = repo.join("metadata/1.root.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "--trusted-root",
            trusted.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "cache",
            "import",
            big.parent().unwrap().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once its temporary copy exists (bounded: it copies 256 MiB).
    let mut seen = false;
    for _ in 0..200_000 {
        if !tmps().is_empty() {
            seen = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::yield_now();
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        seen,
        "the import finished before its copy was seen ({status:?})"
    );
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(tmps().len(), 1);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&m(&["cache", "list", "--json"]))).unwrap();
    assert!(
        list["partial"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"].as_str().unwrap().ends_with(".tmp")),
        "{list}"
    );
    ok(&m(&["cache", "clean"]));
    assert!(tmps().is_empty(), "{:?}", tmps());
    // A FIFO and a file of another content beside the real one: each reported, the real
    // one imported.
    let fifo = big.parent().unwrap().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let r: serde_json::Value = serde_json::from_str(&ok(&m(&[
        "cache",
        "import",
        big.parent().unwrap().to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(r["imported"].as_array().unwrap().len(), 1, "{r}");
    assert!(tmps().is_empty());
}
