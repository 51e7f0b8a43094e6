//! Repository authoring for upkeep: create a signed repository, add and remove updates,
//! re-sign and renew it, and serve it over HTTP for development.
//!
//! A repository directory holds:
//!
//! ```text
//! DIR/repository.toml   settings (bins, expiry periods)
//! DIR/keys/             ed25519 private keys, mode 0600, never served
//! DIR/metadata/         TUF metadata, consistent snapshots (N.root.json, N.snapshot.json, …)
//! DIR/targets/          content, named HASH.NAME as consistent snapshots require
//! ```
//!
//! Publishing is atomic for clients: content and every versioned metadata file are written
//! and flushed to disk (`syncfs`) before `timestamp.json` is replaced by rename, so a client
//! sees either the previous repository or the new one, never half of it. One publisher at a
//! time holds `DIR/.lock`.

pub mod deb;
mod repo;
pub mod serve;

pub use repo::{
    BundleReport, ContentSource, InitOptions, Manifest, NewUpdate, PruneReport, PublishError,
    PublishReport, Repository, RepositoryConfig, RoleStatus,
};
