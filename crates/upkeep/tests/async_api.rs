//! The Rust-native side of the jobs, beside WUA's: every handle is `Send + Sync`, every
//! job's result can be awaited and its progress watched as a stream, from `async` code on
//! a tokio runtime (the work runs on the job's own threads, so no blocking call reaches
//! the caller's runtime). A real loopback repository, a real install root.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use upkeep::{
    Agent, AsyncState, DownloadJob, DownloadResult, InstallationJob, InstallationResult,
    OperationResultCode, SearchJob, SearchResult, UpdateCollection, UpdateDownloader,
    UpdateInstaller, UpdateSearcher, UpdateSession, UpdateSessionBuilder,
};
use upkeep_testkit::{tar_zst, RepoSim};

#[test]
fn every_public_handle_and_value_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Agent>();
    check::<UpdateSession>();
    check::<UpdateSessionBuilder>();
    check::<UpdateSearcher>();
    check::<UpdateDownloader>();
    check::<UpdateInstaller>();
    check::<SearchJob>();
    check::<DownloadJob>();
    check::<InstallationJob>();
    check::<SearchResult>();
    check::<DownloadResult>();
    check::<InstallationResult>();
    check::<upkeep::DownloadProgress>();
    check::<upkeep::InstallationProgress>();
    check::<upkeep::Update>();
    check::<UpdateCollection>();
    check::<upkeep::Error>();
    check::<upkeep::UpdateHistoryEntry>();
    // The futures of the async forms may move to another worker thread.
    fn send<T: Send>(_: &T) {}
    fn futures(s: SearchJob, d: DownloadJob, i: InstallationJob) {
        send(&s.result());
        send(&d.result());
        send(&i.result());
        send(&s.wait());
        send(&std::future::IntoFuture::into_future(d));
        send(&std::future::IntoFuture::into_future(i));
    }
    let _ = futures;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_download_and_install_are_driven_from_async_code() {
    let mut sim = RepoSim::new();
    sim.add_update(
        "targets",
        RepoSim::update(1, "Tools"),
        &tar_zst(&[
            ("opt/tools/run", &[7u8; 300_000]),
            ("etc/tools.conf", b"v1"),
        ]),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let (url, root_file, state, root) = (
        server.base_url(),
        sim.trusted_root_file(),
        dir.path().join("state"),
        dir.path().join("root"),
    );
    // Opening the agent reads files and recovers: blocking work, off the runtime.
    let session = tokio::task::spawn_blocking(move || {
        UpdateSession::builder()
            .env(false)
            .repository(url)
            .trusted_root(root_file)
            .state_dir(state)
            .install_root(root)
            .build()
            .unwrap()
    })
    .await
    .unwrap();

    let searcher = session.create_update_searcher();
    let job = searcher
        .begin_search("IsInstalled=0", (), AsyncState::new("mine"))
        .unwrap();
    // Awaited on another worker thread: the handle and its future are Send.
    let found = tokio::spawn({
        let job = job.clone();
        async move { job.result().await }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(found.updates().len(), 1);
    assert!(job.async_state().is_none(), "released with the result");
    assert_eq!(
        searcher.end_search(&job).unwrap_err().hresult(),
        upkeep::HResult::WU_E_INVALID_OPERATION,
        "the result is taken once, by either form"
    );

    let mut downloader = session.create_update_downloader();
    downloader.set_updates(found.updates().clone());
    let job = downloader
        .begin_download((), (), AsyncState::none())
        .unwrap();
    let mut progress = job.subscribe();
    let mut percents = vec![progress.borrow().percent_complete()];
    while progress.changed().await.is_ok() {
        percents.push(progress.borrow_and_update().percent_complete());
    }
    assert!(job.is_completed(), "the stream ends at completion");
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100), "{percents:?}");
    let r = job.result().await.unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert!(found.updates().get(0).unwrap().is_downloaded());

    let mut installer = session.create_update_installer();
    installer.set_updates(found.updates().clone());
    let job = installer.begin_install((), (), AsyncState::none()).unwrap();
    let mut progress = job.subscribe();
    while progress.changed().await.is_ok() {}
    let last = progress.borrow().clone();
    assert_eq!(last.percent_complete(), 100);
    assert_eq!(
        last.update_result(0).map(|r| r.result_code()),
        Some(OperationResultCode::Succeeded)
    );
    let r = job.result().await.unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        std::fs::read(dir.path().join("root/etc/tools.conf")).unwrap(),
        b"v1"
    );
    assert!(
        installer.end_install(&job).is_err(),
        "end_install after the awaited result: already taken"
    );
    // `job.await` is the same result: an uninstall awaited directly, on another worker.
    let job = installer
        .begin_uninstall((), (), AsyncState::none())
        .unwrap();
    let watcher = job.clone();
    let r = tokio::spawn(async move { job.await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert!(watcher.is_completed());
    assert!(
        !dir.path().join("root/etc/tools.conf").exists(),
        "uninstalled"
    );
    assert!(
        installer.end_uninstall(&watcher).is_err(),
        "the awaited result was taken"
    );
    let job = searcher
        .begin_search("IsInstalled=1", (), AsyncState::none())
        .unwrap();
    assert_eq!(
        job.await.unwrap().updates().len(),
        0,
        "nothing is installed now"
    );
    // The last session (and its agent, with the transfer engine's runtime) goes away off
    // the runtime, as any blocking resource must.
    tokio::task::spawn_blocking(move || drop((session, searcher, downloader, installer)))
        .await
        .unwrap();
}

/// The blocking forms (`search`, `download`, `install`) called straight from async code —
/// a current-thread runtime, as a `#[tokio::test]` or a D-Bus method handler is — finish
/// instead of panicking: they block the calling thread (so the async forms are the ones
/// to prefer there), while the agent's HTTP runs on its own runtime.
#[tokio::test]
async fn the_blocking_forms_work_when_called_from_async_code() {
    let mut sim = RepoSim::new();
    sim.add_update(
        "targets",
        RepoSim::update(1, "Tools"),
        &tar_zst(&[("etc/tools.conf", b"v1")]),
    );
    sim.publish();
    let server = sim.serve();
    let dir = tempfile::tempdir().unwrap();
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(dir.path().join("state"))
        .install_root(dir.path().join("root"))
        .build()
        .unwrap();
    let found = session
        .create_update_searcher()
        .search("IsInstalled=0")
        .unwrap();
    assert_eq!(found.updates().len(), 1);
    let mut downloader = session.create_update_downloader();
    downloader.set_updates(found.updates().clone());
    let r = downloader.download().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    let mut installer = session.create_update_installer();
    installer.set_updates(found.updates().clone());
    let r = installer.install().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        std::fs::read(dir.path().join("root/etc/tools.conf")).unwrap(),
        b"v1"
    );
    drop((installer, downloader));
    tokio::task::spawn_blocking(move || drop(session))
        .await
        .unwrap();
}
