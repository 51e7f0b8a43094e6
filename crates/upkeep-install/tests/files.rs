//! The files handler and its transactions on real files: install, uninstall restoring what
//! was there byte for byte, hostile archives refused before anything changes, rollback.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use upkeep_install::engine::{Decision, Done, Engine, InstallRequest, UninstallRequest};
use upkeep_install::files::{Payload, Staged, Stager};
use upkeep_install::tx::{recover, Op, Planned, Tx};
use upkeep_install::{Layout, Reporter, Silent};
use upkeep_store::{Store, TxOperation};
use upkeep_types::{ContentFile, HResult, UpdateMetadata, UpdateOperation, UpdateRecord};
use uuid::Uuid;

/// Every path under `root` (not the agent's own `.upkeep` directories) with its kind,
/// mode and content.
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
                format!(
                    "file {:o} {}",
                    m.permissions().mode() & 0o7777,
                    hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
                )
            };
            out.insert(rel, v);
        }
    }
    out
}

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
    Fifo(&'a str),
    /// A hard link at the first path to the second.
    Hard(&'a str, &'a str),
    /// A character device.
    Char(&'a str),
    Raw(&'a [u8]), // a pre-built header+data block (for paths the builder refuses)
}

fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o750);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::Hard(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Char(p) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::Raw(block) => b.get_mut().extend_from_slice(block),
        }
    }
    b.into_inner().unwrap()
}

/// A header for `path` written by hand (the builder refuses `..` and absolute paths).
fn raw_file(path: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_cksum();
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

struct Fx {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    layout: Layout,
    store: Store,
}

fn fx() -> Fx {
    fx_in(tempfile::tempdir().unwrap())
}

fn fx_in(dir: tempfile::TempDir) -> Fx {
    let state = dir.path().join("state");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&state).unwrap();
    let layout = Layout::new(&root, &state).unwrap();
    let store = Store::open(&state).unwrap();
    Fx {
        _dir: dir,
        state,
        layout,
        store,
    }
}

fn payload(fx: &Fx, name: &str, bytes: &[u8], compress: &str) -> Payload {
    let data = match compress {
        "zst" => zstd::encode_all(bytes, 3).unwrap(),
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, bytes).unwrap();
            e.finish().unwrap()
        }
        _ => bytes.to_vec(),
    };
    let p = fx.state.join(name);
    std::fs::write(&p, &data).unwrap();
    Payload {
        path: p,
        length: data.len() as u64,
        hashes: Some(vec![("sha256".into(), hex::encode(Sha256::digest(&data)))]),
    }
}

/// The id of a test update named `name`.
fn uid(name: &str) -> Uuid {
    Uuid::from_u128(u128::from_le_bytes(
        Sha256::digest(name.as_bytes())[..16].try_into().unwrap(),
    ))
}

/// A `files` update `name` at `revision` with these payloads.
fn update(name: &str, revision: u32, payloads: &[&Payload]) -> UpdateRecord {
    let id = uid(name);
    let mut m = UpdateMetadata::new(id, name, "x");
    m.revision = revision;
    m.content = payloads
        .iter()
        .enumerate()
        .map(|(i, _)| format!("updates/{id}/{revision}/p{i}.tar"))
        .collect();
    UpdateRecord {
        content: payloads
            .iter()
            .zip(&m.content)
            .map(|(p, path)| {
                let mut hashes = upkeep_types::Hashes::default();
                for (alg, h) in p.hashes.iter().flatten() {
                    hashes.insert(alg.as_str(), h.as_str());
                }
                ContentFile {
                    path: path.clone(),
                    length: p.length,
                    hashes,
                }
            })
            .collect(),
        metadata: m,
        eula: None,
        bootstrapper: None,
        service: None,
    }
}

fn request<'a>(rec: &'a UpdateRecord, payloads: &[&Payload]) -> InstallRequest<'a> {
    InstallRequest {
        update: rec,
        cached: payloads.iter().map(|p| Some(p.path.clone())).collect(),
        eula_accepted: true,
        supersedes: Vec::new(),
        forced: false,
        not_applicable: None,
        detected: false,
    }
}

fn engine(fx: &Fx) -> Engine<'_> {
    Engine::new(&fx.store, &fx.layout, "test")
}

fn install_rec(fx: &Fx, rec: &UpdateRecord, payloads: &[&Payload]) -> upkeep_install::Result<Done> {
    engine(fx).install(&request(rec, payloads), &Silent)
}

fn install_and_commit(fx: &Fx, name: &str, p: &Payload) -> upkeep_install::Result<()> {
    install_rec(fx, &update(name, 1, &[p]), &[p]).map(|_| ())
}

fn uninstall(fx: &Fx, name: &str) -> upkeep_install::Result<Done> {
    engine(fx).uninstall(
        &UninstallRequest {
            update_id: &uid(name).to_string(),
            fallback: None,
            fallback_cached: Vec::new(),
        },
        &Silent,
    )
}

fn uninstall_and_commit(fx: &Fx, name: &str) {
    uninstall(fx, name).unwrap();
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(p).unwrap())
}

fn no_leftovers(fx: &Fx) {
    assert!(fx.store.unfinished_txs().unwrap().is_empty());
    for d in ["stage", "pinned"] {
        if let Ok(rd) = std::fs::read_dir(fx.layout.work.join(d)) {
            let left: Vec<_> = rd.collect();
            assert!(left.is_empty(), "{d}: {left:?}");
        }
    }
}

#[test]
fn install_then_uninstall_restores_the_previous_tree_byte_for_byte() {
    for compress in ["", "zst", "gz"] {
        let fx = fx();
        let root = &fx.layout.root;
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/app.conf"), b"old config").unwrap();
        std::fs::set_permissions(
            root.join("etc/app.conf"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(root.join("keep.txt"), b"untouched").unwrap();
        let before = snapshot(root);
        let p = payload(
            &fx,
            "p.tar",
            &tar(&[
                E::Dir("./opt/app/"),
                E::File("./opt/app/bin", b"#!/bin/sh\necho hi\n", 0o755),
                E::File("etc/app.conf", b"new config", 0o644),
                E::File("opt/app/lib/deep/x.so", b"lib", 0o644),
                E::Link("opt/app/current", "bin"),
            ]),
            compress,
        );
        install_and_commit(&fx, "u1", &p).unwrap();
        let after = snapshot(root);
        assert_eq!(
            std::fs::read(root.join("etc/app.conf")).unwrap(),
            b"new config"
        );
        assert_eq!(after["opt/app"], "dir 750", "directory modes are kept");
        assert_eq!(after["opt/app/bin"].split(' ').nth(1), Some("755"));
        assert_eq!(after["opt/app/current"], "link bin");
        assert!(fx.store.unfinished_txs().unwrap().is_empty());
        uninstall_and_commit(&fx, "u1");
        assert_eq!(
            snapshot(root),
            before,
            "uninstall restores the tree ({compress})"
        );
        assert!(fx.store.installed().unwrap().is_empty());
        // Nothing left behind in the work directory.
        for d in ["stage", "backups"] {
            let left: Vec<_> = std::fs::read_dir(fx.layout.work.join(d)).unwrap().collect();
            assert!(left.is_empty(), "{d}: {left:?}");
        }
    }
}

#[test]
fn hostile_archives_are_refused_before_anything_changes() {
    let outside_target = "../../../etc/passwd";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "parent dir",
            tar(&[
                E::File("a", b"1", 0o644),
                E::Raw(&raw_file("../escape", b"x")),
            ]),
        ),
        (
            "absolute",
            tar(&[E::File("a", b"1", 0o644), E::Raw(&raw_file("/abs", b"x"))]),
        ),
        (
            "symlink out",
            tar(&[E::File("a", b"1", 0o644), E::Link("l", outside_target)]),
        ),
        // An absolute target resolves in the root; `..` above the root still leaves it.
        ("absolute symlink out", tar(&[E::Link("l", "/../etc")])),
        (
            "through a symlink",
            tar(&[
                E::Dir("d"),
                E::Link("d/l", ".."),
                E::File("d/l/x", b"x", 0o644),
            ]),
        ),
        ("fifo", tar(&[E::File("a", b"1", 0o644), E::Fifo("f")])),
        ("char device", tar(&[E::Char("dev/null")])),
        // Each link is lexically inside; the chain leaves the root.
        (
            "chained symlinks",
            tar(&[E::Link("s", "."), E::Link("esc", "s/..")]),
        ),
        (
            "deep chained symlinks",
            tar(&[
                E::Link("p/q/r/t/s", "../../../.."),
                E::Link("etc_link", "p/q/r/t/s/../../../../../etc"),
            ]),
        ),
        (
            "a link through a later link",
            tar(&[E::Link("x", "y/.."), E::Link("y", ".")]),
        ),
        (
            "symlink loop",
            tar(&[E::Link("l1", "l2"), E::Link("l2", "l1")]),
        ),
        (
            "hard link out",
            tar(&[E::Raw(&{
                let mut h = tar::Header::new_old();
                h.as_old_mut().name[..4].copy_from_slice(b"hard");
                h.as_old_mut().linkname[..13].copy_from_slice(b"../etc/passwd");
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                h.set_cksum();
                h.as_bytes().to_vec()
            })]),
        ),
        // `a` is in the root, not in the payload: a hard link may not take it.
        ("hard link to the root", tar(&[E::Hard("h", "a")])),
        (
            "undeclared setuid",
            tar(&[E::File("bin/su", b"#!", 0o4755)]),
        ),
        (
            "undeclared setgid",
            tar(&[E::File("bin/wall", b"#!", 0o2755)]),
        ),
        (
            "garbage",
            b"this is not a tar archive at all, not even close".repeat(20),
        ),
    ];
    for (what, bytes) in cases {
        let fx = fx();
        let root = &fx.layout.root;
        std::fs::write(root.join("a"), b"before").unwrap();
        let before = snapshot(root);
        let p = payload(&fx, "p.tar", &bytes, "");
        let e = install_and_commit(&fx, "h", &p).unwrap_err();
        assert_eq!(e.hresult, HResult::WU_E_UH_INSTALLERFAILURE, "{what}: {e}");
        let why = [
            ("parent dir", "`..` in an archive path"),
            ("absolute", "absolute archive path"),
            ("symlink out", "leaves the install root"),
            ("absolute symlink out", "leaves the install root"),
            ("through a symlink", "through the archive's symlink"),
            ("fifo", "Fifo entries"),
            ("char device", "Char entries"),
            ("chained symlinks", "esc: symlink to s/.. leads out"),
            ("deep chained symlinks", "etc_link: symlink to"),
            (
                "a link through a later link",
                "x: symlink to y/.. leads out",
            ),
            ("symlink loop", "too many levels of symbolic links"),
            ("hard link out", "`..` in an archive path"),
            (
                "hard link to the root",
                "not a regular file earlier in the payload",
            ),
            (
                "undeclared setuid",
                "mode 4755) the update does not declare",
            ),
            (
                "undeclared setgid",
                "mode 2755) the update does not declare",
            ),
            ("garbage", "not a valid archive"),
        ];
        let want = why.iter().find(|(w, _)| *w == what).expect("a reason").1;
        assert!(e.message.contains(want), "{what}: {e}");
        assert_eq!(snapshot(root), before, "{what}: the root is unchanged");
        assert!(fx.store.unfinished_txs().unwrap().is_empty(), "{what}");
        assert!(fx.store.installed().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn a_symlink_in_the_root_resolves_inside_the_root() {
    let fx = fx();
    let root = &fx.layout.root;
    // Absolute and relative links out of the root, as a hostile local user or an image
    // built elsewhere would leave them: followed as in a chroot, never out of it.
    let elsewhere = fx.state.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("data")).unwrap();
    std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[E::File("data/x", b"x", 0o644), E::File("up/y", b"y", 0o644)]),
        "",
    );
    install_and_commit(&fx, "s", &p).unwrap();
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    let inside = root.join(elsewhere.strip_prefix("/").unwrap()).join("x");
    assert_eq!(std::fs::read(&inside).unwrap(), b"x");
    assert_eq!(std::fs::read(root.join("y")).unwrap(), b"y");
    assert!(!fx.layout.root.parent().unwrap().join("y").exists());
    uninstall_and_commit(&fx, "s");
    assert!(!inside.exists() && !root.join("y").exists());
    assert!(std::fs::symlink_metadata(root.join("data"))
        .unwrap()
        .is_symlink());
}

#[test]
fn absolute_symlinks_of_a_payload_resolve_in_the_root_as_a_chroot_does() {
    let fx = fx();
    let root = &fx.layout.root;
    // Debian's masked unit and an alternatives-style chain through an absolute link.
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[
            E::Link("lib/systemd/system/sudo.service", "/dev/null"),
            E::File("usr/bin/tool-1", b"tool", 0o755),
            E::Link("etc/alternatives/tool", "/usr/bin/tool-1"),
            E::Link("usr/bin/tool", "/etc/alternatives/tool"),
        ]),
        "",
    );
    install_and_commit(&fx, "abs", &p).unwrap();
    // Written as the package wrote them, resolved inside the root.
    assert_eq!(
        std::fs::read_link(root.join("lib/systemd/system/sudo.service")).unwrap(),
        Path::new("/dev/null")
    );
    let r = upkeep_install::root::RootDir::open(root).unwrap();
    assert_eq!(r.canonical("usr/bin/tool", true).unwrap(), "usr/bin/tool-1");
    assert_eq!(
        r.canonical("lib/systemd/system/sudo.service", true)
            .unwrap(),
        "dev/null"
    );
    uninstall_and_commit(&fx, "abs");
    assert!(std::fs::symlink_metadata(root.join("usr/bin/tool")).is_err());
}

#[test]
fn a_merged_usr_root_installs_through_its_symlinks_and_one_path_has_one_owner() {
    let fx = fx();
    let root = &fx.layout.root;
    for d in ["usr/lib", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    let before = snapshot(root);
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[
            E::Dir("lib"),
            E::File("lib/libx.so.1", b"lib", 0o644),
            E::Link("lib/libx.so", "libx.so.1"),
            E::File("bin/tool", b"#!/bin/sh\n", 0o755),
        ]),
        "zst",
    );
    install_and_commit(&fx, "m", &p).unwrap();
    assert!(std::fs::symlink_metadata(root.join("lib"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        std::fs::read(root.join("usr/lib/libx.so.1")).unwrap(),
        b"lib"
    );
    assert_eq!(std::fs::read(root.join("lib/libx.so")).unwrap(), b"lib");
    let owned: Vec<String> = fx
        .store
        .owned(&uid("m").to_string())
        .unwrap()
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert!(
        owned.contains(&"usr/lib/libx.so.1".to_string()),
        "{owned:?}"
    );
    assert!(owned.contains(&"usr/bin/tool".to_string()), "{owned:?}");
    assert!(!owned
        .iter()
        .any(|p| p.starts_with("lib/") || p.starts_with("bin/")));
    // The same file by its other name is the same path: another update may not take it.
    let q = payload(
        &fx,
        "q.tar",
        &tar(&[E::File("usr/bin/tool", b"x", 0o755)]),
        "",
    );
    let e = install_and_commit(&fx, "other", &q).unwrap_err();
    assert_eq!(e.hresult, HResult::E_FILE_EXISTS, "{e}");
    uninstall_and_commit(&fx, "m");
    assert_eq!(snapshot(root), before);
    no_leftovers(&fx);
}

#[test]
fn hard_links_within_a_payload_install_as_one_file() {
    let fx = fx();
    let root = &fx.layout.root;
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[
            E::File("bin/gzip", b"gzip program", 0o755),
            E::Hard("bin/gunzip", "bin/gzip"),
            E::Hard("bin/zcat", "./bin/gzip"),
        ]),
        "gz",
    );
    install_and_commit(&fx, "h", &p).unwrap();
    let ino = inode(&root.join("bin/gzip"));
    for n in ["bin/gunzip", "bin/zcat"] {
        assert_eq!(inode(&root.join(n)), ino, "{n}");
        assert_eq!(std::fs::read(root.join(n)).unwrap(), b"gzip program");
    }
    // The next revision keeps the links; unchanged, they are not rewritten.
    let q = payload(
        &fx,
        "q.tar",
        &tar(&[
            E::File("bin/gzip", b"gzip program", 0o755),
            E::Hard("bin/gunzip", "bin/gzip"),
            E::File("bin/zcat", b"now a script", 0o755),
        ]),
        "",
    );
    install_rec(&fx, &update("h", 2, &[&q]), &[&q]).unwrap();
    assert_eq!(inode(&root.join("bin/gzip")), ino);
    assert_eq!(inode(&root.join("bin/gunzip")), ino);
    assert_eq!(
        std::fs::read(root.join("bin/zcat")).unwrap(),
        b"now a script"
    );
    uninstall_and_commit(&fx, "h");
    assert!(!root.join("bin").exists());
    no_leftovers(&fx);
}

#[test]
fn declared_setid_bits_are_installed_and_others_refused() {
    let fx = fx();
    let root = &fx.layout.root;
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[
            E::File("bin/su", b"su", 0o4755),
            E::File("bin/plain", b"p", 0o755),
        ]),
        "",
    );
    let mut rec = update("su", 1, &[&p]);
    rec.metadata.setid_paths = vec!["bin/su".into()];
    install_rec(&fx, &rec, &[&p]).unwrap();
    let mode = std::fs::metadata(root.join("bin/su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
    // The declaration is per path: another path with the bit is refused.
    let q = payload(&fx, "q.tar", &tar(&[E::File("bin/sg", b"sg", 0o2755)]), "");
    let mut rec = update("sg", 1, &[&q]);
    rec.metadata.setid_paths = vec!["bin/su".into()];
    let e = install_rec(&fx, &rec, &[&q]).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_UH_INSTALLERFAILURE);
    assert!(
        e.message.contains("bin/sg") && e.message.contains("set-"),
        "{e}"
    );
    assert!(!root.join("bin/sg").exists());
}

#[test]
fn a_decompression_bomb_stops_at_its_bound_before_filling_the_disk() {
    let fx = fx();
    // 80 MiB of zeros: a few KiB compressed, over the 64 MiB floor of the default bound.
    let zeros = vec![0u8; 80 << 20];
    let p = payload(
        &fx,
        "bomb.tar.zst",
        &tar(&[E::File("big", &zeros, 0o644)]),
        "zst",
    );
    drop(zeros);
    assert!(p.length < 1 << 20, "{}", p.length);
    let e = install_and_commit(&fx, "bomb", &p).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_UH_INSTALLERFAILURE, "{e}");
    assert!(e.message.contains("expands to more than"), "{e}");
    assert!(!fx.layout.root.join("big").exists());
    no_leftovers(&fx);
    // A declared installed size is the bound: one byte short is refused, exact is fine.
    let small = payload(&fx, "s.tar", &tar(&[E::File("f", &[7u8; 1000], 0o644)]), "");
    let mut rec = update("sized", 1, &[&small]);
    rec.metadata.installed_size = Some(999);
    let e = install_rec(&fx, &rec, &[&small]).unwrap_err();
    assert!(e.message.contains("installed size"), "{e}");
    rec.metadata.installed_size = Some(1000);
    install_rec(&fx, &rec, &[&small]).unwrap();
}

#[test]
fn a_payload_that_does_not_match_its_hash_installs_nothing() {
    let fx = fx();
    let mut p = payload(&fx, "p.tar", &tar(&[E::File("a", b"1", 0o644)]), "zst");
    p.hashes = Some(vec![("sha256".into(), "00".repeat(32))]);
    let e = install_and_commit(&fx, "x", &p).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_DM_INCORRECTFILEHASH);
    assert!(!fx.layout.root.join("a").exists());
}

#[test]
fn an_interrupted_install_is_rolled_back_by_recovery() {
    let fx = fx();
    let root = &fx.layout.root;
    std::fs::write(root.join("f"), b"old").unwrap();
    let before = snapshot(root);
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[E::File("f", b"new", 0o644), E::File("d/g", b"g", 0o644)]),
        "",
    );
    // Staged and applied but never committed: as if the process died before the commit.
    let mut t = Tx::begin(&fx.store, &fx.layout, "r", TxOperation::Install).unwrap();
    let known = Default::default();
    let mut st = Stager::new(&fx.layout, t.stage_dir(), &known, false);
    st.stage(&p, &Silent).unwrap();
    let plan = plan_of(st.finish().unwrap());
    t.apply(&plan, &Silent).unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"new");
    std::mem::forget(t);
    assert_eq!(recover(&fx.store, &fx.layout).unwrap(), 1);
    assert_eq!(snapshot(root), before);
    assert!(fx.store.installed().unwrap().is_empty());
    assert_eq!(
        recover(&fx.store, &fx.layout).unwrap(),
        0,
        "nothing left to recover"
    );
}

#[test]
fn a_transaction_dropped_uncommitted_rolls_back() {
    let fx = fx();
    let root = &fx.layout.root;
    std::fs::write(root.join("f"), b"old").unwrap();
    let before = snapshot(root);
    {
        let mut t = Tx::begin(&fx.store, &fx.layout, "d", TxOperation::Install).unwrap();
        let staged = t.stage_dir().join("1");
        std::fs::write(&staged, b"new").unwrap();
        t.apply(
            &[
                Planned {
                    rel: "f".into(),
                    op: Op::Put {
                        staged,
                        keep_backup: true,
                    },
                },
                Planned {
                    rel: "n".into(),
                    op: Op::Dir(0o755),
                },
            ],
            &Silent,
        )
        .unwrap();
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"new");
    }
    assert_eq!(snapshot(root), before);
    assert!(fx.store.unfinished_txs().unwrap().is_empty());
}

struct Cancelled;
impl Reporter for Cancelled {
    fn on_progress(&self, _: f64) {}
    fn is_cancelled(&self) -> bool {
        true
    }
}

#[test]
fn abort_during_staging_rolls_back() {
    let fx = fx();
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("f{i}"), vec![b'x'; 10]))
        .collect();
    let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, d, 0o644)).collect();
    let p = payload(&fx, "p.tar", &tar(&entries), "");
    let rec = update("a", 1, &[&p]);
    let e = engine(&fx)
        .install(&request(&rec, &[&p]), &Cancelled)
        .unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_CALL_CANCELLED);
    assert!(std::fs::read_dir(&fx.layout.root)
        .unwrap()
        .all(|e| e.unwrap().file_name() != "f0"));
    no_leftovers(&fx);
    let h = fx.store.history(0, 1).unwrap();
    assert_eq!(h[0].result_code, upkeep_types::OperationResultCode::Aborted);
}

#[test]
fn conflicts_with_the_root_fail_cleanly() {
    // A file where the archive needs a directory: refused while staging.
    let fx1 = fx();
    std::fs::write(fx1.layout.root.join("a"), b"a file").unwrap();
    let before = snapshot(&fx1.layout.root);
    let p = payload(&fx1, "p.tar", &tar(&[E::File("a/b", b"x", 0o644)]), "");
    let e = install_and_commit(&fx1, "c1", &p).unwrap_err();
    assert!(e.message.contains("is a file"), "{e}");
    assert_eq!(snapshot(&fx1.layout.root), before);
    // A directory where the archive has a file: found while applying, after earlier
    // entries were applied — all of it is rolled back.
    let fx2 = fx();
    std::fs::create_dir_all(fx2.layout.root.join("z/dir")).unwrap();
    std::fs::write(fx2.layout.root.join("keep"), b"old").unwrap();
    let before = snapshot(&fx2.layout.root);
    let p = payload(
        &fx2,
        "p.tar",
        &tar(&[
            E::File("keep", b"new", 0o644),
            E::File("new/x", b"x", 0o644),
            E::File("z/dir", b"file", 0o644),
        ]),
        "",
    );
    let e = install_and_commit(&fx2, "c2", &p).unwrap_err();
    assert!(
        e.message.contains("directory is where a file must go"),
        "{e}"
    );
    assert_eq!(snapshot(&fx2.layout.root), before, "everything rolled back");
    assert!(fx2.store.unfinished_txs().unwrap().is_empty());
}

#[test]
fn a_later_entry_for_the_same_path_wins_as_with_tar() {
    let fx = fx();
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[
            E::File("f", b"first", 0o644),
            E::File("f", b"second", 0o600),
        ]),
        "",
    );
    install_and_commit(&fx, "d", &p).unwrap();
    assert_eq!(std::fs::read(fx.layout.root.join("f")).unwrap(), b"second");
}

#[test]
fn every_payload_is_applied_in_order_and_the_later_wins() {
    let fx = fx();
    let p1 = payload(
        &fx,
        "p1.tar",
        &tar(&[
            E::File("a", b"one", 0o644),
            E::File("shared", b"from 1", 0o644),
        ]),
        "zst",
    );
    let p2 = payload(
        &fx,
        "p2.tar",
        &tar(&[
            E::File("b", b"two", 0o644),
            E::File("shared", b"from 2", 0o600),
        ]),
        "gz",
    );
    let rec = update("multi", 1, &[&p1, &p2]);
    install_rec(&fx, &rec, &[&p1, &p2]).unwrap();
    let root = &fx.layout.root;
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"one");
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"two");
    assert_eq!(std::fs::read(root.join("shared")).unwrap(), b"from 2");
    assert_eq!(snapshot(root)["shared"].split(' ').nth(1), Some("600"));
}

/// The tree before r1, r1 and r2 of one update: r2 keeps `same` (unchanged), changes
/// `changed`, drops `only1` (which replaced a file of the machine's) and adds `only2`.
fn revisions(fx: &Fx) -> (Payload, Payload) {
    let root = &fx.layout.root;
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/only1"), b"the machine's own").unwrap();
    std::fs::write(root.join("etc/changed"), b"the machine's too").unwrap();
    let r1 = payload(
        fx,
        "r1.tar",
        &tar(&[
            E::File("opt/app/same", b"same bytes", 0o755),
            E::File("etc/changed", b"r1", 0o644),
            E::File("etc/only1", b"r1 only", 0o644),
            E::Dir("opt/app/old-dir"),
            E::File("opt/app/old-dir/x", b"x", 0o644),
            E::Link("opt/app/current", "same"),
        ]),
        "zst",
    );
    let r2 = payload(
        fx,
        "r2.tar",
        &tar(&[
            E::File("opt/app/same", b"same bytes", 0o755),
            E::File("etc/changed", b"r2", 0o644),
            E::File("opt/app/only2", b"r2 only", 0o644),
            E::Link("opt/app/current", "same"),
        ]),
        "zst",
    );
    (r1, r2)
}

#[test]
fn an_upgrade_is_one_transaction_that_leaves_unchanged_files_alone() {
    let fx = fx();
    let root = fx.layout.root.clone();
    let (p1, p2) = revisions(&fx);
    let before = snapshot(&root);
    install_rec(&fx, &update("app", 1, &[&p1]), &[&p1]).unwrap();
    let same_inode = inode(&root.join("opt/app/same"));
    let link_inode = inode(&root.join("opt/app/current"));
    let done = install_rec(&fx, &update("app", 2, &[&p2]), &[&p2]).unwrap();
    assert_eq!(done.previous_revision, Some(1));
    assert_eq!(
        inode(&root.join("opt/app/same")),
        same_inode,
        "not rewritten"
    );
    assert_eq!(inode(&root.join("opt/app/current")), link_inode);
    assert_eq!(std::fs::read(root.join("etc/changed")).unwrap(), b"r2");
    assert_eq!(
        std::fs::read(root.join("opt/app/only2")).unwrap(),
        b"r2 only"
    );
    assert_eq!(
        std::fs::read(root.join("etc/only1")).unwrap(),
        b"the machine's own",
        "a file only r1 had is put back as it was before r1"
    );
    assert!(
        !root.join("opt/app/old-dir").exists(),
        "r1's directory goes"
    );
    let inst = fx.store.installed().unwrap();
    assert_eq!((inst.len(), inst[0].revision), (1, 2));
    let h = fx.store.history(0, 10).unwrap();
    assert_eq!(h.len(), 2, "one row for the install, one for the upgrade");
    assert_eq!((h[0].revision, h[0].previous_revision), (2, Some(1)));
    no_leftovers(&fx);
    // Uninstalling r2 restores the tree from before any revision.
    uninstall_and_commit(&fx, "app");
    assert_eq!(snapshot(&root), before);
    no_leftovers(&fx);
    let backups: Vec<_> = walk(&fx.layout.work.join("backups"));
    assert!(
        backups.is_empty(),
        "no backup outlives its use: {backups:?}"
    );
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_failed_check_leaves_the_installed_revision_exactly_as_it_was() {
    let fx = fx();
    let root = fx.layout.root.clone();
    let (p1, p2) = revisions(&fx);
    install_rec(&fx, &update("app", 1, &[&p1]), &[&p1]).unwrap();
    let r1 = snapshot(&root);
    let r2 = update("app", 2, &[&p2]);
    // Not downloaded.
    let mut req = request(&r2, &[&p2]);
    req.cached = vec![None];
    let e = engine(&fx).install(&req, &Silent).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_DM_NOTDOWNLOADED);
    // License not accepted.
    let mut with_eula = r2.clone();
    with_eula.metadata.eula = Some("LICENSE".into());
    let mut req = request(&with_eula, &[&p2]);
    req.eula_accepted = false;
    let e = engine(&fx).install(&req, &Silent).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_EULAS_DECLINED);
    // A payload that is not a tar, signed as such.
    let junk = payload(&fx, "junk.tar", &b"not a tar at all ".repeat(64), "");
    let e = install_rec(&fx, &update("app", 2, &[&junk]), &[&junk]).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_UH_INSTALLERFAILURE, "{e}");
    // Corrupt bytes in the cache.
    let mut bad = p2.clone();
    bad.hashes = Some(vec![("sha256".into(), "00".repeat(32))]);
    let e = install_rec(&fx, &update("app", 2, &[&bad]), &[&bad]).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_DM_INCORRECTFILEHASH);
    assert_eq!(snapshot(&root), r1, "r1 is untouched");
    assert_eq!(fx.store.installed().unwrap()[0].revision, 1);
    let h = fx.store.history(0, 10).unwrap();
    assert_eq!(h.len(), 5);
    assert!(h[..4]
        .iter()
        .all(|h| h.result_code == upkeep_types::OperationResultCode::Failed && h.revision == 2));
    no_leftovers(&fx);
}

#[test]
fn a_path_of_another_installed_update_is_refused_unless_superseded() {
    let fx = fx();
    let root = fx.layout.root.clone();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/hello"), b"distro hello").unwrap();
    let before = snapshot(&root);
    let pa = payload(
        &fx,
        "a.tar",
        &tar(&[
            E::File("usr/bin/hello", b"A", 0o755),
            E::File("usr/share/a", b"a", 0o644),
        ]),
        "",
    );
    let pb = payload(
        &fx,
        "b.tar",
        &tar(&[
            E::File("usr/bin/hello", b"B", 0o755),
            E::File("usr/share/b", b"b", 0o644),
        ]),
        "",
    );
    install_rec(&fx, &update("A", 1, &[&pa]), &[&pa]).unwrap();
    let with_a = snapshot(&root);
    // B overlaps and does not supersede A: refused before any change, naming both.
    let e = install_rec(&fx, &update("B", 1, &[&pb]), &[&pb]).unwrap_err();
    assert_eq!(e.hresult, HResult::E_FILE_EXISTS);
    assert!(
        e.message.contains("usr/bin/hello") && e.message.contains(&uid("A").to_string()),
        "{e}"
    );
    assert_eq!(snapshot(&root), with_a);
    no_leftovers(&fx);
    // B superseding A takes over: A is replaced in the same transaction.
    let mut b = update("B", 1, &[&pb]);
    b.metadata.supersedes = vec![uid("A")];
    let done = install_rec(&fx, &b, &[&pb]).unwrap();
    assert_eq!(done.replaced, vec![uid("A").to_string()]);
    assert_eq!(std::fs::read(root.join("usr/bin/hello")).unwrap(), b"B");
    assert!(!root.join("usr/share/a").exists(), "A's other files go");
    let inst = fx.store.installed().unwrap();
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0].update_id, uid("B").to_string());
    let h = fx.store.history(0, 2).unwrap();
    let replaced = h
        .iter()
        .find(|h| h.update_id == uid("A").to_string())
        .unwrap();
    assert_eq!(replaced.operation, UpdateOperation::Uninstallation);
    assert_eq!(replaced.replaced_by, Some(uid("B").to_string()));
    // Uninstalling B restores the machine's own file from before A.
    uninstall_and_commit(&fx, "B");
    assert_eq!(snapshot(&root), before);
    no_leftovers(&fx);
}

#[test]
fn shared_directories_go_with_their_last_user() {
    let fx = fx();
    let root = fx.layout.root.clone();
    let pa = payload(
        &fx,
        "a.tar",
        &tar(&[E::File("opt/suite/a", b"a", 0o644)]),
        "",
    );
    let pb = payload(
        &fx,
        "b.tar",
        &tar(&[E::File("opt/suite/b", b"b", 0o644)]),
        "",
    );
    install_rec(&fx, &update("A", 1, &[&pa]), &[&pa]).unwrap();
    install_rec(&fx, &update("B", 1, &[&pb]), &[&pb]).unwrap();
    uninstall_and_commit(&fx, "A");
    assert!(!root.join("opt/suite/a").exists());
    assert!(root.join("opt/suite/b").exists(), "B's file stays");
    uninstall_and_commit(&fx, "B");
    assert!(
        !root.join("opt").exists(),
        "the last user removes what A created"
    );
    // Not installed any more.
    assert_eq!(
        uninstall(&fx, "B").unwrap_err().hresult,
        HResult::WU_E_NOT_APPLICABLE
    );
}

#[test]
fn a_full_disk_fails_cleanly_before_or_while_staging() {
    // A small tmpfs holds the root and the state (needs root, as the agent does).
    let small = upkeep_testkit::mounts::Tmpfs::mount("8m");
    let mnt = small.path().to_path_buf();
    let inner = tempfile::tempdir_in(&mnt).unwrap();
    let fx = fx_in(inner);
    let big = tempfile::tempdir().unwrap(); // payloads live elsewhere, like the cache may
    let put = |name: &str, bytes: Vec<u8>, compress: &str| {
        let data = if compress == "zst" {
            zstd::encode_all(&bytes[..], 3).unwrap()
        } else {
            bytes
        };
        let p = big.path().join(name);
        std::fs::write(&p, &data).unwrap();
        Payload {
            path: p,
            length: data.len() as u64,
            hashes: Some(vec![("sha256".into(), hex::encode(Sha256::digest(&data)))]),
        }
    };
    let p1 = put("r1.tar", tar(&[E::File("app/run", b"r1", 0o755)]), "");
    install_rec(&fx, &update("app", 1, &[&p1]), &[&p1]).unwrap();
    let r1 = snapshot(&fx.layout.root);
    // 1. The signed content alone does not fit: refused before staging.
    let noise: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let p2 = put(
        "r2.tar",
        tar(&[
            E::File("app/run", b"r2", 0o755),
            E::File("app/blob", &noise, 0o644),
        ]),
        "",
    );
    let e = install_rec(&fx, &update("app", 2, &[&p2]), &[&p2]).unwrap_err();
    assert_eq!(e.hresult, HResult::E_DISK_FULL, "{e}");
    // 2. Small compressed, too large unpacked: the disk fills while staging.
    let zeros = vec![0u8; 12 << 20];
    let p3 = put(
        "r3.tar.zst",
        tar(&[
            E::File("app/run", b"r3", 0o755),
            E::File("app/zeros", &zeros, 0o644),
        ]),
        "zst",
    );
    let e = install_rec(&fx, &update("app", 3, &[&p3]), &[&p3]).unwrap_err();
    assert_eq!(e.hresult, HResult::E_DISK_FULL, "{e}");
    // 3. Many small files, handed to the writer threads, fill it.
    let small: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| (format!("app/many/f{i}"), vec![b'x'; 8192]))
        .collect();
    let entries: Vec<E<'_>> = small.iter().map(|(n, d)| E::File(n, d, 0o644)).collect();
    let p4 = put("r4.tar.zst", tar(&entries), "zst");
    let e = install_rec(&fx, &update("app", 4, &[&p4]), &[&p4]).unwrap_err();
    assert_eq!(e.hresult, HResult::E_DISK_FULL, "{e}");
    assert_eq!(snapshot(&fx.layout.root), r1, "r1 is untouched");
    assert_eq!(fx.store.installed().unwrap()[0].revision, 1);
    no_leftovers(&fx);
    drop(fx);
}

#[test]
fn an_upgrade_follows_the_new_revision_rules_and_uninstall_the_installed_ones() {
    let fx = fx();
    let root = fx.layout.root.clone();
    let p1 = payload(&fx, "r1.tar", &tar(&[E::File("f", b"1", 0o644)]), "");
    let p2 = payload(&fx, "r2.tar", &tar(&[E::File("f", b"2", 0o644)]), "");
    install_rec(&fx, &update("app", 1, &[&p1]), &[&p1]).unwrap();
    // Revision 2 may not be uninstalled: that does not stop it replacing revision 1…
    let mut r2 = update("app", 2, &[&p2]);
    r2.metadata.uninstallable = false;
    install_rec(&fx, &r2, &[&p2]).unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"2");
    // …but its own record now forbids uninstalling it, whatever the caller passes.
    let before = snapshot(&root);
    let e = engine(&fx)
        .uninstall(
            &UninstallRequest {
                update_id: &uid("app").to_string(),
                fallback: Some(&update("app", 1, &[&p1])),
                fallback_cached: Vec::new(),
            },
            &Silent,
        )
        .unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_UNINSTALL_NOT_ALLOWED);
    assert_eq!(snapshot(&root), before);
    assert_eq!(fx.store.installed().unwrap()[0].revision, 2);
}

#[test]
fn control_characters_in_archive_names_are_escaped_in_errors() {
    let fx = fx();
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[E::Link(
            "bin/\nWARN forged line\x1b[31m",
            "../../etc/passwd",
        )]),
        "",
    );
    let e = install_and_commit(&fx, "c", &p).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_UH_INSTALLERFAILURE);
    assert!(
        !e.message.contains('\n') && !e.message.contains('\x1b'),
        "{:?}",
        e.message
    );
    assert!(
        e.message.contains("\\nWARN forged line\\e[31m"),
        "{}",
        e.message
    );
}

#[test]
fn a_damaged_compressed_payload_is_a_refused_payload_not_an_io_error() {
    for compress in ["zst", "gz"] {
        let fx = fx();
        let files: Vec<(String, Vec<u8>)> = (0..50)
            .map(|i| {
                (
                    format!("d/f{i}"),
                    format!("file {i} ").repeat(500).into_bytes(),
                )
            })
            .collect();
        let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, d, 0o644)).collect();
        let whole = payload(&fx, "whole", &tar(&entries), compress);
        // Published truncated: the signed hash is of the truncated bytes, so only the
        // archive itself is wrong.
        let mut data = std::fs::read(&whole.path).unwrap();
        data.truncate(data.len() / 2);
        let cut = fx.state.join("cut");
        std::fs::write(&cut, &data).unwrap();
        let p = Payload {
            path: cut,
            length: data.len() as u64,
            hashes: Some(vec![("sha256".into(), hex::encode(Sha256::digest(&data)))]),
        };
        let e = install_and_commit(&fx, "t", &p).unwrap_err();
        assert_eq!(
            e.hresult,
            HResult::WU_E_UH_INSTALLERFAILURE,
            "{compress}: {e}"
        );
        assert!(e.message.contains("not a valid archive"), "{compress}: {e}");
        assert!(!fx.layout.root.join("d").exists(), "{compress}");
        no_leftovers(&fx);
    }
}

#[test]
fn a_lost_state_database_is_damage_not_a_fresh_start() {
    for how in ["truncated", "deleted"] {
        let fx = fx();
        let root = &fx.layout.root;
        std::fs::write(root.join("a"), b"the machine's own a").unwrap();
        let p = payload(
            &fx,
            "p.tar",
            &tar(&[E::File("a", b"update's a", 0o644)]),
            "",
        );
        install_and_commit(&fx, "first", &p).unwrap();
        // The original of `a` is kept aside in the work tree.
        assert!(std::fs::read_dir(fx.layout.work.join("backups"))
            .unwrap()
            .next()
            .is_some());
        let q = payload(&fx, "q.tar", &tar(&[E::File("a", b"another a", 0o644)]), "");
        let Fx {
            _dir,
            state,
            layout,
            store,
        } = fx;
        drop(store);
        let db = state.join("state.db");
        for f in ["state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(state.join(f));
        }
        match how {
            "truncated" => std::fs::File::create(&db).map(|_| ()).unwrap(),
            _ => std::fs::remove_file(&db).unwrap(),
        }
        let store = Store::open(&state).unwrap();
        let root = &layout.root;
        let before = snapshot(root);
        let work_before = walk(&layout.work);
        let e = Engine::new(&store, &layout, "test")
            .install(&request(&update("second", 1, &[&q]), &[&q]), &Silent)
            .unwrap_err();
        assert_eq!(e.hresult, HResult::WU_E_DS_UNEXPECTED, "{how}: {e}");
        assert!(e.message.contains("lost or replaced"), "{how}: {e}");
        let e = recover(&store, &layout).unwrap_err();
        assert!(e.message.contains("lost or replaced"), "{how}: {e}");
        assert_eq!(snapshot(root), before, "{how}");
        assert_eq!(walk(&layout.work), work_before, "{how}");
        assert!(store.installed().unwrap().is_empty());
    }
}

#[test]
fn a_work_tree_from_before_database_identities_is_adopted() {
    let fx = fx();
    let p = payload(&fx, "p.tar", &tar(&[E::File("a", b"a", 0o644)]), "");
    install_and_commit(&fx, "first", &p).unwrap();
    let owner = fx.layout.work.join(upkeep_install::tx::OWNER_FILE);
    assert_eq!(
        std::fs::read_to_string(&owner).unwrap().trim(),
        fx.store.id()
    );
    // As an older agent left it: no owner file, a database that knows what it installed.
    std::fs::remove_file(&owner).unwrap();
    uninstall_and_commit(&fx, "first");
    assert_eq!(
        std::fs::read_to_string(&owner).unwrap().trim(),
        fx.store.id()
    );
}

/// What a first install of these staged entries does.
fn plan_of(staged: Vec<upkeep_install::files::StagedEntry>) -> Vec<Planned> {
    staged
        .into_iter()
        .map(|e| Planned {
            op: match e.what {
                Staged::Dir(m) => Op::Dir(m),
                Staged::File { staged, .. } | Staged::Symlink { staged, .. } => Op::Put {
                    staged: staged.unwrap(),
                    keep_backup: true,
                },
            },
            rel: e.rel,
        })
        .collect()
}

/// Files in `dir` and below (not directories).
fn files_under(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|p| !dir.join(p).is_dir())
        .collect()
}

#[test]
fn paths_on_a_mount_inside_the_root_install_upgrade_and_uninstall() {
    let fx = fx();
    let root = &fx.layout.root;
    let boot = root.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    // A filesystem of its own inside the root, as /boot often is.
    let small = upkeep_testkit::mounts::Tmpfs::mount("16m");
    let _bound = upkeep_testkit::mounts::Bind::new(small.path(), &boot);
    std::fs::write(boot.join("config"), b"the machine's own config").unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let before = snapshot(root);
    let r1 = payload(
        &fx,
        "r1.tar",
        &tar(&[
            E::File("boot/vmlinuz", b"kernel 1", 0o644),
            E::File("boot/config", b"config 1", 0o644),
            E::File("etc/app.conf", b"app 1", 0o644),
        ]),
        "",
    );
    install_rec(&fx, &update("k", 1, &[&r1]), &[&r1]).unwrap();
    assert_eq!(std::fs::read(boot.join("vmlinuz")).unwrap(), b"kernel 1");
    assert_eq!(std::fs::read(boot.join("config")).unwrap(), b"config 1");
    // The machine's config is kept aside on its own mount, not in the work directory.
    let kept = files_under(&boot.join(".upkeep/backups"));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(boot.join(".upkeep/backups").join(&kept[0])).unwrap(),
        b"the machine's own config"
    );
    assert!(files_under(&boot.join(".upkeep/stage")).is_empty());
    // The area is the agent's alone.
    let area_mode = std::fs::metadata(boot.join(".upkeep"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(area_mode & 0o777, 0o700);
    // The next revision: a changed kernel, a new symlink, the config unchanged.
    let r2 = payload(
        &fx,
        "r2.tar",
        &tar(&[
            E::File("boot/vmlinuz", b"kernel 2", 0o644),
            E::Link("boot/vmlinuz.current", "vmlinuz"),
            E::File("boot/config", b"config 1", 0o644),
            E::File("etc/app.conf", b"app 2", 0o644),
        ]),
        "zst",
    );
    let config_inode = inode(&boot.join("config"));
    install_rec(&fx, &update("k", 2, &[&r2]), &[&r2]).unwrap();
    assert_eq!(
        std::fs::read(boot.join("vmlinuz.current")).unwrap(),
        b"kernel 2"
    );
    assert_eq!(
        inode(&boot.join("config")),
        config_inode,
        "unchanged: untouched"
    );
    // A transaction applied on the mount and then dropped uncommitted (as a failure
    // after the changes does) puts back what it replaced from the mount's area.
    let r2_tree = snapshot(root);
    let r3 = payload(
        &fx,
        "r3.tar",
        &tar(&[
            E::File("boot/vmlinuz", b"kernel 3", 0o644),
            E::File("boot/initrd", b"initrd 3", 0o644),
        ]),
        "",
    );
    {
        let mut t = Tx::begin(&fx.store, &fx.layout, "r3", TxOperation::Upgrade).unwrap();
        let known = Default::default();
        let mut st = Stager::new(&fx.layout, t.stage_dir(), &known, false);
        st.stage(&r3, &Silent).unwrap();
        let plan = plan_of(st.finish().unwrap());
        t.apply(&plan, &Silent).unwrap();
        assert_eq!(std::fs::read(boot.join("vmlinuz")).unwrap(), b"kernel 3");
        assert!(!files_under(&boot.join(".upkeep/backups")).is_empty());
    }
    assert_eq!(snapshot(root), r2_tree);
    assert!(files_under(&boot.join(".upkeep/stage")).is_empty());
    // Uninstall puts the machine's config back from its mount.
    uninstall_and_commit(&fx, "k");
    assert_eq!(snapshot(root), before);
    assert!(files_under(&boot.join(".upkeep")).is_empty());
    no_leftovers(&fx);
}

#[test]
fn a_bind_mounted_root_installs() {
    // The root is a bind mount of a directory on the state directory's filesystem:
    // the same device, another mount — a rename between them fails.
    let fx = fx();
    let real = fx.state.parent().unwrap().join("real-root");
    std::fs::create_dir_all(&real).unwrap();
    let root = fx.state.parent().unwrap().join("bound-root");
    std::fs::create_dir_all(&root).unwrap();
    let _bound = upkeep_testkit::mounts::Bind::new(&real, &root);
    let layout = Layout::new(&root, &fx.state).unwrap();
    assert_eq!(layout.work, root.join(".upkeep"));
    let p = payload(
        &fx,
        "p.tar",
        &tar(&[E::File("bin/tool", b"tool", 0o755)]),
        "",
    );
    let rec = update("b", 1, &[&p]);
    Engine::new(&fx.store, &layout, "test")
        .install(&request(&rec, &[&p]), &Silent)
        .unwrap();
    assert_eq!(std::fs::read(real.join("bin/tool")).unwrap(), b"tool");
}

#[test]
fn every_signed_hash_of_a_payload_is_checked_and_none_is_refused() {
    use sha2::Sha512;
    let fx = fx();
    let mut p = payload(&fx, "p.tar", &tar(&[E::File("a", b"1", 0o644)]), "");
    let data = std::fs::read(&p.path).unwrap();
    let sha256 = hex::encode(Sha256::digest(&data));
    // A right SHA-256 beside a wrong SHA-512: refused.
    p.hashes = Some(vec![
        ("sha256".into(), sha256.clone()),
        ("sha512".into(), "00".repeat(64)),
    ]);
    let e = install_and_commit(&fx, "x", &p).unwrap_err();
    assert_eq!(e.hresult, HResult::WU_E_DM_INCORRECTFILEHASH, "{e}");
    // Both right: installed.
    p.hashes = Some(vec![
        ("sha256".into(), sha256),
        ("sha512".into(), hex::encode(Sha512::digest(&data))),
    ]);
    install_and_commit(&fx, "x", &p).unwrap();
    // Nothing signed, or only an unknown algorithm: refused, never skipped.
    for hashes in [vec![], vec![("md5".to_string(), "00".to_string())]] {
        let other = self::fx();
        let mut q = payload(&other, "q.tar", &tar(&[E::File("b", b"2", 0o644)]), "");
        q.hashes = Some(hashes);
        let e = install_and_commit(&other, "y", &q).unwrap_err();
        assert_eq!(e.hresult, HResult::WU_E_DM_UNKNOWNALGORITHM, "{e}");
        assert!(!other.layout.root.join("b").exists());
    }
}

#[test]
fn a_plan_says_what_an_install_will_do_and_writes_nothing() {
    let fx = fx();
    let p1 = payload(
        &fx,
        "a1.tar",
        &tar(&[E::File("opt/a/x", b"one", 0o644)]),
        "",
    );
    let a1 = update("A", 1, &[&p1]);
    let e = engine(&fx);
    // A first install: planned as an install, replacing nothing.
    match e.plan_install(&request(&a1, &[&p1])).unwrap() {
        Decision::Go(plan) => {
            assert_eq!(plan.operation(), TxOperation::Install);
            assert_eq!(plan.previous_revision(), None);
            assert_eq!(plan.replaces().count(), 0);
            assert_eq!(plan.content_bytes(), p1.length);
        }
        Decision::Nothing(d) => panic!("nothing to do? {d:?}"),
    }
    assert!(
        !fx.layout.root.join("opt").exists(),
        "planning wrote the root"
    );
    assert!(fx.store.installed().unwrap().is_empty());
    assert_eq!(
        fx.store.history_count().unwrap(),
        0,
        "planning wrote history"
    );
    install_rec(&fx, &a1, &[&p1]).unwrap();

    // The same revision again: nothing to do, said as the result.
    match e.plan_install(&request(&a1, &[&p1])).unwrap() {
        Decision::Nothing(d) => assert!(d.already_installed),
        Decision::Go(_) => panic!("planned a reinstall of the installed revision"),
    }
    // B supersedes A and is revision 2 of nothing installed: an upgrade replacing A.
    let pb = payload(&fx, "b.tar", &tar(&[E::File("opt/a/x", b"two", 0o644)]), "");
    let mut b = update("B", 1, &[&pb]);
    b.metadata.supersedes = vec![uid("A")];
    let before = snapshot(&fx.layout.root);
    let history = fx.store.history_count().unwrap();
    match e.plan_install(&request(&b, &[&pb])).unwrap() {
        Decision::Go(plan) => {
            assert_eq!(plan.operation(), TxOperation::Upgrade);
            let replaces: Vec<_> = plan.replaces().map(|(id, _)| id.to_string()).collect();
            assert_eq!(replaces, [uid("A").to_string()]);
            assert_eq!(plan.update_id(), uid("B").to_string());
        }
        Decision::Nothing(d) => panic!("nothing to do? {d:?}"),
    }
    // Checks refuse at the plan: content not downloaded, license declined.
    let mut missing = request(&b, &[&pb]);
    missing.cached = vec![None];
    let err = e.plan_install(&missing).unwrap_err();
    assert_eq!(err.hresult, HResult::WU_E_DM_NOTDOWNLOADED, "{err}");
    assert_eq!(snapshot(&fx.layout.root), before, "a plan changed the root");
    assert_eq!(fx.store.history_count().unwrap(), history);
    assert!(
        fx.store.unfinished_txs().unwrap().is_empty(),
        "a plan began a transaction"
    );
}
