//! `begin_search` / `end_search` over a real loopback repository.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use upkeep::{
    AsyncState, HResult, OperationResultCode, SearchCompletedCallbackArgs, SearchJob, UpdateSession,
};
use upkeep_testkit::RepoSim;

fn setup() -> (
    RepoSim,
    upkeep_publish::serve::Server,
    tempfile::TempDir,
    UpdateSession,
) {
    let mut sim = RepoSim::new();
    sim.add_update("targets", RepoSim::update(1, "One"), b"1");
    sim.add_update("targets", RepoSim::update(2, "Two"), b"2");
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
    (sim, server, state, session)
}

#[test]
fn the_completion_callback_can_end_the_search_and_gets_the_state() {
    let (_sim, _server, _state, session) = setup();
    let searcher = session.create_update_searcher();
    let (tx, rx) = mpsc::channel();
    let s2 = searcher.clone();
    let job = searcher
        .begin_search(
            "IsInstalled=0",
            move |job: &SearchJob, _: &SearchCompletedCallbackArgs| {
                assert!(job.is_completed());
                let label = job.async_state().downcast_ref::<&str>().copied();
                let result = s2.end_search(job).map(|r| r.updates().len());
                tx.send((label, result, job.async_state().is_none()))
                    .unwrap();
            },
            AsyncState::new("caller state"),
        )
        .unwrap();
    let (label, result, released) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(label, Some("caller state"));
    assert_eq!(result.unwrap(), 2);
    assert!(released, "end_search released the state");
    let again = searcher.end_search(&job).unwrap_err();
    assert_eq!(again.hresult(), HResult::WU_E_INVALID_OPERATION);
    job.clean_up().unwrap();
}

#[test]
fn invalid_criteria_surface_at_end_search() {
    let (_sim, server, _state, session) = setup();
    let searcher = session.create_update_searcher();
    let before = server.request_count();
    let job = searcher
        .begin_search("IsInstalled=2", (), AsyncState::none())
        .unwrap();
    let e = searcher.end_search(&job).unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_INVALID_CRITERIA);
    assert_eq!(server.request_count(), before);
}

#[test]
fn end_search_blocks_until_done_and_the_state_is_released() {
    let (_sim, _server, _state, session) = setup();
    let searcher = session.create_update_searcher();
    let marker = Arc::new(1u8);
    let job = searcher
        .begin_search("", (), AsyncState::new(marker.clone()))
        .unwrap();
    let r = searcher.end_search(&job).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Succeeded);
    assert!(job.is_completed());
    assert_eq!(Arc::strong_count(&marker), 1);
}

#[test]
fn an_abort_requested_while_the_search_waits_ends_it_aborted() {
    let (sim, _server, _state, _session) = setup();
    // A repository that accepts connections and never answers: the search is still
    // waiting when abort is requested, and returns once the listener goes away.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("http://{}/", listener.local_addr().unwrap());
    let state = tempfile::tempdir().unwrap();
    let searcher = UpdateSession::builder()
        .env(false)
        .repository(silent)
        .trusted_root(sim.trusted_root_file())
        .state_dir(state.path())
        .build()
        .unwrap()
        .create_update_searcher();
    let job = searcher.begin_search("", (), AsyncState::none()).unwrap();
    job.request_abort();
    drop(listener);
    let r = searcher.end_search(&job).unwrap();
    assert_eq!(r.result_code(), OperationResultCode::Aborted);
    assert!(r.updates().is_empty());
}
