//! Searches against hostile repositories built with the testkit and served over real HTTP
//! on loopback. Every attack must end in a precise WUA code with the trusted metadata left
//! exactly as it was.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeMap;
use std::path::Path;

use upkeep::{ErrorKind, HResult, OperationResultCode, UpdateSession};
use upkeep_testkit::{expires_in, RepoSim};

struct Fixture {
    sim: RepoSim,
    server: upkeep_publish::serve::Server,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new(sim: RepoSim) -> Fixture {
        let server = sim.serve();
        Fixture {
            sim,
            server,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn session(&self) -> UpdateSession {
        UpdateSession::builder()
            .env(false)
            .repository(self.server.base_url())
            .trusted_root(self.sim.trusted_root_file())
            .state_dir(self.state.path())
            .install_root(self.state.path().join("root"))
            .build()
            .unwrap()
    }

    /// A search from a fresh session: the updates found, or the error's code and kind
    /// (which check refused the repository).
    fn search(&self) -> Result<usize, (HResult, ErrorKind)> {
        self.session()
            .create_update_searcher()
            .search("")
            .map(|r| r.updates().len())
            .map_err(|e| (e.hresult(), e.kind()))
    }

    fn trusted_files(&self) -> BTreeMap<String, String> {
        snapshot_dir(&self.state.path().join("metadata"))
    }
}

/// File name → sha256 of every trusted metadata file.
fn snapshot_dir(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let data = std::fs::read(e.path()).unwrap();
            let digest = upkeep_tuf::metadata::digest_bytes("sha256", &data).unwrap();
            (e.file_name().to_string_lossy().into_owned(), digest)
        })
        .collect()
}

fn with_one_update() -> RepoSim {
    let mut sim = RepoSim::new();
    sim.add_update("targets", RepoSim::update(1, "First"), b"payload-1");
    sim.publish();
    sim
}

/// Trust the repository once, change it with `attack`, and check that the next search
/// fails with `code` and leaves the trusted metadata untouched — except, where the attack
/// serves a valid newer timestamp, that timestamp, which TUF keeps for rollback protection.
fn assert_refused_after_trust(attack: impl FnOnce(&mut RepoSim), code: HResult, kind: ErrorKind) {
    let mut f = Fixture::new(with_one_update());
    assert_eq!(f.search(), Ok(1));
    let mut before = f.trusted_files();
    attack(&mut f.sim);
    assert_eq!(f.search(), Err((code, kind)));
    let mut after = f.trusted_files();
    let served = std::fs::read(f.sim.dir().join("metadata/timestamp.json")).unwrap();
    let trusted = std::fs::read(f.state.path().join("metadata/timestamp.json")).unwrap();
    if trusted == served && before["timestamp.json"] != after["timestamp.json"] {
        before.remove("timestamp.json");
        after.remove("timestamp.json");
    }
    assert_eq!(
        after, before,
        "trusted metadata changed after a refused refresh"
    );
}

#[test]
fn a_valid_repository_is_searched() {
    let f = Fixture::new(with_one_update());
    let r = f
        .session()
        .create_update_searcher()
        .search("IsInstalled=0")
        .unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(r.updates().get(0).unwrap().title(), "First");
    assert_eq!(r.updates().get(0).unwrap().download_contents()[0].length, 9);
}

#[test]
fn timestamp_rollback_is_refused() {
    assert_refused_after_trust(
        |sim| {
            sim.timestamp.common.version = 1;
            sim.write_timestamp();
        },
        HResult::WU_E_INVALID_UPDATE,
        ErrorKind::Rollback,
    );
}

#[test]
fn snapshot_rollback_is_refused() {
    assert_refused_after_trust(
        |sim| {
            // A fresh timestamp that points at an older snapshot version.
            sim.snapshot.common.version = 1;
            let snap = sim.write_snapshot();
            sim.timestamp.common.version += 1;
            sim.write_timestamp_for(&snap);
        },
        HResult::WU_E_INVALID_UPDATE,
        ErrorKind::Rollback,
    );
}

#[test]
fn targets_rollback_is_refused() {
    assert_refused_after_trust(
        |sim| {
            // A new snapshot that lists an older targets version.
            sim.snapshot.meta.get_mut("targets.json").unwrap().version = 1;
            sim.snapshot.common.version += 1;
            let snap = sim.write_snapshot();
            sim.timestamp.common.version += 1;
            sim.write_timestamp_for(&snap);
        },
        HResult::WU_E_INVALID_UPDATE,
        ErrorKind::Rollback,
    );
}

#[test]
fn delegated_role_rollback_is_refused() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "team", &["updates/*/*/*"], false, 40);
    sim.add_update("team", RepoSim::update(2, "Team"), b"t");
    sim.publish();
    sim.publish();
    let mut f = Fixture::new(sim);
    assert_eq!(f.search(), Ok(1));
    let mut before = f.trusted_files();
    f.sim.snapshot.meta.get_mut("team.json").unwrap().version = 1;
    f.sim.snapshot.common.version += 1;
    let snap = f.sim.write_snapshot();
    f.sim.timestamp.common.version += 1;
    f.sim.write_timestamp_for(&snap);
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_INVALID_UPDATE, ErrorKind::Rollback))
    );
    let mut after = f.trusted_files();
    // The new timestamp is valid and kept; nothing else changed.
    assert_ne!(
        before.remove("timestamp.json"),
        after.remove("timestamp.json")
    );
    assert_eq!(after, before);
}

#[test]
fn expired_timestamp_is_a_freeze_attack() {
    assert_refused_after_trust(
        |sim| {
            sim.timestamp.common.version += 1;
            sim.timestamp.common.expires = expires_in(-60);
            sim.write_timestamp();
        },
        HResult::WU_E_INVALID_UPDATE,
        ErrorKind::Expired,
    );
}

#[test]
fn expired_snapshot_and_targets_are_refused() {
    for role in ["snapshot", "targets"] {
        let mut sim = with_one_update();
        match role {
            "snapshot" => sim.snapshot.common.expires = expires_in(-60),
            _ => sim.targets.common.expires = expires_in(-60),
        }
        sim.publish();
        let f = Fixture::new(sim);
        assert_eq!(
            f.search(),
            Err((HResult::WU_E_INVALID_UPDATE, ErrorKind::Expired)),
            "{role}"
        );
    }
}

#[test]
fn expired_root_is_refused() {
    let mut sim = with_one_update();
    sim.root.common.expires = expires_in(-60);
    sim.publish_root_signed_by(&[]);
    let f = Fixture::new(sim);
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_INVALID_UPDATE, ErrorKind::Expired))
    );
}

#[test]
fn mix_and_match_snapshot_is_refused() {
    assert_refused_after_trust(
        |sim| {
            // The timestamp names snapshot v4 by hash; the server has another v4.
            sim.snapshot.common.version += 1;
            let snap = sim.write_snapshot();
            sim.timestamp.common.version += 1;
            sim.write_timestamp_for(&snap);
            sim.snapshot.meta.insert(
                "extra.json".into(),
                sim.snapshot.meta["targets.json"].clone(),
            );
            sim.write_snapshot();
        },
        HResult::WU_E_INVALID_UPDATE,
        ErrorKind::Length,
    );
}

#[test]
fn mix_and_match_targets_version_is_refused() {
    let mut sim = with_one_update();
    // targets v3 is served under the name the snapshot gives, but says version 2.
    sim.targets.common.version += 1;
    let bytes_v3 = sim.sign("targets", &sim.targets);
    sim.targets.common.version -= 1;
    sim.publish();
    let v = sim.targets.common.version;
    let wrong = sim.sign("targets", &{
        let mut t = sim.targets.clone();
        t.common.version = v - 1;
        t
    });
    sim.write_raw(&format!("{v}.targets.json"), &wrong);
    let _ = bytes_v3;
    let f = Fixture::new(sim);
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_INVALID_UPDATE, ErrorKind::VersionMismatch))
    );
}

#[test]
fn signatures_below_threshold_are_refused() {
    let mut sim = with_one_update();
    let extra = upkeep_tuf::SigningKey::from_seed([77; 32]);
    sim.root
        .keys
        .insert(extra.key_id().into(), extra.public().clone());
    let r = sim.root.roles.get_mut("targets").unwrap();
    r.keyids.push(extra.key_id().into());
    r.threshold = 2;
    sim.publish_root_signed_by(&[]);
    sim.publish(); // targets signed by one of the two keys
    let f = Fixture::new(sim);
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_INVALID_UPDATE, ErrorKind::Threshold))
    );
}

#[test]
fn key_rotation_is_followed() {
    let mut f = Fixture::new(with_one_update());
    assert_eq!(f.search(), Ok(1));
    f.sim.rotate_key("timestamp", 50);
    f.sim.publish_root_signed_by(&[]);
    f.sim.publish();
    assert_eq!(f.search(), Ok(1));
    let root = std::fs::read(f.state.path().join("metadata/root.json")).unwrap();
    assert!(String::from_utf8_lossy(&root).contains("\"version\":2"));
}

#[test]
fn root_rotation_not_signed_by_the_old_root_is_refused() {
    let mut f = Fixture::new(with_one_update());
    assert_eq!(f.search(), Ok(1));
    let before = f.trusted_files();
    f.sim.rotate_key("root", 60); // new root signed only by the new key
    f.sim.publish_root_signed_by(&[]);
    f.sim.publish();
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_INVALID_UPDATE, ErrorKind::Threshold))
    );
    assert_eq!(f.trusted_files(), before);
}

#[test]
fn root_rotation_signed_by_old_and_new_keys_is_followed() {
    let mut f = Fixture::new(with_one_update());
    let old = f.sim.rotate_key("root", 61);
    f.sim.publish_root_signed_by(&[&old]);
    f.sim.publish();
    assert_eq!(f.search(), Ok(1));
}

#[test]
fn endless_timestamp_is_cut_at_its_limit() {
    let f = Fixture::new(with_one_update());
    f.sim.write_raw("timestamp.json", &vec![b' '; 4 << 20]);
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_PT_INVALID_FORMAT, ErrorKind::TooLarge))
    );
}

#[test]
fn malformed_json_is_refused() {
    let f = Fixture::new(with_one_update());
    f.sim
        .write_raw("timestamp.json", b"{\"signed\": {\"_type\": \"timestamp\"");
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_PT_INVALID_FORMAT, ErrorKind::InvalidMetadata))
    );
    f.sim.write_raw("timestamp.json", b"[]");
    assert_eq!(
        f.search(),
        Err((HResult::WU_E_PT_INVALID_FORMAT, ErrorKind::InvalidMetadata))
    );
}

#[test]
fn a_delegated_role_cannot_publish_outside_its_paths() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "fonts", &["fonts/*"], false, 41);
    // The fonts role lists an update under updates/…, outside fonts/*.
    sim.add_update("fonts", RepoSim::update(3, "Escaped"), b"x");
    sim.add_update("targets", RepoSim::update(4, "Legit"), b"y");
    sim.publish();
    let f = Fixture::new(sim);
    let r = f.session().create_update_searcher().search("").unwrap();
    let titles: Vec<&str> = r.updates().iter().map(|u| u.title()).collect();
    assert_eq!(titles, ["Legit"]);
}

#[test]
fn a_terminating_delegation_hides_later_roles() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "a", &["updates/*/*/*"], true, 42);
    sim.delegate("targets", "b", &["updates/*/*/*"], false, 43);
    sim.add_update("a", RepoSim::update(5, "From A"), b"a");
    let mut from_b = RepoSim::update(5, "From B");
    from_b.revision = 1;
    sim.add_update("b", from_b, b"b");
    sim.publish();
    let f = Fixture::new(sim);
    let r = f.session().create_update_searcher().search("").unwrap();
    assert_eq!(
        r.updates().iter().map(|u| u.title()).collect::<Vec<_>>(),
        ["From A"]
    );
}

/// The same with more than 1,024 targets, so that the catalog resolves its paths on
/// several threads: the answer must not change.
#[test]
fn a_terminating_delegation_hides_later_roles_in_a_large_catalog() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "a", &["updates/*/*/*", "files/*"], true, 42);
    sim.delegate("targets", "b", &["updates/*/*/*", "files/*"], false, 43);
    sim.add_update("a", RepoSim::update(5, "From A"), b"a");
    sim.add_update("b", RepoSim::update(5, "From B"), b"b");
    sim.add_update("b", RepoSim::update(6, "Only in B"), b"b6");
    for i in 0..1100 {
        sim.add_target("a", &format!("files/{i}"), b"f", None);
    }
    sim.publish();
    let f = Fixture::new(sim);
    let r = f.session().create_update_searcher().search("").unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        r.updates().iter().map(|u| u.title()).collect::<Vec<_>>(),
        ["From A"]
    );
}

#[test]
fn a_bad_update_record_is_a_warning_not_a_failure() {
    let mut sim = with_one_update();
    sim.add_target(
        "targets",
        "updates/bad/1/p.tar",
        b"z",
        Some(serde_json::json!({"upkeep": {"schema": 1, "title": 7}})),
    );
    sim.publish();
    let f = Fixture::new(sim);
    let r = f.session().create_update_searcher().search("").unwrap();
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    assert_eq!(r.updates().len(), 1);
    assert_eq!(r.warnings()[0].hresult, HResult::WU_E_INVALID_UPDATE);
    assert!(
        r.warnings()[0].message.contains("updates/bad/1/p.tar"),
        "{}",
        r.warnings()[0].message
    );
}

#[test]
fn invalid_criteria_fail_before_any_request() {
    let f = Fixture::new(with_one_update());
    let before = f.server.request_count();
    let e = f
        .session()
        .create_update_searcher()
        .search("IsInstalled=2")
        .unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_INVALID_CRITERIA);
    assert!(e.message().contains("position 12"), "{}", e.message());
    assert_eq!(f.server.request_count(), before);
}

#[test]
fn offline_search_needs_trusted_local_metadata() {
    let f = Fixture::new(with_one_update());
    let mut s = f.session().create_update_searcher();
    s.set_online(false);
    assert_eq!(
        s.search("").unwrap_err().hresult(),
        HResult::WU_E_NOT_INITIALIZED
    );
    assert_eq!(f.search(), Ok(1));
    let before = f.server.request_count();
    let mut s = f.session().create_update_searcher();
    s.set_online(false);
    assert_eq!(s.search("").unwrap().updates().len(), 1);
    assert_eq!(
        f.server.request_count(),
        before,
        "an offline search made a request"
    );
}

#[test]
fn an_unreachable_repository_is_a_connection_error() {
    let f = Fixture::new(with_one_update());
    let s = UpdateSession::builder()
        .env(false)
        .repository("http://127.0.0.1:9/")
        .trusted_root(f.sim.trusted_root_file())
        .state_dir(f.state.path())
        .build()
        .unwrap();
    let e = s.create_update_searcher().search("").unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_PT_SOAPCLIENT_CONNECT);
}

#[test]
fn refresh_of_an_unchanged_repository_is_one_request() {
    let f = Fixture::new(with_one_update());
    let session = f.session();
    let searcher = session.create_update_searcher();
    searcher.search("").unwrap();
    let before = f.server.request_count();
    searcher.search("").unwrap();
    assert_eq!(f.server.request_count() - before, 1);
    // A new session (a new process) reads the same trusted state: still one request.
    let before = f.server.request_count();
    f.session().create_update_searcher().search("").unwrap();
    assert_eq!(f.server.request_count() - before, 1);
}

#[test]
fn a_corrupted_trusted_root_file_is_refused_at_session_build() {
    let state = tempfile::tempdir().unwrap();
    let bad = state.path().join("root.json");
    std::fs::write(&bad, b"{\"signed\":{},\"signatures\":[]}").unwrap();
    let e = UpdateSession::builder()
        .env(false)
        .repository("http://127.0.0.1:9/")
        .trusted_root(&bad)
        .state_dir(state.path().join("s"))
        .build()
        .unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_INVALID_FILE);
    assert!(!state.path().join("s/metadata/root.json").exists());
}

#[test]
fn a_huge_hashed_bin_delegation_is_refused_without_allocating_it() {
    let mut sim = with_one_update();
    let k = upkeep_tuf::SigningKey::from_seed([90; 32]);
    let mut keys = std::collections::HashMap::new();
    keys.insert(k.key_id().to_string(), k.public().clone());
    sim.targets.delegations = Some(upkeep_tuf::metadata::Delegations {
        keys,
        roles: None,
        succinct_roles: Some(upkeep_tuf::metadata::SuccinctRoles {
            keyids: vec![k.key_id().into()],
            threshold: 1,
            bit_length: 32,
            name_prefix: "bin".into(),
            unrecognized: BTreeMap::new(),
        }),
        unrecognized: BTreeMap::new(),
    });
    sim.publish();
    let f = Fixture::new(sim);
    let r = f.session().create_update_searcher().search("").unwrap();
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    assert!(
        r.warnings()[0].message.contains("max_catalog_roles"),
        "{:?}",
        r.warnings()
    );
    assert_eq!(r.warnings()[0].hresult, HResult::WU_E_OUTOFRANGE);
}

#[test]
fn a_target_with_wrong_bytes_is_refused_and_never_written() {
    let mut sim = with_one_update();
    let path = "updates/00000000-0000-0000-0000-000000000001/1/payload.tar";
    let info = sim.targets.targets[path].clone();
    // Replace the served content (hash-prefixed name) with other bytes of the same length.
    let served = sim.dir().join(format!(
        "targets/updates/00000000-0000-0000-0000-000000000001/1/{}.payload.tar",
        &info.hashes["sha256"]
    ));
    sim.publish();
    std::fs::write(&served, b"payload-X").unwrap();
    let server = sim.serve();
    let state = tempfile::tempdir().unwrap();
    upkeep_tuf::Client::init_trusted_root(&state.path().join("md"), &sim.initial_root, true)
        .unwrap();
    let cfg = upkeep_tuf::ClientConfig {
        metadata_dir: state.path().join("md"),
        metadata_url: format!("{}metadata/", server.base_url()),
        limits: upkeep::Limits::default(),
        offline: false,
        timestamp_first: false,
    };
    let mut client = upkeep_tuf::Client::new(
        cfg,
        std::sync::Arc::new(upkeep_tuf::HttpTransport::new().unwrap()),
    )
    .unwrap();
    let info = client.target_info(path).unwrap().unwrap();
    let dest = state.path().join("payload.tar");
    let base = format!("{}targets/", server.base_url());
    let err = client
        .download_target(&base, path, &info, &dest)
        .unwrap_err();
    assert!(matches!(err, upkeep_tuf::Error::Hash { .. }), "{err}");
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        1,
        "no partial file left"
    );
    // Endless content stops at the signed length.
    std::fs::write(&served, vec![b'p'; 1 << 20]).unwrap();
    let err = client
        .download_target(&base, path, &info, &dest)
        .unwrap_err();
    assert!(err.to_string().contains("signed length"), "{err}");
    assert!(!dest.exists());
}
