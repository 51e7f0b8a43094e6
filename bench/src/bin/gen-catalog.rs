//! `gen-catalog DIR N BINS`: publish N updates into a new repository at DIR with BINS hashed
//! bins (0 for flat), with realistic records and tiny payloads. Writes DIR/one-path-per-bin.txt
//! (one target path per bin, for clients that must be made to load every bin).
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::collections::BTreeMap;
use std::time::Instant;

use upkeep::{Category, UpdateMetadata};
use upkeep_publish::{ContentSource, InitOptions, NewUpdate, Repository, RepositoryConfig};
use uuid::Uuid;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: gen-catalog DIR N BINS");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let n: u128 = args[2].parse().expect("N");
    let bins: u32 = args[3].parse().expect("BINS");
    let t0 = Instant::now();
    let mut repo = Repository::init(
        &dir,
        InitOptions {
            config: RepositoryConfig {
                bins,
                ..Default::default()
            },
        },
    )
    .expect("init");
    let cats = [
        Category {
            id: Uuid::from_u128(0xc1),
            name: "Security Updates".into(),
        },
        Category {
            id: Uuid::from_u128(0xc2),
            name: "Tools".into(),
        },
        Category {
            id: Uuid::from_u128(0xc3),
            name: "Drivers".into(),
        },
    ];
    let updates: Vec<NewUpdate> = (0..n)
        .map(|i| {
            let id = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 | i);
            let mut m =
                UpdateMetadata::new(id, format!("Acme component {i} cumulative update"), "x");
            m.description =
                format!("Fixes issues in Acme component {i}. See the KB article for details.");
            m.kb_article_ids = vec![format!("{}", 5_000_000 + i)];
            m.categories = vec![cats[(i % 3) as usize].clone()];
            m.severity = ["Critical", "Important", "Moderate", "Low", ""][(i % 5) as usize].into();
            if i > 0 && i % 10 == 0 {
                m.supersedes = vec![Uuid::from_u128(
                    0x5eed_0000_0000_4000_8000_0000_0000_0000 | (i - 1),
                )];
            }
            NewUpdate {
                metadata: m,
                payload: ContentSource::Bytes {
                    name: "payload.tar".into(),
                    data: format!("payload {i}").into_bytes(),
                },
                extra_content: vec![],
                eula: None,
                bootstrapper: None,
            }
        })
        .collect();
    repo.add_updates(updates).expect("publish");
    // One target path per bin, so another client can be made to load every bin.
    let mut per_bin: BTreeMap<String, String> = BTreeMap::new();
    let bits = bins.trailing_zeros();
    for path in repo.targets().expect("targets").into_keys() {
        let role = if bins == 0 {
            "targets".to_string()
        } else {
            upkeep_tuf_bin(&path, bits)
        };
        per_bin.entry(role).or_insert(path);
    }
    let list: Vec<String> = per_bin.into_values().collect();
    std::fs::write(dir.join("one-path-per-bin.txt"), list.join("\n") + "\n").expect("write list");
    eprintln!(
        "published {n} updates in {bins} bins in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

fn upkeep_tuf_bin(path: &str, bits: u32) -> String {
    let s = upkeep_tuf::metadata::SuccinctRoles {
        keyids: vec![],
        threshold: 1,
        bit_length: bits,
        name_prefix: "bin".into(),
        unrecognized: Default::default(),
    };
    s.role_for_target(path)
}
