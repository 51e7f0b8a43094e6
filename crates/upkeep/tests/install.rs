//! The installer over a real loopback repository: files and command handlers, results,
//! history, state in search, every per-update code, busy across installers.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::sync::{Arc, Mutex};

use upkeep::{
    AsyncState, HResult, Handler, InstallationImpact, InstallationJob,
    InstallationProgressChangedCallbackArgs, InstallationRebootBehavior, OperationResultCode,
    UpdateCollection, UpdateMetadata, UpdateOperation, UpdateSession,
};
use upkeep_testkit::{tar_zst, RepoSim};

/// Every update, installed or not.
const ALL: &str = "IsInstalled=0 or IsInstalled=1";

fn command(
    n: u128,
    title: &str,
    script: &str,
    uninstall: Option<&str>,
    timeout_secs: u64,
) -> (UpdateMetadata, Vec<u8>) {
    let mut m = RepoSim::update(n, title);
    m.handler = Handler::Command {
        arguments: vec!["install-arg".into()],
        uninstall_arguments: uninstall.map(|a| vec![a.to_string()]),
        timeout_secs,
        success_exit_codes: vec![0],
        // 3010 as a Linux exit status.
        reboot_exit_codes: vec![194],
    };
    (m, format!("#!/bin/sh\n{script}\n").into_bytes())
}

struct Fx {
    sim: RepoSim,
    _server: upkeep_publish::serve::Server,
    dir: tempfile::TempDir,
    session: UpdateSession,
}

impl Fx {
    fn new(updates: Vec<(UpdateMetadata, Vec<u8>)>, eula_for: Option<u128>) -> Fx {
        let mut sim = RepoSim::new();
        for (mut m, payload) in updates {
            if eula_for == Some(m.id.as_u128()) {
                let path = format!("updates/{}/1/LICENSE.txt", m.id);
                sim.add_target("targets", &path, b"You agree to everything.", None);
                m.eula = Some(path);
            }
            sim.add_update("targets", m, &payload);
        }
        sim.publish();
        let server = sim.serve();
        let dir = tempfile::tempdir().unwrap();
        let session = UpdateSession::builder()
            .env(false)
            .repository(server.base_url())
            .trusted_root(sim.trusted_root_file())
            .state_dir(dir.path().join("state"))
            .install_root(dir.path().join("root"))
            .client_application_id("install-test")
            .build()
            .unwrap();
        Fx {
            sim,
            _server: server,
            dir,
            session,
        }
    }

    /// Publishes `m` with `payload`, replacing every earlier revision of its id.
    fn republish(&mut self, m: Option<UpdateMetadata>, drop_id: u128, payload: &[u8]) {
        let prefix = format!("updates/{}/", uuid::Uuid::from_u128(drop_id));
        self.sim
            .role_mut("targets")
            .targets
            .retain(|p, _| !p.starts_with(&prefix));
        if let Some(m) = m {
            self.sim.add_update("targets", m, payload);
        }
        self.sim.publish();
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    fn search(&self, criteria: &str) -> UpdateCollection {
        let mut s = self.session.create_update_searcher();
        s.set_include_potentially_superseded_updates(true);
        let mut v: Vec<_> = s
            .search(criteria)
            .unwrap()
            .updates()
            .iter()
            .cloned()
            .collect();
        v.sort_by_key(|u| u.identity());
        v.into_iter().collect()
    }

    fn download(&self, updates: &UpdateCollection) {
        let mut d = self.session.create_update_downloader();
        d.set_updates(updates.clone());
        assert_eq!(
            d.download().unwrap().result_code(),
            OperationResultCode::Succeeded
        );
    }

    fn installer(&self, updates: &UpdateCollection) -> upkeep::UpdateInstaller {
        let mut i = self.session.create_update_installer();
        i.set_updates(updates.clone());
        i
    }
}

#[test]
fn a_files_update_installs_with_progress_and_uninstalls_back_to_before() {
    let mut m = RepoSim::update(1, "Tools");
    m.installation_behavior.reboot_behavior = InstallationRebootBehavior::AlwaysRequiresReboot;
    let fx = Fx::new(
        vec![(
            m,
            tar_zst(&[("opt/tools/run", b"v1"), ("etc/tools.conf", b"new")]),
        )],
        None,
    );
    std::fs::create_dir_all(fx.root().join("etc")).unwrap();
    std::fs::write(fx.root().join("etc/tools.conf"), b"mine").unwrap();
    let all = fx.search("");
    fx.download(&all);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let inst = fx.installer(&all);
    assert!(!inst.is_busy());
    let job = inst
        .begin_install(
            move |_: &InstallationJob, a: &InstallationProgressChangedCallbackArgs| {
                s2.lock().unwrap().push(a.progress().percent_complete());
            },
            (),
            AsyncState::new("mine"),
        )
        .unwrap();
    let r = inst.end_install(&job).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert!(r.reboot_required() && r.update_result(0).unwrap().reboot_required());
    assert_eq!(
        std::fs::read(fx.root().join("opt/tools/run")).unwrap(),
        b"v1"
    );
    assert_eq!(
        std::fs::read(fx.root().join("etc/tools.conf")).unwrap(),
        b"new"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(job.progress().percent_complete(), 100);
    assert_eq!(
        inst.end_install(&job).unwrap_err().hresult(),
        HResult::WU_E_INVALID_OPERATION
    );
    // State: installed, reboot pending; search criteria read it.
    assert_eq!(fx.search("IsInstalled=1").len(), 1);
    assert!(fx.search("IsInstalled=0").is_empty());
    assert_eq!(fx.search("RebootRequired=1").len(), 1);
    assert!(inst.reboot_required_before_installation().unwrap());
    // `RebootRequiredBeforeInstallation`: nothing more installs or uninstalls until the
    // restart, unless forced; no job is made and no history written.
    let e = inst.install().unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_INSTALL_NOT_ALLOWED);
    assert!(
        e.message().contains("restart is pending"),
        "{}",
        e.message()
    );
    let mut un = fx.installer(&fx.search("IsInstalled=1"));
    assert_eq!(
        un.uninstall().unwrap_err().hresult(),
        HResult::WU_E_INSTALL_NOT_ALLOWED
    );
    // Uninstall (forced past the pending restart) restores the file that was there and
    // removes the rest.
    un.set_is_forced(true);
    let r = un.uninstall().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        std::fs::read(fx.root().join("etc/tools.conf")).unwrap(),
        b"mine"
    );
    assert!(
        !fx.root().join("opt").exists(),
        "created directories are removed"
    );
    assert!(fx.search("IsInstalled=1").is_empty());
    // History, newest first.
    let s = fx.session.create_update_searcher();
    assert_eq!(s.total_history_count().unwrap(), 2);
    let h = s.query_history(0, 10).unwrap();
    assert_eq!(h[0].operation, UpdateOperation::Uninstallation);
    assert_eq!(h[1].operation, UpdateOperation::Installation);
    assert_eq!(h[1].client_application_id, "install-test");
    assert_eq!(
        s.query_history(0, 0).unwrap_err().hresult(),
        HResult::WU_E_INVALIDINDEX
    );
}

#[test]
fn per_update_failures_have_their_codes_and_the_rest_go_on() {
    let not_uninstallable = {
        let mut m = RepoSim::update(3, "Permanent");
        m.uninstallable = false;
        (m, tar_zst(&[("p", b"p")]))
    };
    let fx = Fx::new(
        vec![
            (RepoSim::update(1, "Licensed"), tar_zst(&[("l", b"l")])),
            (RepoSim::update(2, "Fine"), tar_zst(&[("f", b"f")])),
            not_uninstallable,
            (
                RepoSim::update(4, "Not downloaded"),
                tar_zst(&[("n", b"n")]),
            ),
        ],
        Some(1),
    );
    let all = fx.search("");
    fx.download(&all.iter().take(3).cloned().collect());
    let r = fx.installer(&all).install().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    assert_eq!(
        r.update_result(0).unwrap().hresult(),
        HResult::WU_E_EULAS_DECLINED
    );
    assert_eq!(
        r.update_result(1).unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert_eq!(
        r.update_result(3).unwrap().hresult(),
        HResult::WU_E_DM_NOTDOWNLOADED
    );
    assert!(!fx.root().join("l").exists());
    // Each failure says why, in the result and in history; successes say nothing.
    let why = |i: usize| r.update_result(i).unwrap().message().map(str::to_string);
    assert!(
        why(0).unwrap().contains("license terms were not accepted"),
        "{:?}",
        why(0)
    );
    assert!(
        why(3).unwrap().contains("is not downloaded"),
        "{:?}",
        why(3)
    );
    assert_eq!(why(1), None);
    let history = fx
        .session
        .create_update_searcher()
        .query_history(0, 10)
        .unwrap();
    let failed: Vec<_> = history
        .iter()
        .filter(|h| h.result_code == OperationResultCode::Failed)
        .collect();
    assert_eq!(failed.len(), 2);
    for h in &failed {
        let m = h.message.as_deref().unwrap_or_default();
        assert!(
            m.contains("license terms") || m.contains("not downloaded"),
            "history keeps the cause: {m:?}"
        );
    }
    assert!(history
        .iter()
        .filter(|h| h.result_code == OperationResultCode::Succeeded)
        .all(|h| h.message.is_none()));
    // Accepting the license (recorded in the state) lets it install.
    let licensed = fx.search(ALL);
    let u = licensed.get(0).unwrap();
    assert!(!u.eula_accepted());
    assert_eq!(fx.session.eula_text(u).unwrap(), "You agree to everything.");
    fx.session.accept_eula(u).unwrap();
    assert!(u.eula_accepted(), "the value is marked, and its clones");
    assert!(
        fx.search(ALL).get(0).unwrap().eula_accepted(),
        "acceptance is persisted"
    );
    let one: UpdateCollection = std::iter::once(u.clone()).collect();
    assert_eq!(
        fx.installer(&one).install().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    // Not uninstallable.
    let perm: UpdateCollection = std::iter::once(fx.search(ALL).get(2).unwrap().clone()).collect();
    let r = fx.installer(&perm).uninstall().unwrap();
    assert_eq!(
        r.update_result(0).unwrap().hresult(),
        HResult::WU_E_UNINSTALL_NOT_ALLOWED
    );
    assert!(fx.root().join("p").exists());
    // Hidden updates.
    let u = fx.search(ALL).get(1).unwrap().clone();
    fx.session.set_hidden(&u, true).unwrap();
    assert!(u.is_hidden());
    assert_eq!(fx.search("IsHidden=1").len(), 1);
    fx.session.set_hidden(&u, false).unwrap();
    assert!(fx.search("IsHidden=1").is_empty());
}

#[test]
fn begin_errors_create_no_job() {
    let mut ex = RepoSim::update(1, "Exclusive");
    ex.installation_behavior.impact = InstallationImpact::RequiresExclusiveHandling;
    let fx = Fx::new(
        vec![
            (ex, tar_zst(&[("e", b"e")])),
            (RepoSim::update(2, "Other"), tar_zst(&[("o", b"o")])),
        ],
        None,
    );
    let mut i = fx.session.create_update_installer();
    assert_eq!(i.install().unwrap_err().hresult(), HResult::WU_E_NO_UPDATE);
    i.set_updates(UpdateCollection::new());
    assert_eq!(
        i.uninstall().unwrap_err().hresult(),
        HResult::WU_E_NO_UPDATE
    );
    let all = fx.search("");
    fx.download(&all);
    let e = fx.installer(&all).install().unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_EXCLUSIVE_INSTALL_CONFLICT);
    assert!(
        !fx.root().join("e").exists() && !fx.root().join("o").exists(),
        "nothing installed"
    );
}

#[test]
fn command_exit_codes_map_to_results_and_history_keeps_the_raw_code() {
    let fx = Fx::new(
        vec![
            command(
                1,
                "ok",
                r#"[ -n "$UPKEEP_INSTALL_ROOT" ] || exit 9
[ "$UPKEEP_OPERATION" = install ] && [ "$1" = install-arg ] && echo upkeep-progress: 50 && exit 0
[ "$UPKEEP_OPERATION" = uninstall ] && [ "$1" = remove ] && exit 0
exit 9"#,
                Some("remove"),
                60,
            ),
            command(2, "reboot", "exit 194", None, 60),
            command(3, "not in the table", "exit 105", None, 60),
            command(4, "fails", "echo broken >&2; exit 7", None, 60),
            command(5, "hangs", "exec sleep 30", None, 1),
            command(6, "killed", "kill -KILL $$", None, 60),
        ],
        None,
    );
    let all = fx.search("");
    fx.download(&all);
    let r = fx.installer(&all).install().unwrap();
    let code = |i: usize| r.update_result(i).unwrap();
    assert_eq!(
        code(0).result_code(),
        OperationResultCode::Succeeded,
        "{:?}",
        code(0)
    );
    assert!(!code(0).reboot_required());
    assert!(code(1).reboot_required());
    assert_eq!(
        code(2).hresult(),
        HResult::WU_E_UH_INSTALLERFAILURE,
        "only the update's own codes are success"
    );
    assert_eq!(code(3).hresult(), HResult::WU_E_UH_INSTALLERFAILURE);
    assert_eq!(code(4).hresult(), HResult::WU_E_UH_TIMEOUT);
    assert_eq!(code(5).hresult(), HResult::WU_E_UH_INSTALLERFAILURE);
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    assert!(r.reboot_required());
    let h = fx
        .session
        .create_update_searcher()
        .query_history(0, 10)
        .unwrap();
    let raw = |title: &str| {
        h.iter()
            .find(|e| e.title == title)
            .unwrap()
            .unmapped_result_code
    };
    assert_eq!(raw("fails"), 7);
    assert_eq!(raw("reboot"), 194);
    assert_eq!(raw("not in the table"), 105);
    assert_eq!(
        raw("killed"),
        128 + 9,
        "a signal is reported as 128 + its number"
    );
    // Uninstall: declared for "ok", not for "reboot" (forced: "reboot" left a restart
    // pending, which refuses anything more until it happens).
    let two: UpdateCollection = all.iter().take(2).cloned().collect();
    assert_eq!(
        fx.installer(&two).uninstall().unwrap_err().hresult(),
        HResult::WU_E_INSTALL_NOT_ALLOWED
    );
    let mut un = fx.installer(&two);
    un.set_is_forced(true);
    let r = un.uninstall().unwrap();
    assert_eq!(
        r.update_result(0).unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert_eq!(
        r.update_result(1).unwrap().hresult(),
        HResult::WU_E_UNINSTALL_NOT_ALLOWED
    );
}

#[test]
fn a_second_installer_is_refused_while_one_runs() {
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let started = gate.path().join("started");
    // The command says it started, then waits (bounded) for the test to let it finish.
    let script = format!(
        "touch {s}; i=0; while [ ! -e {g} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; exit 0",
        s = started.display(),
        g = go.display()
    );
    let fx = Fx::new(vec![command(1, "slow", &script, None, 60)], None);
    let all = fx.search("");
    fx.download(&all);
    let first = fx.installer(&all);
    let job = first.begin_install((), (), AsyncState::none()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::yield_now();
    }
    let second = fx.installer(&all);
    assert!(second.is_busy());
    assert_eq!(
        second.install().unwrap_err().hresult(),
        HResult::WU_E_INSTALL_NOT_ALLOWED
    );
    std::fs::write(&go, b"").unwrap();
    assert_eq!(
        first.end_install(&job).unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert!(!second.is_busy());
}

#[test]
fn abort_stops_the_running_command_and_ends_the_rest_aborted() {
    let gate = tempfile::tempdir().unwrap();
    let started = gate.path().join("started");
    // Runs until killed (bounded at 30 s by the loop).
    let script = format!(
        "touch {s}; i=0; while [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; exit 0",
        s = started.display()
    );
    let fx = Fx::new(
        vec![
            command(1, "long", &script, None, 60),
            (RepoSim::update(2, "after"), tar_zst(&[("after", b"a")])),
        ],
        None,
    );
    let all = fx.search("");
    fx.download(&all);
    let inst = fx.installer(&all);
    let job = inst.begin_install((), (), AsyncState::none()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::yield_now();
    }
    job.request_abort();
    let r = inst.end_install(&job).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Aborted);
    assert_eq!(r.hresult(), HResult::WU_E_CALL_CANCELLED);
    assert_eq!(
        r.update_result(0).unwrap().result_code(),
        OperationResultCode::Aborted
    );
    assert_eq!(
        r.update_result(1).unwrap().result_code(),
        OperationResultCode::Aborted
    );
    assert!(!fx.root().join("after").exists());
    assert!(fx.search("IsInstalled=1").is_empty());
    let h = fx
        .session
        .create_update_searcher()
        .query_history(0, 5)
        .unwrap();
    assert_eq!(h[0].result_code, OperationResultCode::Aborted);
}

/// Flips a byte of every cached object; `restamp` also rewrites its stamp as if the
/// change had happened below the file system (bit rot: nothing in its metadata changed).
fn damage_cache(fx: &Fx, restamp: bool) {
    use std::os::unix::fs::MetadataExt;
    let cache = fx.dir.path().join("state/cache");
    for e in std::fs::read_dir(cache.join("objects")).unwrap() {
        let p = e.unwrap().path();
        let mut data = std::fs::read(&p).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0x20;
        std::fs::write(&p, data).unwrap();
        // A file's times have the kernel's coarse clock: make sure this write is not in
        // the same tick as the download's.
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000))
            .unwrap();
        if restamp {
            let m = std::fs::metadata(&p).unwrap();
            let stamp = cache.join("verified").join(p.file_name().unwrap());
            std::fs::remove_file(&stamp).unwrap();
            let t = format!(
                "{}.{}.{:09}.{}",
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.len()
            );
            std::os::unix::fs::symlink(t, &stamp).unwrap();
        }
    }
}

#[test]
fn cached_content_damaged_after_download_is_removed_and_fetched_again() {
    for restamp in [false, true] {
        let fx = Fx::new(
            vec![
                command(1, "cmd", "exit 0", None, 60),
                (RepoSim::update(2, "files"), tar_zst(&[("f", b"f")])),
            ],
            None,
        );
        let all = fx.search("");
        fx.download(&all);
        damage_cache(&fx, restamp);
        // Changed in place: no longer downloaded as far as a search can tell (unless the
        // damage left no trace in the file's metadata).
        let again = fx.search("");
        assert_eq!(
            again.iter().all(|u| u.is_downloaded()),
            restamp,
            "restamp={restamp}"
        );
        let r = fx.installer(&all).install().unwrap();
        assert_eq!(r.result_code(), OperationResultCode::Failed);
        let want = if restamp {
            // Found by the install's own hash check.
            HResult::WU_E_DM_INCORRECTFILEHASH
        } else {
            // Found before the install began: not downloaded any more.
            HResult::WU_E_DM_NOTDOWNLOADED
        };
        for i in 0..2 {
            assert_eq!(
                r.update_result(i).unwrap().hresult(),
                want,
                "restamp={restamp}"
            );
            assert!(!all.get(i).unwrap().is_downloaded(), "restamp={restamp}");
        }
        assert!(!fx.root().join("f").exists());
        // The damaged objects are gone; the next download fetches them and installs work.
        assert_eq!(
            std::fs::read_dir(fx.dir.path().join("state/cache/objects"))
                .unwrap()
                .count(),
            0,
            "restamp={restamp}"
        );
        fx.download(&all);
        let r = fx.installer(&all).install().unwrap();
        assert_eq!(
            r.result_code(),
            OperationResultCode::Succeeded,
            "restamp={restamp}"
        );
        assert_eq!(std::fs::read(fx.root().join("f")).unwrap(), b"f");
    }
}

fn tree(root: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                stack.push(p);
                out.insert(rel, b"<dir>".to_vec());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_next_revision_upgrades_and_the_installed_one_stays_in_view_and_removable() {
    let r1 = tar_zst(&[("opt/app/a", b"a1"), ("opt/app/b", b"b1")]);
    let mut fx = Fx::new(vec![(RepoSim::update(1, "App"), r1)], None);
    std::fs::create_dir_all(fx.root()).unwrap();
    let before = tree(&fx.root());
    let all = fx.search("");
    fx.download(&all);
    fx.installer(&all).install().unwrap();
    // Revision 2 replaces revision 1 in the repository.
    let mut m2 = RepoSim::update(1, "App");
    m2.revision = 2;
    let r2 = tar_zst(&[("opt/app/b", b"b2"), ("opt/app/c", b"c2")]);
    fx.republish(Some(m2), 1, &r2);
    let installed = fx.search("IsInstalled=1");
    assert_eq!(installed.len(), 1, "the installed revision stays in view");
    let i = installed.get(0).unwrap();
    assert_eq!(
        (i.identity().revision_number, i.installed_revision()),
        (1, Some(1))
    );
    let offered = fx.search("IsInstalled=0");
    assert_eq!(offered.len(), 1);
    let u = offered.get(0).unwrap();
    assert_eq!(
        (u.identity().revision_number, u.installed_revision()),
        (2, Some(1))
    );
    // Downloading updates the very objects the search returned.
    assert!(!u.is_downloaded());
    fx.download(&offered);
    assert!(u.is_downloaded() && offered.get(0).unwrap().is_downloaded());
    assert_eq!(
        fx.installer(&offered).install().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert!(!fx.root().join("opt/app/a").exists());
    assert_eq!(std::fs::read(fx.root().join("opt/app/b")).unwrap(), b"b2");
    let h = fx
        .session
        .create_update_searcher()
        .query_history(0, 1)
        .unwrap();
    assert_eq!((h[0].revision, h[0].previous_revision), (2, Some(1)));
    // The repository drops the update altogether: it is still installed, shown, and
    // uninstalled from its own record.
    fx.republish(None, 1, b"");
    let installed = fx.search("IsInstalled=1");
    assert_eq!(installed.len(), 1);
    assert_eq!(installed.get(0).unwrap().identity().revision_number, 2);
    let list = fx.session.installed_updates().unwrap();
    assert_eq!((list.len(), list[0].revision), (1, 2));
    assert!(list[0].size_on_disk >= 4);
    let r = fx.installer(&installed).uninstall().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(tree(&fx.root()), before, "as before any revision");
    assert!(fx.search("IsInstalled=1").is_empty());
}

#[test]
fn a_command_upgrade_runs_only_the_new_revision_and_uninstalls_from_pinned_content() {
    let script = |rev: u32| {
        format!(
            r#"echo "$UPKEEP_OPERATION r{rev} prev=$UPKEEP_PREVIOUS_REVISION $1" >> "$UPKEEP_INSTALL_ROOT/log"
exit 0"#
        )
    };
    let (m1, p1) = command(7, "Agent", &script(1), Some("remove"), 60);
    let mut fx = Fx::new(vec![(m1, p1)], None);
    std::fs::create_dir_all(fx.root()).unwrap();
    let all = fx.search("");
    fx.download(&all);
    fx.installer(&all).install().unwrap();
    let (mut m2, p2) = command(7, "Agent", &script(2), Some("remove"), 60);
    m2.revision = 2;
    fx.republish(Some(m2), 7, &p2);
    let up = fx.search("IsInstalled=0");
    fx.download(&up);
    assert_eq!(
        fx.installer(&up).install().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    // The repository drops it and the cache is emptied: uninstall still runs r2's own
    // uninstall command, from the content pinned at install.
    fx.republish(None, 7, b"");
    for e in std::fs::read_dir(fx.dir.path().join("state/cache/objects")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let installed = fx.search("IsInstalled=1");
    assert_eq!(
        fx.installer(&installed).uninstall().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    let log = std::fs::read_to_string(fx.root().join("log")).unwrap();
    assert_eq!(
        log,
        "install r1 prev= install-arg\nupgrade r2 prev=1 install-arg\nuninstall r2 prev= remove\n",
        "r1's uninstall never ran"
    );
    let pinned = fx.dir.path().join("state/tree/pinned");
    assert_eq!(
        std::fs::read_dir(&pinned).unwrap().count(),
        0,
        "pinned content goes with it"
    );
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn a_command_over_its_timeout_is_stopped_with_its_whole_process_group() {
    let gate = tempfile::tempdir().unwrap();
    let pids = gate.path().join("pids");
    // Ignores SIGTERM, and so does the child it waits for.
    let script = format!(
        "trap '' TERM; sh -c \"trap '' TERM; sleep 300\" & echo $$ $! > {p}; wait",
        p = pids.display()
    );
    let fx = Fx::new(vec![command(1, "stubborn", &script, None, 1)], None);
    let all = fx.search("");
    fx.download(&all);
    let r = fx.installer(&all).install().unwrap();
    assert_eq!(
        r.update_result(0).unwrap().hresult(),
        HResult::WU_E_UH_TIMEOUT
    );
    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        assert!(!alive(pid), "process {pid} of the command's group survived");
    }
}

#[test]
fn a_background_child_holding_the_output_does_not_block_the_install() {
    let gate = tempfile::tempdir().unwrap();
    let pidfile = gate.path().join("pid");
    // Starts a "daemon" that keeps stdout and stderr open, then exits 0.
    let script = format!("sleep 300 & echo $! > {p}; exit 0", p = pidfile.display());
    let fx = Fx::new(
        vec![command(1, "starts a daemon", &script, None, 600)],
        None,
    );
    let all = fx.search("");
    fx.download(&all);
    let r = fx.installer(&all).install().unwrap();
    assert_eq!(
        r.result_code(),
        OperationResultCode::Succeeded,
        "{:?}",
        r.update_result(0)
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid), "the daemon is left running, not waited for");
    // SAFETY: ending the test's own child process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[test]
fn a_superseded_update_stays_in_view_uninstalls_and_is_replaced_by_its_successor() {
    let hello_a = tar_zst(&[("usr/bin/hello", b"hello from A"), ("usr/share/a", b"a")]);
    let mut fx = Fx::new(vec![(RepoSim::update(1, "Hello A"), hello_a.clone())], None);
    std::fs::create_dir_all(fx.root()).unwrap();
    let before = tree(&fx.root());
    let a = fx.search("");
    fx.download(&a);
    fx.installer(&a).install().unwrap();
    // B supersedes A and ships the same path.
    let mut b = RepoSim::update(2, "Hello B");
    b.supersedes = vec![uuid::Uuid::from_u128(1)];
    fx.sim.add_update(
        "targets",
        b,
        &tar_zst(&[("usr/bin/hello", b"hello from B")]),
    );
    fx.sim.publish();
    let mut s = fx.session.create_update_searcher();
    let shown: Vec<String> = s
        .search("IsInstalled=1")
        .unwrap()
        .updates()
        .iter()
        .map(|u| u.title().to_string())
        .collect();
    assert_eq!(
        shown,
        ["Hello A"],
        "superseded but installed: still in view"
    );
    let offered = s.search("IsInstalled=0").unwrap().updates().clone();
    assert_eq!(offered.len(), 1);
    assert_eq!(offered.get(0).unwrap().title(), "Hello B");
    // A superseded update uninstalls from its own record.
    let inst_a = fx.search("IsInstalled=1");
    fx.installer(&inst_a).uninstall().unwrap();
    assert_eq!(tree(&fx.root()), before);
    // Installed again, then B takes over its path and replaces it.
    s.set_include_potentially_superseded_updates(true);
    let a_again: UpdateCollection = s
        .search(&format!("UpdateID='{}'", uuid::Uuid::from_u128(1)))
        .unwrap()
        .updates()
        .iter()
        .cloned()
        .collect();
    // Its content left the cache after the first install: downloaded again.
    assert!(!a_again.get(0).unwrap().is_downloaded());
    fx.download(&a_again);
    fx.installer(&a_again).install().unwrap();
    fx.download(&offered);
    let r = fx.installer(&offered).install().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        std::fs::read(fx.root().join("usr/bin/hello")).unwrap(),
        b"hello from B"
    );
    assert!(!fx.root().join("usr/share/a").exists());
    let installed = fx.search("IsInstalled=1");
    assert_eq!(installed.len(), 1);
    assert_eq!(installed.get(0).unwrap().title(), "Hello B");
    let h = fx
        .session
        .create_update_searcher()
        .query_history(0, 2)
        .unwrap();
    let replaced = h.iter().find(|h| h.title == "Hello A").unwrap();
    assert_eq!(replaced.operation, UpdateOperation::Uninstallation);
    assert_eq!(
        replaced.replaced_by.as_deref(),
        Some(uuid::Uuid::from_u128(2).to_string().as_str())
    );
    fx.installer(&installed).uninstall().unwrap();
    assert_eq!(tree(&fx.root()), before, "as before A");
}

/// A read-only session (WUA's "locked down" `ReadOnly`): it searches and reads history,
/// and every change through it is `WU_E_INVALID_OPERATION`, leaving the state as it was.
#[test]
fn a_read_only_session_searches_and_changes_nothing() {
    let fx = Fx::new(
        vec![(
            RepoSim::update(1, "Tools"),
            tar_zst(&[("opt/tools/bin", b"x")]),
        )],
        Some(1), // with license terms, to accept
    );
    let ro = UpdateSession::builder()
        .env(false)
        .repository(fx._server.base_url())
        .trusted_root(fx.sim.trusted_root_file())
        .state_dir(fx.dir.path().join("state"))
        .install_root(fx.dir.path().join("root"))
        .read_only(true)
        .build()
        .unwrap();
    assert!(ro.read_only() && !fx.session.read_only());
    let found = ro.create_update_searcher().search("IsInstalled=0").unwrap();
    assert_eq!(found.updates().len(), 1);
    let invalid = HResult::WU_E_INVALID_OPERATION;
    let mut d = ro.create_update_downloader();
    d.set_updates(found.updates().clone());
    assert_eq!(d.download().unwrap_err().hresult(), invalid);
    let mut i = ro.create_update_installer();
    i.set_updates(found.updates().clone());
    assert_eq!(i.install().unwrap_err().hresult(), invalid);
    assert_eq!(i.uninstall().unwrap_err().hresult(), invalid);
    let u = found.updates().get(0).unwrap();
    assert_eq!(ro.set_hidden(u, true).unwrap_err().hresult(), invalid);
    assert_eq!(ro.accept_eula(u).unwrap_err().hresult(), invalid);
    assert!(
        !u.is_hidden() && !u.eula_accepted(),
        "a refused change leaves the value as it was"
    );
    assert_eq!(ro.clean_cache().unwrap_err().hresult(), invalid);
    assert_eq!(
        ro.copy_to_cache(&[fx.dir.path().to_path_buf()])
            .unwrap_err()
            .hresult(),
        invalid
    );
    // Nothing changed: not hidden, nothing installed or downloaded, no history.
    let again = fx.search("IsInstalled=0");
    assert_eq!(again.len(), 1);
    let g = again.get(0).unwrap();
    assert!(!g.is_hidden() && !g.is_downloaded() && !g.eula_accepted());
    assert_eq!(
        ro.create_update_searcher().total_history_count().unwrap(),
        0
    );
}
