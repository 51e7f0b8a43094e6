//! The downloader over a real loopback repository: callbacks, results, errors, abort.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use upkeep::{
    AsyncState, DownloadCompletedCallbackArgs, DownloadJob, DownloadPhase,
    DownloadProgressChangedCallbackArgs, DownloadType, HResult, OperationResultCode,
    UpdateCollection, UpdateSession,
};
use upkeep_testkit::RepoSim;

struct Fx {
    _sim: RepoSim,
    _server: upkeep_publish::serve::Server,
    _state: tempfile::TempDir,
    session: UpdateSession,
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn fixture() -> Fx {
    let mut sim = RepoSim::new();
    sim.add_update("targets", RepoSim::update(1, "Big"), &payload(3_000_000));
    sim.add_update("targets", RepoSim::update(2, "Small"), &payload(10_000));
    sim.publish();
    let server = sim.serve();
    let state = tempfile::tempdir().unwrap();
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(state.path())
        .build()
        .unwrap();
    Fx {
        _sim: sim,
        _server: server,
        _state: state,
        session,
    }
}

fn all_updates(s: &UpdateSession) -> UpdateCollection {
    let mut searcher = s.create_update_searcher();
    searcher.set_include_potentially_superseded_updates(true);
    let mut u: Vec<_> = searcher
        .search("")
        .unwrap()
        .updates()
        .iter()
        .cloned()
        .collect();
    u.sort_by_key(|u| u.identity());
    u.into_iter().collect()
}

#[test]
fn begin_download_reports_progress_completes_and_marks_updates_downloaded() {
    let fx = fixture();
    let updates = all_updates(&fx.session);
    assert!(updates.iter().all(|u| !u.is_downloaded()));
    let mut d = fx.session.create_update_downloader();
    d.set_updates(updates);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let (tx, rx) = mpsc::channel();
    let job = d
        .begin_download(
            move |_: &DownloadJob, a: &DownloadProgressChangedCallbackArgs| {
                let p = a.progress();
                s2.lock().unwrap().push((
                    p.percent_complete(),
                    p.current_update_index(),
                    p.current_update_download_phase(),
                ));
            },
            move |job: &DownloadJob, _: &DownloadCompletedCallbackArgs| {
                tx.send(job.is_completed()).unwrap()
            },
            AsyncState::new(5u8),
        )
        .unwrap();
    assert_eq!(job.updates().len(), 2);
    assert!(rx.recv_timeout(Duration::from_secs(60)).unwrap());
    let r = d.end_download(&job).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert_eq!(
        r.update_result(0).unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert_eq!(r.update_result(1).unwrap().hresult(), HResult::S_OK);
    assert!(job.async_state().is_none());
    assert_eq!(
        d.end_download(&job).unwrap_err().hresult(),
        HResult::WU_E_INVALID_OPERATION
    );
    job.clean_up().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "percent never goes down"
    );
    // Snapshots coalesce, but the last one is always delivered: it is the last file's
    // verification.
    assert_eq!(
        seen.last().map(|s| (s.1, s.2)),
        Some((1, DownloadPhase::Verifying))
    );
    let p = job.progress();
    assert_eq!(p.percent_complete(), 100);
    assert_eq!(p.total_bytes_downloaded(), 3_010_000);
    assert!(all_updates(&fx.session).iter().all(|u| u.is_downloaded()));
    // A second download finds everything in the cache.
    assert_eq!(
        d.download().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
}

#[test]
fn begin_errors_create_no_job() {
    let fx = fixture();
    let mut d = fx.session.create_update_downloader();
    assert_eq!(d.download().unwrap_err().hresult(), HResult::WU_E_NO_UPDATE);
    d.set_updates(UpdateCollection::new());
    assert_eq!(d.download().unwrap_err().hresult(), HResult::WU_E_NO_UPDATE);
    let updates = all_updates(&fx.session);
    d.set_updates(updates.clone());
    let e = d.download2(DownloadType::UpdateBootstrapper).unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_NOT_SUPPORTED);
    // A session that has never trusted repository metadata cannot download.
    let fresh_state = tempfile::tempdir().unwrap();
    let fresh = UpdateSession::builder()
        .env(false)
        .repository("http://127.0.0.1:9/")
        .trusted_root(fx._sim.trusted_root_file())
        .state_dir(fresh_state.path())
        .build()
        .unwrap();
    let mut d2 = fresh.create_update_downloader();
    d2.set_updates(updates);
    assert_eq!(
        d2.download().unwrap_err().hresult(),
        HResult::WU_E_NOT_INITIALIZED
    );
}

#[test]
fn abort_ends_unstarted_and_running_updates_aborted_and_keeps_partial_files() {
    let mut sim = RepoSim::new();
    sim.add_update("targets", RepoSim::update(1, "Big"), &payload(3_000_000));
    sim.add_update("targets", RepoSim::update(2, "Small"), &payload(10_000));
    sim.publish();
    let server = upkeep_testkit::faults::FaultServer::start();
    server.put_dir(sim.dir());
    let big = &sim.targets.targets["updates/00000000-0000-0000-0000-000000000001/1/payload.tar"];
    let big_url = format!(
        "/targets/updates/00000000-0000-0000-0000-000000000001/1/{}.payload.tar",
        &big.hashes["sha256"]
    );
    // The big payload stalls after 1 MB, so the download is certainly running when the
    // progress callback asks for abort.
    server.push_fault(
        &big_url,
        upkeep_testkit::faults::Fault::StallAfter(1_000_000),
    );
    let state = tempfile::tempdir().unwrap();
    // One transfer at a time: Small waits for Big's slot, so it has not started at abort.
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(state.path())
        .parallel_downloads(1)
        .build()
        .unwrap();
    let updates = all_updates(&session); // [Big, Small] by id
    let mut d = session.create_update_downloader();
    d.set_updates(updates);
    let job = d
        .begin_download(
            |job: &DownloadJob, a: &DownloadProgressChangedCallbackArgs| {
                if a.progress().current_update_bytes_downloaded() >= 1_000_000 {
                    job.request_abort();
                }
            },
            (),
            AsyncState::none(),
        )
        .unwrap();
    let r = d.end_download(&job).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Aborted);
    assert_eq!(r.hresult(), HResult::WU_E_CALL_CANCELLED);
    assert_eq!(
        r.update_result(0).unwrap().result_code(),
        OperationResultCode::Aborted
    );
    assert_eq!(
        r.update_result(1).unwrap().result_code(),
        OperationResultCode::Aborted
    );
    assert_eq!(
        session.content_cache().unwrap().partial_len(
            all_updates(&session)
                .get(0)
                .unwrap()
                .download_contents()
                .first()
                .unwrap()
        ),
        1_000_000
    );
    // The partial file is kept, and a new download resumes it.
    let r = d.download().unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert!(server
        .log()
        .iter()
        .any(|l| l.path == big_url && l.range.as_deref() == Some("bytes=1000000-")));
}

#[test]
fn updates_download_in_parallel_and_abort_keeps_finished_results() {
    let mut sim = RepoSim::new();
    for i in 1..=3 {
        sim.add_update(
            "targets",
            RepoSim::update(i, "Stalls"),
            &payload(400_000 + i as usize),
        );
    }
    sim.add_update("targets", RepoSim::update(4, "Small"), &payload(10_000));
    sim.publish();
    let server = upkeep_testkit::faults::FaultServer::start();
    server.put_dir(sim.dir());
    let mut stalled = Vec::new();
    for i in 1..=3 {
        let id = format!("00000000-0000-0000-0000-00000000000{i}");
        let t = &sim.targets.targets[&format!("updates/{id}/1/payload.tar")];
        let url = format!(
            "/targets/updates/{id}/1/{}.payload.tar",
            &t.hashes["sha256"]
        );
        server.push_fault(&url, upkeep_testkit::faults::Fault::StallAfter(100_000));
        stalled.push(url);
    }
    let state = tempfile::tempdir().unwrap();
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(state.path())
        .build()
        .unwrap();
    let mut d = session.create_update_downloader();
    d.set_updates(all_updates(&session)); // [Stalls x3, Small] by id
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let job = d
        .begin_download(
            move |_: &DownloadJob, a: &DownloadProgressChangedCallbackArgs| {
                let _ = tx.lock().unwrap().send(a.progress().clone());
            },
            (),
            AsyncState::none(),
        )
        .unwrap();
    // Every update is under way at once: the three stalled transfers all reached their
    // stall point (each holding a slot), and the small one, after them in the collection,
    // finished meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = rx.recv_timeout(Duration::from_secs(30)).expect("progress");
        // (The small one's bytes count as they arrive; it succeeds once verified and
        // committed, a moment later.)
        if p.total_bytes_downloaded() == 3 * 100_000 + 10_000
            && p.update_result(3).unwrap().result_code() == OperationResultCode::Succeeded
        {
            assert_eq!(p.current_update_index(), 0, "the first unfinished update");
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
    let asked = std::time::Instant::now();
    job.request_abort();
    let r = d.end_download(&job).unwrap();
    // Generous bound for a shared machine (the stall would last a minute); the benchmark
    // measures the real latency.
    assert!(asked.elapsed() < Duration::from_secs(5), "abort is prompt");
    assert_eq!(r.result_code(), OperationResultCode::Aborted);
    for i in 0..3 {
        assert_eq!(
            r.update_result(i).unwrap().result_code(),
            OperationResultCode::Aborted
        );
    }
    assert_eq!(
        r.update_result(3).unwrap().result_code(),
        OperationResultCode::Succeeded,
        "a finished update keeps its result"
    );
    let log = server.log();
    for url in &stalled {
        assert_eq!(log.iter().filter(|l| &l.path == url).count(), 1);
    }
}

#[test]
fn a_metadata_server_trickling_bytes_is_dropped_at_the_minimum_rate() {
    let mut sim = RepoSim::new();
    sim.add_update("targets", RepoSim::update(1, "One"), &payload(1000));
    sim.publish();
    let server = upkeep_testkit::faults::FaultServer::start();
    server.put_dir(sim.dir());
    // 20 bytes a second, never idle for long: only a rate limit stops it.
    server.push_fault(
        "/metadata/timestamp.json",
        upkeep_testkit::faults::Fault::Trickle(0, std::time::Duration::from_millis(50)),
    );
    let state = tempfile::tempdir().unwrap();
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(state.path())
        .min_transfer_rate(1000, 1)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let e = session
        .create_update_searcher()
        .search("IsInstalled=0")
        .unwrap_err();
    assert!(e.to_string().contains("too slow"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The next refresh, from a server that behaves, works.
    let r = session
        .create_update_searcher()
        .search("IsInstalled=0")
        .unwrap();
    assert_eq!(r.updates().len(), 1);
}

/// A bootstrapper-only download (`download2(UpdateBootstrapper)`) fetches the
/// bootstrapper and leaves the update not downloaded, in this object, its clones and a
/// new search; the full download then marks it downloaded.
#[test]
fn a_bootstrapper_download_does_not_mark_the_update_downloaded() {
    let mut sim = RepoSim::new();
    let mut m = RepoSim::update(7, "With a bootstrapper");
    let boot = format!("updates/{}/1/bootstrapper/setup.sh", m.id);
    sim.add_target("targets", &boot, b"#!/bin/sh\nexit 0\n", None);
    m.bootstrapper = Some(boot);
    sim.add_update("targets", m, &payload(50_000));
    sim.publish();
    let server = sim.serve();
    let state = tempfile::tempdir().unwrap();
    let session = UpdateSession::builder()
        .env(false)
        .repository(server.base_url())
        .trusted_root(sim.trusted_root_file())
        .state_dir(state.path())
        .build()
        .unwrap();
    let updates = all_updates(&session);
    let mut d = session.create_update_downloader();
    d.set_updates(updates.clone());
    let r = d.download2(DownloadType::UpdateBootstrapper).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    let u = updates.get(0).unwrap();
    assert!(!u.is_downloaded(), "only its bootstrapper was downloaded");
    assert!(!all_updates(&session).get(0).unwrap().is_downloaded());
    assert_eq!(
        d.download().unwrap().result_code(),
        OperationResultCode::Succeeded
    );
    assert!(u.is_downloaded());
    assert!(all_updates(&session).get(0).unwrap().is_downloaded());
}
