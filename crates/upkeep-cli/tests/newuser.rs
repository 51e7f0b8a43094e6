//! What a new user trips on: a refused install downloads nothing (license, applicability,
//! the revision already installed), reinstalling says "already installed" and does
//! nothing, and the license hint names `show --eula`.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::Path;

use common::{ok, upkeep};

const LICENSED: &str = "b1000000-0000-4000-8000-000000000001";
const ELSEWHERE: &str = "b1000000-0000-4000-8000-000000000002";
const PLAIN: &str = "b1000000-0000-4000-8000-000000000003";

#[test]
fn refused_installs_download_nothing_and_a_reinstall_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let eula = tmp.path().join("LICENSE");
    std::fs::write(&eula, "Terms.").unwrap();
    // A command payload must be runnable: a script.
    let script = |name: &str| {
        let p = tmp.path().join(format!("{name}.sh"));
        std::fs::write(&p, format!("#!/bin/sh\n# {}\nexit 0\n", "x".repeat(40_000))).unwrap();
        p
    };
    for (id, name, extra) in [
        (LICENSED, "licensed", vec!["--eula", eula.to_str().unwrap()]),
        (ELSEWHERE, "elsewhere", vec!["--arch", "s390x"]),
        (PLAIN, "plain", vec![]),
    ] {
        let p = script(name);
        let base = [
            "repo",
            "add",
            repo.to_str().unwrap(),
            "--id",
            id,
            "--title",
            name,
            "--payload",
            p.to_str().unwrap(),
            "--handler",
            "command",
        ];
        ok(&upkeep(&[&base[..], &extra[..]].concat()));
    }
    let trusted = repo.join("metadata/1.root.json");
    let base = tmp.path().to_path_buf();
    let run = |args: &[&str]| machine(&repo, &trusted, &base, args);
    let cached = || -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&run(&["cache", "list", "--json"]))).unwrap();
        v["objects"].as_array().map_or(0, Vec::len) + v["partial"].as_array().map_or(0, Vec::len)
    };
    // License not accepted: refused, nothing downloaded; the hint names show --eula.
    let o = run(&["install", LICENSED]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("upkeep show {LICENSED} --eula")),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("WU_E_EULAS_DECLINED"));
    assert_eq!(cached(), 0, "a refused install downloaded content");
    // Not applicable here: refused, nothing downloaded.
    let o = run(&["install", ELSEWHERE, "--json"]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["updates"][0]["error"]["name"], "WU_E_NOT_APPLICABLE",
        "{v}"
    );
    assert!(v["updates"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("is not one of s390x"));
    assert_eq!(cached(), 0);
    // Installed once; again: "already installed", exit 0, no history row, no download.
    ok(&run(&["install", PLAIN]));
    let history = |r: &dyn Fn(&[&str]) -> std::process::Output| -> u64 {
        let v: serde_json::Value = serde_json::from_str(&ok(&r(&["history", "--json"]))).unwrap();
        v["total"].as_u64().unwrap()
    };
    let rows = history(&run);
    let o = run(&["install", PLAIN, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["updates"][0]["message"]
        .as_str()
        .unwrap()
        .contains("already installed"));
    assert_eq!(v["reboot_required"], false);
    assert_eq!(history(&run), rows);
    assert_eq!(
        cached(),
        0,
        "content is removed after install; none fetched again"
    );
}

fn machine(repo: &Path, trusted: &Path, base: &Path, args: &[&str]) -> std::process::Output {
    common::on(repo, trusted, &base.join("state"), &base.join("root"), args)
}

/// A server that accepts connections and never answers: the search fails after the
/// configured response timeout, and says which setting it was.
#[test]
fn a_server_that_never_answers_fails_after_the_response_timeout_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept and hold every connection, answering nothing, until the test ends.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().take(16).flatten() {
            h2.lock().unwrap().push(c);
        }
    });
    let state = tmp.path().join("state");
    let trusted = repo.join("metadata/1.root.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args([
            "--repo",
            &format!("http://{addr}/"),
            "--trusted-root",
            trusted.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "search",
        ])
        .env("UPKEEP_RESPONSE_TIMEOUT_SECONDS", "1")
        .env_remove("UPKEEP_CONFIG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no answer within 1s (response_timeout_seconds)"),
        "{e}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the request reached the server"
    );
    // An out-of-range setting is refused, naming it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(["--state-dir", state.to_str().unwrap(), "status"])
        .env("UPKEEP_RESPONSE_TIMEOUT_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("response_timeout_seconds = 0"));
}

/// The manual: `upkeep(1)` has EXIT STATUS, FILES, ENVIRONMENT, CONFIGURATION and
/// EXAMPLES, and every page it (or any page) names is written by `man --out`.
#[test]
fn the_manual_has_its_sections_and_every_page_it_names() {
    let page = ok(&upkeep(&["man"]));
    for s in [
        "EXIT STATUS",
        "FILES",
        "ENVIRONMENT",
        "CONFIGURATION",
        "EXAMPLES",
    ] {
        assert!(
            page.contains(&format!(".SH \"{s}\"")) || page.contains(&format!(".SH {s}")),
            "{s}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    ok(&upkeep(&["man", "--out", dir.path().to_str().unwrap()]));
    let written: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(written.contains("upkeep.1") && written.contains("upkeep-verify.1"));
    for name in &written {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        // References look like `upkeep\-search(1)` in roff.
        for r in text.split("upkeep\\-").skip(1) {
            let Some(end) = r.find("(1)") else { continue };
            let page = format!("upkeep-{}.1", r[..end].replace("\\-", "-"));
            assert!(
                written.contains(&page),
                "{name} names {page}, which is not written"
            );
        }
    }
}
