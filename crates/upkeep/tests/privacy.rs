//! What the agent keeps is private: the state directory is the one gate (0700 whatever the
//! umask, refused when other users could write to it), so another local user —
//! `upkeep-probe` (made by `.ci/run` with useradd) or `nobody`, in real processes — can
//! neither read nor run a backup of a replaced setuid file,
//! nor read the state, nor take the install lock; and no payload may write into the state
//! directory when it lies inside the install root.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use upkeep::{HResult, OperationResultCode, UpdateCollection, UpdateSession};
use upkeep_testkit::RepoSim;

fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(d.len() as u64);
        b.append_data(&mut h, p, *d).unwrap();
    }
    b.into_inner().unwrap()
}

/// Runs `sh -c script` as the unprivileged probe user; true if it succeeded.
fn as_other_user(script: &str) -> bool {
    let upkeep_testkit::bus::User { uid, gid, .. } = upkeep_testkit::bus::User::unprivileged();
    assert_ne!(uid, 0);
    std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .uid(uid)
        .gid(gid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run as nobody (the tests run as root, as the agent does)")
        .success()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Searches, downloads and installs everything the repository offers.
fn download_and_install(s: &UpdateSession) -> upkeep::InstallationResult {
    let all: UpdateCollection = s
        .create_update_searcher()
        .search("")
        .unwrap()
        .updates()
        .clone();
    let mut d = s.create_update_downloader();
    d.set_updates(all.clone());
    d.download().unwrap();
    let mut i = s.create_update_installer();
    i.set_updates(all);
    i.install().unwrap()
}

fn session(
    server: &upkeep_publish::serve::Server,
    sim: &RepoSim,
    state: &Path,
    root: &Path,
) -> upkeep::Result<UpdateSession> {
    UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(state)
        .install_root(root)
        .build()
}

#[test]
fn other_users_cannot_read_run_or_lock_what_the_agent_keeps() {
    let mut sim = RepoSim::new();
    sim.add_update(
        "targets",
        RepoSim::update(1, "Tool 2"),
        &tar(&[("usr/bin/tool", b"#!/bin/sh\necho new\n", 0o755)]),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    // A machine others may look at: the root and its files readable by everyone.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (root, state) = (dir.path().join("root"), dir.path().join("state"));
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The machine's own setuid-root tool, which the update replaces (kept as a backup).
    let tool = root.join("usr/bin/tool");
    std::fs::write(&tool, b"#!/bin/sh\necho old setuid tool\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let s = session(&server, &sim, &state, &root).unwrap();
    assert_eq!(
        download_and_install(&s).result_code(),
        OperationResultCode::Succeeded
    );
    assert_eq!(mode(&state), 0o700);
    let backups: Vec<_> = std::fs::read_dir(state.join("tree/backups"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "the replaced tool is kept aside");
    let backup = &backups[0];
    assert_eq!(mode(backup) & 0o4000, 0o4000, "still setuid, as it was");
    // Control: nobody runs and reads what is public.
    assert!(as_other_user(&format!("cat {}", tool.display())));
    assert!(as_other_user(&format!("{}", tool.display())));
    // Nothing the agent keeps is reachable.
    assert!(
        !as_other_user(&format!("cat {}", backup.display())),
        "read a backup"
    );
    assert!(
        !as_other_user(&format!("{}", backup.display())),
        "ran a setuid backup"
    );
    assert!(!as_other_user(&format!(
        "cat {}",
        state.join("state.db").display()
    )));
    assert!(!as_other_user(&format!(
        "ls {}",
        state.join("cache").display()
    )));
    assert!(
        !as_other_user(&format!(
            "exec 9>>{}; flock -n 9",
            state.join("install.lock").display()
        )),
        "took the install lock"
    );
    assert!(!s.create_update_installer().is_busy());
}

#[test]
fn a_state_directory_others_can_write_is_refused_and_one_they_can_read_is_made_private() {
    let sim = {
        let mut s = RepoSim::new();
        s.publish();
        s
    };
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = session(&server, &sim, &state, &dir.path().join("root")).unwrap_err();
    assert_eq!(e.hresult(), HResult::E_ACCESSDENIED);
    assert!(
        e.message().contains("other users can write"),
        "{}",
        e.message()
    );
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_none(),
        "nothing created in it"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    session(&server, &sim, &state, &dir.path().join("root")).unwrap();
    assert_eq!(mode(&state), 0o700);
    // A symlink where the state directory must be is refused too.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    let e = session(&server, &sim, &link, &dir.path().join("root")).unwrap_err();
    assert_eq!(e.hresult(), HResult::E_ACCESSDENIED);
}

#[test]
fn a_payload_may_not_write_into_the_state_directory_inside_the_root() {
    let mut sim = RepoSim::new();
    sim.add_update(
        "targets",
        RepoSim::update(1, "Overwrites the agent"),
        &tar(&[
            ("usr/bin/ok", b"fine", 0o755),
            ("var/lib/upkeep/state.db", b"garbage", 0o644),
        ]),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let state = root.join("var/lib/upkeep");
    let s = session(&server, &sim, &state, &root).unwrap();
    let db = std::fs::read(state.join("state.db")).unwrap();
    let r = download_and_install(&s);
    assert_eq!(
        r.update_result(0).unwrap().hresult(),
        HResult::WU_E_UH_INSTALLERFAILURE
    );
    assert!(
        !root.join("usr/bin/ok").exists(),
        "refused before any change"
    );
    assert_ne!(std::fs::read(state.join("state.db")).unwrap(), b"garbage");
    assert!(db.len() > 7);
    // The agent still works.
    assert!(s.create_update_searcher().query_history(0, 1).is_ok());
}
