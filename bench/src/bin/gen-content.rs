//! `gen-content DIR N SIZE`: publish N updates into a new repository at DIR, each with a
//! payload of SIZE pseudo-random bytes (distinct per update). Writes DIR/urls.txt: the path
//! of every payload as served (consistent-snapshot names), one per line, for curl.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::io::Write;

use upkeep::UpdateMetadata;
use upkeep_publish::{ContentSource, InitOptions, NewUpdate, Repository};
use uuid::Uuid;

/// Fast, incompressible filler (xorshift64*), seeded per update.
fn fill(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: gen-content DIR N SIZE");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let n: u64 = args[2].parse().expect("N");
    let size: usize = args[3].parse().expect("SIZE");
    let mut repo = Repository::init(&dir, InitOptions::default()).expect("init");
    // Publish in batches so a large total never sits in memory at once.
    let batch = ((512 << 20) / size.max(1)).clamp(1, 10_000) as u64;
    let mut i = 0;
    while i < n {
        let updates = (i..(i + batch).min(n))
            .map(|k| {
                let id = Uuid::from_u128(0xc0_0000_0000_4000_8000_0000_0000_0000 | k as u128);
                NewUpdate {
                    metadata: UpdateMetadata::new(id, format!("Content {k}"), "payload.bin"),
                    payload: ContentSource::Bytes {
                        name: "payload.bin".into(),
                        data: fill(k + 1, size),
                    },
                    extra_content: vec![],
                    eula: None,
                    bootstrapper: None,
                }
            })
            .collect();
        repo.add_updates(updates).expect("publish");
        i += batch;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("urls.txt")).unwrap());
    for (path, info) in repo.targets().expect("targets") {
        writeln!(
            out,
            "{}",
            upkeep_tuf::target_url("targets/", &path, &info.hashes, true)
        )
        .unwrap();
    }
    out.flush().unwrap();
}
