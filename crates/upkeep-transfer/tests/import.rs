//! `ContentCache::import_candidate` against what a directory may hold by the time it is
//! read: a FIFO (never waited on), a symbolic link (never followed), a file of another
//! hash (nothing left behind), and the right file (one pass, committed and stamped); and
//! the temporary copy of an import killed mid-way, listed and removed by `remove_partials`.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use upkeep_transfer::{ContentCache, Imported};
use upkeep_types::{ContentFile, Hashes};

fn describe(data: &[u8]) -> ContentFile {
    let mut hashes = Hashes::new();
    hashes.insert("sha256", hex::encode(Sha256::digest(data)));
    ContentFile {
        path: "updates/x/1/payload.tar".into(),
        length: data.len() as u64,
        hashes,
    }
}

fn tmp_files(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("partial"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// `f()` on a thread, failing the test if it has not returned within `limit` (an import
/// that waits on a FIFO would never return).
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("the import returned (it must not block on what it opens)")
}

#[test]
fn an_import_opens_once_and_takes_only_a_regular_file_with_the_signed_hash() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let cache = ContentCache::open(&cache_dir).unwrap();
    let data = b"the signed content".to_vec();
    let file = describe(&data);

    // A FIFO where a file was: refused at once, whoever holds the other end.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (c2, f2, p2) = (cache.clone(), file.clone(), fifo.clone());
    let r = bounded(Duration::from_secs(20), move || {
        c2.import_candidate(&p2, &[f2])
    });
    assert_eq!(r.unwrap(), Imported::NotRegular("a FIFO"));

    // A symbolic link to the right bytes: not followed.
    let real = dir.path().join("real");
    std::fs::write(&real, &data).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_eq!(
        cache
            .import_candidate(&link, std::slice::from_ref(&file))
            .unwrap(),
        Imported::NotRegular("a symbolic link")
    );

    // Same length, other bytes: unmatched, no temporary file left.
    let other = dir.path().join("other");
    std::fs::write(&other, b"THE SIGNED CONTENT").unwrap();
    assert_eq!(
        cache
            .import_candidate(&other, std::slice::from_ref(&file))
            .unwrap(),
        Imported::Unmatched
    );
    assert!(tmp_files(&cache_dir).is_empty());

    // The right file: committed and verified; a second time it is already there.
    match cache
        .import_candidate(&real, std::slice::from_ref(&file))
        .unwrap()
    {
        Imported::New(f, obj) => {
            assert_eq!(f, file);
            assert_eq!(std::fs::read(obj).unwrap(), data);
        }
        other => panic!("{other:?}"),
    }
    assert!(cache.get(&file).is_some());
    assert_eq!(
        cache
            .import_candidate(&real, std::slice::from_ref(&file))
            .unwrap(),
        Imported::Already(file)
    );
    assert!(tmp_files(&cache_dir).is_empty());
}

#[test]
fn a_killed_imports_temporary_copy_is_listed_and_cleaned_and_a_live_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let cache = ContentCache::open(&cache_dir).unwrap();
    // The pid of a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let litter = format!("import.{dead}.0.tmp");
    std::fs::write(cache_dir.join("partial").join(&litter), vec![0u8; 4096]).unwrap();
    let live = format!("import.{}.99.tmp", std::process::id());
    std::fs::write(cache_dir.join("partial").join(&live), b"in progress").unwrap();
    let listed: Vec<String> = cache.partials().into_iter().map(|p| p.0).collect();
    assert!(
        listed.contains(&litter) && listed.contains(&live),
        "{listed:?}"
    );
    assert_eq!(cache.remove_partials(None), (1, 4096));
    assert_eq!(tmp_files(&cache_dir), [live]);
}
