//! Every fault the testkit can inject ends in the right bytes in the cache or a precise
//! error, never in corrupt content.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256, Sha512};
use upkeep_testkit::faults::{Fault, FaultServer};
use upkeep_transfer::{
    ContentCache, Engine, Phase, TransferError, TransferOptions, TransferProgress,
};
use upkeep_types::{ContentFile, DownloadPriority, HResult, Hashes};

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

/// Runs every test twice: streaming through the writer and hasher threads, and inline.
fn modes() -> [TransferOptions; 2] {
    [
        TransferOptions {
            inline_below: 0,
            ..opts()
        },
        TransferOptions {
            inline_below: u64::MAX,
            ..opts()
        },
    ]
}

fn fetch_with(
    s: &Setup,
    urls: &[String],
    opts: TransferOptions,
) -> (
    Result<std::path::PathBuf, TransferError>,
    Vec<TransferProgress>,
) {
    let engine = Engine::new(ContentCache::open(s.cache_dir.path()).unwrap(), opts).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let r = engine.fetch_blocking(
        &s.file,
        urls,
        DownloadPriority::Normal,
        move |p| seen2.lock().unwrap().push(p),
        || false,
    );
    let seen = seen.lock().unwrap().clone();
    (r, seen)
}

fn fetch(
    s: &Setup,
    urls: &[String],
) -> (
    Result<std::path::PathBuf, TransferError>,
    Vec<TransferProgress>,
) {
    fetch_with(s, urls, opts())
}

fn url(s: &Setup) -> Vec<String> {
    vec![format!("{}{}", s.server.base_url(), &PATH[1..])]
}

fn partials(s: &Setup) -> usize {
    std::fs::read_dir(s.cache_dir.path().join("partial"))
        .unwrap()
        .count()
}

fn objects(s: &Setup) -> usize {
    std::fs::read_dir(s.cache_dir.path().join("objects"))
        .unwrap()
        .count()
}

#[test]
fn a_clean_download_reports_real_phases_and_is_served_from_the_cache_next_time() {
    for o in modes() {
        let s = setup();
        let (r, seen) = fetch_with(&s, &url(&s), o.clone());
        assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
        let phases: Vec<Phase> = seen.iter().map(|p| p.phase).collect();
        let first = |ph| phases.iter().position(|p| *p == ph).unwrap();
        assert!(first(Phase::Initializing) < first(Phase::Downloading));
        assert!(first(Phase::Downloading) < first(Phase::Verifying));
        assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
        assert_eq!(seen.last().unwrap().bytes_done, 300_000);
        assert_eq!(partials(&s), 0, "nothing left in partial/");
        let requests = s.server.log().len();
        let (r, _) = fetch_with(&s, &url(&s), o);
        assert!(r.is_ok());
        assert_eq!(s.server.log().len(), requests, "served from the cache");
    }
}

#[test]
fn a_dropped_connection_resumes_with_range_and_if_range() {
    for o in modes() {
        let s = setup();
        s.server.push_fault(PATH, Fault::DropAfter(100_000));
        let (r, seen) = fetch_with(&s, &url(&s), o);
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
}

#[test]
fn stalls_short_bodies_and_server_errors_are_retried() {
    for o in modes() {
        let s = setup();
        s.server.push_fault(PATH, Fault::Status(503));
        s.server.push_fault(PATH, Fault::StallAfter(50_000));
        s.server.push_fault(PATH, Fault::Status(500));
        s.server.push_fault(PATH, Fault::ShortBody(200_000));
        let (r, _) = fetch_with(&s, &url(&s), o);
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
}

#[test]
fn extra_bytes_are_never_read_past_the_signed_length() {
    for o in modes() {
        let s = setup();
        s.server.push_fault(PATH, Fault::ExtraBytes(5000));
        let (r, _) = fetch_with(&s, &url(&s), o);
        let p = r.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 300_000);
        assert_eq!(std::fs::read(p).unwrap(), content());
    }
}

#[test]
fn wrong_bytes_are_fetched_again_and_never_committed() {
    for o in modes() {
        let s = setup();
        s.server.push_fault(PATH, Fault::WrongByte(12_345));
        let (r, _) = fetch_with(&s, &url(&s), o.clone());
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
        let (r, _) = fetch_with(&s, &url(&s), o);
        let e = r.unwrap_err();
        assert!(matches!(e, TransferError::HashMismatch { .. }), "{e}");
        assert_eq!(e.hresult(), HResult::WU_E_DM_INCORRECTFILEHASH);
        assert_eq!(objects(&s), 0, "nothing unverified in the cache");
    }
}

#[test]
fn a_server_that_ignores_range_makes_the_transfer_start_over() {
    for o in modes() {
        let s = setup();
        s.server.push_fault(PATH, Fault::DropAfter(1000));
        s.server.push_fault(PATH, Fault::IgnoreRange);
        let (r, seen) = fetch_with(&s, &url(&s), o);
        assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
        assert_eq!(s.server.log()[1].range.as_deref(), Some("bytes=1000-"));
        assert_eq!(seen.last().unwrap().bytes_received, 301_000);
    }
}

#[test]
fn mirrors_fail_over_and_a_file_missing_everywhere_is_not_found() {
    let s = setup();
    let other = FaultServer::start(); // has no such file
    let urls = vec![
        format!("{}{}", other.base_url(), &PATH[1..]),
        url(&s)[0].clone(),
    ];
    let (r, _) = fetch(&s, &urls);
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());

    let s2 = setup();
    let nowhere = vec![
        format!("{}missing.bin", s2.server.base_url()),
        format!("{}missing.bin", other.base_url()),
    ];
    let (r, _) = fetch(&s2, &nowhere);
    let e = r.unwrap_err();
    assert_eq!(e.hresult(), HResult::WU_E_DM_URLNOTAVAILABLE, "{e}");
}

#[test]
fn an_unreachable_server_is_a_download_failure_after_the_retries() {
    let s = setup();
    let (r, _) = fetch(&s, &["http://127.0.0.1:9/blob.bin".to_string()]);
    assert_eq!(r.unwrap_err().hresult(), HResult::WU_E_DOWNLOAD_FAILED);
}

#[test]
fn abort_keeps_the_partial_file_and_a_new_engine_resumes_it() {
    for o in modes() {
        let s = setup();
        s.server.push_fault(PATH, Fault::StallAfter(120_000));
        let abort = Arc::new(AtomicBool::new(false));
        let engine = Engine::new(
            ContentCache::open(s.cache_dir.path()).unwrap(),
            TransferOptions {
                stall_timeout: Duration::from_secs(60),
                ..o.clone()
            },
        )
        .unwrap();
        let (a1, a2) = (abort.clone(), abort.clone());
        let r = engine.fetch_blocking(
            &s.file,
            &url(&s),
            DownloadPriority::Normal,
            move |p| {
                // Abort once the stalled transfer has everything the server sent.
                if p.bytes_done == 120_000 {
                    a1.store(true, Ordering::SeqCst);
                }
            },
            move || a2.load(Ordering::SeqCst),
        );
        let e = r.unwrap_err();
        assert_eq!(e.hresult(), HResult::WU_E_CALL_CANCELLED, "{e}");
        // A file big enough to go to disk keeps its partial file; a small one was only in
        // memory.
        let resumable = s.file.length >= o.inline_below;
        assert_eq!(
            engine.cache().partial_len(&s.file),
            if resumable { 120_000 } else { 0 }
        );
        drop(engine);
        // As after a restart: a new engine over the same cache resumes from the partial
        // file, or starts over.
        let (r, seen) = fetch_with(&s, &url(&s), o);
        assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
        let last = s.server.log().last().unwrap().clone();
        if resumable {
            assert_eq!(last.range.as_deref(), Some("bytes=120000-"));
            assert_eq!(seen.last().unwrap().bytes_received, 180_000);
        } else {
            assert_eq!(last.range, None);
            assert_eq!(seen.last().unwrap().bytes_received, 300_000);
        }
    }
}

#[test]
fn a_complete_partial_file_left_by_a_crash_is_verified_without_a_request() {
    let s = setup();
    let partial = s.cache_dir.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    let key = upkeep_transfer::cache_key(&s.file).unwrap();
    std::fs::write(partial.join(format!("{key}.part")), content()).unwrap();
    std::fs::write(partial.join(format!("{key}.meta")), "\"300000\"").unwrap();
    let (r, seen) = fetch_with(
        &s,
        &url(&s),
        TransferOptions {
            inline_below: 0,
            ..opts()
        },
    );
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    assert!(s.server.log().is_empty());
    assert!(seen.iter().any(|p| p.phase == Phase::Verifying));
}

#[test]
fn two_engines_fetching_the_same_content_never_interleave() {
    // Two engines over one cache stand for two processes: the partial file's lock makes
    // the second wait and then take the first one's verified result.
    let s = setup();
    s.server.push_fault(PATH, Fault::StallAfter(150_000));
    let o = TransferOptions {
        stall_timeout: Duration::from_millis(400),
        inline_below: 0, // a file big enough to be locked on disk
        ..opts()
    };
    let a = Engine::new(ContentCache::open(s.cache_dir.path()).unwrap(), o.clone()).unwrap();
    let b = Engine::new(ContentCache::open(s.cache_dir.path()).unwrap(), o).unwrap();
    let (file, urls) = (s.file.clone(), url(&s));
    let first = std::thread::spawn(move || {
        a.fetch_blocking(&file, &urls, DownloadPriority::Normal, |_| {}, || false)
    });
    // Wait (bounded) until the first transfer is under way and holds the lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.server.log().is_empty() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(s.server.log().len(), 1);
    let second = b.fetch_blocking(
        &s.file,
        &url(&s),
        DownloadPriority::Normal,
        |_| {},
        || false,
    );
    let first = first.join().unwrap();
    assert_eq!(first.unwrap(), second.unwrap());
    assert_eq!(
        std::fs::read(
            s.cache_dir
                .path()
                .join("objects")
                .join(upkeep_transfer::cache_key(&s.file).unwrap())
        )
        .unwrap(),
        content()
    );
    // One stalled request and its resume; the second engine fetched nothing.
    assert_eq!(s.server.log().len(), 2, "{:?}", s.server.log());
    assert_eq!(partials(&s), 0);
}

#[test]
fn higher_priority_transfers_take_the_next_free_slot() {
    let server = FaultServer::start();
    let cache_dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(
        ContentCache::open(cache_dir.path()).unwrap(),
        TransferOptions {
            parallel: 1,
            stall_timeout: Duration::from_secs(60),
            ..opts()
        },
    )
    .unwrap();
    let mut files = Vec::new();
    for name in ["busy", "low", "high"] {
        let data: Vec<u8> = format!("{name} ").repeat(5000).into_bytes();
        server.put(&format!("/{name}"), data.clone());
        let mut f = describe(&data);
        f.path = name.into();
        files.push(f);
    }
    server.push_fault("/busy", Fault::StallAfter(10));
    let release = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, p) in [
        DownloadPriority::Normal,
        DownloadPriority::Low,
        DownloadPriority::High,
    ]
    .into_iter()
    .enumerate()
    {
        let (e, f, u, rel) = (
            engine.clone(),
            files[i].clone(),
            vec![format!("{}{}", server.base_url(), files[i].path)],
            release.clone(),
        );
        threads.push(std::thread::spawn(move || {
            e.fetch_blocking(
                &f,
                &u,
                p,
                |_| {},
                move || i == 0 && rel.load(Ordering::SeqCst),
            )
        }));
        // Queue them in this order: busy runs, then low waits, then high waits.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (server.log().is_empty() || engine.waiting() < i)
            && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }
    assert_eq!(engine.waiting(), 2);
    release.store(true, Ordering::SeqCst); // abort the stalled one: its slot frees up
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        results[0].as_ref().unwrap_err().hresult(),
        HResult::WU_E_CALL_CANCELLED
    );
    assert!(results[1].is_ok() && results[2].is_ok());
    let order: Vec<String> = server.log().into_iter().map(|l| l.path).collect();
    assert_eq!(order, ["/busy", "/high", "/low"]);
}

#[test]
fn low_priority_transfers_keep_to_the_bandwidth_cap() {
    let s = setup();
    let engine = Engine::new(
        ContentCache::open(s.cache_dir.path()).unwrap(),
        TransferOptions {
            low_priority_bytes_per_second: Some(1_000_000),
            ..opts()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let r = engine.fetch_blocking(&s.file, &url(&s), DownloadPriority::Low, |_| {}, || false);
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
    // 300,000 bytes at 1 MB/s: the first chunk is free, so at least ~0.2 s. A lower bound
    // only; a slow machine makes it longer, never shorter.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_trickling_server_is_dropped_below_the_minimum_rate_and_the_transfer_resumes() {
    for o in modes() {
        let s = setup();
        // A byte every 50 ms never looks stalled (300 ms), but is 20 bytes/s.
        s.server
            .push_fault(PATH, Fault::Trickle(1000, Duration::from_millis(50)));
        let o = TransferOptions {
            min_rate: 1000,
            min_rate_window: Duration::from_millis(600),
            ..o
        };
        let started = std::time::Instant::now();
        let (r, _) = fetch_with(&s, &url(&s), o.clone());
        assert_eq!(std::fs::read(r.unwrap()).unwrap(), content());
        assert!(started.elapsed() < Duration::from_secs(20));
        let log = s.server.log();
        assert_eq!(log.len(), 2, "{log:?}");
        if o.inline_below == 0 {
            // On disk: the second request resumes after what the first one delivered.
            let from = log[1].range.clone().expect("a resumed request");
            let n: u64 = from["bytes=".len()..from.len() - 1].parse().unwrap();
            assert!(n >= 1000, "{from}");
        }
    }
}

#[test]
fn a_server_that_always_trickles_fails_with_a_clear_error() {
    let s = setup();
    for _ in 0..5 {
        s.server
            .push_fault(PATH, Fault::Trickle(0, Duration::from_millis(50)));
    }
    let o = TransferOptions {
        min_rate: 1000,
        min_rate_window: Duration::from_millis(400),
        ..opts()
    };
    let (r, _) = fetch_with(&s, &url(&s), o);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("too slow"), "{e}");
    assert_eq!(s.server.log().len(), 5);
    assert_eq!(objects(&s), 0);
}

#[test]
fn a_download_that_does_not_fit_is_refused_before_it_starts() {
    let s = setup();
    let small = upkeep_testkit::mounts::Tmpfs::mount("1m");
    let engine = Engine::new(
        ContentCache::open(&small.path().join("cache")).unwrap(),
        TransferOptions {
            disk_reserve: 0,
            inline_below: 0,
            ..opts()
        },
    )
    .unwrap();
    // 300 KB fits in 1 MiB; with a 900 KiB reserve kept free it does not.
    let r = engine.fetch_blocking(
        &s.file,
        &url(&s),
        DownloadPriority::Normal,
        |_| {},
        || false,
    );
    assert!(r.is_ok(), "{r:?}");
    let tight = Engine::new(
        ContentCache::open(&small.path().join("cache2")).unwrap(),
        TransferOptions {
            disk_reserve: 900 << 10,
            ..opts()
        },
    )
    .unwrap();
    let requests = s.server.log().len();
    let e = tight
        .fetch_blocking(
            &s.file,
            &url(&s),
            DownloadPriority::Normal,
            |_| {},
            || false,
        )
        .unwrap_err();
    assert_eq!(e.hresult(), HResult::E_DISK_FULL, "{e}");
    assert!(e.to_string().contains("in reserve"), "{e}");
    assert_eq!(s.server.log().len(), requests, "nothing was requested");
}

#[test]
fn a_disk_that_fills_during_a_download_loses_the_partial_file_not_the_agent() {
    let s = setup();
    let small = upkeep_testkit::mounts::Tmpfs::mount("2m");
    let cache = small.path().join("cache");
    // The first response stalls after 100 KB; meanwhile the disk fills up.
    s.server.push_fault(PATH, Fault::StallAfter(100_000));
    let engine = Engine::new(
        ContentCache::open(&cache).unwrap(),
        TransferOptions {
            disk_reserve: 0,
            inline_below: 0,
            stall_timeout: Duration::from_millis(500),
            ..opts()
        },
    )
    .unwrap();
    let (file, urls) = (s.file.clone(), url(&s));
    let t = std::thread::spawn(move || {
        engine.fetch_blocking(&file, &urls, DownloadPriority::Normal, |_| {}, || false)
    });
    let part = cache.join("partial").join(format!(
        "{}.part",
        upkeep_transfer::cache_key(&s.file).unwrap()
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 100_000
        && std::time::Instant::now() < deadline
    {
        std::thread::yield_now();
    }
    small.fill("filler");
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.hresult(), HResult::E_DISK_FULL, "{e}");
    assert!(!part.exists(), "the partial file is removed");
    assert_eq!(std::fs::read_dir(cache.join("objects")).unwrap().count(), 0);
}
