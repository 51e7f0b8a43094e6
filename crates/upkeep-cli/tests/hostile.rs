//! Text in records through the binary: multi-line descriptions and release notes end to
//! end, control characters refused at publish time before anything is written, a role an
//! earlier publisher wrote with raw control characters repaired by `repo publish` and
//! `repo remove`, and hostile records (signed by a non-canonical encoder that escapes
//! control characters) printed escaped by every human command while `--json` stays exact.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::Path;

use common::{ok, tar_of, upkeep};
use upkeep_testkit::RepoSim;

const ID: &str = "b0000000-0000-4000-8000-000000000001";
const ID2: &str = "b0000000-0000-4000-8000-000000000002";

fn init(dir: &Path) {
    ok(&upkeep(&["repo", "init", dir.to_str().unwrap()]));
}

fn add(dir: &Path, payload: &Path, id: &str, extra: &[&str]) -> std::process::Output {
    let base = [
        "repo",
        "add",
        dir.to_str().unwrap(),
        "--id",
        id,
        "--payload",
        payload.to_str().unwrap(),
        "--handler",
        "files",
    ];
    upkeep(&[&base[..], extra].concat())
}

/// `upkeep --repo REPO --trusted-root … --state-dir … --root …` and `args`.
fn client(repo: &Path, trusted: &Path, base: &Path, args: &[&str]) -> std::process::Output {
    common::on(repo, trusted, &base.join("state"), &base.join("root"), args)
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every role file under `metadata/` that carries `needle` (each version of it).
fn roles_with(repo: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let v: Vec<_> = files_under(&repo.join("metadata"))
        .into_iter()
        .map(std::path::PathBuf::from)
        .filter(|p| {
            std::fs::read(p)
                .map(|d| String::from_utf8_lossy(&d).contains(needle))
                .unwrap_or(false)
        })
        .collect();
    assert!(!v.is_empty(), "no role carries {needle}");
    v
}

fn role_with(repo: &Path, needle: &str) -> std::path::PathBuf {
    roles_with(repo, needle).pop().unwrap()
}

/// Replaces `from` with `to` in every role file that carries `from`.
fn patch_roles(repo: &Path, from: &str, to: &str) {
    for file in roles_with(repo, from) {
        let data = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, data.replace(from, to)).unwrap();
    }
}

#[test]
fn multi_line_text_works_end_to_end_and_control_characters_are_refused_first() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init(&repo);
    let payload = tmp.path().join("p.tar");
    std::fs::write(&payload, tar_of(&[("opt/t/f", b"x", 0o644)])).unwrap();
    let before = files_under(&repo);

    // A tab in the title, an escape in a description line, a newline in a KB id: each is
    // refused with the field and the place named, and nothing is written.
    for (extra, field, what) in [
        (
            vec!["--title", "Tools\t1.0"],
            "title",
            "a tab (U+0009) at character 6",
        ),
        (
            vec!["--title", "T", "--description", "ok\nbad \u{1b}[2J"],
            "description",
            "line 2 holds an escape (U+001B) at character 5",
        ),
        (
            vec!["--title", "T", "--kb", "5001\n002"],
            "kb_article_ids",
            "a newline (U+000A)",
        ),
        (
            vec!["--title", "T", "--release-notes", "a\u{9b}b"],
            "release_notes",
            "U+009B",
        ),
    ] {
        let o = add(&repo, &payload, ID, &extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(field) && e.contains(what), "{extra:?}: {e}");
        assert!(!e.contains('\u{1b}'), "the error itself is escaped: {e:?}");
        assert_eq!(files_under(&repo), before, "{extra:?} wrote something");
    }
    assert_eq!(ok(&upkeep(&["repo", "list", repo.to_str().unwrap()])), "");

    // Several lines (CRLF too) are published as a list of lines.
    ok(&add(
        &repo,
        &payload,
        ID,
        &[
            "--title",
            "Tools 1.0",
            "--description",
            "First line.\r\n\r\n  Indented third line.",
            "--release-notes",
            "Fixed:\n- a bug\n- another",
        ],
    ));
    let role = std::fs::read_to_string(role_with(&repo, "Tools 1.0")).unwrap();
    assert!(
        role.contains(r#""description":["First line.","","  Indented third line."]"#),
        "{role}"
    );
    assert!(role.contains(r#""release_notes":["Fixed:","- a bug","- another"]"#));

    let trusted = repo.join("metadata/1.root.json");
    let show = ok(&client(&repo, &trusted, tmp.path(), &["show", ID]));
    assert!(
        show.contains("\nFirst line.\n\n  Indented third line.\n"),
        "{show}"
    );
    assert!(show.contains("Release notes:\nFixed:\n- a bug\n- another\n"));
    let json = ok(&client(
        &repo,
        &trusted,
        tmp.path(),
        &["show", ID, "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["description"], "First line.\n\n  Indented third line.");
    assert_eq!(v["release_notes"], "Fixed:\n- a bug\n- another");
    // And python-tuf's shape of the same: a one-line description stays a string.
    ok(&add(
        &repo,
        &payload,
        ID2,
        &["--title", "One", "--description", "single"],
    ));
    let role = std::fs::read_to_string(role_with(&repo, "\"One\"")).unwrap();
    assert!(role.contains(r#""description":"single""#), "{role}");
}

#[test]
fn a_role_written_with_raw_control_characters_is_repaired_by_the_publisher() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init(&repo);
    let payload = tmp.path().join("p.tar");
    std::fs::write(&payload, tar_of(&[("opt/t/f", b"x", 0o644)])).unwrap();
    ok(&add(
        &repo,
        &payload,
        ID,
        &["--title", "Broken", "--description", "oneMARKtwo"],
    ));
    ok(&add(&repo, &payload, ID2, &["--title", "Fine"]));
    // What an earlier publisher wrote: the newline raw in the canonical JSON.
    patch_roles(&repo, "oneMARKtwo", "one\ntwo");
    let trusted = repo.join("metadata/1.root.json");
    let o = client(&repo, &trusted, &tmp.path().join("m1"), &["search"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("control character"), "{}", stderr(&o));

    // The publisher can still read it, list it and repair it.
    let list = ok(&upkeep(&["repo", "list", repo.to_str().unwrap()]));
    assert!(list.contains("Broken") && list.contains("Fine"), "{list}");
    let o = upkeep(&["repo", "publish", repo.to_str().unwrap()]);
    ok(&o);
    let e = stderr(&o);
    assert!(e.contains("warning") && e.contains(ID), "{e}");
    let out = ok(&client(
        &repo,
        &trusted,
        &tmp.path().join("m2"),
        &["show", ID, "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["description"], "one\ntwo");

    // `repo remove` of the other update repairs as well.
    patch_roles(&repo, "[\"one\",\"two\"]", "\"one\ttab\"");
    let o = upkeep(&["repo", "remove", repo.to_str().unwrap(), ID2]);
    ok(&o);
    let out = ok(&client(
        &repo,
        &trusted,
        &tmp.path().join("m3"),
        &["search", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ups = v["updates"].as_array().unwrap();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0]["description"], "one tab");
}

/// True if `s` holds a C0 or C1 control character other than a line end.
fn has_controls(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn hostile_records_reach_the_terminal_escaped_and_json_exact() {
    let mut sim = RepoSim::new();
    sim.plain_json = true; // escapes survive in the signed bytes
    let title = "Evil\u{1b}]0;pwned\u{7}\nSucceeded            forged row";
    let mut m = RepoSim::update(0xbad, title);
    m.description = "line one\n\u{1b}[2Jcleared".into();
    m.kb_article_ids = vec!["1\u{1b}[31m".into()];
    m.categories = vec![upkeep::Category {
        id: uuid::Uuid::from_u128(7),
        name: "\u{9b}7mcat".into(),
    }];
    m.severity = String::new();
    sim.add_update("targets", m, &tar_of(&[("opt/evil/f", b"x", 0o644)]));
    sim.publish();
    let tmp = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::from_u128(0xbad).to_string();
    let run = |args: &[&str]| client(sim.dir(), &sim.trusted_root_file(), tmp.path(), args);
    let human = [
        vec!["search"],
        vec!["show", id.as_str()],
        vec!["install", id.as_str()],
        vec!["list"],
        vec!["history"],
    ];
    for args in &human {
        let o = run(args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(!has_controls(&out), "{args:?} stdout: {out:?}");
        assert!(!has_controls(&err), "{args:?} stderr: {err:?}");
        assert!(
            !out.lines()
                .any(|l| l.starts_with("Succeeded            forged")),
            "{args:?} printed a forged row: {out}"
        );
        if args[0] != "history" || out.contains("Evil") {
            assert!(
                out.contains("Evil\\e]0;pwned\\x07\\nSucceeded"),
                "{args:?}: {out}"
            );
        }
    }
    let show = String::from_utf8_lossy(&run(&["show", &id]).stdout).into_owned();
    assert!(
        show.contains("KB1\\e[31m") && show.contains("\\u{9b}7mcat"),
        "{show}"
    );
    assert!(show.contains("line one\n\\e[2Jcleared"), "{show}");
    // --json is exact.
    let v: serde_json::Value = serde_json::from_str(&ok(&run(&["show", &id, "--json"]))).unwrap();
    assert_eq!(v["title"], title);
    assert_eq!(v["kb_article_ids"][0], "1\u{1b}[31m");
    let v: serde_json::Value = serde_json::from_str(&ok(&run(&["history", "--json"]))).unwrap();
    assert_eq!(v["entries"][0]["title"], title);
}
