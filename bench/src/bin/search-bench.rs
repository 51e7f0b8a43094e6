//! `search-bench URL ROOT STATE ROUNDS`: one session; the first search is the refresh (cold if
//! STATE is new), then ROUNDS warm searches of `IsInstalled=0` on the cached catalog.
//! Prints JSON with the times in milliseconds.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::time::Instant;

use upkeep::UpdateSession;

/// The agent's allocator (the CLI's), so the warm search is timed on the memory layout
/// users get.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: search-bench URL ROOT STATE ROUNDS");
        std::process::exit(2);
    }
    let rounds: usize = a[4].parse().expect("ROUNDS");
    let session = UpdateSession::builder()
        .env(false)
        .repository(&a[1])
        .trusted_root(&a[2])
        .state_dir(&a[3])
        .build()
        .expect("session");
    let searcher = session.create_update_searcher();
    let t = Instant::now();
    let first = searcher.search("IsInstalled=0").expect("first search");
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut warm = Vec::new();
    let mut found = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        found = searcher
            .search("IsInstalled=0")
            .expect("warm search")
            .updates()
            .len();
        warm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    warm.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    let median = warm.get(warm.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "first_ms": first_ms,
            "first_found": first.updates().len(),
            "warm_median_ms": median,
            "warm_found": found,
            "rounds": rounds,
        })
    );
}
