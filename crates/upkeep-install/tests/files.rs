//! The files handler and its transactions on real files: install, uninstall restoring what
//! was there byte for byte, hostile archives refused before anything changes, rollback.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use upkeep_install::files::{install, Payload};
use upkeep_install::tx::{recover, uninstall_plan, Tx};
use upkeep_install::Layout;
use upkeep_store::{HistoryEntry, Installed, Store};
use upkeep_types::{HResult, OperationResultCode, UpdateOperation};

/// Every path under `root` (not the work directory) with its kind, mode and content.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".upkeep" {
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
    let dir = tempfile::tempdir().unwrap();
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
        sha256: Some(hex::encode(Sha256::digest(&data))),
    }
}

fn hist(id: &str, op: UpdateOperation) -> HistoryEntry {
    HistoryEntry {
        operation: op,
        result_code: OperationResultCode::Succeeded,
        hresult: HResult::S_OK,
        date: jiff::Timestamp::now(),
        update_id: id.into(),
        revision: 1,
        title: "t".into(),
        client_application_id: "test".into(),
        unmapped_result_code: 0,
    }
}

fn install_and_commit(fx: &Fx, id: &str, p: &Payload) -> upkeep_install::Result<()> {
    let t = install(&fx.store, &fx.layout, id, p, &mut |_| {}, &|| false)?;
    let rec = Installed {
        update_id: id.into(),
        revision: 1,
        title: "t".into(),
        handler: "files".into(),
        installed_at: jiff::Timestamp::now(),
        reboot_required: false,
    };
    t.commit(|s, tx| Ok(s.commit_install(tx, &rec, &hist(id, UpdateOperation::Installation))?))
}

fn uninstall_and_commit(fx: &Fx, id: &str) {
    let mut t = Tx::begin(&fx.store, &fx.layout, id, "uninstall").unwrap();
    let plan = uninstall_plan(&fx.store.owned(id).unwrap());
    t.apply(&plan, &mut |_| {}, &|| false).unwrap();
    t.commit(|s, tx| {
        Ok(s.commit_uninstall(tx, id, false, &hist(id, UpdateOperation::Uninstallation))?)
    })
    .unwrap();
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
        ("absolute symlink", tar(&[E::Link("l", "/etc")])),
        (
            "through a symlink",
            tar(&[
                E::Dir("d"),
                E::Link("d/l", ".."),
                E::File("d/l/x", b"x", 0o644),
            ]),
        ),
        ("fifo", tar(&[E::File("a", b"1", 0o644), E::Fifo("f")])),
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
        assert_eq!(snapshot(root), before, "{what}: the root is unchanged");
        assert!(fx.store.unfinished_txs().unwrap().is_empty(), "{what}");
        assert!(fx.store.installed().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn an_existing_symlink_in_the_root_is_not_followed() {
    let fx = fx();
    let root = &fx.layout.root;
    let elsewhere = fx.state.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("data")).unwrap();
    let p = payload(&fx, "p.tar", &tar(&[E::File("data/x", b"x", 0o644)]), "");
    let e = install_and_commit(&fx, "s", &p).unwrap_err();
    assert!(e.message.contains("symlink"), "{e}");
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
}

#[test]
fn a_payload_that_does_not_match_its_hash_installs_nothing() {
    let fx = fx();
    let mut p = payload(&fx, "p.tar", &tar(&[E::File("a", b"1", 0o644)]), "zst");
    p.sha256 = Some("00".repeat(32));
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
    // Applied but never committed: as if the process died before the commit.
    let t = install(&fx.store, &fx.layout, "r", &p, &mut |_| {}, &|| false).unwrap();
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
fn abort_during_staging_rolls_back() {
    let fx = fx();
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("f{i}"), vec![b'x'; 10]))
        .collect();
    let entries: Vec<E<'_>> = files.iter().map(|(n, d)| E::File(n, d, 0o644)).collect();
    let p = payload(&fx, "p.tar", &tar(&entries), "");
    let e = match install(&fx.store, &fx.layout, "a", &p, &mut |_| {}, &|| true) {
        Err(e) => e,
        Ok(_) => panic!("abort was ignored"),
    };
    assert_eq!(e.hresult, HResult::WU_E_CALL_CANCELLED);
    assert!(std::fs::read_dir(&fx.layout.root)
        .unwrap()
        .all(|e| e.unwrap().file_name() != "f0"));
    assert!(fx.store.unfinished_txs().unwrap().is_empty());
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
