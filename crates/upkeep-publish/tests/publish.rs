//! The publisher against the real client: what it writes verifies, failures change nothing,
//! and a client searching during publishes never sees half of one.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use upkeep::{UpdateMetadata, UpdateSession};
use upkeep_publish::serve::{repository_mounts, Server};
use upkeep_publish::{
    ContentSource, InitOptions, NewUpdate, PublishError, Repository, RepositoryConfig,
};
use uuid::Uuid;

fn update(n: u128, title: &str) -> NewUpdate {
    NewUpdate {
        metadata: UpdateMetadata::new(Uuid::from_u128(n), title, "x"),
        payload: ContentSource::Bytes {
            name: "payload.tar".into(),
            data: format!("payload {n}").into_bytes(),
        },
        extra_content: vec![],
        eula: None,
        bootstrapper: None,
    }
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn session(repo: &Repository, server: &Server, state: &Path) -> UpdateSession {
    UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(repo.dir().join("metadata/1.root.json"))
        .state_dir(state)
        .build()
        .unwrap()
}

#[test]
fn init_writes_private_keys_and_a_searchable_empty_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = Repository::init(&dir, InitOptions::default()).unwrap();
    for k in ["root", "timestamp", "snapshot", "targets"] {
        let mode = std::fs::metadata(dir.join(format!("keys/{k}.json")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{k}");
    }
    assert_eq!(
        std::fs::metadata(dir.join("keys"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let server = Server::start("127.0.0.1:0".parse().unwrap(), repository_mounts(&dir)).unwrap();
    let r = session(&repo, &server, &tmp.path().join("state"))
        .create_update_searcher()
        .search("")
        .unwrap();
    assert!(r.updates().is_empty());
    // Keys are never served.
    let resp = std::net::TcpStream::connect(server.local_addr()).map(|mut s| {
        use std::io::{Read, Write};
        s.write_all(b"GET /keys/root.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf
    });
    assert!(resp.unwrap().starts_with("HTTP/1.1 404"));
}

#[test]
fn init_refuses_a_non_empty_directory_and_bad_bin_counts() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("something"), b"x").unwrap();
    assert!(matches!(
        Repository::init(tmp.path(), InitOptions::default()),
        Err(PublishError::Repository { .. })
    ));
    let opts = InitOptions {
        config: RepositoryConfig {
            bins: 1000,
            ..Default::default()
        },
    };
    assert!(matches!(
        Repository::init(&tmp.path().join("n"), opts),
        Err(PublishError::Invalid(_))
    ));
}

#[test]
fn add_replace_remove_and_publish_round_trip_through_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let mut repo = Repository::init(&dir, InitOptions::default()).unwrap();
    repo.add_updates(vec![update(1, "One"), update(2, "Two")])
        .unwrap();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), repository_mounts(&dir)).unwrap();
    let state = tmp.path().join("state");
    let titles = |s: &UpdateSession| {
        let mut t: Vec<String> = s
            .create_update_searcher()
            .search("")
            .unwrap()
            .updates()
            .iter()
            .map(|u| format!("{} r{}", u.title(), u.identity().revision_number))
            .collect();
        t.sort();
        t
    };
    let s = session(&repo, &server, &state);
    assert_eq!(titles(&s), ["One r1", "Two r1"]);
    let mut two = update(2, "Two");
    two.metadata.revision = 2;
    repo.add_update(two).unwrap();
    assert_eq!(titles(&s), ["One r1", "Two r2"]);
    repo.remove_update(Uuid::from_u128(1)).unwrap();
    assert_eq!(titles(&s), ["Two r2"]);
    let report = repo.publish().unwrap();
    assert!(report.roles.iter().any(|(r, _)| r == "targets"));
    assert_eq!(titles(&s), ["Two r2"]);
    assert!(matches!(
        repo.remove_update(Uuid::from_u128(99)),
        Err(PublishError::UnknownUpdate(_))
    ));
}

#[test]
fn hashed_bins_spread_updates_and_resign_only_changed_bins() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let opts = InitOptions {
        config: RepositoryConfig {
            bins: 16,
            ..Default::default()
        },
    };
    let mut repo = Repository::init(&dir, opts).unwrap();
    repo.add_updates((1..=40).map(|n| update(n, &format!("U{n}"))).collect())
        .unwrap();
    let report = repo.add_update(update(41, "U41")).unwrap();
    let bins: Vec<_> = report
        .roles
        .iter()
        .filter(|(r, _)| r.starts_with("bin-"))
        .collect();
    assert_eq!(
        bins.len(),
        1,
        "only the changed bin is re-signed: {:?}",
        report.roles
    );
    let server = Server::start("127.0.0.1:0".parse().unwrap(), repository_mounts(&dir)).unwrap();
    let r = session(&repo, &server, &tmp.path().join("state"))
        .create_update_searcher()
        .search("")
        .unwrap();
    assert_eq!(r.updates().len(), 41);
}

#[test]
fn a_refused_update_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let mut repo = Repository::init(&dir, InitOptions::default()).unwrap();
    repo.add_update(update(1, "One")).unwrap();
    let before = tree(&dir.join("metadata"));
    let mut bad = update(2, "Bad");
    bad.metadata.severity = "Apocalyptic".into();
    assert!(
        matches!(repo.add_update(bad), Err(PublishError::Invalid(m)) if m.contains("severity"))
    );
    let mut missing = update(3, "Missing");
    missing.payload = ContentSource::File(tmp.path().join("does-not-exist.tar"));
    assert!(matches!(repo.add_update(missing), Err(PublishError::Io(_))));
    assert!(matches!(
        repo.add_updates(vec![update(4, "A"), update(4, "B")]),
        Err(PublishError::Invalid(_))
    ));
    assert_eq!(tree(&dir.join("metadata")), before);
}

#[test]
fn a_second_publisher_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let _repo = Repository::init(&dir, InitOptions::default()).unwrap();
    assert!(matches!(
        Repository::open(&dir),
        Err(PublishError::Locked(_))
    ));
}

#[test]
fn a_client_never_sees_half_a_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let mut repo = Repository::init(
        &dir,
        InitOptions {
            config: RepositoryConfig {
                bins: 8,
                ..Default::default()
            },
        },
    )
    .unwrap();
    repo.add_update(update(1, "U1")).unwrap();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), repository_mounts(&dir)).unwrap();
    let s = session(&repo, &server, &tmp.path().join("state"));
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let searcher = std::thread::spawn(move || {
        let mut searches = 0;
        let mut seen = std::collections::BTreeSet::new();
        while !d2.load(Ordering::SeqCst) || searches == 0 {
            let r = s
                .create_update_searcher()
                .search("")
                .unwrap_or_else(|e| panic!("search {searches} failed: {e} [{}]", e.hresult()));
            seen.insert(r.updates().len());
            searches += 1;
        }
        (searches, seen)
    });
    for n in 2..=30u128 {
        repo.add_update(update(n, &format!("U{n}"))).unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let (searches, seen) = searcher.join().unwrap();
    assert!(searches > 0);
    assert!(seen.iter().all(|&n| (1..=30).contains(&n)), "{seen:?}");
}

#[test]
fn a_manifest_carries_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let mut repo = Repository::init(&dir, InitOptions::default()).unwrap();
    std::fs::write(tmp.path().join("agent.sh"), b"#!/bin/sh\nexit 0\n").unwrap();
    std::fs::write(tmp.path().join("EULA.txt"), b"terms").unwrap();
    std::fs::write(tmp.path().join("boot.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::write(
        tmp.path().join("update.toml"),
        r#"
id = "00000000-0000-4000-8000-0000000000aa"
revision = 3
title = "Agent"
description = "An agent"
kb_article_ids = ["5001"]
categories = [{ id = "00000000-0000-4000-8000-0000000000c1", name = "Security" }]
type = "Driver"
severity = "Critical"
supersedes = ["00000000-0000-4000-8000-0000000000a9"]
mandatory = true
uninstallable = false
installation_behavior = { impact = "RequiresExclusiveHandling", reboot_behavior = "AlwaysRequiresReboot", can_request_user_input = true }
handler = { kind = "command", arguments = ["--install"], uninstall_arguments = ["--remove"], timeout_secs = 30 }
release_date = "2026-01-02T03:04:05Z"
deadline = "2026-02-01T00:00:00Z"
payload = "agent.sh"
eula_file = "EULA.txt"
bootstrapper_file = "boot.sh"

[applicability]
architectures = ["x86_64", "aarch64"]
os = [{ id = "debian", version = ">=12" }, { id = "ubuntu" }]
min_agent_version = "0.1"
prerequisites = ["00000000-0000-4000-8000-0000000000a9"]
installed_if = [{ path = "/opt/agent/VERSION", version = ">=3" }]
applicable_if = [{ path = "/etc/agent.conf" }]
"#,
    )
    .unwrap();
    let nu = upkeep_publish::Manifest::load(&tmp.path().join("update.toml")).unwrap();
    repo.add_update(nu).unwrap();
    let id: Uuid = "00000000-0000-4000-8000-0000000000aa".parse().unwrap();
    let m = &repo.updates().unwrap()[&id];
    assert_eq!(m.revision, 3);
    assert_eq!(m.update_type, upkeep::UpdateType::Driver);
    assert!(m.eula.as_deref().unwrap().ends_with("/eula/EULA.txt"));
    assert!(m.bootstrapper.is_some());
    assert!(!m.uninstallable);
    let a = &m.applicability;
    assert_eq!(a.architectures, ["x86_64", "aarch64"]);
    assert_eq!(a.os[0].version.as_deref(), Some(">=12"));
    assert_eq!(a.installed_if[0].version.as_deref(), Some(">=3"));
    assert_eq!(a.applicable_if[0].path, "/etc/agent.conf");
    assert_eq!(a.prerequisites.len(), 1);
    // Unknown keys are typos here (agents ignore them in records), at any depth.
    let valid = "id = '00000000-0000-4000-8000-0000000000ab'\nrevision = 1\ntitle = 'x'\nhandler = { kind = 'files' }\npayload = 'agent.sh'\n";
    for (extra, name) in [
        ("colour = 'red'\n", "colour"),
        (
            "[applicability]\narchitecture = ['x86_64']\n",
            "applicability.architecture",
        ),
    ] {
        std::fs::write(tmp.path().join("bad.toml"), format!("{valid}{extra}")).unwrap();
        let e = upkeep_publish::Manifest::load(&tmp.path().join("bad.toml")).unwrap_err();
        assert!(
            matches!(&e, PublishError::Invalid(m) if m.contains(name)),
            "{e}"
        );
    }
    // A malformed rule is refused before anything is written.
    std::fs::write(
        tmp.path().join("bad.toml"),
        format!("{valid}[applicability]\nos = [{{ id = 'debian', version = '>=' }}]\n"),
    )
    .unwrap();
    let nu = upkeep_publish::Manifest::load(&tmp.path().join("bad.toml")).unwrap();
    let e = repo.add_update(nu).err().unwrap();
    assert!(e.to_string().contains("applicability.os"), "{e}");
}
