//! The CLI's output as snapshots: help, tables, `--json` and errors, compared with the
//! files in `tests/snapshots/` after the parts that differ from run to run are replaced
//! (temporary paths, times, ports). `UPDATE_SNAPSHOTS=1 cargo test -p upkeep-cli --test
//! snapshots` rewrites them; review the diff before committing.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::path::Path;

use common::{agent_args, tar_of, upkeep, Serve};

/// Replaces what changes between runs: `tmp` → `[TMP]`, RFC 3339 times → `[TIME]`,
/// `YYYY-MM-DD HH:MM:SS` → `[DATE]`, a loopback URL's port → `[PORT]`.
fn normalize(text: &str, tmp: &Path) -> String {
    let mut s = text.replace(&tmp.display().to_string(), "[TMP]");
    // 127.0.0.1:PORT
    while let Some(i) = s.find("127.0.0.1:") {
        let rest = &s[i + 10..];
        let n = rest.chars().take_while(char::is_ascii_digit).count();
        s = format!("{}[HOST]{}", &s[..i], &rest[n..]);
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let is_date = |i: usize| {
        i + 10 <= b.len()
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 5..i + 7].iter().all(u8::is_ascii_digit)
            && b[i + 7] == b'-'
            && b[i + 8..i + 10].iter().all(u8::is_ascii_digit)
    };
    while i < b.len() {
        if is_date(i) && i + 19 <= b.len() && (b[i + 10] == b'T' || b[i + 10] == b' ') {
            let mut j = i + 19;
            if b[i + 10] == b'T' {
                while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                    j += 1;
                }
                if j < b.len() && b[j] == b'Z' {
                    j += 1;
                }
                out.push_str("[TIME]");
            } else {
                out.push_str("[DATE]");
            }
            i = j;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Compares `actual` (normalized) with `tests/snapshots/NAME.txt`.
fn check(name: &str, actual: &str, tmp: &Path) {
    let actual = normalize(actual, tmp);
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&file, &actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}: run with UPDATE_SNAPSHOTS=1 and review it",
            file.display()
        )
    });
    if want != actual {
        panic!(
            "{name}: the output changed (UPDATE_SNAPSHOTS=1 to accept)\n--- want\n{want}\n--- got\n{actual}"
        );
    }
}

fn out(o: &std::process::Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A repository with fixed ids and contents (keys differ per run, and nothing shown
/// depends on them).
fn fixed_repo(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("repo");
    let d = dir.to_str().unwrap();
    upkeep(&["repo", "init", d]);
    std::fs::write(
        tmp.join("tools.tar"),
        tar_of(&[("opt/tools/run", b"#!/bin/sh\n", 0o755)]),
    )
    .unwrap();
    std::fs::write(tmp.join("setup.sh"), b"#!/bin/sh\nexit 0\n").unwrap();
    for args in [
        vec![
            "--id",
            "11111111-1111-4111-8111-111111111111",
            "--title",
            "Tools 1.0",
            "--payload",
            "tools.tar",
            "--handler",
            "files",
            "--kb",
            "5001001",
            "--severity",
            "Important",
            "--release-date",
            "2026-01-01T00:00:00Z",
        ],
        vec![
            "--id",
            "22222222-2222-4222-8222-222222222222",
            "--title",
            "Agent",
            "--payload",
            "setup.sh",
            "--handler",
            "command",
            "--arg",
            "--install",
            "--release-date",
            "2026-01-01T00:00:00Z",
        ],
    ] {
        let mut full = vec!["repo", "add", d];
        let payload_idx = args.iter().position(|a| *a == "--payload").unwrap() + 1;
        let payload = tmp.join(args[payload_idx]);
        let payload = payload.to_str().unwrap().to_string();
        for (i, a) in args.iter().enumerate() {
            full.push(if i == payload_idx {
                payload.as_str()
            } else {
                a
            });
        }
        let o = upkeep(&full);
        assert!(o.status.success(), "{}", out(&o));
    }
    dir
}

#[test]
fn help_texts() {
    let tmp = tempfile::tempdir().unwrap();
    check("help", &out(&upkeep(&["--help"])), tmp.path());
    check(
        "help-search",
        &out(&upkeep(&["search", "--help"])),
        tmp.path(),
    );
    check(
        "help-install",
        &out(&upkeep(&["install", "--help"])),
        tmp.path(),
    );
    check("help-repo", &out(&upkeep(&["repo", "--help"])), tmp.path());
}

#[test]
fn tables_json_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixed_repo(tmp.path());
    let serve = Serve::start(&dir);
    let root = dir.join("metadata/root.json");
    let state = tmp.path().join("state");
    let install_root = tmp.path().join("root");
    let common = agent_args(&serve.1, &root, &state);
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend(["--root", install_root.to_str().unwrap()]);
        a.extend(extra);
        out(&upkeep(&a))
    };
    check("search-table", &run(&["search"]), tmp.path());
    check("search-json", &run(&["search", "--json"]), tmp.path());
    check(
        "show",
        &run(&["show", "11111111-1111-4111-8111-111111111111"]),
        tmp.path(),
    );
    check(
        "install-not-downloaded",
        &run(&["install", "KB5001001", "--no-download"]),
        tmp.path(),
    );
    check(
        "install-not-downloaded-json",
        &run(&["install", "KB5001001", "--no-download", "--json"]),
        tmp.path(),
    );
    check("install", &run(&["install", "KB5001001"]), tmp.path());
    check("list", &run(&["list"]), tmp.path());
    check("history", &run(&["history"]), tmp.path());
    check(
        "error-criteria-json",
        &run(&["search", "Bogus=1", "--json"]),
        tmp.path(),
    );
    check(
        "error-unknown-id",
        &run(&["show", "99999999-9999-4999-8999-999999999999"]),
        tmp.path(),
    );
}
