//! upkeep's TUF 1.0 client.
//!
//! This crate owns everything TUF: the metadata model ([`metadata`]), signature verification
//! for ed25519, ECDSA P-256 and RSA keys ([`keys`]), the trusted set and its acceptance rules
//! ([`TrustedSet`]), the detailed client workflow of specification §5 ([`Client`]), a
//! verifying target reader ([`TargetReader`]), [`Limits`] against endless data, and ed25519
//! signing for publishers ([`SigningKey`], [`metadata::sign`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use upkeep_tuf::{Client, ClientConfig, HttpTransport, Limits};
//!
//! let cfg = ClientConfig {
//!     metadata_dir: "state/metadata".into(),
//!     metadata_url: "http://127.0.0.1:8080/metadata/".into(),
//!     limits: Limits::default(),
//!     offline: false,
//!     timestamp_first: true,
//! };
//! let mut client = Client::new(cfg, Arc::new(HttpTransport::new()?))?;
//! client.refresh()?;
//! if let Some(info) = client.target_info("updates/a.tar")? {
//!     println!("{} bytes", info.length);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod canonical;
mod client;
mod error;
pub mod keys;
pub mod metadata;
mod reader;
mod transport;
mod trusted;

pub use client::{
    encode_role, read_limited, target_url, write_atomic, CatalogTargets, Client, ClientConfig,
    Limits, Transport,
};
pub use error::{Error, Result, TransportError};
pub use keys::{Key, SigningKey};
pub use metadata::TargetFile;
pub use reader::{into_error, TargetReader};
pub use transport::{FileTransport, HttpTransport};
pub use trusted::TrustedSet;
