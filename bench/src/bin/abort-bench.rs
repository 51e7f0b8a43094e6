//! `abort-bench BASE ROOT STATE_PREFIX ROUNDS`: abort latency of a running download. Each
//! round starts `begin_download` of every update with a fresh state directory
//! (`STATE_PREFIX-N`), calls `request_abort` from the progress callback once a quarter of
//! the bytes are in, and measures until the completion callback runs. Prints JSON.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::sync::{Arc, Mutex};
use std::time::Instant;

use upkeep::{
    AsyncState, DownloadCompletedCallbackArgs, DownloadJob, DownloadProgressChangedCallbackArgs,
    OperationResultCode, UpdateSession,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: abort-bench BASE ROOT STATE_PREFIX ROUNDS");
        std::process::exit(2);
    }
    let rounds: usize = args[4].parse().expect("ROUNDS");
    let mut lat = Vec::new();
    for r in 0..rounds {
        let session = UpdateSession::builder()
            .env(false)
            .repository(&args[1])
            .trusted_root(&args[2])
            .state_dir(format!("{}-{r}", args[3]))
            .build()
            .expect("session");
        let mut searcher = session.create_update_searcher();
        searcher.set_include_potentially_superseded_updates(true);
        let updates = searcher.search("").expect("search").updates().clone();
        let mut d = session.create_update_downloader();
        d.set_updates(updates);
        let asked: Arc<Mutex<Option<Instant>>> = Arc::default();
        let done: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (a1, d1) = (asked.clone(), done.clone());
        let job = d
            .begin_download(
                move |job: &DownloadJob, a: &DownloadProgressChangedCallbackArgs| {
                    let p = a.progress();
                    let mut asked = a1.lock().unwrap();
                    if asked.is_none()
                        && p.total_bytes_downloaded() * 4 >= p.total_bytes_to_download()
                    {
                        *asked = Some(Instant::now());
                        job.request_abort();
                    }
                },
                move |_: &DownloadJob, _: &DownloadCompletedCallbackArgs| {
                    *d1.lock().unwrap() = Some(Instant::now());
                },
                AsyncState::none(),
            )
            .expect("begin");
        let result = d.end_download(&job).expect("end");
        job.clean_up().expect("clean up");
        assert_eq!(result.result_code(), OperationResultCode::Aborted);
        let (a, c) = (
            asked.lock().unwrap().unwrap(),
            done.lock().unwrap().unwrap(),
        );
        lat.push(c.duration_since(a).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "{{\"median_ms\": {:.2}, \"max_ms\": {:.2}, \"rounds\": {}}}",
        lat[lat.len() / 2],
        lat[lat.len() - 1],
        lat.len()
    );
}
