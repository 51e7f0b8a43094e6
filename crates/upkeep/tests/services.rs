//! Update services over real loopback repositories with keys of their own: a search covers
//! every service, or one; each update knows its service and downloads from it; each
//! service's trust is its own (one cannot sign for another's ids, nor replace an update
//! installed from another); registration errors leave nothing behind; a service that
//! cannot be reached is a warning while the others are searched.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use upkeep::{HResult, OperationResultCode, ServerSelection, UpdateCollection, UpdateSession};
use upkeep_testkit::{tar_zst, RepoSim};
use uuid::Uuid;

struct Two {
    vendor: RepoSim,
    internal: RepoSim,
    vendor_srv: upkeep_publish::serve::Server,
    internal_srv: upkeep_publish::serve::Server,
    dir: tempfile::TempDir,
}

fn payload(n: u128, from: &str) -> Vec<u8> {
    tar_zst(&[(&format!("opt/{from}/u{n}"), from.as_bytes())])
}

impl Two {
    fn new() -> Two {
        let mut vendor = RepoSim::new();
        vendor.add_update(
            "targets",
            RepoSim::update(1, "Vendor tool"),
            &payload(1, "vendor"),
        );
        vendor.publish();
        let mut internal = RepoSim::with_seed(41);
        internal.add_update(
            "targets",
            RepoSim::update(2, "Internal agent"),
            &payload(2, "internal"),
        );
        // A compromised or careless service offering the vendor's id.
        internal.add_update(
            "targets",
            RepoSim::update(1, "Not the vendor tool"),
            &payload(1, "internal"),
        );
        internal.publish();
        let (vendor_srv, internal_srv) = (vendor.serve(), internal.serve());
        let two = Two {
            vendor,
            internal,
            vendor_srv,
            internal_srv,
            dir: tempfile::tempdir().unwrap(),
        };
        two.manager()
            .add_service(
                "internal",
                &two.internal_srv.base_url(),
                &two.internal.trusted_root_file(),
            )
            .unwrap();
        two
    }

    fn builder(&self) -> upkeep::UpdateSessionBuilder {
        UpdateSession::builder()
            .env(false)
            .repository(self.vendor_srv.base_url())
            .trusted_root(self.vendor.trusted_root_file())
            .state_dir(self.dir.path().join("state"))
            .install_root(self.dir.path().join("root"))
    }

    fn manager(&self) -> upkeep::UpdateServiceManager {
        self.builder().build_service_manager().unwrap()
    }

    fn session(&self) -> UpdateSession {
        self.builder().build().unwrap()
    }
}

fn titles(r: &upkeep::SearchResult) -> Vec<(String, String)> {
    let mut v: Vec<_> = r
        .updates()
        .iter()
        .map(|u| {
            (
                u.title().to_string(),
                u.service().unwrap_or("?").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_search_covers_every_service_and_each_update_comes_from_its_own() {
    let two = Two::new();
    let names: Vec<String> = two
        .manager()
        .services()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["default", "internal"]);
    let s = two.session();
    let r = s.create_update_searcher().search("IsInstalled=0").unwrap();
    assert_eq!(
        titles(&r),
        [
            ("Internal agent".to_string(), "internal".to_string()),
            ("Vendor tool".to_string(), "default".to_string())
        ]
    );
    // The same id from the second service: a warning, never the update.
    assert_eq!(r.result_code(), OperationResultCode::SucceededWithErrors);
    let w = r
        .warnings()
        .iter()
        .find(|w| w.hresult == HResult::WU_E_DUPLICATE_ITEM)
        .unwrap();
    assert!(w.message.contains("internal's is ignored"), "{}", w.message);
    // Said once: the next search (in this session or a new one) has the same result
    // without the warning, and succeeds.
    for session in [s.clone(), two.session()] {
        let again = session
            .create_update_searcher()
            .search("IsInstalled=0")
            .unwrap();
        assert_eq!(titles(&again), titles(&r));
        assert!(again.warnings().is_empty(), "{:?}", again.warnings());
        assert_eq!(again.result_code(), OperationResultCode::Succeeded);
    }
    // One service only.
    let mut only = s.create_update_searcher();
    only.set_server_selection(ServerSelection::Others);
    only.set_service_id("internal");
    let r = only.search("IsInstalled=0").unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        titles(&r).len(),
        2,
        "alone, internal's own view has both of its updates"
    );
    only.set_service_id("nope");
    assert_eq!(
        only.search("").unwrap_err().hresult(),
        HResult::WU_E_UNKNOWN_SERVICE
    );
    // Content comes from each update's own service, and installs.
    let all = s
        .create_update_searcher()
        .search("IsInstalled=0")
        .unwrap()
        .updates()
        .clone();
    let mut d = s.create_update_downloader();
    d.set_updates(all.clone());
    assert_eq!(
        d.download().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    let mut i = s.create_update_installer();
    i.set_updates(all);
    assert_eq!(
        i.install().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert_eq!(
        std::fs::read(two.dir.path().join("root/opt/vendor/u1")).unwrap(),
        b"vendor"
    );
    assert_eq!(
        std::fs::read(two.dir.path().join("root/opt/internal/u2")).unwrap(),
        b"internal"
    );
    assert!(!two.dir.path().join("root/opt/internal/u1").exists());
}

#[test]
fn one_service_cannot_replace_what_another_installed() {
    let mut two = Two::new();
    let s = two.session();
    let id1 = format!("UpdateID='{}'", Uuid::from_u128(1));
    // Internal's update of the vendor's id, as a search of that service alone found it
    // before the vendor's was installed.
    let mut only = s.create_update_searcher();
    only.set_server_selection(ServerSelection::Others);
    only.set_service_id("internal");
    let theirs: UpdateCollection = only.search(&id1).unwrap().updates().clone();
    assert_eq!(theirs.get(0).unwrap().service(), Some("internal"));
    let mut d = s.create_update_downloader();
    d.set_updates(theirs.clone());
    d.download().unwrap();
    let vendor_tool = s
        .create_update_searcher()
        .search(&id1)
        .unwrap()
        .updates()
        .clone();
    assert_eq!(vendor_tool.get(0).unwrap().service(), Some("default"));
    let mut d = s.create_update_downloader();
    d.set_updates(vendor_tool.clone());
    d.download().unwrap();
    let mut i = s.create_update_installer();
    i.set_updates(vendor_tool);
    i.install().unwrap();
    // Installing the other service's update of that id is refused; the vendor's files stay.
    let mut i = s.create_update_installer();
    i.set_updates(theirs);
    let res = i.install().unwrap().update_result(0).unwrap();
    assert_eq!(res.hresult(), HResult::WU_E_NOT_APPLICABLE);
    assert!(res
        .message()
        .unwrap()
        .contains("installed from service default"));
    assert_eq!(
        std::fs::read(two.dir.path().join("root/opt/vendor/u1")).unwrap(),
        b"vendor"
    );
    // The vendor withdraws it; the internal service offers "revision 2" of that id: not an
    // upgrade of the installed one, and said so.
    let prefix = format!("updates/{}/", Uuid::from_u128(1));
    two.vendor
        .role_mut("targets")
        .targets
        .retain(|p, _| !p.starts_with(&prefix));
    two.vendor.publish();
    let mut r2 = RepoSim::update(1, "Not the vendor tool, r2");
    r2.revision = 2;
    two.internal
        .add_update("targets", r2, &payload(1, "internal"));
    two.internal.publish();
    let r = s.create_update_searcher().search("IsInstalled=0").unwrap();
    assert!(
        titles(&r)
            .iter()
            .all(|(t, _)| !t.starts_with("Not the vendor")),
        "{:?}",
        titles(&r)
    );
    assert!(r
        .warnings()
        .iter()
        .any(|w| w.message.contains("installed from service default")));
    let installed = s.create_update_searcher().search("IsInstalled=1").unwrap();
    assert_eq!(
        titles(&installed),
        [("Vendor tool".to_string(), "default".to_string())]
    );
}

#[test]
fn each_service_trusts_only_its_own_root() {
    let two = Two::new();
    let m = two.manager();
    // The internal root for the vendor's URL: the vendor's metadata does not verify.
    m.add_service(
        "mixup",
        &two.vendor_srv.base_url(),
        &two.internal.trusted_root_file(),
    )
    .unwrap();
    let s = two.session();
    let mut only = s.create_update_searcher();
    only.set_server_selection(ServerSelection::Others);
    only.set_service_id("mixup");
    let e = only.search("").unwrap_err();
    assert_eq!(e.kind(), upkeep::ErrorKind::Threshold, "{e}");
    // Across all services it is a warning; the others are searched.
    let r = s.create_update_searcher().search("IsInstalled=0").unwrap();
    assert!(r
        .warnings()
        .iter()
        .any(|w| w.message.starts_with("service mixup left out")));
    assert_eq!(titles(&r).len(), 2);
    m.remove_service("mixup").unwrap();
    assert!(!two.dir.path().join("state/services/mixup").exists());
}

#[test]
fn registration_errors_leave_nothing_behind() {
    let two = Two::new();
    let m = two.manager();
    let code = |r: upkeep::Result<upkeep::UpdateService>| r.unwrap_err().hresult();
    let root = two.internal.trusted_root_file();
    assert_eq!(
        code(m.add_service("internal", "http://127.0.0.1:1/", &root)),
        HResult::WU_E_DUPLICATE_ITEM
    );
    assert_eq!(
        code(m.add_service("default", "http://127.0.0.1:1/", &root)),
        HResult::WU_E_DUPLICATE_ITEM
    );
    assert_eq!(
        code(m.add_service("Bad Name", "http://127.0.0.1:1/", &root)),
        HResult::E_INVALIDARG
    );
    assert_eq!(
        code(m.add_service("x", "ftp://127.0.0.1/", &root)),
        HResult::WU_E_PT_INVALID_URL
    );
    let garbage = two.dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"signed\": 1}").unwrap();
    assert_eq!(
        code(m.add_service("x", "http://127.0.0.1:1/", &garbage)),
        HResult::WU_E_INVALID_FILE
    );
    assert!(!two.dir.path().join("state/services/x").exists());
    assert_eq!(
        m.remove_service("nope").unwrap_err().hresult(),
        HResult::WU_E_UNKNOWN_SERVICE
    );
    assert_eq!(
        m.remove_service("default").unwrap_err().hresult(),
        HResult::E_INVALIDARG
    );
    // Removed: searches no longer cover it.
    m.remove_service("internal").unwrap();
    let r = two
        .session()
        .create_update_searcher()
        .search("IsInstalled=0")
        .unwrap();
    assert_eq!(
        titles(&r),
        [("Vendor tool".to_string(), "default".to_string())]
    );
}

#[test]
fn a_service_of_the_configuration_file_is_searched_too() {
    let two = Two::new();
    let mut third = RepoSim::with_seed(81);
    third.add_update(
        "targets",
        RepoSim::update(3, "From the config"),
        &payload(3, "third"),
    );
    third.publish();
    let srv = third.serve();
    let cfg = two.dir.path().join("upkeep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[services]]\nname = \"cfg\"\nurl = \"{}\"\ntrusted_root = \"{}\"\n",
            srv.base_url(),
            third.trusted_root_file().display()
        ),
    )
    .unwrap();
    let s = two.builder().config_file(&cfg).build().unwrap();
    let r = s.create_update_searcher().search("IsInstalled=0").unwrap();
    assert!(titles(&r).contains(&("From the config".to_string(), "cfg".to_string())));
    let m = two
        .builder()
        .config_file(&cfg)
        .build_service_manager()
        .unwrap();
    assert_eq!(
        m.remove_service("cfg").unwrap_err().hresult(),
        HResult::E_INVALIDARG
    );
}

#[test]
fn a_hostile_bundle_is_refused_and_leaves_nothing() {
    let two = Two::new();
    let m = two.manager();
    type Make = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "escape",
            Box::new(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_size(1);
                h.set_mode(0o644);
                // `append_data` refuses `..`; write the name into the header directly.
                h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../outside\0\0");
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }),
        ),
        (
            "elsewhere",
            Box::new(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_size(1);
                h.set_mode(0o644);
                b.append_data(&mut h, "etc/passwd", &b"x"[..]).unwrap();
            }),
        ),
        (
            "symlink",
            Box::new(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, "metadata/root.json", "/etc/shadow")
                    .unwrap();
            }),
        ),
    ];
    for (name, make) in cases {
        let mut b = tar::Builder::new(Vec::new());
        make(&mut b);
        let file = two.dir.path().join(format!("{name}.tar"));
        std::fs::write(&file, b.into_inner().unwrap()).unwrap();
        let e = m
            .add_service(
                name,
                file.to_str().unwrap(),
                &two.internal.trusted_root_file(),
            )
            .unwrap_err();
        assert_eq!(e.hresult(), HResult::WU_E_INVALID_FILE, "{name}: {e}");
        assert!(
            !two.dir.path().join("state/services").join(name).exists(),
            "{name}"
        );
    }
    assert!(!two.dir.path().join("outside").exists());
}

#[test]
fn one_service_cannot_supersede_or_take_over_another_services_update() {
    let mut two = Two::new();
    // Internal, with its own keys, publishes an update that claims to supersede the
    // vendor's tool and writes the vendor tool's path.
    let mut y = RepoSim::update(3, "Internal takeover");
    y.supersedes = vec![Uuid::from_u128(1)];
    two.internal.add_update(
        "targets",
        y,
        &tar_zst(&[("opt/vendor/u1", b"internal's bytes")]),
    );
    two.internal.publish();
    let s = two.session();
    // Not installed, the vendor's tool is not hidden by another service's claim.
    let r = s.create_update_searcher().search("IsInstalled=0").unwrap();
    let t = titles(&r);
    assert!(
        t.contains(&("Vendor tool".into(), "default".into()))
            && t.contains(&("Internal takeover".into(), "internal".into())),
        "{t:?}"
    );
    let pick = |title: &str| -> UpdateCollection {
        r.updates()
            .iter()
            .filter(|u| u.title() == title)
            .cloned()
            .collect()
    };
    let (x, y) = (pick("Vendor tool"), pick("Internal takeover"));
    for c in [&x, &y] {
        let mut d = s.create_update_downloader();
        d.set_updates(c.clone());
        d.download().unwrap();
    }
    let mut i = s.create_update_installer();
    i.set_updates(x);
    assert_eq!(
        i.install().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    let state_before = std::fs::read(two.dir.path().join("root/opt/vendor/u1")).unwrap();

    // Installing the other service's update is refused before any change, naming both.
    let mut i = s.create_update_installer();
    i.set_updates(y);
    let res = i.install().unwrap();
    let u = res.update_result(0).unwrap();
    assert_eq!(u.hresult(), HResult::WU_E_NOT_APPLICABLE);
    let msg = u.message().unwrap();
    for part in [
        &Uuid::from_u128(3).to_string(),
        "service internal",
        &Uuid::from_u128(1).to_string(),
        "Vendor tool",
        "service default",
    ] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    assert_eq!(
        std::fs::read(two.dir.path().join("root/opt/vendor/u1")).unwrap(),
        state_before
    );
    // The vendor's tool is still installed and shown; the other is not installed.
    let installed = s.create_update_searcher().search("IsInstalled=1").unwrap();
    assert_eq!(
        titles(&installed),
        [("Vendor tool".to_string(), "default".to_string())]
    );
    let installed: Vec<String> = s
        .installed_updates()
        .unwrap()
        .into_iter()
        .map(|i| i.update_id)
        .collect();
    assert_eq!(installed, [Uuid::from_u128(1).to_string()]);
}
