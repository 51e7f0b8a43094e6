//! Every fault the testkit can inject ends in the right bytes in the cache or a precise
//! error, never in corrupt content.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256, Sha512};
use upkeep_testkit::faults::{Fault, FaultServer};
use upkeep_transfer::{
    ContentCache, Engine, Phase, TransferError, TransferOptions, TransferProgress,
};
use upkeep_types::{ContentFile, HResult, Hashes};

const PATH: &str = "/content/blob.bin";

fn content() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn describe(data: &[u8]) -> ContentFile {
    let mut hashes = Hashes::new();
    hashes.insert("sha256", hex::encode(Sha256::digest(data)));
    hashes.insert("sha512", hex::encode(Sha512::digest(data)));
    ContentFile {
        path: "blob.bin".into(),
        length: data.len() as u64,
        hashes,
    }
}

struct Setup {
    server: FaultServer,
    cache_dir: tempfile::TempDir,
    file: ContentFile,
}

fn setup() -> Setup {
    let server = FaultServer::start();
    server.put(PATH, content());
    Setup {
        server,
        cache_dir: tempfile::tempdir().unwrap(),
        file: describe(&content()),
    }
}

fn opts() -> TransferOptions {
    TransferOptions {
        retries: 4,
        backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

fn fetch(
    s: &Setup,
    urls: &[String],
    abort: &AtomicBool,
) -> (
    Result<std::path::PathBuf, TransferError>,
    Vec<TransferProgress>,
) {
    let engine = Engine::new(ContentCache::open(s.cache_dir.path()).unwrap(), opts()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seen = Vec::new();
    let r = rt.block_on(engine.fetch(&s.file, urls, &mut |p| seen.push(p), &|| {
        abort.load(Ordering::SeqCst)
    }));
    (r, seen)
}

fn url(s: &Setup) -> Vec<String> {
    vec![format!("{}{}", s.server.base_url(), &PATH[1..])]
}

fn objects(s: &Setup) -> usize {
    std::fs::read_dir(s.cache_dir.path().join("objects"))
        .unwrap()
        .count()
}

#[test]
fn a_clean_download_reports_real_phases_and_is_served_from_the_cache_next_time() {
    let s = setup();
    let (r, seen) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    let phases: Vec<Phase> = seen.iter().map(|p| p.phase).collect();
    let first = |ph| phases.iter().position(|p| *p == ph).unwrap();
    assert!(first(Phase::Initializing) < first(Phase::Downloading));
    assert!(first(Phase::Downloading) < first(Phase::Verifying));
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    assert_eq!(seen.last().unwrap().bytes_done, 300_000);
    let requests = s.server.log().len();
    let (r, _) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert!(r.is_ok());
    assert_eq!(s.server.log().len(), requests, "served from the cache");
}

#[test]
fn a_dropped_connection_resumes_with_range_and_if_range() {
    let s = setup();
    s.server.push_fault(PATH, Fault::DropAfter(100_000));
    let (r, seen) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    let log = s.server.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(log[1].if_range.as_deref(), Some("\"300000\""));
    assert_eq!(
        seen.last().unwrap().bytes_received,
        300_000,
        "no byte fetched twice"
    );
}

#[test]
fn stalls_short_bodies_and_server_errors_are_retried() {
    let s = setup();
    s.server.push_fault(PATH, Fault::Status(503));
    s.server.push_fault(PATH, Fault::StallAfter(50_000));
    s.server.push_fault(PATH, Fault::Status(500));
    s.server.push_fault(PATH, Fault::ShortBody(200_000));
    let (r, _) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    let ranges: Vec<Option<String>> = s.server.log().into_iter().map(|l| l.range).collect();
    assert_eq!(
        ranges,
        [
            None,
            None,
            Some("bytes=50000-".into()),
            Some("bytes=50000-".into()),
            Some("bytes=250000-".into())
        ]
    );
}

#[test]
fn extra_bytes_are_never_read_past_the_signed_length() {
    let s = setup();
    s.server.push_fault(PATH, Fault::ExtraBytes(5000));
    let (r, _) = fetch(&s, &url(&s), &AtomicBool::new(false));
    let p = r.unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 300_000);
    assert_eq!(std::fs::read(p).unwrap(), content());
}

#[test]
fn wrong_bytes_are_fetched_again_and_never_committed() {
    let s = setup();
    s.server.push_fault(PATH, Fault::WrongByte(12_345));
    let (r, _) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    assert_eq!(
        s.server.log()[1].range,
        None,
        "a corrupt file restarts from zero"
    );

    let s = setup();
    for _ in 0..5 {
        s.server.push_fault(PATH, Fault::WrongByte(7));
    }
    let (r, _) = fetch(&s, &url(&s), &AtomicBool::new(false));
    let e = r.unwrap_err();
    assert!(matches!(e, TransferError::HashMismatch { .. }), "{e}");
    assert_eq!(e.hresult(), HResult::WU_E_DM_INCORRECTFILEHASH);
    assert_eq!(objects(&s), 0, "nothing unverified in the cache");
}

#[test]
fn a_server_that_ignores_range_makes_the_transfer_start_over() {
    let s = setup();
    s.server.push_fault(PATH, Fault::DropAfter(1000));
    s.server.push_fault(PATH, Fault::IgnoreRange);
    let (r, seen) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    assert_eq!(s.server.log()[1].range.as_deref(), Some("bytes=1000-"));
    assert_eq!(seen.last().unwrap().bytes_received, 301_000);
}

#[test]
fn mirrors_fail_over_and_a_file_missing_everywhere_is_not_found() {
    let s = setup();
    let other = FaultServer::start(); // has no such file
    let urls = vec![
        format!("{}{}", other.base_url(), &PATH[1..]),
        url(&s)[0].clone(),
    ];
    let (r, _) = fetch(&s, &urls, &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());

    let s2 = setup();
    let nowhere = vec![
        format!("{}missing.bin", s2.server.base_url()),
        format!("{}missing.bin", other.base_url()),
    ];
    let (r, _) = fetch(&s2, &nowhere, &AtomicBool::new(false));
    let e = r.unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_DM_URLNOTAVAILABLE, "{e}");
}

#[test]
fn an_unreachable_server_is_a_download_failure_after_the_retries() {
    let s = setup();
    let (r, _) = fetch(
        &s,
        &["http://127.0.0.1:9/blob.bin".to_string()],
        &AtomicBool::new(false),
    );
    assert_eq!(r.unwrap_err().hresult(), HResult::WU_E_DOWNLOAD_FAILED);
}

#[test]
fn abort_keeps_the_partial_file_and_a_new_engine_resumes_it() {
    let s = setup();
    s.server.push_fault(PATH, Fault::StallAfter(120_000));
    let abort = AtomicBool::new(false);
    let engine = Engine::new(
        ContentCache::open(s.cache_dir.path()).unwrap(),
        TransferOptions {
            stall_timeout: Duration::from_secs(60),
            ..opts()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(engine.fetch(
        &s.file,
        &url(&s),
        &mut |p| {
            // Abort once the stalled transfer has everything the server sent.
            if p.bytes_done == 120_000 {
                abort.store(true, Ordering::SeqCst);
            }
        },
        &|| abort.load(Ordering::SeqCst),
    ));
    let e = r.unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_CALL_CANCELLED, "{e}");
    assert_eq!(engine.cache().partial_len(&s.file), 120_000);
    drop(engine);
    // As after a restart: a new engine over the same cache resumes from the partial file.
    let (r, seen) = fetch(&s, &url(&s), &AtomicBool::new(false));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    assert_eq!(
        s.server.log().last().unwrap().range.as_deref(),
        Some("bytes=120000-")
    );
    assert_eq!(seen.last().unwrap().bytes_received, 180_000);
}
