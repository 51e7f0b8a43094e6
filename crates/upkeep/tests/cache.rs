//! A cache that stays small, over a real loopback repository and real files: content
//! removed after a successful install (kept with `keep_downloads`, kept for an update that
//! failed), a size cap with least-recently-used eviction that spares the job's own content,
//! old unfinished downloads removed, `clean_cache`, and a `command` update uninstalling from
//! its pinned copy after its content left the cache.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use upkeep::{Handler, OperationResultCode, UpdateCollection, UpdateSession};
use upkeep_testkit::{tar_zst, RepoSim};

/// Incompressible bytes, so that sizes are what the cap sees.
fn noise(n: usize, seed: u8) -> Vec<u8> {
    let mut x = seed as u64 | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fx {
    _sim: RepoSim,
    _server: upkeep_publish::serve::Server,
    dir: tempfile::TempDir,
    url: String,
    trusted: std::path::PathBuf,
}

impl Fx {
    /// Updates 1..=4: `files` with 100 KiB each; 5: a `command` update that can uninstall.
    fn new() -> Fx {
        let mut sim = RepoSim::new();
        for n in 1..=4u128 {
            let payload = tar_zst(&[(&format!("opt/u{n}/data"), &noise(100 << 10, n as u8))]);
            sim.add_update("targets", RepoSim::update(n, &format!("U{n}")), &payload);
        }
        let mut m = RepoSim::update(5, "Agent");
        m.handler = Handler::Command {
            arguments: vec!["install".into()],
            uninstall_arguments: Some(vec!["remove".into()]),
            timeout_secs: 30,
            success_exit_codes: vec![0],
            reboot_exit_codes: vec![194],
        };
        let script = "#!/bin/sh\nmkdir -p \"$UPKEEP_INSTALL_ROOT/opt\"\nif [ \"$1\" = install ]; then echo on > \"$UPKEEP_INSTALL_ROOT/opt/agent\"; else rm \"$UPKEEP_INSTALL_ROOT/opt/agent\"; fi\n";
        sim.add_update("targets", m, script.as_bytes());
        sim.publish();
        let server = sim.serve();
        Fx {
            url: server.base_url(),
            trusted: sim.trusted_root_file(),
            _sim: sim,
            _server: server,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn session(
        &self,
        f: impl FnOnce(upkeep::UpdateSessionBuilder) -> upkeep::UpdateSessionBuilder,
    ) -> UpdateSession {
        f(UpdateSession::builder()
            .env(false)
            .repository(&self.url)
            .trusted_root(&self.trusted)
            .state_dir(self.dir.path().join("state"))
            .install_root(self.dir.path().join("root")))
        .build()
        .unwrap()
    }

    fn objects(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.path().join("state/cache/objects"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }
}

fn pick(s: &UpdateSession, ns: &[u128]) -> UpdateCollection {
    let r = s
        .create_update_searcher()
        .search("IsInstalled=0 or IsInstalled=1")
        .unwrap();
    ns.iter()
        .map(|n| {
            r.updates()
                .iter()
                .find(|u| u.identity().update_id.as_u128() == *n)
                .unwrap()
                .clone()
        })
        .collect()
}

fn download(s: &UpdateSession, u: &UpdateCollection) {
    let mut d = s.create_update_downloader();
    d.set_updates(u.clone());
    assert_eq!(
        d.download().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
}

fn install(s: &UpdateSession, u: &UpdateCollection) -> upkeep::InstallationResult {
    let mut i = s.create_update_installer();
    i.set_updates(u.clone());
    i.install().unwrap()
}

fn key(u: &upkeep::Update) -> String {
    u.download_contents()[0].hashes["sha256"].to_string()
}

#[test]
fn installed_content_leaves_the_cache_unless_kept() {
    let fx = Fx::new();
    let s = fx.session(|b| b);
    let us = pick(&s, &[1, 2, 5]);
    download(&s, &us);
    assert_eq!(fx.objects().len(), 3);
    assert_eq!(
        install(&s, &us).result_code(),
        OperationResultCode::Succeeded
    );
    assert!(fx.objects().is_empty(), "{:?}", fx.objects());
    assert!(us.iter().all(|u| !u.is_downloaded()));
    assert!(pick(&s, &[1]).get(0).unwrap().is_installed());
    // The command update uninstalls from the copy pinned at install, not from the cache.
    assert!(fx.dir.path().join("root/opt/agent").exists());
    let mut i = s.create_update_installer();
    i.set_updates(pick(&s, &[5]));
    assert_eq!(
        i.uninstall().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert!(!fx.dir.path().join("root/opt/agent").exists());

    // keep_downloads: the content stays.
    let kept = fx.session(|b| b.keep_downloads(true));
    let u3 = pick(&kept, &[3]);
    download(&kept, &u3);
    install(&kept, &u3);
    assert_eq!(fx.objects(), BTreeSet::from([key(u3.get(0).unwrap())]));
}

#[test]
fn content_of_an_update_that_failed_stays_for_the_next_try() {
    let fx = Fx::new();
    let s = fx.session(|b| b);
    let us = pick(&s, &[1, 2]);
    download(&s, &us);
    // U2's path is taken by a file the agent does not own: it fails, U1 installs.
    std::fs::create_dir_all(fx.dir.path().join("root/opt/u2/data")).unwrap();
    let r = install(&s, &us);
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    assert_eq!(fx.objects(), BTreeSet::from([key(us.get(1).unwrap())]));
    std::fs::remove_dir(fx.dir.path().join("root/opt/u2/data")).unwrap();
    let again = pick(&s, &[2]);
    assert!(again.get(0).unwrap().is_downloaded());
    assert_eq!(
        install(&s, &again).result_code(),
        OperationResultCode::Succeeded
    );
    assert!(fx.objects().is_empty());
}

#[test]
fn a_size_cap_evicts_the_least_recently_used_and_spares_the_jobs_own() {
    let fx = Fx::new();
    // Room for two of the 100 KiB payloads.
    let s = fx.session(|b| b.keep_downloads(true).cache_max_bytes(250 << 10));
    let u = |n| pick(&s, &[n]);
    download(&s, &u(1));
    download(&s, &u(2));
    let old = SystemTime::now() - Duration::from_secs(3600);
    // U1 is the least recently used... until an install reads it.
    let stamp = |n: u128| {
        fx.dir
            .path()
            .join("state/cache/verified")
            .join(key(u(n).get(0).unwrap()))
    };
    set_link_mtime(&stamp(2), old);
    set_link_mtime(&stamp(1), old - Duration::from_secs(60));
    install(&s, &u(1)); // reads U1's object: now the most recently used
    download(&s, &u(3)); // over the cap: U2 goes
    let keys = fx.objects();
    assert!(keys.contains(&key(u(1).get(0).unwrap())) && keys.contains(&key(u(3).get(0).unwrap())));
    assert!(!keys.contains(&key(u(2).get(0).unwrap())));
    assert!(!u(2).get(0).unwrap().is_downloaded());
    // One job larger than the cap keeps all of its content.
    let big = pick(&s, &[2, 4]);
    let tiny = fx.session(|b| b.keep_downloads(true).cache_max_bytes(1));
    download(&tiny, &big);
    assert_eq!(fx.objects(), big.iter().map(key).collect());
}

/// Sets the modification time of a symlink itself.
fn set_link_mtime(p: &std::path::Path, t: SystemTime) {
    use std::os::unix::ffi::OsStrExt;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and two valid timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn old_unfinished_downloads_are_removed_and_clean_empties_the_cache() {
    let fx = Fx::new();
    let s = fx.session(|b| b.keep_downloads(true));
    download(&s, &pick(&s, &[1]));
    let partial = fx.dir.path().join("state/cache/partial");
    let stale = partial.join(format!("{}.part", "ab".repeat(32)));
    let fresh = partial.join(format!("{}.part", "cd".repeat(32)));
    std::fs::write(&stale, vec![1u8; 1000]).unwrap();
    std::fs::write(partial.join(format!("{}.meta", "ab".repeat(32))), b"{}").unwrap();
    std::fs::write(&fresh, vec![2u8; 1000]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(8 * 86_400))
        .unwrap();
    let (objects, partials) = s.cache_entries().unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(
        partials.len(),
        1,
        "the stale one went when the cache was opened"
    );
    assert!(!stale.exists() && fresh.exists());
    assert!(objects[0].verified && objects[0].updates[0].starts_with("U1"));
    let r = s.clean_cache().unwrap();
    assert_eq!((r.objects, r.partial_files), (1, 1));
    assert!(r.bytes > 100 << 10);
    assert!(fx.objects().is_empty() && !fresh.exists());
}
