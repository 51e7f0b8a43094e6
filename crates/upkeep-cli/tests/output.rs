//! A command update's output is bounded: a 300 MB line with no newline, two million blank
//! lines and 200,000 lines of noise, with `UPKEEP_LOG=info`, leave the agent's memory and
//! its log small, say how much was dropped, and the failure keeps the tail of the
//! command's error output. (One test in this binary: the peak RSS read is its children's.)
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use common::{ok, upkeep};

const ID: &str = "d0000000-0000-4000-8000-000000000001";

fn children_peak_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss
}

#[test]
fn a_flood_of_command_output_keeps_memory_and_logs_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
    let script = tmp.path().join("flood.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nhead -c 300000000 /dev/zero | tr '\\0' a\nyes '' | head -n 2000000\nyes 'noise line' | head -n 200000\necho 'the real cause' >&2\nexit 3\n",
    )
    .unwrap();
    ok(&upkeep(&[
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--id",
        ID,
        "--title",
        "Flood",
        "--payload",
        script.to_str().unwrap(),
        "--handler",
        "command",
    ]));
    let before = children_peak_rss_kib();
    let (state, root, trusted) = (
        tmp.path().join("state"),
        tmp.path().join("root"),
        repo.join("metadata/1.root.json"),
    );
    std::fs::create_dir_all(&root).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "--trusted-root",
            trusted.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "install",
            ID,
            "--json",
        ])
        .env("UPKEEP_LOG", "info")
        .env_remove("UPKEEP_CONFIG")
        .output()
        .unwrap();
    let peak = children_peak_rss_kib();
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let message = v["updates"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("exited with 3"), "{message}");
    assert!(message.contains("the real cause"), "{message}");
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.stderr.len() < 2 << 20,
        "{} bytes of log for a bounded command",
        o.stderr.len()
    );
    assert!(
        log.contains("not logged"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    // The agent (the largest child so far) never held the 300 MB line.
    assert!(
        peak < 150 * 1024,
        "peak RSS {} MiB (before the install: {} MiB)",
        peak / 1024,
        before / 1024
    );
    // And history has it too.
    let h: serde_json::Value = serde_json::from_str(&ok(&upkeep(&[
        "--state-dir",
        state.to_str().unwrap(),
        "history",
        "--json",
    ])))
    .unwrap();
    assert!(h["entries"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the real cause"));
}
