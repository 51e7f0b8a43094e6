//! Crash safety with real processes: `upkeep install` and `upkeep uninstall` kill themselves
//! with SIGKILL at every named checkpoint of the transaction (and the harness also kills
//! them from outside at random instants); the next session's recovery must leave the install
//! root byte-identical to before or to after, and the state must agree with it.
//! `scripts/crash-harness.sh` runs hundreds of random-instant trials.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, upkeep, Serve};

const ID: &str = "77777777-7777-4777-8777-777777777777";

/// Path → kind, mode and content of every entry under `root` (not the agent's own
/// `.upkeep` directories).
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if e.file_name() == ".upkeep" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let v = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", m.permissions().mode() & 0o7777)
            } else {
                let data = std::fs::read(&p).unwrap();
                format!(
                    "file {:o} {}",
                    m.permissions().mode() & 0o7777,
                    String::from_utf8_lossy(&data)
                )
            };
            out.insert(rel, v);
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let m = std::fs::symlink_metadata(&src).unwrap();
        if m.is_dir() {
            copy_tree(&src, &dst);
        } else if m.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Publishes revision `revision` of the update with this tar payload.
fn add_revision(repo: &Path, revision: u32, title: &str, tar: &[u8]) {
    let file = repo.with_file_name(format!("app-r{revision}.tar"));
    std::fs::write(&file, tar).unwrap();
    ok(&upkeep(&[
        "repo",
        "add",
        repo.to_str().unwrap(),
        "--id",
        ID,
        "--revision",
        &revision.to_string(),
        "--title",
        title,
        "--payload",
        file.to_str().unwrap(),
        "--handler",
        "files",
    ]));
}

/// A tar of `(path, content, mode)` entries.
fn tar_of(entries: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn payload() -> Vec<u8> {
    let mut e = vec![
        ("etc/app.conf".to_string(), b"new config\n".to_vec(), 0o644),
        (
            "usr/bin/tool".to_string(),
            b"#!/bin/sh\necho new\n".to_vec(),
            0o755,
        ),
    ];
    for i in 0..40 {
        e.push((
            format!("opt/app/lib/part{i:02}.dat"),
            format!("part {i}\n").into_bytes(),
            0o644,
        ));
    }
    tar_of(&e)
}

fn write_before(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("etc/app.conf"), b"old config\n").unwrap();
    std::fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho old\n").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::write(root.join("etc/other"), b"not the update's\n").unwrap();
}

struct World {
    tmp: tempfile::TempDir,
    _serve: Serve,
    url: String,
    trusted: PathBuf,
}

impl World {
    fn new() -> World {
        World::with(&payload())
    }

    /// A repository with revision 1 of the update carrying `payload`.
    fn with(payload: &[u8]) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        ok(&upkeep(&["repo", "init", repo.to_str().unwrap()]));
        add_revision(&repo, 1, "App 2.0", payload);
        let serve = Serve::start(&repo);
        let url = serve.1.clone();
        World {
            trusted: repo.join("metadata/1.root.json"),
            tmp,
            _serve: serve,
            url,
        }
    }

    fn args(&self, name: &str) -> Vec<String> {
        let d = self.tmp.path().join(name);
        vec![
            "--repo".into(),
            self.url.clone(),
            "--trusted-root".into(),
            self.trusted.display().to_string(),
            "--state-dir".into(),
            d.join("state").display().to_string(),
            "--root".into(),
            d.join("root").display().to_string(),
        ]
    }

    fn run(&self, name: &str, cmd: &[&str], crash_at: Option<&str>) -> std::process::ExitStatus {
        let mut c = Command::new(env!("CARGO_BIN_EXE_upkeep"));
        c.args(self.args(name))
            .args(cmd)
            .env_remove("UPKEEP_CONFIG");
        if let Some(at) = crash_at {
            c.env("UPKEEP_CRASH_AT", at);
        }
        c.output().unwrap().status
    }

    fn installed(&self, name: &str) -> bool {
        let o = Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .args(self.args(name))
            .args(["search", "IsInstalled=1", "--json", "--offline"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
        v["updates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == ID)
    }

    /// On a copy `name` of machine `from`, runs `op` until it kills itself at `point`, lets
    /// the next session recover, and checks the root is `expected` and the state says
    /// `installed`.
    fn crash_and_recover(
        &self,
        name: &str,
        from: &str,
        op: &str,
        point: &str,
        expected: &BTreeMap<String, String>,
        installed: bool,
    ) {
        self.clone_from(from, name);
        let st = self.run(name, &[op, ID], Some(point));
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "{point}: the checkpoint was reached"
        );
        // The next session recovers.
        assert!(self.run(name, &["status"], None).code().is_some());
        let now = snapshot(&self.dir(name).join("root"));
        assert!(now == *expected, "{point}: unexpected root:\n{now:#?}");
        assert_eq!(
            self.installed(name),
            installed,
            "{point}: state agrees with the root"
        );
        assert!(
            self.run(name, &["status"], None).success(),
            "{point}: nothing left to recover"
        );
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A fresh machine `name` copied from `template`.
    fn clone_from(&self, template: &str, name: &str) {
        copy_tree(&self.dir(template), &self.dir(name));
    }
}

#[test]
fn a_crash_at_any_checkpoint_leaves_before_or_after_and_the_state_agrees() {
    let w = World::new();
    // The template machine: the update downloaded, nothing installed.
    write_before(&w.dir("template").join("root"));
    assert!(w.run("template", &["download", ID], None).success());
    let before = snapshot(&w.dir("template").join("root"));
    // The reference: a complete install.
    w.clone_from("template", "installed");
    assert!(w.run("installed", &["install", ID], None).success());
    let after = snapshot(&w.dir("installed").join("root"));
    assert_ne!(before, after);

    // (checkpoint, whether it comes after the commit)
    let install_points = [
        ("install:journaled", false),
        ("install:change#1", false),
        ("install:change#20", false),
        ("install:applied", false),
        ("install:synced", false),
        ("install:committed", true),
    ];
    for (i, (point, committed)) in install_points.iter().enumerate() {
        // Uncommitted: back to before, not installed. Committed: after, installed.
        let expected = if *committed { &after } else { &before };
        w.crash_and_recover(
            &format!("i{i}"),
            "template",
            "install",
            point,
            expected,
            *committed,
        );
    }
    let uninstall_points = [
        ("uninstall:journaled", false),
        ("uninstall:change#3", false),
        ("uninstall:applied", false),
        ("uninstall:synced", false),
        ("uninstall:committed", true),
    ];
    for (i, (point, committed)) in uninstall_points.iter().enumerate() {
        let expected = if *committed { &before } else { &after };
        w.crash_and_recover(
            &format!("u{i}"),
            "installed",
            "uninstall",
            point,
            expected,
            !committed,
        );
    }
}

#[test]
fn kills_at_random_instants_leave_before_or_after() {
    let w = World::new();
    write_before(&w.dir("template").join("root"));
    assert!(w.run("template", &["download", ID], None).success());
    let before = snapshot(&w.dir("template").join("root"));
    w.clone_from("template", "installed");
    assert!(w.run("installed", &["install", ID], None).success());
    let after = snapshot(&w.dir("installed").join("root"));
    // A deterministic spread of kill delays (microseconds) across the install's lifetime.
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let (mut saw_before, mut saw_after) = (0, 0);
    for trial in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = std::time::Duration::from_micros(x % 60_000);
        let name = format!("r{trial}");
        w.clone_from("template", &name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .args(w.args(&name))
            .args(["install", ID])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay); // the random instant itself, not a synchronisation
                                   // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        assert!(w.run(&name, &["status"], None).code().is_some());
        let now = snapshot(&w.dir(&name).join("root"));
        let installed = w.installed(&name);
        if now == before {
            assert!(!installed, "trial {trial}: root before, state installed");
            saw_before += 1;
        } else if now == after {
            assert!(installed, "trial {trial}: root after, state not installed");
            saw_after += 1;
        } else {
            panic!("trial {trial} ({delay:?}): inconsistent root:\n{now:#?}");
        }
    }
    assert_eq!(saw_before + saw_after, 12);
}

/// Revision 2 of the crash tests' update: `usr/bin/tool` and 38 parts unchanged,
/// `etc/app.conf` and two parts changed, `part39` gone, a new file added.
fn payload_r2() -> Vec<u8> {
    let mut e = vec![
        (
            "etc/app.conf".to_string(),
            b"config of revision 2\n".to_vec(),
            0o644,
        ),
        (
            "usr/bin/tool".to_string(),
            b"#!/bin/sh\necho new\n".to_vec(),
            0o755,
        ),
    ];
    for i in 0..39 {
        let data = match i {
            3 | 17 => format!("part {i}, revision 2\n"),
            _ => format!("part {i}\n"),
        };
        e.push((
            format!("opt/app/lib/part{i:02}.dat"),
            data.into_bytes(),
            0o644,
        ));
    }
    e.push((
        "opt/app/share/new.txt".into(),
        b"only in revision 2\n".to_vec(),
        0o644,
    ));
    tar_of(&e)
}

impl World {
    /// Publishes revision 2 of the update.
    fn publish_r2(&self) {
        add_revision(&self.tmp.path().join("repo"), 2, "App 2.1", &payload_r2());
    }

    /// The installed revision, from the agent's own list.
    fn installed_revision(&self, name: &str) -> Option<u64> {
        let o = Command::new(env!("CARGO_BIN_EXE_upkeep"))
            .args(self.args(name))
            .args(["list", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
        v["installed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == ID)
            .map(|u| u["revision"].as_u64().unwrap())
    }
}

#[test]
fn a_crash_at_any_upgrade_checkpoint_leaves_revision_1_or_revision_2() {
    let w = World::new();
    write_before(&w.dir("template").join("root"));
    assert!(w.run("template", &["install", ID], None).success());
    let r1 = snapshot(&w.dir("template").join("root"));
    w.publish_r2();
    assert!(w.run("template", &["download", ID], None).success());
    w.clone_from("template", "upgraded");
    assert!(w.run("upgraded", &["install", ID], None).success());
    let r2 = snapshot(&w.dir("upgraded").join("root"));
    assert_ne!(r1, r2);
    assert_eq!(w.installed_revision("upgraded"), Some(2));
    let points = [
        ("upgrade:staged", false),
        ("upgrade:journaled", false),
        ("upgrade:change#1", false),
        ("upgrade:change#3", false),
        ("upgrade:applied", false),
        ("upgrade:synced", false),
        ("upgrade:committed", true),
    ];
    for (i, (point, committed)) in points.iter().enumerate() {
        let name = format!("g{i}");
        w.clone_from("template", &name);
        let st = w.run(&name, &["install", ID], Some(point));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{point}: reached");
        assert!(
            w.run(&name, &["status"], None).success(),
            "{point}: recovered"
        );
        let now = snapshot(&w.dir(&name).join("root"));
        let (want, rev) = if *committed { (&r2, 2) } else { (&r1, 1) };
        assert!(now == *want, "{point}: neither revision:\n{now:#?}");
        assert_eq!(w.installed_revision(&name), Some(rev), "{point}");
    }
    // Uninstalling revision 2 goes back to the machine before revision 1.
    assert!(w.run("upgraded", &["uninstall", ID], None).success());
    let mut before = w.dir("before");
    before.push("root");
    write_before(&before);
    assert_eq!(snapshot(&w.dir("upgraded").join("root")), snapshot(&before));
}

/// Mounts that live as long as the test (dropped in order: each bind before its tmpfs).
type Mounts = Vec<Box<dyn std::any::Any>>;

impl World {
    /// Machine `name`, a copy of `template` whose `root/boot` is a filesystem of its own.
    fn clone_with_boot_mount(&self, template: &str, name: &str, mounts: &mut Mounts) {
        let boot = self.dir(name).join("root/boot");
        std::fs::create_dir_all(&boot).unwrap();
        let fs = upkeep_testkit::mounts::Tmpfs::mount("8m");
        mounts.push(Box::new(upkeep_testkit::mounts::Bind::new(
            fs.path(),
            &boot,
        )));
        mounts.push(Box::new(fs));
        self.clone_from(template, name);
    }
}

#[test]
fn a_crash_on_a_mount_inside_the_root_leaves_before_or_after() {
    let mut entries = vec![
        ("boot/vmlinuz".to_string(), b"kernel 2\n".to_vec(), 0o644),
        ("boot/initrd".to_string(), b"initrd 2\n".to_vec(), 0o644),
        (
            "boot/grub/grub.cfg".to_string(),
            b"menu 2\n".to_vec(),
            0o644,
        ),
        ("etc/app.conf".to_string(), b"new config\n".to_vec(), 0o644),
    ];
    for i in 0..12 {
        entries.push((
            format!("opt/app/part{i:02}"),
            format!("part {i}\n").into_bytes(),
            0o644,
        ));
    }
    let w = World::with(&tar_of(&entries));
    let mut mounts: Mounts = Vec::new();
    // The template: the machine's own kernel and config, the update downloaded.
    let root = w.dir("template").join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), b"kernel 1\n").unwrap();
    std::fs::write(root.join("etc/app.conf"), b"old config\n").unwrap();
    assert!(w.run("template", &["download", ID], None).success());
    let before = snapshot(&root);
    w.clone_with_boot_mount("template", "installed", &mut mounts);
    assert!(w.run("installed", &["install", ID], None).success());
    let after = snapshot(&w.dir("installed").join("root"));
    assert_ne!(before, after);
    // The machine's kernel was kept aside on its own filesystem.
    assert!(w
        .dir("installed")
        .join("root/boot/.upkeep/backups")
        .is_dir());

    let install_points = [
        ("install:journaled", false),
        ("install:change#1", false),
        ("install:change#2", false),
        ("install:change#4", false),
        ("install:change#10", false),
        ("install:applied", false),
        ("install:synced", false),
        ("install:committed", true),
    ];
    let uninstall_points = [
        ("uninstall:journaled", false),
        ("uninstall:change#1", false),
        ("uninstall:change#8", false),
        ("uninstall:change#15", false),
        ("uninstall:applied", false),
        ("uninstall:synced", false),
        ("uninstall:committed", true),
    ];
    let runs = install_points
        .iter()
        .map(|p| {
            (
                "template",
                "install",
                p,
                if p.1 { &after } else { &before },
                p.1,
            )
        })
        .chain(uninstall_points.iter().map(|p| {
            (
                "installed",
                "uninstall",
                p,
                if p.1 { &before } else { &after },
                !p.1,
            )
        }));
    for (i, (from, op, (point, _), expected, installed)) in runs.enumerate() {
        let name = format!("m{i}");
        w.clone_with_boot_mount(from, &name, &mut mounts);
        let st = w.run(&name, &[op, ID], Some(point));
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{point}: reached");
        assert!(w.run(&name, &["status"], None).code().is_some());
        let now = snapshot(&w.dir(&name).join("root"));
        assert!(now == *expected, "{point}: unexpected root:\n{now:#?}");
        assert_eq!(w.installed(&name), installed, "{point}: state agrees");
        // Nothing of the transaction is left on the mount.
        let stage = w.dir(&name).join("root/boot/.upkeep/stage");
        let left: Vec<_> = std::fs::read_dir(&stage)
            .map(|rd| {
                rd.flatten()
                    .flat_map(|d| std::fs::read_dir(d.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{point}: staged copies left: {left:?}");
    }
}

#[test]
fn a_panic_in_the_middle_of_an_install_fails_the_job_and_rolls_back() {
    let w = World::new();
    write_before(&w.dir("m").join("root"));
    assert!(w.run("m", &["download", ID], None).success());
    let before = snapshot(&w.dir("m").join("root"));
    let out = Command::new(env!("CARGO_BIN_EXE_upkeep"))
        .args(w.args("m"))
        .args(["install", ID, "--json"])
        .env_remove("UPKEEP_CONFIG")
        .env("UPKEEP_PANIC_AT", "install:applied")
        .output()
        .unwrap();
    // The job completed (the process did not hang or die) and says why.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result_code"], "Failed", "{v}");
    assert_eq!(v["updates"][0]["result_code"], "Failed", "{v}");
    assert_eq!(v["updates"][0]["hresult"], "0x8000FFFF", "{v}");
    assert_eq!(v["updates"][0]["error"]["name"], "E_UNEXPECTED", "{v}");
    assert!(
        v["updates"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("internal error"),
        "{v}"
    );
    // The transaction was rolled back as the stack unwound.
    assert_eq!(snapshot(&w.dir("m").join("root")), before);
    assert!(!w.installed("m"));
    assert!(
        w.run("m", &["status"], None).success(),
        "nothing left to recover"
    );
    assert!(w.run("m", &["install", ID], None).success());
    assert!(w.installed("m"));
}
