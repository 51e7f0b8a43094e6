//! Helpers shared by the CLI test files: run the binary, check its exit, serve a repository.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub fn upkeep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(args)
        .env_remove("UPKEEP_CONFIG")
        .env_remove("UPKEEP_REPOSITORY")
        .output()
        .expect("run upkeep")
}

/// A tar archive of `(path, content, mode)` files.
pub fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, *d).unwrap();
    }
    b.into_inner().unwrap()
}

/// `--repo URL --trusted-root ROOT --state-dir STATE`.
pub fn agent_args<'a>(url: &'a str, root: &'a Path, state: &'a Path) -> [&'a str; 6] {
    [
        "--repo",
        url,
        "--trusted-root",
        root.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]
}

/// `upkeep --repo REPO --trusted-root TRUSTED --state-dir STATE --root ROOT ARGS…`: one
/// machine of a test (`ROOT` is created).
pub fn on(repo: &Path, trusted: &Path, state: &Path, root: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(root).unwrap();
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

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `upkeep repo serve` on a free loopback port; killed by PID on drop.
pub struct Serve(pub Child, pub String);

impl Serve {
    pub fn start(dir: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .args([
                "repo",
                "serve",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("serve prints its URL")
            .to_string();
        Serve(child, url)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
