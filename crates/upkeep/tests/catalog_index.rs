//! The catalog index over a real repository and real files: a new session of an unchanged
//! repository reads it instead of the targets roles (every search result the same), it is
//! rebuilt when the trusted metadata changes, and a changed table or record is detected —
//! the search still answers from the verified metadata and the index is rewritten.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeSet;
use std::path::PathBuf;

use upkeep::{OperationResultCode, UpdateSession};
use upkeep_testkit::{tar_zst, RepoSim};
use uuid::Uuid;

struct Fx {
    sim: RepoSim,
    _server: upkeep_publish::serve::Server,
    url: String,
    dir: tempfile::TempDir,
}

impl Fx {
    fn new(n: u128) -> Fx {
        let mut sim = RepoSim::new();
        for i in 1..=n {
            let mut m = RepoSim::update(i, &format!("Update {i}"));
            m.description = format!("number {i}");
            sim.add_update("targets", m, &tar_zst(&[(&format!("opt/{i}"), b"x")]));
        }
        sim.publish();
        let server = sim.serve();
        Fx {
            url: server.base_url(),
            sim,
            _server: server,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A new session: what a new process has.
    fn session(&self) -> UpdateSession {
        UpdateSession::builder()
            .env(false)
            .repository(&self.url)
            .trusted_root(self.sim.trusted_root_file())
            .state_dir(self.dir.path().join("state"))
            .install_root(self.dir.path().join("root"))
            .build()
            .unwrap()
    }

    fn index(&self) -> PathBuf {
        self.dir.path().join("state/metadata/catalog.idx")
    }

    fn titles(&self, criteria: &str) -> BTreeSet<String> {
        let r = self
            .session()
            .create_update_searcher()
            .search(criteria)
            .unwrap();
        assert_eq!(r.result_code(), OperationResultCode::Succeeded);
        r.updates().iter().map(|u| u.title().to_string()).collect()
    }
}

fn by_id(n: u128) -> String {
    format!("UpdateID='{}'", Uuid::from_u128(n))
}

#[test]
fn a_new_session_reads_the_index_and_answers_the_same() {
    let fx = Fx::new(40);
    let all = fx.titles("IsInstalled=0");
    assert_eq!(all.len(), 40);
    let written = std::fs::metadata(fx.index()).unwrap().modified().unwrap();
    // From the index: every kind of search, the same answers; the index is not rewritten.
    assert_eq!(fx.titles("IsInstalled=0"), all);
    assert_eq!(
        fx.titles(&by_id(7)),
        BTreeSet::from(["Update 7".to_string()])
    );
    assert_eq!(
        fx.titles(&format!("{} or {}", by_id(3), by_id(30))),
        BTreeSet::from(["Update 3".to_string(), "Update 30".to_string()])
    );
    let s = fx.session();
    let u = s
        .create_update_searcher()
        .search(&by_id(9))
        .unwrap()
        .updates()
        .get(0)
        .unwrap()
        .clone();
    assert_eq!(u.description(), "number 9");
    assert_eq!(u.download_contents().len(), 1);
    assert_eq!(
        std::fs::metadata(fx.index()).unwrap().modified().unwrap(),
        written
    );
    // Downloads and installs from an entry read from the index.
    let mut d = s.create_update_downloader();
    d.set_updates(std::iter::once(u.clone()).collect());
    assert_eq!(
        d.download().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    let mut i = s.create_update_installer();
    i.set_updates(std::iter::once(u).collect());
    assert_eq!(
        i.install().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert!(fx.dir.path().join("root/opt/9").exists());
}

#[test]
fn new_metadata_rebuilds_the_index() {
    let mut fx = Fx::new(5);
    assert_eq!(fx.titles("IsInstalled=0").len(), 5);
    let before = std::fs::read(fx.index()).unwrap();
    fx.sim.add_update(
        "targets",
        RepoSim::update(6, "Update 6"),
        &tar_zst(&[("opt/6", b"x")]),
    );
    fx.sim.publish();
    assert_eq!(fx.titles("IsInstalled=0").len(), 6);
    assert_eq!(
        fx.titles(&by_id(6)),
        BTreeSet::from(["Update 6".to_string()])
    );
    assert_ne!(std::fs::read(fx.index()).unwrap(), before);
}

/// Flips one byte of the index at `at` (counted from the end when negative).
fn flip(p: &std::path::Path, at: i64) {
    let mut b = std::fs::read(p).unwrap();
    let i = if at < 0 {
        b.len() - (-at) as usize
    } else {
        at as usize
    };
    b[i] ^= 0x20;
    std::fs::write(p, b).unwrap();
}

#[test]
fn a_changed_record_or_table_is_detected_and_the_search_answers_from_verified_metadata() {
    let fx = Fx::new(20);
    let all = fx.titles("IsInstalled=0");
    // A record near the end: its title changed on disk ("Update 1" → "update 1"-like).
    let text = std::fs::read(fx.index()).unwrap();
    let needle = b"\"title\":\"Update ";
    let last = text
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    flip(&fx.index(), (last + needle.len() - 7) as i64);
    let damaged = std::fs::read(fx.index()).unwrap();
    // Every kind of search still answers from the verified metadata …
    assert_eq!(fx.titles("IsInstalled=0"), all);
    // … and the index was rewritten, whole again.
    let rewritten = std::fs::read(fx.index()).unwrap();
    assert_ne!(rewritten, damaged);
    assert_eq!(rewritten, text);
    // The same through searches that read one record each, the damaged one among them.
    flip(&fx.index(), (last + needle.len() - 7) as i64);
    for n in 1..=20u128 {
        assert_eq!(
            fx.titles(&by_id(n)),
            BTreeSet::from([format!("Update {n}")]),
            "update {n}"
        );
    }
    assert_eq!(std::fs::read(fx.index()).unwrap(), text);
    // A changed content hash in a record's tail (what a download would be checked
    // against): detected the same way.
    // (The tail holds the algorithm's name, then the hex digest after its u32 length.)
    let needle = b"sha256\x40\0\0\0";
    let last = text
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    flip(&fx.index(), (last + needle.len() + 3) as i64);
    assert_eq!(fx.titles("IsInstalled=0"), all);
    assert_eq!(std::fs::read(fx.index()).unwrap(), text);
    // An index of another format (an older agent's): rebuilt.
    let mut old = b"UPKIDX03".to_vec();
    old.extend_from_slice(&text[8..]);
    std::fs::write(fx.index(), &old).unwrap();
    assert_eq!(
        fx.titles(&by_id(4)),
        BTreeSet::from(["Update 4".to_string()])
    );
    assert_eq!(std::fs::read(fx.index()).unwrap(), text);
    // A changed table: refused when opened, rebuilt.
    // (The trailer's first number is where the table starts.)
    let trailer = text.len() - 24;
    let table_at = u64::from_le_bytes(text[trailer..trailer + 8].try_into().unwrap()) as i64;
    flip(&fx.index(), table_at + 5);
    assert_eq!(fx.titles("IsInstalled=0"), all);
    assert_eq!(std::fs::read(fx.index()).unwrap(), text);
}
