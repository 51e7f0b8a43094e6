//! One agent, many sessions: what they share (the catalog in memory, the transfer queue,
//! the install lock) and what each keeps (its caller's name, read-only), over a real
//! loopback repository.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use upkeep::{
    Agent, AsyncState, DownloadJob, DownloadPriority, DownloadProgressChangedCallbackArgs, HResult,
    OperationResultCode, UpdateCollection, UpdateOperation, UpdateSession,
};
use upkeep_testkit::faults::{Fault, FaultServer};
use upkeep_testkit::{tar_zst, RepoSim};

fn agent_for(sim: &RepoSim, url: &str, dir: &std::path::Path, parallel: usize) -> Agent {
    Agent::builder()
        .env(false)
        .repository(url)
        .trusted_root(sim.trusted_root_file())
        .state_dir(dir.join("state"))
        .install_root(dir.join("root"))
        .parallel_downloads(parallel)
        .open()
        .unwrap()
}

fn find(s: &UpdateSession, criteria: &str) -> UpdateCollection {
    let mut u: Vec<_> = s
        .create_update_searcher()
        .search(criteria)
        .unwrap()
        .updates()
        .iter()
        .cloned()
        .collect();
    u.sort_by_key(|u| u.identity());
    u.into_iter().collect()
}

fn one(u: &upkeep::Update) -> UpdateCollection {
    std::iter::once(u.clone()).collect()
}

#[test]
fn sessions_over_one_agent_share_its_catalog_and_keep_their_own_caller() {
    let mut sim = RepoSim::new();
    for i in 1..=2u8 {
        let name = format!("f{i}");
        sim.add_update(
            "targets",
            RepoSim::update(i as u128, &format!("U{i}")),
            &tar_zst(&[(name.as_str(), &[i; 100])]),
        );
    }
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_for(&sim, &server.base_url(), dir.path(), 8);
    let a = UpdateSession::new(&agent);
    a.set_client_application_id("app-a");
    let b = UpdateSession::new(&agent);
    b.set_client_application_id("app-b");
    assert!(Agent::same(
        a.agent().expect("in process"),
        b.agent().expect("in process")
    ));

    // A's search builds the catalog; B's offline search is served from that very one.
    let found_a = find(&a, "IsInstalled=0");
    assert_eq!(found_a.len(), 2);
    let catalog = agent.catalog(false).unwrap();
    let mut offline = b.create_update_searcher();
    offline.set_online(false);
    assert_eq!(offline.search("IsInstalled=0").unwrap().updates().len(), 2);
    assert!(
        Arc::ptr_eq(&catalog, &agent.catalog(false).unwrap()),
        "a second session rebuilt the catalog"
    );

    // What a search finds is data: it crosses a bus as JSON and comes back the same.
    let result = a.create_update_searcher().search("IsInstalled=0").unwrap();
    let wire = serde_json::to_string(&result).unwrap();
    let back: upkeep::SearchResult = serde_json::from_str(&wire).unwrap();
    assert_eq!(back.updates(), result.updates());
    let (u0, b0) = (
        result.updates().get(0).unwrap(),
        back.updates().get(0).unwrap(),
    );
    assert_eq!((b0.title(), b0.state()), (u0.title(), u0.state()));
    assert_eq!(b0.download_contents(), u0.download_contents());

    // Each session installs as its own caller; history says who.
    for (s, u) in [(&a, found_a.get(0).unwrap()), (&b, found_a.get(1).unwrap())] {
        let mut d = s.create_update_downloader();
        d.set_updates(one(u));
        assert_eq!(
            d.download().unwrap().result_code(),
            OperationResultCode::Succeeded
        );
        let mut i = s.create_update_installer();
        i.set_updates(one(u));
        let r = i.install().unwrap();
        assert_eq!(r.result_code(), OperationResultCode::Succeeded);
        let wire = serde_json::to_string(&r).unwrap();
        assert_eq!(
            serde_json::from_str::<upkeep::InstallationResult>(&wire).unwrap(),
            r
        );
    }
    let history = a.create_update_searcher().query_history(0, 10).unwrap();
    let who: Vec<(String, String)> = history
        .iter()
        .filter(|h| h.operation == UpdateOperation::Installation)
        .map(|h| (h.title.clone(), h.client_application_id.clone()))
        .collect();
    assert_eq!(
        who,
        [("U2".into(), "app-b".into()), ("U1".into(), "app-a".into())]
    );
    // B sees what A installed, at once: the state is the machine's.
    assert_eq!(find(&b, "IsInstalled=1").len(), 2);

    // A read-only session over the same agent reads, and changes nothing.
    let ro = UpdateSession::new(&agent).into_read_only();
    let installed = find(&ro, "IsInstalled=1");
    assert_eq!(installed.len(), 2);
    let mut u = ro.create_update_installer();
    u.set_updates(installed.clone());
    assert_eq!(
        u.uninstall().unwrap_err().hresult(),
        HResult::WU_E_INVALID_OPERATION
    );
    assert!(dir.path().join("root/f1").exists() && dir.path().join("root/f2").exists());
    assert!(!a.read_only() && ro.read_only());
}

#[test]
fn a_high_priority_download_of_one_session_overtakes_a_low_one_of_another() {
    let mut sim = RepoSim::new();
    for (i, name) in [(1u128, "Busy"), (2, "Low"), (3, "High")] {
        let data: Vec<u8> = format!("{name} ").repeat(40_000).into_bytes();
        sim.add_update("targets", RepoSim::update(i, name), &data);
    }
    sim.publish();
    let server = FaultServer::start();
    server.put_dir(sim.dir());
    let url_of = |id: u128| {
        let path = format!(
            "updates/{}/1/payload.tar",
            uuid::Uuid::from_u128(id).as_hyphenated()
        );
        let t = &sim.targets.targets[&path];
        format!(
            "/targets/updates/{}/1/{}.payload.tar",
            uuid::Uuid::from_u128(id).as_hyphenated(),
            &t.hashes["sha256"]
        )
    };
    // Busy's payload stalls: it holds the agent's one transfer slot until aborted.
    server.push_fault(&url_of(1), Fault::StallAfter(10_000));
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_for(&sim, &server.base_url(), dir.path(), 1);
    let sessions: Vec<UpdateSession> = (0..3).map(|_| UpdateSession::new(&agent)).collect();
    let all = find(&sessions[0], "");
    assert_eq!(all.len(), 3);
    let engine = agent.engine().unwrap();

    // Session 0 starts Busy (Normal); once its bytes flow, session 1 asks for Low, then
    // session 2 for High: both wait in the agent's one queue.
    let (tx, rx) = mpsc::channel();
    let mut d0 = sessions[0].create_update_downloader();
    d0.set_updates(one(all.get(0).unwrap()));
    let busy = d0
        .begin_download(
            move |_: &DownloadJob, a: &DownloadProgressChangedCallbackArgs| {
                if a.progress().total_bytes_downloaded() > 0 {
                    let _ = tx.send(());
                }
            },
            (),
            AsyncState::none(),
        )
        .unwrap();
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the busy download started");
    let wait_for_queue = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.waiting() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(engine.waiting(), n, "transfers waiting for the slot");
    };
    let mut jobs = Vec::new();
    for (s, i, p) in [
        (&sessions[1], 1, DownloadPriority::Low),
        (&sessions[2], 2, DownloadPriority::High),
    ] {
        let mut d = s.create_update_downloader();
        d.set_updates(one(all.get(i).unwrap()));
        d.set_priority(p);
        jobs.push((
            d.clone(),
            d.begin_download((), (), AsyncState::none()).unwrap(),
        ));
        wait_for_queue(i);
    }
    busy.request_abort();
    assert_eq!(
        d0.end_download(&busy).unwrap().result_code(),
        OperationResultCode::Aborted
    );
    for (d, j) in &jobs {
        assert_eq!(
            d.end_download(j).unwrap().result_code(),
            OperationResultCode::Succeeded
        );
    }
    let order: Vec<String> = server
        .log()
        .into_iter()
        .map(|l| l.path)
        .filter(|p| p.ends_with(".payload.tar"))
        .collect();
    assert_eq!(order, [url_of(1), url_of(3), url_of(2)]);
}

/// A backend that is not the agent: it relays every call to one, counts the jobs it is
/// asked for, and says it is not in process (as the daemon's client will).
struct Relay {
    agent: Agent,
    searches: std::sync::atomic::AtomicUsize,
    jobs: std::sync::Mutex<Vec<&'static str>>,
}

impl upkeep::Backend for Relay {
    fn config(&self) -> &upkeep::config::ResolvedConfig {
        self.agent.config()
    }
    fn request(&self, client_application_id: String) -> upkeep::Request {
        self.agent.request(client_application_id)
    }
    fn search(
        &self,
        req: &upkeep::Request,
        criteria: &str,
        opts: &upkeep::SearchOptions,
    ) -> upkeep::Result<upkeep::SearchResult> {
        self.searches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        upkeep::Backend::search(&self.agent, req, criteria, opts)
    }
    fn begin_download(
        &self,
        req: &upkeep::Request,
        updates: Option<&UpdateCollection>,
        download_type: upkeep::DownloadType,
        priority: DownloadPriority,
    ) -> upkeep::Result<upkeep::Prepared<upkeep::DownloadProgress, upkeep::DownloadResult>> {
        self.jobs.lock().unwrap().push("download");
        self.agent
            .begin_download(req, updates, download_type, priority)
    }
    fn begin_install(
        &self,
        req: &upkeep::Request,
        updates: Option<&UpdateCollection>,
        op: upkeep::Operation,
        forced: bool,
    ) -> upkeep::Result<upkeep::Prepared<upkeep::InstallationProgress, upkeep::InstallationResult>>
    {
        self.jobs.lock().unwrap().push(match op {
            upkeep::Operation::Install => "install",
            upkeep::Operation::Uninstall => "uninstall",
        });
        upkeep::Backend::begin_install(&self.agent, req, updates, op, forced)
    }
    fn is_busy(&self) -> bool {
        upkeep::Backend::is_busy(&self.agent)
    }
    fn reboot_pending(&self) -> upkeep::Result<bool> {
        self.agent.reboot_pending()
    }
    fn accept_eula(&self, req: &upkeep::Request, update: &upkeep::Update) -> upkeep::Result<()> {
        self.agent.accept_eula(req, update)
    }
    fn set_hidden(
        &self,
        req: &upkeep::Request,
        update: &upkeep::Update,
        hidden: bool,
    ) -> upkeep::Result<()> {
        self.agent.set_hidden(req, update, hidden)
    }
    fn eula_text(&self, update: &upkeep::Update) -> upkeep::Result<String> {
        self.agent.eula_text(update)
    }
    fn verify(&self, ids: &[String]) -> upkeep::Result<Vec<upkeep::VerifiedUpdate>> {
        self.agent.verify(ids)
    }
    fn installed_updates(&self) -> upkeep::Result<Vec<upkeep::InstalledUpdate>> {
        self.agent.installed_updates()
    }
    fn history(
        &self,
        start: usize,
        count: usize,
    ) -> upkeep::Result<Vec<upkeep::UpdateHistoryEntry>> {
        self.agent.history(start, count)
    }
    fn history_count(&self) -> upkeep::Result<usize> {
        upkeep::Backend::history_count(&self.agent)
    }
    fn clean_cache(&self, req: &upkeep::Request) -> upkeep::Result<upkeep::CacheReport> {
        self.agent.clean_cache(req)
    }
    fn copy_to_cache(
        &self,
        req: &upkeep::Request,
        paths: &[std::path::PathBuf],
    ) -> upkeep::Result<upkeep::CacheImport> {
        self.agent.copy_to_cache(req, paths)
    }
    fn copy_from_cache(
        &self,
        updates: &UpdateCollection,
        dir: &std::path::Path,
    ) -> upkeep::Result<Vec<std::path::PathBuf>> {
        self.agent.copy_from_cache(updates, dir)
    }
    fn cache_entries(
        &self,
    ) -> upkeep::Result<(Vec<upkeep::CacheObject>, Vec<upkeep::CachePartial>)> {
        self.agent.cache_entries()
    }
}

#[test]
fn a_session_over_another_backend_runs_every_job_through_it() {
    let mut sim = RepoSim::new();
    sim.add_update(
        "targets",
        RepoSim::update(1, "Relayed"),
        &tar_zst(&[("usr/share/relayed.txt", b"relayed\n")]),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let relay = Arc::new(Relay {
        agent: agent_for(&sim, &server.base_url(), dir.path(), 2),
        searches: Default::default(),
        jobs: Default::default(),
    });
    let session = UpdateSession::over(relay.clone());
    session.set_client_application_id("relayed-app");
    assert!(session.agent().is_none(), "the relay is not in process");

    // The WUA sequence: search, download with callbacks, install, then uninstall.
    let found = find(&session, "IsInstalled=0");
    assert_eq!(found.len(), 1);
    let mut downloader = session.create_update_downloader();
    downloader.set_updates(found.clone());
    let (tx, rx) = mpsc::channel();
    let job = downloader
        .begin_download(
            |_: &DownloadJob, _: &DownloadProgressChangedCallbackArgs| {},
            move |j: &DownloadJob, _: &upkeep::DownloadCompletedCallbackArgs| {
                tx.send(j.is_completed()).unwrap()
            },
            AsyncState::none(),
        )
        .unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(60)).unwrap());
    let downloaded = downloader.end_download(&job).unwrap();
    assert_eq!(downloaded.result_code(), OperationResultCode::Succeeded);

    let mut installer = session.create_update_installer();
    installer.set_updates(found.clone());
    let installed = installer.install().unwrap();
    assert_eq!(installed.result_code(), OperationResultCode::Succeeded);
    let file = dir.path().join("root/usr/share/relayed.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"relayed\n");
    assert!(!installer.is_busy());
    let removed = installer.uninstall().unwrap();
    assert_eq!(removed.result_code(), OperationResultCode::Succeeded);
    assert!(!file.exists());

    assert_eq!(
        *relay.jobs.lock().unwrap(),
        ["download", "install", "uninstall"]
    );
    assert!(relay.searches.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // History came through the relay and names the caller the session set.
    let history = session
        .create_update_searcher()
        .query_history(0, 10)
        .unwrap();
    assert_eq!(history.len(), 2);
    assert!(history
        .iter()
        .all(|h| h.client_application_id == "relayed-app"));
    // What only the in-process agent can do is a clear WUA error, not a panic.
    let err = session.content_cache().unwrap_err();
    assert_eq!(err.hresult(), HResult::WU_E_NOT_SUPPORTED);
    assert!(err.to_string().contains("content cache"), "{err}");
}
